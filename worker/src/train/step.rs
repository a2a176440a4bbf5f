//! One training step of one rank: both views through the encoder, the
//! multiscale NCE loss, the online classifiers on detached r1, backward, Adam,
//! and the BatchNorm running-average updates. As one rank of several
//! (`Trainer::comm`), the targets are gathered from all ranks with exact
//! gradients, BatchNorm is optionally synchronised, and gradients, metrics
//! and BN statistics are averaged over ranks (docs/architecture.md §5–6); the exchanges
//! themselves are `collective`'s.
//!
//! The trainer owns the model state on the inner (non-autodiff) backend; each
//! step wraps it in fresh autodiff leaves. All randomness (5×5 locations,
//! dropout) comes from keyed streams, so a step is a pure function of state,
//! batch and step index — which is what makes resume bitwise exact.

use crate::checkpoint::format::{HostAdam, HostState};
use crate::collective::CollectiveError;
use crate::collective::ops::{Comm, CommTimes, all_gather_rows, all_reduce_sum, average_gradients, mean_over_ranks};
use crate::data::pipeline::TrainBatch;
use crate::loss::classifier::classifier_loss;
use crate::loss::nce::{NceLoss, Sources, Targets, multiscale_nce, select_locations};
use crate::model::encoder::{BnStats, Embeddings, Forward};
use crate::model::kernels::Kernels;
use crate::model::layers::BN_MOMENTUM;
use crate::model::layers::RankSum;
use crate::model::params::{from_vec, scalar, to_vec};
use crate::model::plan::{EntryKind, ModelPlan};
use crate::model::{BnMode, ParamStore};
use crate::optim::adam::{Adam, AdamState};
use crate::optim::schedule::learning_rate;
use amdim_shared::rng::{KeyedRng, Stream};
use amdim_shared::spec::JobSpec;
use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use std::sync::Arc;
use std::time::Instant;

const DROPOUT: f64 = 0.2;

/// The loss of one training-mode pass, both views' embeddings, and the BN statistics it gathered.
pub type NceForward<B> = (NceLoss<Autodiff<B>>, [Embeddings<Autodiff<B>>; 2], BnStats<Autodiff<B>>);

/// Values logged for one step.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StepMetrics {
    pub step: u64,
    pub epoch: u64,
    pub loss: f32,
    pub loss_1t5: f32,
    pub loss_1t7: f32,
    pub loss_5t5: f32,
    pub reg: f32,
    pub class_lin: f32,
    pub class_mlp: f32,
    pub lr: f64,
    /// The loss was not finite (on some rank): the update was skipped.
    pub skipped: bool,
    /// Seconds of this step spent computing (everything but the exchanges).
    pub compute_s: f64,
    /// Seconds of this step spent in each kind of exchange.
    pub comm: CommTimes,
}

impl StepMetrics {
    /// Every loss value of the step, for averaging over ranks.
    fn losses_mut(&mut self) -> [&mut f32; 7] {
        [
            &mut self.loss,
            &mut self.loss_1t5,
            &mut self.loss_1t7,
            &mut self.loss_5t5,
            &mut self.reg,
            &mut self.class_lin,
            &mut self.class_mlp,
        ]
    }
}

/// BN statistics of a step on the inner backend: (layer, mean, unbiased variance).
pub type InnerStats<B> = Vec<(crate::model::plan::Bn, Tensor<B, 1>, Tensor<B, 1>)>;

/// The outcome of a forward and backward pass, before the update.
pub struct StepGradients<B: Kernels> {
    pub metrics: StepMetrics,
    /// Per plan entry; None for buffers (and every entry of a skipped step).
    /// Averaged over ranks.
    pub grads: Vec<Option<Tensor<B, 1>>>,
    pub stats: InnerStats<B>,
}

