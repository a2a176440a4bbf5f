//! `[dist]`: data-parallel options (BatchNorm sync, gradient buckets,
//! collective timeout, shared memory, transport), with their validation. The
//! collectives themselves are the worker's.

use super::{SpecError, field_err};
use serde::{Deserialize, Serialize};

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

/// Which transport the collectives use (`dist.backend`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DistBackend {
    /// NCCL on CUDA ranks, TCP (and shared memory) on CPU ranks.
    #[default]
    Auto,
    /// TCP (and shared memory) on host buffers, whatever the device.
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

impl DistSpec {
    /// Checks `[dist]`.
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if !(self.bucket_mib > 0.0 && self.bucket_mib.is_finite()) {
            return Err(field_err("dist.bucket_mib", "must be a positive number"));
        }
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) {
            return Err(field_err("dist.timeout_s", "must be a positive number of seconds"));
        }
        Ok(())
    }
}
