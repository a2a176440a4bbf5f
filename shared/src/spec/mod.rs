//! The job spec: what one training job is, as written by the user in TOML.
//!
//! Owns parsing (`load`: TOML file + `AMDIM_SECTION__FIELD` environment
//! overrides via the `config` crate), defaults from the spec (amdim-spec.md
//! §3–§6) and validation with errors that name the offending field: each
//! section's type sits next to its checks in a file of its own, and
//! [`JobSpec::validate`] runs them in a fixed order. It does not open
//! datasets or devices; that happens in the worker.

mod augment;
mod checkpoint;
mod data;
mod dist;
mod job;
mod load;
mod loss;
mod model;
mod runtime;
mod scheduling;
mod train;

pub use augment::AugmentSpec;
pub use checkpoint::{CheckpointSpec, WhenBusy};
pub use data::{DataFormat, DataSpec};
pub use dist::{DistBackend, DistSpec};
pub use job::JobSection;
pub use load::ENV_PREFIX;
pub use loss::{LossSpec, MixtureSpec};
pub use model::ModelSpec;
pub use runtime::{BackendKind, RuntimeSpec};
pub use scheduling::SchedulingSpec;
pub use train::{EvalSpec, LrSchedule, OptimSpec, TrainSpec};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Errors from reading or validating a job spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The text could not be read or parsed at all.
    #[error("cannot read job spec {path}: {message}")]
    Read {
        /// The file (or `<job spec>` for text).
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A field has a value the worker does not support.
    #[error("invalid job spec field `{field}`: {message}")]
    Field {
        /// The field, dotted (`train.batch_size`).
        field: String,
        /// What is wrong with its value.
        message: String,
    },
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
    /// `[job]`.
    pub job: JobSection,
    /// `[data]`.
    pub data: DataSpec,
    /// `[model]`.
    pub model: ModelSpec,
    /// `[loss]`.
    pub loss: LossSpec,
    /// `[augment]`.
    pub augment: AugmentSpec,
    /// `[train]`.
    pub train: TrainSpec,
    /// `[optim]`.
    pub optim: OptimSpec,
    /// `[eval]`.
    pub eval: EvalSpec,
    /// `[checkpoint]`.
    pub checkpoint: CheckpointSpec,
    /// `[runtime]`.
    pub runtime: RuntimeSpec,
    /// `[dist]`.
    pub dist: DistSpec,
    /// `[scheduling]`.
    pub scheduling: SchedulingSpec,
}

impl JobSpec {
    /// Checks every field against what the worker supports; the first
    /// field found wrong is named.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.scheduling.validate()?;
        self.dist.validate()?;
        self.model.validate()?;
        self.loss.validate()?;
        self.augment.validate()?;
        self.data.validate(&self.model)?;
        self.train.validate()?;
        self.optim.validate()?;
        self.eval.validate()?;
        self.checkpoint.validate()?;
        Ok(())
    }

    /// SHA-256 of the canonical JSON of the spec: recorded in checkpoint manifests.
    pub fn config_hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex(&Sha256::digest(&json))
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