/// Model, optimizer and step counter of one training process.
pub struct Trainer<B: Kernels> {
    pub spec: JobSpec,
    pub plan: ModelPlan,
    pub params: ParamStore<B>,
    pub adam: Adam<B>,
    /// Optimizer updates done so far = the next global step.
    pub step: u64,
    pub device: B::Device,
    /// Set when this trainer is one rank of several.
    pub comm: Option<Arc<Comm>>,
    /// Sum the gathered targets' gradients over ranks (always, except to
    /// show what dropping that exchange does).
    pub exact_gather: bool,
    /// Updates in the whole run (the cosine schedule ends there;
    /// `u64::MAX` when the caller does not know the run's length).
    pub last_step: u64,
}

/// Applies collected batch statistics to the running averages (PyTorch momentum 0.1).
pub fn apply_bn_stats<B: Kernels>(params: &mut ParamStore<B>, stats: InnerStats<B>) {
    for (bn, mean, var) in stats {
        let m = BN_MOMENTUM;
        params.values[bn.running_mean] = params.values[bn.running_mean].clone().mul_scalar(1.0 - m) + mean.mul_scalar(m);
        params.values[bn.running_var] = params.values[bn.running_var].clone().mul_scalar(1.0 - m) + var.mul_scalar(m);
        params.counters[bn.counter] += 1;
    }
}

/// Inner-backend copies of the statistics of a forward pass.
pub fn inner_stats<B: Kernels>(stats: BnStats<Autodiff<B>>) -> InnerStats<B> {
    stats
        .updates
        .into_iter()
        .map(|(bn, s)| (bn, s.mean.inner(), s.var_unbiased.inner()))
        .collect()
}

/// An image batch [n, 3, S, S] on `device`.
pub fn images<B: Kernels>(pixels: &[f32], n: usize, size: usize, device: &B::Device) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(pixels.to_vec(), [n, 3, size, size]), device)
}

/// Sources and targets of both views for the NCE loss.
pub fn nce_inputs<B: Kernels>(
    fwd: &Forward<'_, B>,
    plan: &ModelPlan,
    e: [&Embeddings<B>; 2],
    locs: [&[usize]; 2],
) -> ([Sources<B>; 2], [Targets<B>; 2]) {
    let src = |v: usize| Sources {
        r1: match &plan.mixture {
            Some(m) => fwd.mixture(m, e[v].r1.clone()),
            None => vec![e[v].r1.clone()],
        },
        r5: select_locations(e[v].r5.clone(), locs[v]),
    };
    let trg = |v: usize| Targets {
        r5: e[v].r5.clone(),
        r7: e[v].r7.clone(),
    };
    ([src(0), src(1)], [trg(0), trg(1)])
}

/// Dropout keep-masks scaled by 1/(1−p) for the rows [view 1 of `samples`,
/// view 2 of `samples`]; each row's mask comes from (seed, step, sample,
/// view), so a sample gets the same mask whichever rank holds it.
fn dropout_masks<B: Kernels>(
    seed: u64,
    step: u64,
    samples: &[u32],
    widths: [usize; 2],
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let scale = (1.0 / (1.0 - DROPOUT)) as f32;
    let rows = 2 * samples.len();
    let (mut m1, mut m2) = (Vec::with_capacity(rows * widths[0]), Vec::with_capacity(rows * widths[1]));
    for view in 0..2u64 {
        for &sample in samples {
            let mut rng = KeyedRng::new(Stream::Dropout, &[seed, step, u64::from(sample), view]);
            let mut keep = |w: usize, out: &mut Vec<f32>| out.extend((0..w).map(|_| if rng.bernoulli(DROPOUT) { 0.0 } else { scale }));
            keep(widths[0], &mut m1);
            keep(widths[1], &mut m2);
        }
    }
    let mask = |v: Vec<f32>, w: usize| Tensor::<B, 2>::from_data(TensorData::new(v, [rows, w]), device);
    (mask(m1, widths[0]), mask(m2, widths[1]))
}

