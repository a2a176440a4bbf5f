//! The multiscale NCE loss of docs/model.md §3.
//!
//! [`nce_scores`] is one direction source→target: raw scores u·v/√D, the
//! regulariser λ·mean(s²) before clipping, the soft clip c·tanh(s/c), and the
//! per-(source, own location) log-softmax against all locations of all other
//! images, shifted by the maximum over the negatives. [`multiscale_nce`]
//! combines the 1→5, 1→7 and 5→5 tasks in both directions. Targets may come
//! from more images than sources (gathered across ranks); `own_offset` says
//! where this rank's images start among them.

use crate::loss::fused::NceGeometry;
use crate::model::kernels::Kernels;
use crate::model::layers::tanh_clip;
use amdim_shared::spec::LossSpec;
use burn::tensor::{
    Int, Tensor, TensorCreationOptions, TensorData,
    activation::{log_softmax, softmax},
    backend::Backend,
};

/// Log-softmax NCE scores [n_src, L] and the λ-weighted regulariser.
pub fn nce_scores<B: Kernels>(
    src: Tensor<B, 2>,
    trg: Tensor<B, 3>,
    own_offset: usize,
    tclip: f64,
    reg_lambda: f64,
) -> (Tensor<B, 2>, Tensor<B, 1>) {
    let [n_trg, l, d] = trg.dims();
    let [n_src, _] = src.dims();
    let device = src.device();
    let src_dtype = src.dtype();
    let raw = B::matmul_t(src, trg.reshape([n_trg * l, d])).div_scalar((d as f64).sqrt());
    let reg = raw.clone().square().mean().mul_scalar(reg_lambda);
    let s = tanh_clip(raw, tclip).reshape([n_src, n_trg, l]);
    let mut mask = vec![0f32; n_src * n_trg];
    for i in 0..n_src {
        mask[i * n_trg + own_offset + i] = 1.0;
    }
    let options = TensorCreationOptions::new(device).with_dtype(src_dtype);
    let pos_mask = Tensor::<B, 3>::from_data(TensorData::new(mask, [n_src, n_trg, 1]), options);
    let neg_mask = pos_mask.clone().neg().add_scalar(1.0);
    let pos = (s.clone() * pos_mask.clone()).sum_dim(1).reshape([n_src, l]);
    let neg = s * neg_mask.clone() - pos_mask.mul_scalar(tclip);
    let max = neg.clone().reshape([n_src, n_trg * l]).max_dim(1).detach();
    let neg_sumexp = ((neg - max.clone().reshape([n_src, 1, 1])).exp() * neg_mask)
        .sum_dim(2)
        .sum_dim(1)
        .reshape([n_src, 1]);
    let pos_shift = pos - max;
    let lse = (pos_shift.clone().exp() + neg_sumexp).log();
    (pos_shift - lse, reg)
}

/// Mixture objective over k components' NCE scores (each [n_src, L]):
/// −mean_t[ Σ_j q(j|t)·s(j,t) + α·H(q(·|t)) ], q = softmax_j(τ·s).
pub fn mixture_loss<B: Backend>(scores: Vec<Tensor<B, 2>>, tau: f64, alpha: f64) -> Tensor<B, 1> {
    let s: Tensor<B, 3> = Tensor::stack(scores, 0);
    let logits = s.clone().mul_scalar(tau);
    let q = softmax(logits.clone(), 0);
    let log_q = log_softmax(logits, 0);
    let entropy = (q.clone() * log_q).sum_dim(0).neg();
    ((q * s).sum_dim(0) + entropy.mul_scalar(alpha)).mean().neg()
}

/// One view's sources: r1 [n, D] (or its k mixture features) and the r5
/// vectors at each image's chosen 5×5 location [n, D].
pub struct Sources<B: Backend> {
    pub r1: Vec<Tensor<B, 2>>,
    pub r5: Tensor<B, 2>,
}

/// One view's targets: r5 as [n_trg, 25, D] and r7 as [n_trg, 49, D].
pub struct Targets<B: Backend> {
    pub r5: Tensor<B, 3>,
    pub r7: Tensor<B, 3>,
}

