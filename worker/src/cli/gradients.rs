//! `amdim-worker gradients`: the loss and the (rank-averaged) parameter
//! gradients of one training step, written as safetensors under the
//! parameters' `state_dict` names. This is how the equivalence of W ranks
//! of B images with one rank of W·B images is checked from outside: run it
//! once with one rank and once with W, and compare the files. Rank 0
//! writes the file; every local rank prints its step metrics as a JSON line.

use crate::checkpoint::CheckpointStore;
use crate::checkpoint::format::{HostState, model_bytes};
use crate::cli::dist::DistArgs;
use crate::cli::load_spec;
use crate::collective::launch::LocalRank;
use crate::collective::ops::Comm;
use crate::model::kernels::Kernels;
use crate::model::params::to_vec;
use crate::train::run::{open_pipelines, resume};
use crate::train::step::{StepMetrics, Trainer};
use crate::with_backend;
use amdim_shared::order::{samples_for_step, steps_per_epoch};
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The flags of `amdim-worker gradients`.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Global step whose batch is used (default: 0, or the checkpoint's).
    #[arg(long)]
    step: Option<u64>,
    /// Start from the newest checkpoint under checkpoint.uri.
    #[arg(long)]
    resume: bool,
    /// Written by rank 0.
    #[arg(long)]
    out: PathBuf,
    /// Gather targets without summing their gradients over ranks (the
    /// known bug; only to show that it changes the gradients).
    #[arg(long)]
    plain_gather: bool,
    #[command(flatten)]
    dist: DistArgs,
}

/// Runs `amdim-worker gradients`.
pub fn run(args: Args, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let spec = load_spec(&args.config)?;
    let request = GradientRequest {
        step: args.step,
        resume: args.resume,
        exact_gather: !args.plain_gather,
    };
    let results = local_rank_gradients(&args.dist, &spec, &request, &args.out, runtime.handle())?;
    for metrics in results {
        println!("{}", serde_json::to_string(&metrics)?);
    }
    Ok(())
}

/// The gradients of every rank of this process, each on its own thread and
/// device, connected to the other ranks of the world; rank 0 writes `out`.
fn local_rank_gradients(
    dist: &DistArgs,
    spec: &JobSpec,
    request: &GradientRequest,
    out: &Path,
    runtime: &tokio::runtime::Handle,
) -> Result<Vec<StepMetrics>> {
    let handle = runtime.clone();
    dist.layout().launch(spec, |LocalRank { rank, spec, comm }| {
        let (metrics, bytes) = with_backend!(spec, |B, device| gradients::<B>(&spec, device, comm, request, &handle)?);
        if rank == 0 {
            std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
        }
        Ok(metrics)
    })
}

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
        if resume(&mut t, &store)?.is_none() {
            bail!("--resume: no checkpoint under checkpoint.uri = {}", spec.checkpoint.uri);
        }
    }
    if let Some(step) = request.step {
        t.step = step;
    }
    let (pos, samples) = samples_for_step(n, g, spec.data.last_batch, spec.job.seed, t.step, rank, world);
    let batch = train.train_batch(&samples, pos.epoch)?;
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