/// Per-rank BN statistics replaced by their mean over ranks, so that the
/// running averages stay identical on every rank without synchronised BN.
fn average_stats<B: Kernels>(stats: InnerStats<B>, comm: &Comm) -> Result<InnerStats<B>, CollectiveError> {
    let mut flat = Vec::new();
    for (_, mean, var) in &stats {
        flat.extend(to_vec(mean.clone()));
        flat.extend(to_vec(var.clone()));
    }
    mean_over_ranks(&mut flat, comm)?;
    let mut offset = 0;
    let mut take = |n: usize, device: &B::Device| {
        let t = from_vec::<B>(flat[offset..offset + n].to_vec(), device);
        offset += n;
        t
    };
    Ok(stats
        .into_iter()
        .map(|(bn, mean, _)| {
            let (c, device) = (mean.dims()[0], mean.device());
            let m = take(c, &device);
            let v = take(c, &device);
            (bn, m, v)
        })
        .collect())
}

impl<B: Kernels> Trainer<B> {
    /// A freshly initialised model for `spec` (classifiers when `n_classes` is given).
    pub fn new(spec: JobSpec, n_classes: Option<usize>, device: B::Device) -> Self {
        let n_classes = if spec.eval.enabled { n_classes } else { None };
        let plan = crate::model::plan(&spec.model, &spec.loss, n_classes);
        let params = ParamStore::init(&plan, spec.job.seed, &device);
        let adam = Adam::new(plan.entries.len());
        Self {
            spec,
            plan,
            params,
            adam,
            step: 0,
            device,
            comm: None,
            exact_gather: true,
            last_step: u64::MAX,
        }
    }

    /// Makes this trainer one rank of `comm`'s world.
    pub fn with_comm(mut self, comm: Arc<Comm>) -> Self {
        self.comm = (comm.world() > 1).then_some(comm);
        self
    }

    fn sync_bn(&self) -> Option<&Arc<Comm>> {
        self.comm.as_ref().filter(|_| self.spec.dist.sync_bn)
    }

    /// The per-channel sum over ranks of synchronised BatchNorm (the
    /// identity unless `dist.sync_bn` is on in a multi-rank run).
    fn bn_rank_sum(&self, t: Tensor<Autodiff<B>, 1>) -> Tensor<Autodiff<B>, 1> {
        match self.sync_bn() {
            Some(comm) => all_reduce_sum(t, comm),
            None => t,
        }
    }

