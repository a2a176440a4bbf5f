//! The job spec: what one training job is, as written by the user in TOML.
//!
//! Owns parsing (TOML file + `AMDIM_SECTION__FIELD` environment overrides via
//! the `config` crate), defaults from the spec (amdim-spec.md §3–§6) and
//! validation with errors that name the offending field. It does not open
//! datasets or devices; that happens in the worker.

use crate::order::LastBatch;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Errors from reading or validating a job spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read job spec {path}: {message}")]
    Read { path: String, message: String },
    #[error("invalid job spec field `{field}`: {message}")]
    Field { field: String, message: String },
}

fn field_err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError::Field {
        field: field.to_string(),
        message: message.into(),
    }
}

/// A whole job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct JobSpec {
    pub job: JobSection,
    pub data: DataSpec,
    pub model: ModelSpec,
    pub loss: LossSpec,
    pub augment: AugmentSpec,
    pub train: TrainSpec,
    pub optim: OptimSpec,
    pub eval: EvalSpec,
    pub checkpoint: CheckpointSpec,
    pub runtime: RuntimeSpec,
    pub dist: DistSpec,
    pub scheduling: SchedulingSpec,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobSection {
    /// Job name, used in logs and as the default run folder.
    pub name: String,
    /// Seed of every random stream (order, augmentation, locations, init).
    pub seed: u64,
}

impl Default for JobSection {
    fn default() -> Self {
        Self {
            name: "amdim".into(),
            seed: 1,
        }
    }
}

