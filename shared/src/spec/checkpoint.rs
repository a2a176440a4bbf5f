//! `[checkpoint]`: the checkpoint URI, cadence, retention and what a due
//! checkpoint does while the previous one uploads, with its validation.
//! The checkpoint layout is `crate::checkpoint`'s; writing is the worker's.

use super::{SpecError, field_err};
use serde::{Deserialize, Serialize};

/// `[checkpoint]`: where and how often checkpoints are written, and how many are kept.
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

impl CheckpointSpec {
    /// Checks `[checkpoint]`.
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if self.uri.trim().is_empty() {
            return Err(field_err("checkpoint.uri", "must name a folder or file:// URL"));
        }
        Ok(())
    }
}
