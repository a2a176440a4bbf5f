//! Which weights a probe evaluates: a checkpoint folder or URI (`checkpoint.uri`
//! by default; the newest complete checkpoint, or `--step`), or a
//! `model.safetensors` file (e.g. from `amdimctl export`); and the encoder
//! built from them, or a randomly initialised one of the same shape. Reads
//! only; never writes a checkpoint.

use crate::checkpoint::CheckpointStore;
use crate::checkpoint::format::{HostState, read_model, weights_info};
use crate::model::kernels::Kernels;
use crate::model::{ModelPlan, ParamStore};
use amdim_shared::checkpoint::MODEL_FILE;
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result, bail};
use std::path::Path;

/// Model weights read from a file or a checkpoint, and where they came from.
pub(crate) struct Weights {
    pub(crate) bytes: Vec<u8>,
    /// `path` or `uri step K`, for the report.
    pub(crate) origin: String,
}

/// Reads the weights `target` names (default: the spec's `checkpoint.uri`).
pub(crate) fn read(spec: &JobSpec, target: Option<&str>, step: Option<u64>, runtime: &tokio::runtime::Handle) -> Result<Weights> {
    let target = target.unwrap_or(&spec.checkpoint.uri);
    let path = Path::new(target);
    if path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading weights {}", path.display()))?;
        return Ok(Weights {
            bytes,
            origin: path.display().to_string(),
        });
    }
    if !target.contains("://") && !path.is_dir() {
        bail!("{target}: no such checkpoint folder or weights file (train first, or pass --checkpoint DIR|URI|model.safetensors)");
    }
    let store = CheckpointStore::open(target, runtime.clone())?;
    let loaded = match step {
        Some(k) => store.load_step(k).with_context(|| format!("{target}: checkpoint step {k}"))?,
        None => store
            .load_latest()?
            .with_context(|| format!("{target}: no complete checkpoint (train first, or pass --checkpoint)"))?,
    };
    let bytes = loaded
        .file(MODEL_FILE)
        .with_context(|| format!("{target}: checkpoint step {} has no {MODEL_FILE}", loaded.manifest.step))?;
    Ok(Weights {
        bytes: bytes.to_vec(),
        origin: format!("{target} step {}", loaded.manifest.step),
    })
}

/// The encoder-only plan of the spec's model.
pub(crate) fn encoder_plan(spec: &JobSpec) -> ModelPlan {
    crate::model::plan(&spec.model, &spec.loss, None)
}

/// The encoder of `spec`'s shape initialised as training starts (job.seed).
pub(crate) fn random_encoder<B: Kernels>(spec: &JobSpec, plan: &ModelPlan, device: &B::Device) -> ParamStore<B> {
    ParamStore::<B>::init(plan, spec.job.seed, device)
}

/// The encoder with the trained weights; every encoder tensor must be
/// there, and weights that describe themselves must fit `spec`.
pub(crate) fn trained_encoder<B: Kernels>(
    spec: &JobSpec,
    plan: &ModelPlan,
    weights: &Weights,
    device: &B::Device,
) -> Result<ParamStore<B>> {
    let init = random_encoder::<B>(spec, plan, device);
    let fallback = HostState {
        values: init.to_host(),
        counters: init.counters.clone(),
    };
    if let Some(info) = weights_info(&weights.bytes, &weights.origin)? {
        info.check(spec)
            .with_context(|| format!("{}: the job spec does not fit these weights", weights.origin))?;
    }
    let state = read_model(plan, &weights.bytes, &weights.origin, &fallback, true)?;
    Ok(ParamStore::from_host(state.values, state.counters, device))
}
