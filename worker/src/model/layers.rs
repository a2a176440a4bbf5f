//! Small differentiable building blocks written for speed on burn 0.21.
//!
//! Owns convolution, BatchNorm, the soft clip and linear layers as pure
//! functions of tensors. Feature maps are channels-last [N, H, W, C] and
//! contiguous from the stem to the heads, so a 1×1 convolution is one matrix
//! product on [N·H·W, C] without any copy, and BatchNorm is a per-column
//! normalisation of that matrix (flex's fast row-broadcast path). `tanh` is
//! 2·σ(2x)−1 (flex's tanh is ~2× slower). Nothing here knows parameter names
//! or files.

use crate::model::kernels::Kernels;
use burn::tensor::{Tensor, activation::sigmoid, backend::Backend};

pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// Unpadded convolution of a channels-last map [N, H, W, cin] with the
/// weight matrix of [`Kernels::conv_weight_matrix`]: one matrix product over the whole
/// batch (flex's own conv runs one small GEMM per image and converts layouts).
pub fn conv<B: Kernels>(x: Tensor<B, 4>, weight: Tensor<B, 2>, bias: Option<&Tensor<B, 1>>, kernel: usize, stride: usize) -> Tensor<B, 4> {
    let [n, h, w, cin] = x.dims();
    let [cout, _] = weight.dims();
    let (ho, wo) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
    let cols = if kernel == 1 && stride == 1 {
        x.reshape([n * h * w, cin])
    } else {
        B::im2col(x, kernel, stride)
    };
    let y = B::matmul_t(cols, weight);
    let y = match bias {
        Some(bias) => y + bias.clone().reshape([1, cout]),
        None => y,
    };
    y.reshape([n, ho, wo, cout])
}

/// tanh through the sigmoid: tanh(x) = 2·σ(2x) − 1.
pub fn fast_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    sigmoid(x.mul_scalar(2.0)).mul_scalar(2.0).sub_scalar(1.0)
}

/// Soft clip c·tanh(x / c).
pub fn tanh_clip<B: Backend, const D: usize>(x: Tensor<B, D>, clip: f64) -> Tensor<B, D> {
    fast_tanh(x.div_scalar(clip)).mul_scalar(clip)
}

/// x·Wᵀ + b with W stored flat as PyTorch's [out, in].
pub fn linear<B: Kernels>(x: Tensor<B, 2>, weight: &Tensor<B, 1>, bias: Option<&Tensor<B, 1>>, n_in: usize, n_out: usize) -> Tensor<B, 2> {
    let y = B::matmul_t(x, weight.clone().reshape([n_out, n_in]));
    match bias {
        Some(b) => y + b.clone().reshape([1, n_out]),
        None => y,
    }
}

/// Batch statistics of one BatchNorm call, detached: mean and unbiased variance.
pub struct BatchStats<B: Backend> {
    pub mean: Tensor<B, 1>,
    pub var_unbiased: Tensor<B, 1>,
}

/// BatchNorm of x [M, C] over its rows (M = N·H·W of a channels-last map).
///
/// `running` = Some((mean, var)) uses those statistics (eval mode); None uses
/// the batch's (biased variance, as PyTorch) and returns them for the
/// running-average update.
pub fn batch_norm<B: Backend>(
    x: Tensor<B, 2>,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    running: Option<(&Tensor<B, 1>, &Tensor<B, 1>)>,
) -> (Tensor<B, 2>, Option<BatchStats<B>>) {
    let [m, c] = x.dims();
    let gamma = weight.clone().reshape([1, c]);
    let beta = bias.clone().reshape([1, c]);
    match running {
        Some((mean, var)) => {
            let scale = gamma * var.clone().reshape([1, c]).add_scalar(BN_EPS).sqrt().recip();
            let shift = beta - mean.clone().reshape([1, c]) * scale.clone();
            (x * scale + shift, None)
        }
        None => {
            let mean = x.clone().mean_dim(0);
            let centered = x - mean.clone();
            let var = centered.clone().square().mean_dim(0);
            let scale = gamma * var.clone().add_scalar(BN_EPS).sqrt().recip();
            let y = centered * scale + beta;
            let unbias = if m > 1 { m as f64 / (m as f64 - 1.0) } else { 1.0 };
            let stats = BatchStats {
                mean: mean.detach().reshape([c]),
                var_unbiased: var.detach().mul_scalar(unbias).reshape([c]),
            };
            (y, Some(stats))
        }
    }
}

/// Sums a per-channel vector over every rank of the world (differentiably).
pub type RankSum<'a, B> = dyn Fn(Tensor<B, 1>) -> Tensor<B, 1> + 'a;