    /// The NCE loss of one batch in training mode, with autodiff leaves
    /// (`params[i]` requires grad for every trainable entry).
    pub fn nce_forward(
        &self,
        leaves: &[Tensor<Autodiff<B>, 1>],
        view1: Tensor<Autodiff<B>, 4>,
        view2: Tensor<Autodiff<B>, 4>,
        locs: [&[usize]; 2],
    ) -> NceForward<B> {
        let rank_sum = |t| self.bn_rank_sum(t);
        let mut fwd = Forward::new(leaves, BnMode::Train).with_sync_bn(self.sync_bn().map(|_| &rank_sum as &RankSum<'_, _>));
        let [e1, e2] = fwd.encode_views(&self.plan.encoder, [view1, view2]);
        let (src, mut trg) = nce_inputs(&fwd, &self.plan, [&e1, &e2], locs);
        // Each rank's sources against the targets of every rank (docs/architecture.md §6).
        let own_offset = match &self.comm {
            Some(comm) => {
                for t in &mut trg {
                    t.r5 = all_gather_rows(t.r5.clone(), comm, self.exact_gather);
                    t.r7 = all_gather_rows(t.r7.clone(), comm, self.exact_gather);
                }
                comm.rank() * locs[0].len()
            }
            None => 0,
        };
        let loss = multiscale_nce([&src[0], &src[1]], [&trg[0], &trg[1]], own_offset, &self.spec.loss);
        let stats = std::mem::take(&mut fwd.stats);
        (loss, [e1, e2], stats)
    }

    /// Autodiff leaves of the current state: trainable entries require grad.
    pub fn leaves(&self) -> Vec<Tensor<Autodiff<B>, 1>> {
        self.params
            .values
            .iter()
            .zip(&self.plan.entries)
            .map(|(t, e)| {
                let leaf = Tensor::<Autodiff<B>, 1>::from_inner(t.clone());
                if e.kind == EntryKind::Param { leaf.require_grad() } else { leaf }
            })
            .collect()
    }

    /// Forward and backward on `batch` (taken during `epoch`): the metrics,
    /// averaged over ranks, and the gradients and BN statistics of the step.
    pub fn gradients(&self, batch: &TrainBatch, epoch: u64) -> Result<StepGradients<B>, CollectiveError> {
        let started = Instant::now();
        if let Some(comm) = &self.comm {
            comm.take_times();
        }
        let size = self.spec.model.image_size;
        let n = batch.n;
        let leaves = self.leaves();
        let v1 = images::<Autodiff<B>>(&batch.view1, n, size, &self.device);
        let v2 = images::<Autodiff<B>>(&batch.view2, n, size, &self.device);
        let (nce, [e1, e2], stats) = self.nce_forward(&leaves, v1, v2, [&batch.loc1, &batch.loc2]);
        let mut stats = stats;
        let mut total = nce.total.clone();
        let mut metrics = StepMetrics {
            step: self.step,
            epoch,
            ..StepMetrics::default()
        };
        if let (Some(cls), Some(labels)) = (&self.plan.classifier, &batch.labels) {
            let features = Tensor::cat(vec![e1.r1.clone().detach(), e2.r1.clone().detach()], 0);
            let both: Vec<u32> = labels.iter().chain(labels.iter()).copied().collect();
            let masks = dropout_masks::<Autodiff<B>>(
                self.spec.job.seed,
                self.step,
                &batch.indices,
                [self.spec.model.n_rkhs, cls.hidden],
                &self.device,
            );
            let rank_sum = |t| self.bn_rank_sum(t);
            let mut fwd = Forward::new(&leaves, BnMode::Train).with_sync_bn(self.sync_bn().map(|_| &rank_sum as &RankSum<'_, _>));
            let (lin, mlp) = fwd.classify(cls, features, Some(masks));
            stats.updates.extend(std::mem::take(&mut fwd.stats).updates);
            let (l_lin, l_mlp) = (classifier_loss(lin, &both), classifier_loss(mlp, &both));
            metrics.class_lin = scalar(l_lin.clone());
            metrics.class_mlp = scalar(l_mlp.clone());
            total = total + l_lin + l_mlp;
        }
        metrics.loss = scalar(nce.total.clone());
        metrics.loss_1t5 = scalar(nce.l1t5);
        metrics.loss_1t7 = scalar(nce.l1t7);
        metrics.loss_5t5 = scalar(nce.l5t5);
        metrics.reg = scalar(nce.reg);
        metrics.lr = learning_rate(&self.spec.optim, self.step, epoch, self.last_step);
        if let Some(comm) = &self.comm {
            // Global means; a non-finite value on any rank makes every rank skip.
            let mut fields = metrics.losses_mut();
            let mut v: Vec<f32> = fields.iter().map(|f| **f).collect();
            mean_over_ranks(&mut v, comm)?;
            fields.iter_mut().zip(v).for_each(|(f, x)| **f = x);
        }
        let mut out = StepGradients {
            metrics,
            grads: vec![None; leaves.len()],
            stats: Vec::new(),
        };
        let m = &mut out.metrics;
        if !(m.loss.is_finite() && m.class_lin.is_finite() && m.class_mlp.is_finite()) {
            m.skipped = true;
            self.finish_timing(m, started);
            return Ok(out);
        }
        let grads = total.backward();
        for (i, leaf) in leaves.iter().enumerate() {
            if self.plan.entries[i].kind == EntryKind::Param {
                out.grads[i] = leaf.grad(&grads);
            }
        }
        out.stats = inner_stats(stats);
        if let Some(comm) = &self.comm {
            comm.check()?;
            let bucket = (self.spec.dist.bucket_mib * (1 << 20) as f64) as usize;
            average_gradients(&mut out.grads, comm, bucket.max(1))?;
            if !self.spec.dist.sync_bn {
                out.stats = average_stats(out.stats, comm)?;
            }
        }
        self.finish_timing(&mut out.metrics, started);
        Ok(out)
    }

    fn finish_timing(&self, m: &mut StepMetrics, started: Instant) {
        if let Some(comm) = &self.comm {
            m.comm = comm.take_times();
        }
        m.compute_s = (started.elapsed().as_secs_f64() - m.comm.total()).max(0.0);
    }

    /// One optimisation step on `batch` taken during `epoch`.
    pub fn train_step(&mut self, batch: &TrainBatch, epoch: u64) -> Result<StepMetrics, CollectiveError> {
        let StepGradients { metrics, grads, stats } = self.gradients(batch, epoch)?;
        if !metrics.skipped {
            for (i, g) in grads.into_iter().enumerate() {
                if let Some(g) = g {
                    self.adam.update(i, &mut self.params.values[i], g, metrics.lr, &self.spec.optim);
                }
            }
            apply_bn_stats(&mut self.params, stats);
        }
        self.step += 1;
        Ok(metrics)
    }

    /// Host copy of the model state.
    pub fn host_state(&self) -> HostState {
        HostState {
            values: self.params.to_host(),
            counters: self.params.counters.clone(),
        }
    }

    /// Replaces model and optimizer state (from a checkpoint).
    pub fn restore(&mut self, state: HostState, adam: Vec<Option<HostAdam>>, step: u64) {
        self.params = ParamStore::from_host(state.values, state.counters, &self.device);
        self.adam.states = adam
            .into_iter()
            .map(|s| {
                s.map(|s| AdamState {
                    exp_avg: from_vec(s.exp_avg, &self.device),
                    exp_avg_sq: from_vec(s.exp_avg_sq, &self.device),
                    step: s.step,
                })
            })
            .collect();
        self.step = step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;
    use crate::data::dataset::synthetic;
    use crate::data::pipeline::{Pipeline, Source};

    fn synthetic_batch(spec: &JobSpec, n: u32) -> TrainBatch {
        let data = synthetic(16, 32, 10, Split::Train);
        let pipeline = Pipeline::new(Source::Memory(data), 32, spec.augment.clone(), 1, 1 << 20, 1).unwrap();
        pipeline.train_batch(&(0..n).collect::<Vec<u32>>(), 0).unwrap()
    }
    use amdim_shared::spec::{LossSpec, MixtureSpec, ModelSpec, OptimSpec};
    use burn::backend::Flex;

    fn tiny_spec(k: usize) -> JobSpec {
        JobSpec {
            model: ModelSpec {
                ndf: 4,
                n_rkhs: 16,
                depth: 1,
                ..ModelSpec::default()
            },
            loss: LossSpec {
                mixture: MixtureSpec { k, tau: 0.5, alpha: 0.1 },
                ..LossSpec::default()
            },
            optim: OptimSpec {
                warmup_steps: 1,
                ..OptimSpec::default()
            },
            ..JobSpec::default()
        }
    }

    #[test]
    fn mixture_step_trains_the_mixture_map_and_classifiers() {
        let spec = tiny_spec(3);
        let mut t = Trainer::<Flex>::new(spec.clone(), Some(10), Default::default());
        let mixture = t.plan.mixture.clone().expect("k = 3 builds the mixture map");
        let before = t.host_state();
        let batch = synthetic_batch(&spec, 8);
        let m = t.train_step(&batch, 0).unwrap();
        assert!(
            !m.skipped && m.loss.is_finite() && m.class_lin.is_finite() && m.class_mlp.is_finite(),
            "{m:?}"
        );
        let after = t.host_state();
        for (name, i) in [("mixture.out.weight", mixture.weight2), ("encoder.layer_list.0.conv.weight", 0)] {
            assert_ne!(before.values[i], after.values[i], "{name} was not updated");
        }
        let cls = t.plan.classifier.clone().unwrap();
        assert_ne!(before.values[cls.lin_weight], after.values[cls.lin_weight]);
        // BN running statistics moved and the counter of the always-on final BN advanced.
        let final_bn = t
            .plan
            .entries
            .iter()
            .position(|e| e.name == "encoder.layer_list.8.bn.num_batches_tracked")
            .unwrap();
        assert_eq!(after.counters[final_bn], 2, "one update per view");
        assert_eq!(t.step, 1);
    }
}
