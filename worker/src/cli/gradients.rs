//! `amdim-worker gradients`: the loss and the (rank-averaged) parameter
//! gradients of one training step, written as safetensors under the
//! parameters' `state_dict` names. This is how the equivalence of W ranks
//! of B images with one rank of W·B images is checked from outside: run it
//! once with one rank and once with W, and compare the files.

use crate::checkpoint::CheckpointStore;
use crate::checkpoint::format::{HostState, model_bytes};
use crate::collective::ops::Comm;
use crate::model::kernels::Kernels;
use crate::model::params::to_vec;
use crate::train::run::{open_pipelines, resume};
use crate::train::step::{StepMetrics, Trainer};
use amdim_shared::order::{samples_for_step, steps_per_epoch};
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result, bail};
use std::sync::Arc;

/// What to compute.
pub struct GradientRequest {
    /// Global step whose batch is used (its samples, views and locations);
    /// None: step 0, or the checkpoint's step with `resume`.
    pub step: Option<u64>,
    /// Start from the newest checkpoint under `checkpoint.uri` (trained
    /// weights exercise every path; at initialisation some gradients are 0).
    pub resume: bool,
    /// Sum the gathered targets' gradients over ranks (false shows the bug).
    pub exact_gather: bool,
}

/// The step's metrics and the safetensors bytes of its gradients.
pub fn gradients<B: Kernels>(
    spec: &JobSpec,
    device: B::Device,
    comm: Option<Arc<Comm>>,
    request: &GradientRequest,
    runtime: &tokio::runtime::Handle,
) -> Result<(StepMetrics, Vec<u8>)> {
    let (train, _) = open_pipelines(spec, runtime)?;
    let (rank, world) = comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world()));
    let g = spec.train.batch_size;
    if !g.is_multiple_of(world) {
        bail!("train.batch_size = {g} must be divisible by the world size {world}");
    }
    let n = train.source.len();
    if steps_per_epoch(n, g, spec.data.last_batch) == 0 {
        bail!("train.batch_size = {g} is larger than the {n} training samples");
    }
    let mut t = Trainer::<B>::new(spec.clone(), train.source.labels().map(|_| train.source.n_classes()), device);
    if let Some(comm) = comm {
        t = t.with_comm(comm);
    }
    t.exact_gather = request.exact_gather;
    if request.resume {
        let store = CheckpointStore::open(&spec.checkpoint.uri, runtime.clone())?;
        if !resume(&mut t, &store)? {
            bail!("--resume: no checkpoint under checkpoint.uri = {}", spec.checkpoint.uri);
        }
    }
    if let Some(step) = request.step {
        t.step = step;
    }
    let (pos, samples) = samples_for_step(n, g, spec.data.last_batch, spec.job.seed, t.step, rank, world);
    let batch = train.train_batch(&samples, pos.epoch);
    let out = t.gradients(&batch, pos.epoch).with_context(|| format!("rank {rank} of {world}"))?;
    let shapes: Vec<usize> = t.params.values.iter().map(|v| v.dims()[0]).collect();
    let values = out
        .grads
        .into_iter()
        .zip(shapes)
        .map(|(g, len)| g.map_or_else(|| vec![0.0; len], to_vec))
        .collect();
    let state = HostState {
        values,
        counters: vec![0; t.plan.entries.len()],
    };
    Ok((out.metrics, model_bytes(&t.plan, &state)?))
}
