//! The `amdim-worker` commands, each a thin layer over the library:
//! `train` (one rank or several), `gradients`, `embed`, `score` and the benchmarks. Every command picks the backend from
//! the job spec (`runtime.backend`) and reports bad input with the file or
//! field it came from.

pub mod dist;
pub mod embed;
pub mod gradients;
pub mod probe;

use amdim_shared::spec::{BackendKind, JobSpec};
use anyhow::{Context, Result};
use std::path::Path;

/// Loads and validates a job spec, naming the file on error.
pub fn load_spec(path: &Path) -> Result<JobSpec> {
    JobSpec::load(path).with_context(|| format!("job spec {}", path.display()))
}

/// Runs `f` with the backend the spec selects.
#[macro_export]
macro_rules! with_backend {
    ($spec:expr, |$B:ident, $device:ident| $body:expr) => {{
        match $crate::backend::check($spec.runtime.backend, $spec.runtime.device)? {
            amdim_shared::spec::BackendKind::Cpu => {
                type $B = $crate::backend::Cpu;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            amdim_shared::spec::BackendKind::Cuda => {
                type $B = $crate::backend::Gpu;
                let $device = burn::backend::cuda::CudaDevice::new($spec.runtime.device);
                $body
            }
            #[cfg(not(feature = "cuda"))]
            amdim_shared::spec::BackendKind::Cuda => unreachable!("check() refuses CUDA without the feature"),
        }
    }};
}

pub fn backend_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Cpu => "cpu-flex",
        BackendKind::Cuda => "cuda",
    }
}
