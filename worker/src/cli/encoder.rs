//! The trained encoder that `embed` and `score` use: the flags that name it
//! (`--weights`, optional `--config`, `--backend`), the job spec it is used
//! with — the one its weights file describes, checked against `--config`
//! when both exist, or `--config` alone for files that do not describe
//! themselves — and the encoder loaded from it.

use crate::checkpoint::format::{HostState, read_model, weights_info};
use crate::cli::load_spec;
use crate::model::kernels::Kernels;
use crate::model::{ModelPlan, ParamStore};
use amdim_shared::spec::{BackendKind, JobSpec};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    match s {
        "cpu" => Ok(BackendKind::Cpu),
        "cuda" => Ok(BackendKind::Cuda),
        other => Err(format!("{other:?}: expected cpu or cuda")),
    }
}

/// A trained encoder: its weights and how to run it (flags shared by
/// `embed` and `score`).
#[derive(clap::Args)]
pub struct EncoderArgs {
    /// model.safetensors of a checkpoint (or of `amdimctl export`).
    #[arg(long)]
    pub weights: PathBuf,
    /// The job spec the weights were trained with. Weights written by
    /// training describe themselves, so it is optional for them (and
    /// checked against them when given); files without that description
    /// (e.g. converted from the authors' PyTorch code) need it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Compute backend, cpu or cuda (default: the config's
    /// `runtime.backend`, or cpu without --config).
    #[arg(long, value_parser = parse_backend)]
    pub backend: Option<BackendKind>,
}

/// A weights file read into memory, with the job spec to use it with.
pub struct WeightsFile {
    pub spec: JobSpec,
    pub bytes: Vec<u8>,
    /// The path, for error messages.
    pub name: String,
}

impl EncoderArgs {
    /// Reads the weights and settles the job spec (see [`open_weights`]).
    pub fn open(&self) -> Result<WeightsFile> {
        open_weights(&self.weights, self.config.as_deref(), self.backend)
    }
}

/// Reads `weights` and the spec to use it with: the weights' own
/// description, checked against `config` when both exist (the first field
/// that differs is an error); `config` alone for a file without one;
/// neither is an error that says to pass `--config`. `backend` overrides
/// the spec's `runtime.backend`; without `config` the runtime is the
/// default (CPU), not the one the weights were trained on.
pub fn open_weights(weights: &Path, config: Option<&Path>, backend: Option<BackendKind>) -> Result<WeightsFile> {
    let name = weights.display().to_string();
    let bytes = std::fs::read(weights).with_context(|| format!("reading weights {name}"))?;
    let info = weights_info(&bytes, &name)?;
    let mut spec = match (config, &info) {
        (Some(path), Some(info)) => {
            let spec = load_spec(path)?;
            info.check(&spec)
                .with_context(|| format!("--config {} does not fit --weights {name}", path.display()))?;
            spec
        }
        (Some(path), None) => load_spec(path)?,
        (None, Some(info)) => {
            let mut spec = info.job_spec();
            spec.runtime = Default::default();
            spec
        }
        (None, None) => bail!(
            "{name} does not say which model it holds (no amdim metadata: written before checkpoints described themselves, \
             or converted from other code); pass --config with the job spec it was trained with"
        ),
    };
    if let Some(kind) = backend {
        spec.runtime.backend = kind;
    }
    Ok(WeightsFile { spec, bytes, name })
}

/// The encoder-only model of `w.spec` with the file's weights (the
/// classifiers, if any, are not loaded).
pub fn load_encoder<B: Kernels>(w: &WeightsFile, device: &B::Device) -> Result<(ModelPlan, ParamStore<B>)> {
    let plan = crate::model::plan(&w.spec.model, &w.spec.loss, None);
    let init = ParamStore::<B>::init(&plan, w.spec.job.seed, device);
    let fallback = HostState {
        values: init.to_host(),
        counters: init.counters.clone(),
    };
    let state = read_model(&plan, &w.bytes, &w.name, &fallback, false)?;
    Ok((plan, ParamStore::from_host(state.values, state.counters, device)))
}
