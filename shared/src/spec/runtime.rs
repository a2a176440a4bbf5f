//! `[runtime]`: the compute backend and device. Every value is valid here;
//! whether the device exists is the worker's to find out.

use serde::{Deserialize, Serialize};

/// Compute backend.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The CPU (burn's flex backend).
    Cpu,
    /// An NVIDIA GPU.
    Cuda,
}

/// `[runtime]`: the device a rank computes on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSpec {
    /// The compute backend.
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
