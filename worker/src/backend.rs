//! Backend selection: burn's flex CPU backend, or CUDA with the `cuda` feature.
//!
//! Choosing CUDA where it cannot run (no feature, no driver library, no such
//! device) is an error that says what to do, never a panic. [`with_backend!`](crate::with_backend)
//! runs a body generic over the backend with the one a job spec selects.

use amdim_shared::spec::BackendKind;

pub type Cpu = burn::backend::Flex;
#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Cuda;

/// Why a backend cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "runtime.backend = \"cuda\" but this binary was built without CUDA support; rebuild with `cargo build --release --features cuda`"
    )]
    NotBuilt,
    #[error("runtime.backend = \"cuda\" but the CUDA driver library (libcuda.so) cannot be loaded: {0}")]
    NoDriver(String),
    #[error("runtime.device = {index}, but only {count} CUDA device(s) are visible")]
    NoDevice { index: usize, count: usize },
}

/// Checks that CUDA device `index` exists before burn touches it.
#[cfg(feature = "cuda")]
pub fn check_cuda(index: usize) -> Result<(), BackendError> {
    use cudarc::driver::{result, sys};
    // SAFETY: only probes whether the driver library can be loaded.
    if !unsafe { sys::is_culib_present() } {
        return Err(BackendError::NoDriver("library not found".into()));
    }
    result::init().map_err(|e| BackendError::NoDriver(e.to_string()))?;
    let count = result::device::get_count().map_err(|e| BackendError::NoDriver(e.to_string()))? as usize;
    if index >= count {
        return Err(BackendError::NoDevice { index, count });
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
pub fn check_cuda(_index: usize) -> Result<(), BackendError> {
    Err(BackendError::NotBuilt)
}

/// Validates the requested backend; Ok(kind) when it can run.
pub fn check(kind: BackendKind, device: usize) -> Result<BackendKind, BackendError> {
    match kind {
        BackendKind::Cpu => Ok(kind),
        BackendKind::Cuda => check_cuda(device).map(|_| kind),
    }
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
