//! Backend selection: burn's flex CPU backend, or CUDA with the `cuda` feature.
//!
//! Choosing CUDA where it cannot run (no feature, no driver library, no such
//! device) is an error that says what to do, never a panic. [`with_backend!`](crate::with_backend)
//! runs a body generic over the backend with the one a job spec selects.
//! Also how CPU work splits into lanes (local ranks, probe batches) that
//! each run on a rayon pool of their own.

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

/// CPU threads for each of `lanes` concurrent lanes of work (local ranks,
/// probe batches) sharing `threads`: an equal share each (at least one), so
/// that one lane's serial stretches (autodiff bookkeeping, small element-wise
/// ops) overlap with another's matrix products instead of leaving cores
/// idle. None on a GPU, where the host threads only launch kernels and the
/// shared pool is kept.
pub fn threads_per_lane(backend: BackendKind, threads: usize, lanes: usize) -> Option<usize> {
    (backend == BackendKind::Cpu).then(|| (threads / lanes.max(1)).max(1))
}

/// Runs `f` on a rayon pool of its own with `threads` threads (all of the
/// lane's parallel loops and matrix products then stay on them), or on the
/// shared pool when None or when such a pool cannot be made.
pub fn on_own_pool<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> T {
    let Some(threads) = threads else { return f() };
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(f),
        Err(e) => {
            tracing::warn!(error = %e, "could not make a thread pool of {threads} threads; using the shared one");
            f()
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lanes_split_the_threads_and_gpu_lanes_share_them() {
        assert_eq!(threads_per_lane(BackendKind::Cpu, 2, 2), Some(1));
        assert_eq!(threads_per_lane(BackendKind::Cpu, 16, 3), Some(5));
        assert_eq!(threads_per_lane(BackendKind::Cpu, 2, 4), Some(1), "at least one each");
        assert_eq!(threads_per_lane(BackendKind::Cuda, 16, 2), None);
    }

    #[test]
    fn work_on_its_own_pool_sees_only_that_pool() {
        assert_eq!(on_own_pool(Some(1), rayon::current_num_threads), 1);
        assert_eq!(on_own_pool(None, rayon::current_num_threads), rayon::current_num_threads());
    }
}
