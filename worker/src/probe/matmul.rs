//! Matrix products of the probes on host `f32` slices, through the model's
//! gemm call (`model::kernels::gemm_rows`: the crate flex itself multiplies
//! with, on the rayon pool when the product is large). Owns only the bounds
//! checks that make that call sound; it knows nothing of features or classes.

use crate::model::kernels::gemm_rows;

/// A read-only matrix view: element (r, c) is `data[r·row_stride + c·col_stride]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> View<'a> {
    /// A row-major `rows × cols` matrix; panics if `data` is not exactly that size.
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "a {rows}×{cols} matrix needs {} values", rows * cols);
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (no copy).
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// a · b as a row-major `a.rows × b.cols` matrix.
pub(crate) fn matmul(a: View<'_>, b: View<'_>) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "matmul: [{}, {}] · [{}, {}]", a.rows, a.cols, b.rows, b.cols);
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    let strides = |v: View<'_>| [v.row_stride as isize, v.col_stride as isize];
    // SAFETY: both views were built from slices of exactly rows × cols
    // values with non-negative strides (checked in `View::rows`; `t` only
    // swaps them), so every element gemm reads is inside its slice.
    unsafe { gemm_rows([m, n, k], a.data.as_ptr(), strides(a), b.data.as_ptr(), strides(b)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_and_transposes_match_the_definition() {
        // a = [[1, 2, 3], [4, 5, 6]], b = [[1, 0], [0, 1], [1, 1]]
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let ab = matmul(View::rows(&a, 2, 3), View::rows(&b, 3, 2));
        assert_eq!(ab, vec![4.0, 5.0, 10.0, 11.0]);
        // aᵀ·a is 3×3 and symmetric: (0, 1) = 1·2 + 4·5.
        let ata = matmul(View::rows(&a, 2, 3).t(), View::rows(&a, 2, 3));
        assert_eq!(ata.len(), 9);
        assert_eq!(ata[1], 22.0);
        assert_eq!(ata[3], 22.0);
        // a·aᵀ is 2×2: (1, 1) = 16 + 25 + 36.
        let aat = matmul(View::rows(&a, 2, 3), View::rows(&a, 2, 3).t());
        assert_eq!(aat, vec![14.0, 32.0, 32.0, 77.0]);
    }

    #[test]
    #[should_panic(expected = "matmul")]
    fn mismatched_shapes_are_refused() {
        let a = [1.0; 6];
        let _ = matmul(View::rows(&a, 2, 3), View::rows(&a, 2, 3));
    }
}
