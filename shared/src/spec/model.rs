//! `[model]`: the encoder's input size and widths, with their validation.
//! Building the network is the worker's.

use super::{SpecError, field_err};
use serde::{Deserialize, Serialize};

/// `[model]`: the encoder's size (docs/model.md §2).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSpec {
    /// Input size: 32, 64 or 128 (selects the encoder of docs/model.md §2).
    pub image_size: usize,
    /// Base channel width `ndf` of the encoder.
    pub ndf: usize,
    /// Embedding width D.
    pub n_rkhs: usize,
    /// Residual units per block.
    pub depth: usize,
    /// BatchNorm in the encoder's branches and in `f7` (docs/model.md §2).
    pub use_bn: bool,
    /// Factor on the Kaiming-uniform initial weights.
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

impl ModelSpec {
    /// Checks `[model]` on its own.
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if ![32, 64, 128].contains(&self.image_size) {
            return Err(field_err(
                "model.image_size",
                format!("must be 32, 64 or 128, got {}", self.image_size),
            ));
        }
        for (name, v) in [("model.ndf", self.ndf), ("model.n_rkhs", self.n_rkhs), ("model.depth", self.depth)] {
            if v == 0 {
                return Err(field_err(name, "must be at least 1"));
            }
        }
        let trunk_width = if self.image_size == 32 { 4 * self.ndf } else { 8 * self.ndf };
        if self.n_rkhs < trunk_width {
            return Err(field_err(
                "model.n_rkhs",
                format!(
                    "must be at least the trunk width ({trunk_width} = {}·ndf); residual units cannot shrink channels",
                    trunk_width / self.ndf
                ),
            ));
        }
        if !(self.init_scale.is_finite() && self.init_scale > 0.0) {
            return Err(field_err("model.init_scale", "must be a positive number"));
        }
        Ok(())
    }
}
