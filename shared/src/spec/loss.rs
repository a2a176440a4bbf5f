//! `[loss]` and `[loss.mixture]`: which NCE tasks run and their constants,
//! with their validation. The loss itself is the worker's.

use super::{SpecError, field_err};
use serde::{Deserialize, Serialize};

/// `[loss.mixture]`: mixture-based NCE (docs/model.md §4).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MixtureSpec {
    /// Mixture components; 1 turns mixtures off.
    pub k: usize,
    /// Inverse temperature of the component posterior.
    pub tau: f64,
    /// Weight of the posterior's entropy bonus.
    pub alpha: f64,
}

impl Default for MixtureSpec {
    fn default() -> Self {
        Self {
            k: 1,
            tau: 0.1,
            alpha: 0.05,
        }
    }
}

/// `[loss]`: the NCE tasks and their regularisation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LossSpec {
    /// Soft clip c of the scores.
    pub tclip: f64,
    /// Regulariser weight λ (paper 4e-2; the authors' code 5e-2).
    pub reg_lambda: f64,
    /// Switch individual tasks off (the paper's multiscale ablation):
    /// the global-to-5×5 task.
    pub task_1t5: bool,
    /// The global-to-7×7 task.
    pub task_1t7: bool,
    /// The 5×5-to-5×5 task.
    pub task_5t5: bool,
    /// Mixture-based NCE.
    pub mixture: MixtureSpec,
}

impl Default for LossSpec {
    fn default() -> Self {
        Self {
            tclip: 20.0,
            reg_lambda: 4e-2,
            task_1t5: true,
            task_1t7: true,
            task_5t5: true,
            mixture: MixtureSpec::default(),
        }
    }
}

impl LossSpec {
    /// Checks `[loss]` and `[loss.mixture]`.
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if !(self.tclip.is_finite() && self.tclip > 0.0) {
            return Err(field_err("loss.tclip", "must be a positive number"));
        }
        if !(self.reg_lambda.is_finite() && self.reg_lambda >= 0.0) {
            return Err(field_err("loss.reg_lambda", "must be zero or positive"));
        }
        if !(self.task_1t5 || self.task_1t7 || self.task_5t5) {
            return Err(field_err(
                "loss.task_1t5",
                "at least one of task_1t5, task_1t7, task_5t5 must be on",
            ));
        }
        if self.mixture.k == 0 {
            return Err(field_err("loss.mixture.k", "must be at least 1 (1 = no mixture)"));
        }
        Ok(())
    }
}
