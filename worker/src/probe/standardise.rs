//! Feature standardisation fitted on the training split only: every feature
//! minus its training mean, divided by its training standard deviation (a
//! feature constant on the training split is centred and left unscaled).
//! Pure arithmetic on row-major `[n, dim]` slices; no I/O.

use rayon::prelude::*;

/// Standard deviations below this count as a constant feature.
const CONSTANT: f64 = 1e-6;

/// Per-feature mean and scale of a training split.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Standardiser {
    pub(crate) mean: Vec<f32>,
    pub(crate) scale: Vec<f32>,
}

impl Standardiser {
    /// Mean and (population) standard deviation of each column of `x`
    /// `[n, dim]`, accumulated in f64.
    pub(crate) fn fit(x: &[f32], dim: usize) -> Self {
        assert!(dim > 0 && x.len().is_multiple_of(dim), "{} values are not rows of {dim}", x.len());
        let n = x.len() / dim;
        let (sum, sum_sq) = x
            .par_chunks(dim * 1024)
            .map(|block| {
                let (mut s, mut q) = (vec![0.0f64; dim], vec![0.0f64; dim]);
                for row in block.chunks_exact(dim) {
                    for ((s, q), &v) in s.iter_mut().zip(q.iter_mut()).zip(row) {
                        let v = f64::from(v);
                        *s += v;
                        *q += v * v;
                    }
                }
                (s, q)
            })
            .reduce(
                || (vec![0.0; dim], vec![0.0; dim]),
                |(mut s, mut q), (s2, q2)| {
                    s.iter_mut().zip(s2).for_each(|(a, b)| *a += b);
                    q.iter_mut().zip(q2).for_each(|(a, b)| *a += b);
                    (s, q)
                },
            );
        let n = n.max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let scale = sum_sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let sd = (q / n - m * m).max(0.0).sqrt();
                if sd < CONSTANT { 1.0 } else { sd as f32 }
            })
            .collect();
        Self {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            scale,
        }
    }

    /// Standardises the rows of `x` in place.
    pub(crate) fn apply(&self, x: &mut [f32]) {
        let dim = self.mean.len();
        x.par_chunks_mut(dim).for_each(|row| {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) / s;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_columns_end_with_zero_mean_and_unit_deviation() {
        // Column 0: 1, 3 (mean 2, sd 1); column 1: 10, 30 (mean 20, sd 10); column 2 constant.
        let mut x = vec![1.0, 10.0, 5.0, 3.0, 30.0, 5.0];
        let s = Standardiser::fit(&x, 3);
        assert_eq!(s.mean, vec![2.0, 20.0, 5.0]);
        assert_eq!(s.scale, vec![1.0, 10.0, 1.0], "a constant column is not scaled");
        s.apply(&mut x);
        assert_eq!(x, vec![-1.0, -1.0, 0.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn test_rows_use_the_training_statistics() {
        let s = Standardiser::fit(&[0.0, 4.0], 1);
        let mut test = vec![6.0];
        s.apply(&mut test);
        assert_eq!(test, vec![2.0], "(6 − 2) / 2");
    }
}
