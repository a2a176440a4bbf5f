//! `[augment]`: which augmentations make the two views and how strong the
//! colour jitter is. Every combination of switches is valid; the strength is
//! checked here. Applying them is the worker's.

use super::{SpecError, field_err};
use serde::{Deserialize, Serialize};

/// `[augment]`: switches for each augmentation (docs/model.md §5).
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
    /// The jitter's strength s: brightness, contrast and saturation factors
    /// uniform in [1 − s, 1 + s] (torchvision's `ColorJitter(s, s, s, hue)`).
    pub jitter_strength: f64,
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
            jitter_strength: 0.4,
            grayscale: true,
            normalize: true,
        }
    }
}

impl AugmentSpec {
    /// Checks `[augment]`.
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if !(0.0..=1.0).contains(&self.jitter_strength) {
            return Err(field_err("augment.jitter_strength", "must be between 0 and 1"));
        }
        Ok(())
    }
}
