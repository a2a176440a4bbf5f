//! Forward passes: the encoder of docs/model.md §2 with its two embedding heads, the
//! online classifiers of docs/model.md §4 and the mixture map of docs/model.md §3.
//!
//! Generic over the backend, so the same code runs with autodiff (training)
//! and without (evaluation, BN refresh, `embed`). BatchNorm statistics of a
//! training-mode pass are collected in [`BnStats`] and applied by the caller;
//! this module never mutates the parameter store.
//!
//! Images come in as NCHW (PyTorch's layout); inside, every map is
//! channels-last [N, H, W, C] (see `layers`), and r5/r7 leave as [N, L, D]
//! with location index row·S + column, which is what the loss consumes.

use crate::model::kernels::Kernels;
use crate::model::layers::{BatchStats, RankSum, batch_norm, conv, linear, sync_batch_norm};
use crate::model::plan::{Bn, ClassifierPlan, Conv, EncoderPlan, Head, Layer, MixturePlan, ResUnit};
use burn::tensor::{Tensor, activation::relu, backend::Backend};
use std::cell::RefCell;
use std::collections::HashMap;

/// Whether BatchNorm uses batch statistics (training) or running ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    Train,
    Eval,
}

/// Batch statistics gathered during training-mode passes, in call order.
pub struct BnStats<B: Backend> {
    pub updates: Vec<(Bn, BatchStats<B>)>,
}

impl<B: Backend> Default for BnStats<B> {
    fn default() -> Self {
        Self { updates: Vec::new() }
    }
}

/// r1 [B, D]; r5 [B, 25, D] and r7 [B, 49, D] (location-major, channels last).
pub struct Embeddings<B: Backend> {
    pub r1: Tensor<B, 2>,
    pub r5: Tensor<B, 3>,
    pub r7: Tensor<B, 3>,
}

/// A location-major map [N, S·S, D] as PyTorch's NCHW [N, D, S, S] (a view).
pub fn to_nchw<B: Backend>(map: Tensor<B, 3>) -> Tensor<B, 4> {
    let [n, l, d] = map.dims();
    let side = (l as f64).sqrt().round() as usize;
    map.swap_dims(1, 2).reshape([n, d, side, side])
}

/// Read access to the model's tensors for one forward pass.
///
/// One `Forward` may encode several batches (the two views of a step): the
/// conv weights rearranged for im2col are computed once and reused.
pub struct Forward<'a, B: Backend> {
    pub params: &'a [Tensor<B, 1>],
    pub mode: BnMode,
    pub stats: BnStats<B>,
    /// Set for synchronised BatchNorm: sums a per-channel vector over ranks.
    rank_sum: Option<&'a RankSum<'a, B>>,
    /// Views stacked in the batch being encoded: BatchNorm takes its
    /// statistics over each view's rows apart.
    views: usize,
    weight_matrices: RefCell<HashMap<usize, Tensor<B, 2>>>,
}

impl<'a, B: Kernels> Forward<'a, B> {
    pub fn new(params: &'a [Tensor<B, 1>], mode: BnMode) -> Self {
        Self {
            params,
            mode,
            stats: BnStats::default(),
            rank_sum: None,
            views: 1,
            weight_matrices: RefCell::new(HashMap::new()),
        }
    }

    /// With `Some`, training-mode BatchNorm takes its statistics over all ranks.
    pub fn with_sync_bn(mut self, rank_sum: Option<&'a RankSum<'a, B>>) -> Self {
        self.rank_sum = rank_sum;
        self
    }

    fn conv(&self, x: Tensor<B, 4>, c: &Conv) -> Tensor<B, 4> {
        let weight = self
            .weight_matrices
            .borrow_mut()
            .entry(c.weight)
            .or_insert_with(|| B::conv_weight_matrix(self.params[c.weight].clone(), c.cin, c.cout, c.kernel))
            .clone();
        conv(x, weight, c.bias.map(|b| &self.params[b]), c.kernel, c.stride)
    }

    /// BatchNorm of a channels-last map.
    fn bn(&mut self, x: Tensor<B, 4>, bn: &Bn) -> Tensor<B, 4> {
        let [n, h, w, c] = x.dims();
        self.bn_rows(x.reshape([n * h * w, c]), bn).reshape([n, h, w, c])
    }