/// Per-term values of the objective (each a one-element tensor).
pub struct NceLoss<B: Backend> {
    pub total: Tensor<B, 1>,
    pub l1t5: Tensor<B, 1>,
    pub l1t7: Tensor<B, 1>,
    pub l5t5: Tensor<B, 1>,
    /// 0.5 · sum of the directions' regularisers.
    pub reg: Tensor<B, 1>,
}

/// The r5 vector [n, 25, D] of each image at its location (index row·5 + col) → [n, D].
pub fn select_locations<B: Backend>(r5: Tensor<B, 3>, locations: &[usize]) -> Tensor<B, 2> {
    let [n, l, d] = r5.dims();
    let idx: Vec<i64> = locations.iter().enumerate().map(|(i, &loc)| (i * l + loc) as i64).collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &r5.device());
    r5.reshape([n * l, d]).select(0, idx)
}

fn direction<B: Kernels>(src: &[Tensor<B, 2>], trg: &Tensor<B, 3>, own_offset: usize, cfg: &LossSpec) -> (Tensor<B, 1>, Tensor<B, 1>) {
    if src.len() == 1 && B::NATIVE {
        let ([n_trg, locations, d], [n_src, _]) = (trg.dims(), src[0].dims());
        let raw = B::matmul_t(src[0].clone(), trg.clone().reshape([n_trg * locations, d]));
        let geometry = NceGeometry {
            n_src,
            n_trg,
            locations,
            own_offset,
            scale: 1.0 / (d as f64).sqrt(),
            tclip: cfg.tclip,
        };
        let means = B::nce_direction(raw, geometry);
        return (means.clone().narrow(0, 0, 1), means.narrow(0, 1, 1).mul_scalar(cfg.reg_lambda));
    }
    if src.len() == 1 {
        let (s, reg) = nce_scores(src[0].clone(), trg.clone(), own_offset, cfg.tclip, cfg.reg_lambda);
        return (s.mean().neg(), reg);
    }
    let mut scores = Vec::with_capacity(src.len());
    let mut regs = Vec::with_capacity(src.len());
    for component in src {
        let (s, reg) = nce_scores(component.clone(), trg.clone(), own_offset, cfg.tclip, cfg.reg_lambda);
        scores.push(s);
        regs.push(reg);
    }
    let k = regs.len() as f64;
    let reg = regs.into_iter().reduce(|a, b| a + b).map(|r| r.div_scalar(k));
    let no_reg = || Tensor::zeros([1], TensorCreationOptions::new(trg.device()).with_dtype(trg.dtype()));
    (mixture_loss(scores, cfg.mixture.tau, cfg.mixture.alpha), reg.unwrap_or_else(no_reg))
}

