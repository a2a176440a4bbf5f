//! `[train]`, `[optim]` and `[eval]`: how long and how fast the job trains
//! and how it is evaluated, with their validation. The training loop is the
//! worker's.

use super::{SpecError, field_err};
use serde::{Deserialize, Serialize};

/// `[train]`: batch size and length of training.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSpec {
    /// Global batch G (images per step over all ranks).
    pub batch_size: usize,
    /// Passes over the training set.
    pub epochs: u64,
    /// Stop after this many global steps (0 = run all epochs).
    pub max_steps: u64,
    /// Log a line every this many steps.
    pub log_every: u64,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            batch_size: 200,
            epochs: 300,
            max_steps: 0,
            log_every: 10,
        }
    }
}

/// `[optim]`: Adam and its learning-rate schedule (docs/model.md §6).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSpec {
    /// Peak learning rate.
    pub lr: f64,
    /// Adam's first-moment decay.
    pub beta1: f64,
    /// Adam's second-moment decay.
    pub beta2: f64,
    /// Adam's epsilon.
    pub eps: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Linear warm-up over this many updates.
    pub warmup_steps: u64,
    /// Epochs after which the learning rate is multiplied by `gamma`.
    pub milestones: Vec<u64>,
    /// Factor applied to the learning rate at each milestone.
    pub gamma: f64,
    /// What follows the warm-up: the milestones' steps, or a cosine decay.
    pub schedule: LrSchedule,
}

/// The shape of the learning rate after the warm-up (docs/model.md §6).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `lr` multiplied by `gamma` at each of `milestones` (the authors' recipe).
    #[default]
    Milestones,
    /// Half a cosine from `lr` at the end of the warm-up to 0 at the run's
    /// last step (`milestones` ignored): for short runs, which end at a low
    /// learning rate instead of at the peak.
    Cosine,
}

impl Default for OptimSpec {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            beta1: 0.8,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-5,
            warmup_steps: 500,
            milestones: vec![250, 280],
            gamma: 0.2,
            schedule: LrSchedule::Milestones,
        }
    }
}

/// `[eval]`: the online classifiers that measure the representation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSpec {
    /// Train the online linear and MLP classifiers (needs labels).
    pub enabled: bool,
    /// Test batches run in train mode to refresh BN statistics before testing.
    pub bn_refresh_batches: usize,
    /// Evaluate on at most this many test samples (0 = all).
    pub max_test_samples: usize,
    /// Evaluate every this many epochs (and at the end).
    pub every_epochs: u64,
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            bn_refresh_batches: 50,
            max_test_samples: 0,
            every_epochs: 1,
        }
    }
}

impl TrainSpec {
    /// Checks `[train]`.
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if self.batch_size < 2 {
            return Err(field_err("train.batch_size", "must be at least 2 (NCE needs negatives)"));
        }
        if self.epochs == 0 {
            return Err(field_err("train.epochs", "must be at least 1"));
        }
        if self.log_every == 0 {
            return Err(field_err("train.log_every", "must be at least 1"));
        }
        Ok(())
    }
}

impl OptimSpec {
    /// Checks `[optim]`.
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(field_err("optim.lr", "must be a positive number"));
        }
        for (name, b) in [("optim.beta1", self.beta1), ("optim.beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(field_err(name, format!("must be in [0, 1), got {b}")));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(field_err("optim.eps", "must be a positive number"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(field_err("optim.weight_decay", "must be zero or positive"));
        }
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return Err(field_err("optim.gamma", "must be a positive number"));
        }
        if self.milestones.windows(2).any(|w| w[0] >= w[1]) {
            return Err(field_err("optim.milestones", "must be strictly increasing epochs"));
        }
        Ok(())
    }
}

impl EvalSpec {
    /// Checks `[eval]`.
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if self.every_epochs == 0 {
            return Err(field_err("eval.every_epochs", "must be at least 1"));
        }
        Ok(())
    }
}
