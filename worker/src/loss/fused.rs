//! One NCE direction (docs/model.md §3) as two loops over the products of
//! sources and targets: the forward gives the loss and the mean squared
//! score, the backward their gradient with respect to the products. The
//! tensor-op version in `nce` takes some twenty ops for the same, each a
//! pass over [n_src, n_trg·L] with its own buffer and backward node; on flex
//! that was about a tenth of a training step.
//!
//! Plain loops over typed slices, rows (sources) in parallel: no burn graph
//! here (`model::kernels` wraps them as a backend op with its gradient).
//! The tensor-op version stays the reference (tests below) and the path of
//! backends without native kernels.

use burn::tensor::Element;
use rayon::prelude::*;

/// Shape and constants of one direction's products `raw` [n_src, n_trg·L]:
/// raw score r = scale · raw, clipped score s = c·tanh(r / c); source i's
/// own image is target `own_offset + i`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NceGeometry {
    pub n_src: usize,
    pub n_trg: usize,
    pub locations: usize,
    pub own_offset: usize,
    /// 1/√D.
    pub scale: f64,
    /// c.
    pub tclip: f64,
}

impl NceGeometry {
    fn row(&self) -> usize {
        self.n_trg * self.locations
    }

    fn elements(&self) -> usize {
        self.n_src * self.row()
    }

    /// The positives of source i: the row's entries [start, start + L).
    fn own_start(&self, i: usize) -> usize {
        (self.own_offset + i) * self.locations
    }
}

/// c·tanh(r / c), through one exponential of a non-positive argument.
fn soft_clip(r: f64, c: f64) -> f64 {
    let e = (-2.0 * (r / c).abs()).exp();
    c * ((1.0 - e) / (1.0 + e)).copysign(r)
}

