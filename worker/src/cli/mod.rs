//! The `amdim-worker` commands, each a thin layer over the library:
//! `train` (one rank or several), `gradients`, `embed`, `score` and the benchmarks. Every command picks the backend from
//! the job spec (`runtime.backend`) and reports bad input with the file or
//! field it came from.

pub mod dist;
pub mod embed;
pub mod gradients;

use amdim_shared::spec::{BackendKind, JobSpec};
use anyhow::{Context, Result};
use std::path::Path;

/// Loads and validates a job spec, naming the file on error.
pub fn load_spec(path: &Path) -> Result<JobSpec> {
    JobSpec::load(path).with_context(|| format!("job spec {}", path.display()))
}

pub fn backend_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Cpu => "cpu-flex",
        BackendKind::Cuda => "cuda",
    }
}