    /// BatchNorm of rows [M, C]; with several views stacked, each view's
    /// rows (a contiguous block) get their own statistics.
    fn bn_rows(&mut self, x: Tensor<B, 2>, bn: &Bn) -> Tensor<B, 2> {
        if self.views == 1 {
            return self.bn_rows_of_one_view(x, bn);
        }
        let parts = x.chunk(self.views, 0);
        let normalised = parts.into_iter().map(|part| self.bn_rows_of_one_view(part, bn)).collect();
        Tensor::cat(normalised, 0)
    }

    fn bn_rows_of_one_view(&mut self, x: Tensor<B, 2>, bn: &Bn) -> Tensor<B, 2> {
        let p = self.params;
        match (self.mode, self.rank_sum) {
            (BnMode::Eval, _) => batch_norm(x, &p[bn.weight], &p[bn.bias], Some((&p[bn.running_mean], &p[bn.running_var]))).0,
            (BnMode::Train, Some(sum)) => {
                let (y, stats) = sync_batch_norm(x, &p[bn.weight], &p[bn.bias], sum);
                self.stats.updates.push((bn.clone(), stats));
                y
            }
            (BnMode::Train, None) => {
                let (y, stats) = batch_norm(x, &p[bn.weight], &p[bn.bias], None);
                if let Some(s) = stats {
                    self.stats.updates.push((bn.clone(), s));
                }
                y
            }
        }
    }

    fn res(&mut self, x: Tensor<B, 4>, u: &ResUnit) -> Tensor<B, 4> {
        let mut h = self.conv(x.clone(), &u.conv1);
        if u.use_bn {
            h = self.bn(h, &u.bn1);
        }
        let h = self.conv(relu(h), &u.conv2);
        let (kernel, stride) = (u.conv1.kernel, u.conv1.stride);
        let short = if kernel == 1 && stride == 1 {
            x
        } else {
            B::avg_pool(x, kernel, stride)
        };
        let short = if u.conv1.cout > u.conv1.cin {
            let [n, hh, ww, cin] = short.dims();
            B::pad_channels(short.reshape([n * hh * ww, cin]), u.conv1.cout).reshape([n, hh, ww, u.conv1.cout])
        } else {
            short
        };
        h + short
    }

    fn layer(&mut self, x: Tensor<B, 4>, layer: &Layer) -> Tensor<B, 4> {
        match layer {
            // The only reflect-padded stem is the first layer; its padding is
            // applied to the NCHW input by `channels_last_input`.
            Layer::Stem { conv, .. } => relu(self.conv(x, conv)),
            Layer::Res(u) => self.res(x, u),
            Layer::Block(units) => units.iter().fold(x, |h, u| self.res(h, u)),
            Layer::MaybeBn { bn, on } => {
                if *on {
                    self.bn(x, bn)
                } else {
                    x
                }
            }
        }
    }

    /// Embedding head of a channels-last map [N, S, S, C] → [N, S·S, D].
    fn head(&mut self, x: Tensor<B, 4>, head: &Head) -> Tensor<B, 3> {
        let mut h = self.conv(x.clone(), &head.conv1);
        if head.use_bn {
            h = self.bn(h, &head.bn_hid);
        }
        let h = self.conv(relu(h), &head.conv2) + self.conv(x, &head.shortcut);
        let [n, s, _, d] = h.dims();
        self.bn(h, &head.bn_out).reshape([n, s * s, d])
    }

    /// The stem's input: NCHW images, reflect-padded where the plan says so,
    /// as a channels-last map.
    fn channels_last_input(plan: &EncoderPlan, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let pad = match plan.layers.first() {
            Some(Layer::Stem { reflect_pad, .. }) => *reflect_pad,
            _ => 0,
        };
        let x = if pad > 0 {
            x.pad((pad, pad, pad, pad), burn::tensor::ops::PadMode::Reflect)
        } else {
            x
        };
        x.permute([0, 2, 3, 1])
    }