/// [mean over sources i and own locations l of ℓ_{i,l}, mean over every
/// entry of r²], and what the backward needs: the clipped scores s and
/// e = exp(s − m_i) of every entry (m_i the largest negative score of row
/// i, at least −c), as [s | e].
pub(crate) fn forward<E: Element>(raw: &[E], g: &NceGeometry) -> ([f64; 2], Vec<E>) {
    let (row, count) = (g.row(), g.elements());
    assert_eq!(raw.len(), count, "nce: {} products for {g:?}", raw.len());
    let mut saved: Vec<E> = vec![E::from_elem(0.0); 2 * count];
    let (s_all, e_all) = saved.split_at_mut(count);
    let sums: (f64, f64) = s_all
        .par_chunks_mut(row.max(1))
        .zip(e_all.par_chunks_mut(row.max(1)))
        .enumerate()
        .map(|(i, (s, e))| {
            let raw = &raw[i * row..(i + 1) * row];
            let own = g.own_start(i)..g.own_start(i) + g.locations;
            let (mut squares, mut max) = (0.0f64, -g.tclip);
            for (k, (s, &x)) in s.iter_mut().zip(raw).enumerate() {
                let r = g.scale * x.elem::<f64>();
                squares += r * r;
                let clipped = soft_clip(r, g.tclip);
                *s = E::from_elem(clipped);
                if !own.contains(&k) && clipped > max {
                    max = clipped;
                }
            }
            let mut negatives = 0.0f64;
            for (k, (e, &s)) in e.iter_mut().zip(s.iter()).enumerate() {
                let v = (s.elem::<f64>() - max).exp();
                *e = E::from_elem(v);
                if !own.contains(&k) {
                    negatives += v;
                }
            }
            // ℓ = log(exp(p) + N) − p with p = s_pos − m, N = Σ exp(s_neg − m).
            let losses: f64 = own
                .map(|k| {
                    let p = s[k].elem::<f64>() - max;
                    (p.exp() + negatives).ln() - p
                })
                .sum();
            (losses, squares)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let means = [sums.0 / (g.n_src * g.locations).max(1) as f64, sums.1 / count.max(1) as f64];
    (means, saved)
}

/// The gradient with respect to `raw` of d[0]·loss + d[1]·mean r², given
/// the forward's `saved` [s | e].
pub(crate) fn backward<E: Element>(raw: &[E], saved: &[E], g: &NceGeometry, d: [f64; 2]) -> Vec<E> {
    let (row, count) = (g.row(), g.elements());
    assert_eq!(saved.len(), 2 * count, "nce backward: {} saved values for {g:?}", saved.len());
    let (s_all, e_all) = saved.split_at(count);
    let per_term = d[0] / (g.n_src * g.locations).max(1) as f64;
    let per_square = d[1] * 2.0 / count.max(1) as f64;
    let mut grad: Vec<E> = vec![E::from_elem(0.0); count];
    grad.par_chunks_mut(row.max(1)).enumerate().for_each(|(i, out)| {
        let span = i * row..(i + 1) * row;
        let (raw, s, e) = (&raw[span.clone()], &s_all[span.clone()], &e_all[span]);
        let own = g.own_start(i)..g.own_start(i) + g.locations;
        let all: f64 = e.iter().map(|v| v.elem::<f64>()).sum();
        let negatives = all - own.clone().map(|k| e[k].elem::<f64>()).sum::<f64>();
        // ∂ℓ_l/∂s_neg = e / (e_pos_l + N); ∂ℓ_l/∂s_pos_l = −N / (e_pos_l + N).
        let inverse_denominators: f64 = own.clone().map(|k| 1.0 / (e[k].elem::<f64>() + negatives)).sum();
        for (k, o) in out.iter_mut().enumerate() {
            let d_s = if own.contains(&k) {
                -per_term * negatives / (e[k].elem::<f64>() + negatives)
            } else {
                per_term * e[k].elem::<f64>() * inverse_denominators
            };
            let (r, clipped) = (g.scale * raw[k].elem::<f64>(), s[k].elem::<f64>() / g.tclip);
            *o = E::from_elem(g.scale * (d_s * (1.0 - clipped * clipped) + per_square * r));
        }
    });
    grad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::nce::nce_scores;
    use crate::model::params::{scalar, to_vec};
    use amdim_shared::rng::{KeyedRng, Stream};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Tensor, TensorData};

    type AD = Autodiff<Flex>;

    /// The tensor-op direction's loss, mean r² (its regulariser at λ = 1)
    /// and gradient with respect to the products, for d = (1, 1).
    fn reference(raw: &[f32], g: &NceGeometry, d: usize) -> ([f64; 2], Vec<f32>) {
        // Products raw = src · trgᵀ with src the identity rows: trg holds raw.
        let (n, l) = (g.n_src, g.locations);
        let trg_rows = g.n_trg * l;
        let mut src = vec![0f32; n * d];
        let mut trg = vec![0f32; trg_rows * d];
        for i in 0..n {
            src[i * d + i] = 1.0;
            for t in 0..trg_rows {
                trg[t * d + i] = raw[i * trg_rows + t];
            }
        }
        let dev = Default::default();
        let src = Tensor::<AD, 2>::from_data(TensorData::new(src, [n, d]), &dev);
        let trg = Tensor::<AD, 2>::from_data(TensorData::new(trg, [trg_rows, d]), &dev).require_grad();
        let (s, reg) = nce_scores(src, trg.clone().reshape([g.n_trg, l, d]), g.own_offset, g.tclip, 1.0);
        let loss = s.mean().neg();
        let values = [f64::from(scalar(loss.clone())), f64::from(scalar(reg.clone()))];
        let grads = (loss + reg).backward();
        let g_trg = to_vec(trg.grad(&grads).expect("targets need a gradient"));
        let mut g_raw = vec![0f32; n * trg_rows];
        for i in 0..n {
            for t in 0..trg_rows {
                g_raw[i * trg_rows + t] = g_trg[t * d + i];
            }
        }
        (values, g_raw)
    }

    #[test]
    fn fused_direction_matches_the_tensor_ops_with_gradient() {
        let mut rng = KeyedRng::new(Stream::Synthetic, &[11]);
        // (n_src, n_trg, own_offset, L, score scale): one rank's sources
        // among gathered targets, scores past the clip, a single target.
        for (n_src, n_trg, off, l, spread) in [(4, 4, 0, 25, 3.0), (3, 7, 2, 49, 8.0), (5, 5, 0, 25, 40.0), (2, 3, 1, 1, 1.0)] {
            let d = 8;
            let g = NceGeometry {
                n_src,
                n_trg,
                locations: l,
                own_offset: off,
                scale: 1.0 / (d as f64).sqrt(),
                tclip: 20.0,
            };
            let raw: Vec<f32> = (0..g.elements()).map(|_| (rng.normal() * spread) as f32).collect();
            let (want, want_grad) = reference(&raw, &g, d);
            let (got, saved) = forward(&raw, &g);
            for (a, b) in got.iter().zip(want) {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{got:?} vs {want:?} for {g:?}");
            }
            let grad = backward(&raw, &saved, &g, [1.0, 1.0]);
            let worst = grad.iter().zip(&want_grad).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            let size = want_grad.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
            assert!(worst <= 1e-4 * size.max(1e-3), "gradient off by {worst} (largest {size}) for {g:?}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences_in_f64() {
        let mut rng = KeyedRng::new(Stream::Synthetic, &[12]);
        let g = NceGeometry {
            n_src: 3,
            n_trg: 5,
            locations: 4,
            own_offset: 1,
            scale: 0.5,
            tclip: 20.0,
        };
        let raw: Vec<f64> = (0..g.elements()).map(|_| rng.normal() * 30.0).collect();
        let d = [0.7, 0.3];
        let objective = |x: &[f64]| {
            let (m, _) = forward(x, &g);
            d[0] * m[0] + d[1] * m[1]
        };
        let (_, saved) = forward(&raw, &g);
        let grad = backward(&raw, &saved, &g, d);
        let h = 1e-6;
        for k in [0, 4, 5, 21, 33, 59] {
            let (mut a, mut b) = (raw.clone(), raw.clone());
            a[k] += h;
            b[k] -= h;
            let fd = (objective(&a) - objective(&b)) / (2.0 * h);
            assert!((fd - grad[k]).abs() <= 1e-7 + 1e-5 * fd.abs(), "raw[{k}]: fd {fd} vs {}", grad[k]);
        }
    }
}