/// On-disk format of a dataset.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// MNIST/Fashion-MNIST IDX files (optionally gzipped).
    Idx,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// CIFAR-100 binary (fine labels).
    Cifar100,
    /// Random images, for benchmarks and smoke tests.
    Synthetic,
    /// JPEG/PNG files in the ImageNet layout: `<path>/train/<class>/*`, and
    /// optionally `<path>/val/<class>/*`; classes sorted by name. `path` may
    /// be a folder or a `file://` / `s3://` URI.
    ImageFolder,
    /// A packed dataset (`amdimctl dataset pack`): tar shards with index and
    /// manifest under `<path>/train/` and optionally `<path>/val/`; `path` is
    /// a folder or a `file://` / `s3://` URI.
    Shards,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataSpec {
    pub format: DataFormat,
    /// Folder (or, for image_folder and shards, `file://` / `s3://` URI)
    /// holding the dataset.
    pub path: String,
    /// Use at most this many training samples (0 = all).
    pub max_train_samples: usize,
    /// Samples in a synthetic dataset.
    pub synthetic_samples: usize,
    pub last_batch: LastBatch,
    /// Largest image (width × height) decoded; bigger files are skipped as
    /// decompression bombs.
    pub max_pixels: u64,
    /// Threads decoding and augmenting images (0 = one per core).
    pub workers: usize,
    /// Batches prepared ahead of the training step (bounds memory).
    pub prefetch_batches: usize,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            format: DataFormat::Idx,
            path: "/usr/share/datasets/fashion-mnist".into(),
            max_train_samples: 0,
            synthetic_samples: 1024,
            last_batch: LastBatch::Drop,
            max_pixels: 64 * 1024 * 1024,
            workers: 0,
            prefetch_batches: 2,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSpec {
    /// Input size: 32, 64 or 128 (selects the encoder of spec §2).
    pub image_size: usize,
    pub ndf: usize,
    /// Embedding width D.
    pub n_rkhs: usize,
    /// Residual units per block.
    pub depth: usize,
    pub use_bn: bool,
    pub init_scale: f64,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            image_size: 32,
            ndf: 128,
            n_rkhs: 1024,
            depth: 3,
            use_bn: false,
            init_scale: 1.0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MixtureSpec {
    /// Mixture components; 1 turns mixtures off.
    pub k: usize,
    /// Inverse temperature of the component posterior.
    pub tau: f64,
    /// Weight of the posterior's entropy bonus.
    pub alpha: f64,
}

impl Default for MixtureSpec {
    fn default() -> Self {
        Self {
            k: 1,
            tau: 0.1,
            alpha: 0.05,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LossSpec {
    /// Soft clip c of the scores.
    pub tclip: f64,
    /// Regulariser weight λ (paper 4e-2; the authors' code 5e-2).
    pub reg_lambda: f64,
    /// Switch individual tasks off (the paper's multiscale ablation).
    pub task_1t5: bool,
    pub task_1t7: bool,
    pub task_5t5: bool,
    pub mixture: MixtureSpec,
}

impl Default for LossSpec {
    fn default() -> Self {
        Self {
            tclip: 20.0,
            reg_lambda: 4e-2,
            task_1t5: true,
            task_1t7: true,
            task_5t5: true,
            mixture: MixtureSpec::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSpec {
    /// Shared horizontal flip (p 0.5) before the two views.
    pub flip: bool,
    /// 32 px: random translation (±4 px, reflect padding) with p 0.8.
    pub translate: bool,
    /// 64/128 px: RandomResizedCrop (scale 0.3–1, ratio 0.7–1.4); off = the
    /// evaluation transform (resize, centre crop).
    pub crop: bool,
    /// Colour jitter with p 0.8.
    pub color_jitter: bool,
    /// Random grayscale with p 0.25.
    pub grayscale: bool,
    /// Per-channel mean/std normalisation.
    pub normalize: bool,
}

impl Default for AugmentSpec {
    fn default() -> Self {
        Self {
            flip: true,
            translate: true,
            crop: true,
            color_jitter: true,
            grayscale: true,
            normalize: true,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSpec {
    /// Global batch G (images per step over all ranks).
    pub batch_size: usize,
    pub epochs: u64,
    /// Stop after this many global steps (0 = run all epochs).
    pub max_steps: u64,
    /// Log a line every this many steps.
    pub log_every: u64,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            batch_size: 200,
            epochs: 300,
            max_steps: 0,
            log_every: 10,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSpec {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Linear warm-up over this many updates.
    pub warmup_steps: u64,
    /// Epochs after which the learning rate is multiplied by `gamma`.
    pub milestones: Vec<u64>,
    pub gamma: f64,
}

impl Default for OptimSpec {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            beta1: 0.8,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-5,
            warmup_steps: 500,
            milestones: vec![250, 280],
            gamma: 0.2,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSpec {
    /// Train the online linear and MLP classifiers (needs labels).
    pub enabled: bool,
    /// Test batches run in train mode to refresh BN statistics before testing.
    pub bn_refresh_batches: usize,
    /// Evaluate on at most this many test samples (0 = all).
    pub max_test_samples: usize,
    /// Evaluate every this many epochs (and at the end).
    pub every_epochs: u64,
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            bn_refresh_batches: 50,
            max_test_samples: 0,
            every_epochs: 1,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSpec {
    /// Folder or URL (`file://…`) under which `step-…/` folders are written.
    pub uri: String,
    /// Write a checkpoint every this many steps (0 = only at the end).
    pub every_steps: u64,
    /// Keep only the newest K complete checkpoints (0 = keep all).
    pub keep: usize,
    /// Also keep, beyond `keep`, every checkpoint whose step is a multiple
    /// of this (e.g. one per epoch; 0 = none).
    pub keep_every_steps: u64,
    /// What a due checkpoint does while the previous one is still uploading
    /// (slow or unreachable storage).
    pub when_busy: WhenBusy,
}

/// See [`CheckpointSpec::when_busy`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenBusy {
    /// Keep training and take the checkpoint at the first step after the
    /// upload finished (so it may land a few steps late). Checkpoints that
    /// `keep_every_steps` keeps, and the last one, still wait.
    Defer,
    /// Block training until the previous upload has finished, so that
    /// checkpoints land exactly every `every_steps`.
    Wait,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self {
            uri: "runs/amdim/checkpoints".into(),
            every_steps: 500,
            keep: 3,
            keep_every_steps: 0,
            when_busy: WhenBusy::Defer,
        }
    }
}

/// Compute backend.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Cpu,
    Cuda,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSpec {
    pub backend: BackendKind,
    /// CUDA device index.
    pub device: usize,
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        Self {
            backend: BackendKind::Cpu,
            device: 0,
        }
    }
}

/// How the coordinator runs the job: a generation starts when at least
/// `min_workers` are free and takes up to `max_workers`, so that the ranks
/// (workers × `devices_per_worker`) divide the global batch; higher
/// priority first, then first come.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingSpec {
    pub min_workers: u32,
    pub max_workers: u32,
    /// Ranks each worker drives, one per device (runtime.device, +1, …); only
    /// workers that registered at least this many devices are chosen.
    pub devices_per_worker: u32,
    pub priority: i32,
    /// Generations that may end early (lost worker, failed collective)
    /// before the job fails.
    pub max_restarts: u32,
}

impl Default for SchedulingSpec {
    fn default() -> Self {
        Self {
            min_workers: 1,
            max_workers: 1,
            devices_per_worker: 1,
            priority: 0,
            max_restarts: 3,
        }
    }
}

/// Data-parallel training across ranks (one rank per device). Which rank a
/// process is and where its peers are is not part of the job: it comes from
/// the rendezvous (`amdim-worker train --rank … --world-size …`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistSpec {
    /// Synchronise BatchNorm batch statistics across ranks (the global batch
    /// is normalised as one). Off: per-rank statistics, as the authors' code.
    pub sync_bn: bool,
    /// Gradients are averaged in buckets of about this many MiB.
    pub bucket_mib: f64,
    /// Seconds a collective waits for its peers before failing the step.
    pub timeout_s: f64,
    /// Ranks on one host (same IPC namespace and user) move ring data
    /// through shared memory (`/dev/shm`) instead of loopback TCP.
    pub shared_memory: bool,
    /// Collective transport: `auto` (NCCL on CUDA ranks, TCP on CPU ranks)
    /// or `tcp` (host buffers over TCP/shared memory on any backend, e.g.
    /// several CUDA ranks sharing one GPU, which NCCL refuses).
    pub backend: DistBackend,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DistBackend {
    #[default]
    Auto,
    Tcp,
}

impl Default for DistSpec {
    fn default() -> Self {
        Self {
            sync_bn: false,
            bucket_mib: 25.0,
            timeout_s: 300.0,
            shared_memory: true,
            backend: DistBackend::Auto,
        }
    }
}

/// Prefix of environment overrides: `AMDIM_TRAIN__BATCH_SIZE=64` sets
/// `train.batch_size`. Only variables with the `__` separator are read, so
/// unrelated `AMDIM_…` variables do not turn into unknown fields.
pub const ENV_PREFIX: &str = "AMDIM_";

impl JobSpec {
    /// The spec as TOML, every field spelled out: what `amdimctl submit`
    /// sends, so that the environment overrides applied here travel with it.
    pub fn to_toml(&self) -> Result<String, SpecError> {
        toml::to_string(self).map_err(|e| field_err("(whole spec)", e.to_string()))
    }

    /// Reads a TOML job spec, applies `AMDIM_…` environment overrides and validates.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::from_toml_with_env(&text, &env).map_err(|e| match e {
            SpecError::Read { message, .. } => SpecError::Read {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text with the given environment (pure, for tests).
    pub fn from_toml_with_env(text: &str, env: &[(String, String)]) -> Result<Self, SpecError> {
        let overrides: std::collections::HashMap<String, String> = env
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(ENV_PREFIX)?;
                rest.contains("__").then(|| (rest.to_lowercase().replace("__", "."), v.clone()))
            })
            .collect();
        let mut builder = config::Config::builder().add_source(config::File::from_str(text, config::FileFormat::Toml));
        for (key, value) in &overrides {
            builder = builder
                .set_override(key.as_str(), parse_env_value(value))
                .map_err(|e| field_err(key, e.to_string()))?;
        }
        let cfg = builder.build().map_err(|e| SpecError::Read {
            path: "<job spec>".into(),
            message: e.to_string(),
        })?;
        let spec: JobSpec = cfg.try_deserialize().map_err(config_error)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field against what the worker supports.
    pub fn validate(&self) -> Result<(), SpecError> {
        let sch = &self.scheduling;
        if sch.min_workers == 0 {
            return Err(field_err("scheduling.min_workers", "must be at least 1"));
        }
        if sch.devices_per_worker == 0 {
            return Err(field_err("scheduling.devices_per_worker", "must be at least 1"));
        }
        if sch.max_workers < sch.min_workers {
            return Err(field_err(
                "scheduling.max_workers",
                format!("must be at least scheduling.min_workers = {}", sch.min_workers),
            ));
        }
        if !(self.dist.bucket_mib > 0.0 && self.dist.bucket_mib.is_finite()) {
            return Err(field_err("dist.bucket_mib", "must be a positive number"));
        }
        if !(self.dist.timeout_s > 0.0 && self.dist.timeout_s.is_finite()) {
            return Err(field_err("dist.timeout_s", "must be a positive number of seconds"));
        }
        let m = &self.model;
        if ![32, 64, 128].contains(&m.image_size) {
            return Err(field_err(
                "model.image_size",
                format!("must be 32, 64 or 128, got {}", m.image_size),
            ));
        }
        for (name, v) in [("model.ndf", m.ndf), ("model.n_rkhs", m.n_rkhs), ("model.depth", m.depth)] {
            if v == 0 {
                return Err(field_err(name, "must be at least 1"));
            }
        }
        let trunk_width = if m.image_size == 32 { 4 * m.ndf } else { 8 * m.ndf };
        if m.n_rkhs < trunk_width {
            return Err(field_err(
                "model.n_rkhs",
                format!(
                    "must be at least the trunk width ({trunk_width} = {}·ndf); residual units cannot shrink channels",
                    trunk_width / m.ndf
                ),
            ));
        }
        if !(m.init_scale.is_finite() && m.init_scale > 0.0) {
            return Err(field_err("model.init_scale", "must be a positive number"));
        }
        let l = &self.loss;
        if !(l.tclip.is_finite() && l.tclip > 0.0) {
            return Err(field_err("loss.tclip", "must be a positive number"));
        }
        if !(l.reg_lambda.is_finite() && l.reg_lambda >= 0.0) {
            return Err(field_err("loss.reg_lambda", "must be zero or positive"));
        }
        if !(l.task_1t5 || l.task_1t7 || l.task_5t5) {
            return Err(field_err(
                "loss.task_1t5",
                "at least one of task_1t5, task_1t7, task_5t5 must be on",
            ));
        }
        if l.mixture.k == 0 {
            return Err(field_err("loss.mixture.k", "must be at least 1 (1 = no mixture)"));
        }
        if self.data.format != DataFormat::Synthetic && self.data.path.trim().is_empty() {
            return Err(field_err("data.path", "must name the dataset folder"));
        }
        if self.data.format == DataFormat::Synthetic && self.data.synthetic_samples == 0 {
            return Err(field_err("data.synthetic_samples", "must be at least 1"));
        }
        if matches!(self.data.format, DataFormat::Idx | DataFormat::Cifar10 | DataFormat::Cifar100) && m.image_size != 32 {
            return Err(field_err(
                "model.image_size",
                format!("{:?} images are 32×32 after padding; set image_size = 32", self.data.format),
            ));
        }
        if self.data.max_pixels == 0 {
            return Err(field_err("data.max_pixels", "must be at least 1"));
        }
        if self.data.prefetch_batches == 0 {
            return Err(field_err("data.prefetch_batches", "must be at least 1"));
        }
        let t = &self.train;
        if t.batch_size < 2 {
            return Err(field_err("train.batch_size", "must be at least 2 (NCE needs negatives)"));
        }
        if t.epochs == 0 {
            return Err(field_err("train.epochs", "must be at least 1"));
        }
        if t.log_every == 0 {
            return Err(field_err("train.log_every", "must be at least 1"));
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(field_err("optim.lr", "must be a positive number"));
        }
        for (name, b) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(field_err(name, format!("must be in [0, 1), got {b}")));
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return Err(field_err("optim.eps", "must be a positive number"));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(field_err("optim.weight_decay", "must be zero or positive"));
        }
        if !(o.gamma.is_finite() && o.gamma > 0.0) {
            return Err(field_err("optim.gamma", "must be a positive number"));
        }
        if o.milestones.windows(2).any(|w| w[0] >= w[1]) {
            return Err(field_err("optim.milestones", "must be strictly increasing epochs"));
        }
        if self.eval.every_epochs == 0 {
            return Err(field_err("eval.every_epochs", "must be at least 1"));
        }
        if self.checkpoint.uri.trim().is_empty() {
            return Err(field_err("checkpoint.uri", "must name a folder or file:// URL"));
        }
        Ok(())
    }

    /// SHA-256 of the canonical JSON of the spec: recorded in checkpoint manifests.
    pub fn config_hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex(&Sha256::digest(&json))
    }
}

/// Environment values are strings; numbers and booleans are parsed so that
/// `AMDIM_TRAIN__BATCH_SIZE=64` lands as an integer.
fn parse_env_value(v: &str) -> config::Value {
    if let Ok(i) = v.parse::<i64>() {
        return i.into();
    }
    if let Ok(f) = v.parse::<f64>() {
        return f.into();
    }
    match v {
        "true" => true.into(),
        "false" => false.into(),
        _ => v.into(),
    }
}

fn config_error(e: config::ConfigError) -> SpecError {
    // `config` reports "... for key `train.batch_size`" or "unknown field `x`"; keep its words.
    let message = e.to_string();
    let field = message
        .split("key `")
        .nth(1)
        .and_then(|s| s.split('`').next())
        .map(str::to_string)
        .or_else(|| {
            message
                .split("unknown field `")
                .nth(1)
                .and_then(|s| s.split('`').next())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "<spec>".into());
    SpecError::Field { field, message }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_examples_survive_a_round_trip_through_to_toml() {
        for file in ["fashion-mnist.toml", "cifar-bench.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            let env = vec![("AMDIM_TRAIN__EPOCHS".to_string(), "7".to_string())];
            let spec = JobSpec::from_toml_with_env(&text, &env).unwrap();
            let again = JobSpec::from_toml_with_env(&spec.to_toml().unwrap(), &[]).unwrap();
            assert_eq!(again, spec, "{file}");
            assert_eq!(again.train.epochs, 7);
        }
    }

    use super::*;

    #[test]
    fn defaults_follow_the_spec() {
        let s = JobSpec::from_toml_with_env("", &[]).unwrap();
        assert_eq!(s.loss.reg_lambda, 4e-2);
        assert_eq!(s.loss.tclip, 20.0);
        assert_eq!((s.optim.beta1, s.optim.beta2, s.optim.lr), (0.8, 0.999, 2e-4));
        assert_eq!(s.optim.warmup_steps, 500);
        assert_eq!(s.loss.mixture.k, 1);
    }

    #[test]
    fn env_overrides_win_and_are_typed() {
        let env = vec![
            ("AMDIM_TRAIN__BATCH_SIZE".to_string(), "64".to_string()),
            ("AMDIM_LOSS__MIXTURE__K".to_string(), "3".to_string()),
            ("AMDIM_LOG".to_string(), "ignored".to_string()),
        ];
        let s = JobSpec::from_toml_with_env("[train]\nbatch_size = 8\n", &env).unwrap();
        assert_eq!(s.train.batch_size, 64);
        assert_eq!(s.loss.mixture.k, 3);
    }

    #[test]
    fn errors_name_the_field() {
        let e = JobSpec::from_toml_with_env("[model]\nimage_size = 48\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.image_size") && e.contains("48"), "{e}");
        let e = JobSpec::from_toml_with_env("[train]\nbatch_sizee = 4\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_sizee"), "{e}");
        let e = JobSpec::from_toml_with_env("[train]\nbatch_size = \"many\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
        let e = JobSpec::from_toml_with_env("[optim]\nbeta1 = 1.5\n", &[]).unwrap_err().to_string();
        assert!(e.contains("optim.beta1"), "{e}");
    }
}