    /// Encodes the two views of a batch [B, 3, S, S] each as one pass over
    /// the 2B images stacked, so that every weight is used (and its gradient
    /// formed) once and every matrix product is twice as tall. BatchNorm
    /// statistics stay per view (docs/model.md §3), so the result is that of two
    /// separate passes.
    pub fn encode_views(&mut self, plan: &EncoderPlan, views: [Tensor<B, 4>; 2]) -> [Embeddings<B>; 2] {
        let n = views[0].dims()[0];
        self.views = 2;
        let both = self.encode(plan, Tensor::cat(views.into(), 0));
        self.views = 1;
        [0, 1].map(|v| Embeddings {
            r1: both.r1.clone().narrow(0, v * n, n),
            r5: both.r5.clone().narrow(0, v * n, n),
            r7: both.r7.clone().narrow(0, v * n, n),
        })
    }

    /// Encodes a batch of NCHW images [B, 3, S, S].
    pub fn encode(&mut self, plan: &EncoderPlan, x: Tensor<B, 4>) -> Embeddings<B> {
        let mut h = Self::channels_last_input(plan, x);
        let mut f5 = None;
        let mut f7 = None;
        for (i, layer) in plan.layers.iter().enumerate() {
            h = self.layer(h, layer);
            if i == plan.f7_layer {
                f7 = Some(h.clone());
            }
            if i == plan.f5_layer {
                f5 = Some(h.clone());
            }
        }
        let [b, _, _, d] = h.dims();
        let r1 = h.reshape([b, d]);
        // f5/f7 are always set: the plan guarantees layers of size 5 and 7.
        let (f5, f7) = match (f5, f7) {
            (Some(f5), Some(f7)) => (f5, f7),
            _ => unreachable!("encoder plan without 5×5 and 7×7 layers"),
        };
        let r5 = self.head(f5, &plan.head5);
        let r7 = self.head(f7, &plan.head7);
        Embeddings { r1, r5, r7 }
    }

    /// Linear and MLP logits for features [N, D]; `keep1`/`keep2` are the two
    /// dropout masks of the MLP (already scaled by 1/(1−p)), None in eval mode.
    pub fn classify(
        &mut self,
        plan: &ClassifierPlan,
        features: Tensor<B, 2>,
        dropout: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let p = self.params;
        let [_, d] = features.dims();
        let lin = linear(features.clone(), &p[plan.lin_weight], Some(&p[plan.lin_bias]), d, plan.n_classes);
        let (x, keep2) = match dropout {
            Some((k1, k2)) => (features * k1, Some(k2)),
            None => (features, None),
        };
        let h = linear(x, &p[plan.mlp_weight1], None, d, plan.hidden);
        let h = self.bn_rows(h, &plan.mlp_bn);
        let h = relu(h);
        let h = match keep2 {
            Some(k2) => h * k2,
            None => h,
        };
        let mlp = linear(h, &p[plan.mlp_weight2], Some(&p[plan.mlp_bias2]), plan.hidden, plan.n_classes);
        (lin, mlp)
    }