/// The full objective L_1t5 + L_1t7 + L_5t5 + 0.5·Σ reg over both directions
/// (view 1 → view 2 and view 2 → view 1). Tasks switched off count as zero.
pub fn multiscale_nce<B: Kernels>(sources: [&Sources<B>; 2], targets: [&Targets<B>; 2], own_offset: usize, cfg: &LossSpec) -> NceLoss<B> {
    let options = TensorCreationOptions::new(sources[0].r5.device()).with_dtype(sources[0].r5.dtype());
    let zero = || Tensor::<B, 1>::zeros([1], options.clone());
    let mut reg = zero();
    let mut task = |on: bool, pick: &dyn Fn(usize, usize) -> (Tensor<B, 1>, Tensor<B, 1>)| {
        if !on {
            return zero();
        }
        let (l12, r12) = pick(0, 1);
        let (l21, r21) = pick(1, 0);
        reg = reg.clone() + (r12 + r21).mul_scalar(0.5);
        (l12 + l21).mul_scalar(0.5)
    };
    let l1t5 = task(cfg.task_1t5, &|a, b| direction(&sources[a].r1, &targets[b].r5, own_offset, cfg));
    let l1t7 = task(cfg.task_1t7, &|a, b| direction(&sources[a].r1, &targets[b].r7, own_offset, cfg));
    let l5t5 = task(cfg.task_5t5, &|a, b| {
        direction(std::slice::from_ref(&sources[a].r5), &targets[b].r5, own_offset, cfg)
    });
    let total = l1t5.clone() + l1t7.clone() + l5t5.clone() + reg.clone();
    NceLoss {
        total,
        l1t5,
        l1t7,
        l5t5,
        reg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::{scalar, to_vec};
    use amdim_shared::rng::{KeyedRng, Stream};
    use burn::backend::{Autodiff, Flex};

    type B = Flex;

    fn random(rng: &mut KeyedRng, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| rng.normal() * scale).collect()
    }

    /// Deliberately naive f64 reference of one direction: plain loops.
    #[allow(clippy::too_many_arguments)]
    fn naive_direction(
        src: &[f64],
        trg: &[f64],
        n_src: usize,
        n_trg: usize,
        l: usize,
        d: usize,
        off: usize,
        tclip: f64,
        lambda: f64,
    ) -> (f64, f64) {
        let mut raw = vec![0.0; n_src * n_trg * l];
        for i in 0..n_src {
            for j in 0..n_trg {
                for loc in 0..l {
                    let mut dot = 0.0;
                    for k in 0..d {
                        dot += src[i * d + k] * trg[(j * l + loc) * d + k];
                    }
                    raw[(i * n_trg + j) * l + loc] = dot / (d as f64).sqrt();
                }
            }
        }
        let reg = lambda * raw.iter().map(|s| s * s).sum::<f64>() / raw.len() as f64;
        let clipped: Vec<f64> = raw.iter().map(|s| tclip * (s / tclip).tanh()).collect();
        let mut total = 0.0;
        for i in 0..n_src {
            let me = off + i;
            for loc in 0..l {
                let pos = clipped[(i * n_trg + me) * l + loc];
                let mut denom = pos.exp();
                for j in 0..n_trg {
                    if j == me {
                        continue;
                    }
                    for l2 in 0..l {
                        denom += clipped[(i * n_trg + j) * l + l2].exp();
                    }
                }
                total += -(pos.exp() / denom).ln();
            }
        }
        (total / (n_src * l) as f64, reg)
    }

    fn tensor2<Bk: Backend>(v: &[f64], shape: [usize; 2]) -> Tensor<Bk, 2> {
        Tensor::from_data(
            TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), shape),
            &Default::default(),
        )
    }

    fn tensor3<Bk: Backend>(v: &[f64], shape: [usize; 3]) -> Tensor<Bk, 3> {
        Tensor::from_data(
            TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), shape),
            &Default::default(),
        )
    }

    #[test]
    fn one_direction_matches_naive_f64_reference() {
        let mut rng = KeyedRng::new(Stream::Synthetic, &[1]);
        for (n_src, n_trg, off, l, d, scale) in [(4, 4, 0, 25, 16, 1.0), (3, 7, 2, 49, 8, 3.0), (5, 5, 0, 25, 32, 8.0)] {
            let src = random(&mut rng, n_src * d, scale);
            let trg = random(&mut rng, n_trg * l * d, scale);
            let (expect_loss, expect_reg) = naive_direction(&src, &trg, n_src, n_trg, l, d, off, 20.0, 4e-2);
            let (s, reg) = nce_scores(tensor2::<B>(&src, [n_src, d]), tensor3::<B>(&trg, [n_trg, l, d]), off, 20.0, 4e-2);
            let loss = -scalar(s.mean()) as f64;
            let reg = scalar(reg) as f64;
            assert!(
                (loss - expect_loss).abs() <= 1e-4 * expect_loss.abs().max(1.0),
                "loss {loss} vs {expect_loss}"
            );
            assert!((reg - expect_reg).abs() <= 1e-4 * expect_reg.abs(), "reg {reg} vs {expect_reg}");
        }
    }

    #[test]
    fn extreme_scores_stay_finite() {
        let mut rng = KeyedRng::new(Stream::Synthetic, &[2]);
        let (n, l, d) = (4, 25, 8);
        let src = random(&mut rng, n * d, 300.0);
        let trg = random(&mut rng, n * l * d, 300.0);
        let (s, _) = nce_scores(tensor2::<B>(&src, [n, d]), tensor3::<B>(&trg, [n, l, d]), 0, 20.0, 4e-2);
        assert!(to_vec(s).iter().all(|v| v.is_finite()));
    }

    #[test]
    fn mixture_with_one_component_is_the_plain_loss_exactly() {
        let mut rng = KeyedRng::new(Stream::Synthetic, &[3]);
        let (n, l, d) = (6, 49, 16);
        let src = tensor2::<B>(&random(&mut rng, n * d, 2.0), [n, d]);
        let trg = tensor3::<B>(&random(&mut rng, n * l * d, 2.0), [n, l, d]);
        let (s, _) = nce_scores(src, trg, 0, 20.0, 4e-2);
        let plain = scalar(s.clone().mean().neg());
        let mixed = scalar(mixture_loss(vec![s], 0.1, 0.05));
        assert_eq!(plain.to_bits(), mixed.to_bits(), "{plain} vs {mixed}");
    }

    #[test]
    fn mixture_entropy_bonus_lowers_loss_of_tied_components() {
        let mut rng = KeyedRng::new(Stream::Synthetic, &[4]);
        let (n, l, d) = (4, 25, 8);
        let src = tensor2::<B>(&random(&mut rng, n * d, 1.0), [n, d]);
        let trg = tensor3::<B>(&random(&mut rng, n * l * d, 1.0), [n, l, d]);
        let (s, _) = nce_scores(src, trg, 0, 20.0, 4e-2);
        let plain = scalar(s.clone().mean().neg());
        let two = scalar(mixture_loss(vec![s.clone(), s], 1.0, 0.5));
        // Two identical components: q = 1/2 each, H = ln 2.
        assert!((two - (plain - 0.5 * std::f32::consts::LN_2)).abs() < 1e-5, "{two} vs {plain}");
    }

    /// A feature map [n, D, S, S] as targets [n, S·S, D] (location = row·S + col).
    fn as_targets<Bk: Backend>(map: Tensor<Bk, 4>) -> Tensor<Bk, 3> {
        let [n, d, h, w] = map.dims();
        map.reshape([n, d, h * w]).swap_dims(1, 2)
    }

    fn full_loss<Bk: Kernels>(r1: [Tensor<Bk, 2>; 2], r5: [Tensor<Bk, 4>; 2], r7: [Tensor<Bk, 4>; 2], locs: [&[usize]; 2]) -> NceLoss<Bk> {
        let sources: Vec<Sources<Bk>> = (0..2)
            .map(|v| Sources {
                r1: vec![r1[v].clone()],
                r5: select_locations(as_targets(r5[v].clone()), locs[v]),
            })
            .collect();
        let targets: Vec<Targets<Bk>> = (0..2)
            .map(|v| Targets {
                r5: as_targets(r5[v].clone()),
                r7: as_targets(r7[v].clone()),
            })
            .collect();
        multiscale_nce([&sources[0], &sources[1]], [&targets[0], &targets[1]], 0, &LossSpec::default())
    }

    #[test]
    fn loss_is_invariant_to_permuting_the_batch_with_its_locations() {
        let mut rng = KeyedRng::new(Stream::Synthetic, &[5]);
        let (n, d) = (5, 12);
        let dev = Default::default();
        let mk = |rng: &mut KeyedRng, shape: [usize; 4]| {
            Tensor::<B, 4>::from_data(
                TensorData::new(
                    random(rng, shape.iter().product(), 1.5)
                        .iter()
                        .map(|&x| x as f32)
                        .collect::<Vec<f32>>(),
                    shape,
                ),
                &dev,
            )
        };
        let r1: [Tensor<B, 4>; 2] = [mk(&mut rng, [n, d, 1, 1]), mk(&mut rng, [n, d, 1, 1])];
        let r5 = [mk(&mut rng, [n, d, 5, 5]), mk(&mut rng, [n, d, 5, 5])];
        let r7 = [mk(&mut rng, [n, d, 7, 7]), mk(&mut rng, [n, d, 7, 7])];
        let locs1 = [3usize, 24, 0, 12, 7];
        let locs2 = [9usize, 1, 18, 12, 4];
        let flat = |t: &Tensor<B, 4>| t.clone().reshape([n, d]);
        let base = full_loss([flat(&r1[0]), flat(&r1[1])], r5.clone(), r7.clone(), [&locs1, &locs2]);
        let perm = [3usize, 0, 4, 1, 2];
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(perm.iter().map(|&p| p as i64).collect::<Vec<i64>>(), [n]), &dev);
        let p = |t: &Tensor<B, 4>| t.clone().select(0, idx.clone());
        let pl1: Vec<usize> = perm.iter().map(|&i| locs1[i]).collect();
        let pl2: Vec<usize> = perm.iter().map(|&i| locs2[i]).collect();
        let permuted = full_loss(
            [flat(&p(&r1[0])), flat(&p(&r1[1]))],
            [p(&r5[0]), p(&r5[1])],
            [p(&r7[0]), p(&r7[1])],
            [&pl1, &pl2],
        );
        let permuted_l5t5 = scalar(permuted.l5t5.clone());
        for (a, b) in [(base.total, permuted.total), (base.l5t5, permuted.l5t5), (base.reg, permuted.reg)] {
            let (a, b) = (scalar(a), scalar(b));
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
        // Different locations do change the 5→5 term (the test can fail).
        let shifted: Vec<usize> = locs1.iter().map(|l| (l + 1) % 25).collect();
        let other = full_loss([flat(&r1[0]), flat(&r1[1])], r5, r7, [&shifted, &locs2]);
        assert!((scalar(other.l5t5) - permuted_l5t5).abs() > 1e-4);
    }

    #[test]
    fn gradient_matches_finite_differences_in_f64() {
        type B64 = Flex;
        type AD = Autodiff<B64>;
        let f64_on = |dev: &burn::backend::flex::FlexDevice| TensorCreationOptions::new(*dev).with_dtype(burn::tensor::DType::F64);
        let mut rng = KeyedRng::new(Stream::Synthetic, &[6]);
        let (n, l, d) = (3, 25, 6);
        let src_v = random(&mut rng, n * d, 2.0);
        let trg_v = random(&mut rng, n * l * d, 2.0);
        let dev = Default::default();
        let f = |src: &[f64], trg: &[f64]| -> f64 {
            let s = Tensor::<B64, 2>::from_data(TensorData::new(src.to_vec(), [n, d]), f64_on(&dev));
            let t = Tensor::<B64, 3>::from_data(TensorData::new(trg.to_vec(), [n, l, d]), f64_on(&dev));
            let (sc, reg) = nce_scores(s, t, 0, 20.0, 4e-2);
            let v = (sc.mean().neg() + reg).into_data().convert::<f64>().into_vec::<f64>().unwrap();
            v[0]
        };
        let s = Tensor::<AD, 2>::from_data(
            TensorData::new(src_v.clone(), [n, d]),
            TensorCreationOptions::new(dev).with_dtype(burn::tensor::DType::F64),
        )
        .require_grad();
        let t = Tensor::<AD, 3>::from_data(
            TensorData::new(trg_v.clone(), [n, l, d]),
            TensorCreationOptions::new(dev).with_dtype(burn::tensor::DType::F64),
        )
        .require_grad();
        assert_eq!(s.dtype(), burn::tensor::DType::F64);
        let (sc, reg) = nce_scores(s.clone(), t.clone(), 0, 20.0, 4e-2);
        let grads = (sc.mean().neg() + reg).backward();
        let gs: Vec<f64> = s.grad(&grads).unwrap().into_data().convert::<f64>().into_vec().unwrap();
        let gt: Vec<f64> = t.grad(&grads).unwrap().into_data().convert::<f64>().into_vec().unwrap();
        let h = 1e-6;
        for k in [0, 5, 11, 17] {
            let (mut a, mut b) = (src_v.clone(), src_v.clone());
            a[k] += h;
            b[k] -= h;
            let fd = (f(&a, &trg_v) - f(&b, &trg_v)) / (2.0 * h);
            assert!((fd - gs[k]).abs() <= 1e-6 + 1e-5 * fd.abs(), "src[{k}]: fd {fd} vs {}", gs[k]);
        }
        for k in [0, 40, 149, 301, 449] {
            let (mut a, mut b) = (trg_v.clone(), trg_v.clone());
            a[k] += h;
            b[k] -= h;
            let fd = (f(&src_v, &a) - f(&src_v, &b)) / (2.0 * h);
            assert!((fd - gt[k]).abs() <= 1e-6 + 1e-5 * fd.abs(), "trg[{k}]: fd {fd} vs {}", gt[k]);
        }
    }
}