/// Training-mode BatchNorm of x [M, C] with statistics over the rows of all
/// ranks: the per-channel sums (and the row count) go through `rank_sum`,
/// so the whole global batch is normalised as one. Returns the statistics
/// (global mean, unbiased variance) for the running averages.
pub fn sync_batch_norm<B: Backend>(
    x: Tensor<B, 2>,
    weight: &Tensor<B, 1>,
    bias: &Tensor<B, 1>,
    rank_sum: &RankSum<'_, B>,
) -> (Tensor<B, 2>, BatchStats<B>) {
    let [m, c] = x.dims();
    let options = burn::tensor::TensorCreationOptions::new(x.device()).with_dtype(x.dtype());
    let rows = Tensor::<B, 1>::full([1], m as f64, options);
    let sums = rank_sum(Tensor::cat(vec![x.clone().sum_dim(0).reshape([c]), rows], 0));
    let total = sums.clone().narrow(0, c, 1).detach();
    let mean = sums.narrow(0, 0, c).div(total.clone());
    let centered = x - mean.clone().reshape([1, c]);
    let var = rank_sum(centered.clone().square().sum_dim(0).reshape([c])).div(total.clone());
    let scale = weight.clone() * var.clone().add_scalar(BN_EPS).sqrt().recip();
    let y = centered * scale.reshape([1, c]) + bias.clone().reshape([1, c]);
    // Unbiased: var · M / (M − 1), M the global row count.
    let unbias = total.clone().div(total.sub_scalar(1.0).clamp_min(1.0));
    let stats = BatchStats {
        mean: mean.detach(),
        var_unbiased: (var.detach() * unbias).reshape([c]),
    };
    (y, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tolerance};

    type B = Flex;

    #[test]
    fn channels_last_batch_norm_matches_textbook_formula() {
        let dev = Default::default();
        let x = Tensor::<B, 4>::random([3, 4, 5, 5], Distribution::Normal(1.0, 2.0), &dev);
        let w = Tensor::<B, 1>::random([4], Distribution::Uniform(0.5, 1.5), &dev);
        let b = Tensor::<B, 1>::random([4], Distribution::Uniform(-1.0, 1.0), &dev);
        let rows = x.clone().permute([0, 2, 3, 1]).reshape([75, 4]);
        let (y, stats) = batch_norm(rows, &w, &b, None);
        let y = y.reshape([3, 5, 5, 4]).permute([0, 3, 1, 2]);
        let mean = x.clone().mean_dim(0).mean_dim(2).mean_dim(3);
        let var = (x.clone() - mean.clone()).square().mean_dim(0).mean_dim(2).mean_dim(3);
        let expect = (x - mean.clone()) / (var.clone() + BN_EPS).sqrt() * w.clone().reshape([1, 4, 1, 1]) + b.clone().reshape([1, 4, 1, 1]);
        y.into_data()
            .assert_approx_eq::<f32>(&expect.into_data(), Tolerance::rel_abs(1e-4, 1e-5));
        let stats = stats.unwrap();
        stats
            .mean
            .into_data()
            .assert_approx_eq::<f32>(&mean.reshape([4]).into_data(), Tolerance::rel_abs(1e-5, 1e-6));
        let unbiased = var.reshape([4]).mul_scalar(75.0 / 74.0);
        stats
            .var_unbiased
            .into_data()
            .assert_approx_eq::<f32>(&unbiased.into_data(), Tolerance::rel_abs(1e-4, 1e-6));
    }

    #[test]
    fn synchronised_batch_norm_of_one_rank_is_batch_norm() {
        let dev = Default::default();
        let x = Tensor::<B, 2>::random([40, 6], Distribution::Normal(0.5, 2.0), &dev);
        let w = Tensor::<B, 1>::random([6], Distribution::Uniform(0.5, 1.5), &dev);
        let b = Tensor::<B, 1>::random([6], Distribution::Uniform(-1.0, 1.0), &dev);
        let (y, stats) = batch_norm(x.clone(), &w, &b, None);
        let stats = stats.unwrap();
        // A world of one rank: the sum over ranks is the identity.
        let (ys, sync) = sync_batch_norm(x, &w, &b, &|t| t);
        ys.into_data()
            .assert_approx_eq::<f32>(&y.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
        sync.mean
            .into_data()
            .assert_approx_eq::<f32>(&stats.mean.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
        sync.var_unbiased
            .into_data()
            .assert_approx_eq::<f32>(&stats.var_unbiased.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
    }

    #[test]
    fn channels_last_convolution_and_pooling_match_burns_ops() {
        use burn::tensor::module::{avg_pool2d, conv2d};
        use burn::tensor::ops::ConvOptions;
        let dev = Default::default();
        for (cin, cout, hw, k, s) in [(3, 5, 9, 3, 1), (4, 6, 10, 4, 2), (6, 6, 8, 2, 2), (5, 7, 6, 1, 1)] {
            let x = Tensor::<B, 4>::random([2, cin, hw, hw], Distribution::Normal(0.0, 1.0), &dev);
            let w = Tensor::<B, 1>::random([cout * cin * k * k], Distribution::Normal(0.0, 1.0), &dev);
            let bias = Tensor::<B, 1>::random([cout], Distribution::Normal(0.0, 1.0), &dev);
            let expect = conv2d(
                x.clone(),
                w.clone().reshape([cout, cin, k, k]),
                Some(bias.clone()),
                ConvOptions::new([s, s], [0, 0], [1, 1], 1),
            );
            let nhwc = x.clone().permute([0, 2, 3, 1]);
            let got = conv(nhwc.clone(), B::conv_weight_matrix(w.clone(), cin, cout, k), Some(&bias), k, s);
            got.permute([0, 3, 1, 2])
                .into_data()
                .assert_approx_eq::<f32>(&expect.into_data(), Tolerance::rel_abs(1e-4, 1e-4));
            if k > 1 {
                let expect = avg_pool2d(x.clone(), [k, k], [s, s], [0, 0], true, false);
                <B as Kernels>::avg_pool(nhwc, k, s)
                    .permute([0, 3, 1, 2])
                    .into_data()
                    .assert_approx_eq::<f32>(&expect.into_data(), Tolerance::rel_abs(1e-5, 1e-5));
            }
        }
    }

    #[test]
    fn fast_tanh_matches_tanh() {
        let dev = Default::default();
        let x = Tensor::<B, 1>::random([1000], Distribution::Uniform(-30.0, 30.0), &dev);
        fast_tanh(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&x.tanh().into_data(), Tolerance::rel_abs(1e-5, 1e-6));
    }
}