    /// The k mixture features of r1 [B, D]: r1 + W2·ReLU(W1·r1 + b1) + b2, split in k.
    pub fn mixture(&self, plan: &MixturePlan, r1: Tensor<B, 2>) -> Vec<Tensor<B, 2>> {
        let p = self.params;
        let [b, d] = r1.dims();
        let h = relu(linear(r1.clone(), &p[plan.weight1], Some(&p[plan.bias1]), d, d));
        let out = linear(h, &p[plan.weight2], Some(&p[plan.bias2]), d, plan.k * d);
        (0..plan.k)
            .map(|j| r1.clone() + out.clone().slice([0..b, j * d..(j + 1) * d]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::nce::multiscale_nce;
    use crate::model::plan::EntryKind;
    use crate::train::step::nce_inputs;
    use amdim_shared::rng::{KeyedRng, Stream};
    use amdim_shared::spec::{LossSpec, ModelSpec};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{DType, TensorCreationOptions, TensorData};

    type AD = Autodiff<Flex>;

    fn f64_tensor<Bk: Backend, const D: usize>(v: &[f64], shape: [usize; D]) -> Tensor<Bk, D> {
        Tensor::from_data(
            TensorData::new(v.to_vec(), shape),
            TensorCreationOptions::new(Default::default()).with_dtype(DType::F64),
        )
    }

    /// Total NCE loss of a tiny encoder in f64, for given parameter values.
    fn loss<Bk: Kernels>(plan: &crate::model::ModelPlan, params: &[Tensor<Bk, 1>], x1: &[f64], x2: &[f64], n: usize) -> Tensor<Bk, 1> {
        let mut fwd = Forward::new(params, BnMode::Train);
        let e1 = fwd.encode(&plan.encoder, f64_tensor(x1, [n, 3, 32, 32]));
        let e2 = fwd.encode(&plan.encoder, f64_tensor(x2, [n, 3, 32, 32]));
        let locs = [vec![3usize, 11, 24], vec![0usize, 7, 19]];
        let (src, trg) = nce_inputs(&fwd, plan, [&e1, &e2], [&locs[0], &locs[1]]);
        multiscale_nce([&src[0], &src[1]], [&trg[0], &trg[1]], 0, &LossSpec::default()).total
    }

    #[test]
    fn encoder_gradients_match_finite_differences_in_f64() {
        let spec = ModelSpec {
            ndf: 2,
            n_rkhs: 8,
            depth: 2,
            use_bn: true,
            ..ModelSpec::default()
        };
        let plan = crate::model::plan(&spec, &LossSpec::default(), None);
        let mut rng = KeyedRng::new(Stream::Synthetic, &[42]);
        // Random values everywhere (the spec's zero init would hide gradients of the first convs).
        let values: Vec<Vec<f64>> = plan
            .entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::Counter => vec![],
                EntryKind::Buffer => vec![1.0; e.numel()],
                EntryKind::Param => (0..e.numel())
                    .map(|_| rng.normal() * 0.5 + if e.name.ends_with("bn.weight") { 1.0 } else { 0.0 })
                    .collect(),
            })
            .collect();
        let n = 3;
        let x1: Vec<f64> = (0..n * 3 * 1024).map(|_| rng.normal()).collect();
        let x2: Vec<f64> = (0..n * 3 * 1024).map(|_| rng.normal()).collect();
        let leaves: Vec<Tensor<AD, 1>> = plan
            .entries
            .iter()
            .zip(&values)
            .map(|(e, v)| {
                let t = f64_tensor::<AD, 1>(v, [v.len()]);
                if e.kind == EntryKind::Param { t.require_grad() } else { t }
            })
            .collect();
        let grads = loss(&plan, &leaves, &x1, &x2, n).backward();
        let eval = |values: &[Vec<f64>]| -> f64 {
            let params: Vec<Tensor<Flex, 1>> = values.iter().map(|v| f64_tensor(v, [v.len()])).collect();
            loss(&plan, &params, &x1, &x2, n)
                .into_data()
                .convert::<f64>()
                .into_vec::<f64>()
                .unwrap()[0]
        };
        let checked = [
            "encoder.layer_list.0.conv.weight",
            "encoder.layer_list.1.conv1.weight",
            "encoder.layer_list.2.layer_list.1.conv2.weight",
            "encoder.layer_list.3.layer_list.0.bn1.bn.weight",
            "encoder.layer_list.5.layer_list.0.conv1.weight",
            "encoder.layer_list.7.conv1.weight",
            "encoder.layer_list.8.bn.bias",
            "encoder.rkhs_block_5.shortcut.bias",
            "encoder.rkhs_block_7.conv2.weight",
            "encoder.rkhs_block_7.bn_out.bn.weight",
        ];
        let mut compared = 0;
        for name in checked {
            let i = plan
                .entries
                .iter()
                .position(|e| e.name == name)
                .unwrap_or_else(|| panic!("no {name}"));
            let g: Vec<f64> = leaves[i]
                .grad(&grads)
                .unwrap_or_else(|| panic!("no grad for {name}"))
                .into_data()
                .convert::<f64>()
                .into_vec()
                .unwrap();
            for k in [0, g.len() / 2, g.len() - 1] {
                let h = 1e-5;
                let mut plus = values.clone();
                plus[i][k] += h;
                let mut minus = values.clone();
                minus[i][k] -= h;
                let fd = (eval(&plus) - eval(&minus)) / (2.0 * h);
                assert!(
                    (fd - g[k]).abs() <= 1e-6 + 1e-4 * fd.abs(),
                    "{name}[{k}]: finite difference {fd} vs autodiff {}",
                    g[k]
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 30);
    }
}
