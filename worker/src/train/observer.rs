//! What a training run tells the rest of the worker while it runs: one
//! [`RunObserver`] trait whose methods are the run's events (start, each
//! batch, each update, evaluations, checkpoints, each finished step), all
//! no-ops by default, and [`Observers`], which tells a list of them in order.
//! Metrics, the agent's heartbeat progress, checkpoint commits and the
//! test-only sample log are observers; the loop knows none of them.
//!
//! This module only defines the events; it must not decide anything about
//! training (an observer sees the run, it cannot steer it — except that
//! `on_start` and `on_batch` may fail the run, as a sample log that cannot be
//! written must).

use crate::checkpoint::writer::{OnUpload, UploadEvent};
use crate::train::eval::EvalResult;
use crate::train::step::StepMetrics;
use anyhow::Result;
use std::sync::Arc;

/// What one step measured, beyond the trainer's `StepMetrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTiming {
    /// Images this rank trained on.
    pub samples: usize,
    pub data_wait_s: f64,
    /// Time the checkpoint snapshot blocked the step.
    pub checkpoint_s: f64,
    /// Wall time of the whole step.
    pub total_s: f64,
    /// Compute time beyond the fastest rank's (0 for one rank).
    pub lag_s: f64,
}

/// Everything a finished step reports.
pub struct StepReport<'a> {
    pub metrics: &'a StepMetrics,
    pub timing: &'a StepTiming,
    /// Ranks in the world.
    pub world: usize,
    /// The run's newest evaluation, if one has run.
    pub last_eval: Option<&'a EvalResult>,
    /// Training samples skipped so far because their bytes could not be
    /// decoded (or were missing from the dataset).
    pub skipped_samples: u64,
    /// Reads of training data retried so far because the store did not answer.
    pub read_retries: u64,
}

/// The events of one rank's run, in the order a step raises them. Called
/// on the training thread, except the checkpoint upload events, which come
/// from the uploader thread.
#[allow(unused_variables)]
pub trait RunObserver: Send + Sync {
    /// The run starts at `step` (after any resume) and trains to `total`.
    fn on_start(&self, step: u64, total: u64) -> Result<()> {
        Ok(())
    }
    /// Step `step` of `epoch` is about to train on these samples (global
    /// indices, this rank's slice).
    fn on_batch(&self, step: u64, epoch: u64, indices: &[u32]) -> Result<()> {
        Ok(())
    }
    /// The update is applied: the run has reached `step` (before that
    /// step's evaluation and checkpoint).
    fn on_update(&self, step: u64) {}
    /// The test accuracy after a step.
    fn on_eval(&self, result: &EvalResult) {}
    /// A checkpoint due at `step` waits for the previous upload to finish.
    fn on_checkpoint_deferred(&self, step: u64) {}
    /// A step has finished, its checkpoint snapshot included.
    fn on_step(&self, report: &StepReport<'_>) {}
    /// The checkpoint of `step` is complete: `bytes` in its files, written
    /// in `seconds` (uploader thread).
    fn on_checkpoint_committed(&self, step: u64, bytes: u64, seconds: f64) {}
    /// The checkpoint of `step` was given up (uploader thread).
    fn on_checkpoint_abandoned(&self, step: u64) {}
    /// The run resumed from the complete checkpoint of `step` (`bytes` in
    /// its files); told by rank 0 only, before `on_start`.
    fn on_resumed(&self, step: u64, bytes: u64) {}
    /// After the checkpoint of `step` was written, deleting `failures` older
    /// ones failed (uploader thread); pruning is tried again later.
    fn on_checkpoint_prune_failed(&self, step: u64, failures: usize) {}
}

/// Several observers, told in order; empty: nobody listens.
#[derive(Default)]
pub struct Observers(Vec<Arc<dyn RunObserver>>);

impl Observers {
    pub fn new(list: Vec<Arc<dyn RunObserver>>) -> Self {
        Self(list)
    }
}

impl RunObserver for Observers {
    fn on_start(&self, step: u64, total: u64) -> Result<()> {
        self.0.iter().try_for_each(|o| o.on_start(step, total))
    }
    fn on_batch(&self, step: u64, epoch: u64, indices: &[u32]) -> Result<()> {
        self.0.iter().try_for_each(|o| o.on_batch(step, epoch, indices))
    }
    fn on_update(&self, step: u64) {
        self.0.iter().for_each(|o| o.on_update(step));
    }
    fn on_eval(&self, result: &EvalResult) {
        self.0.iter().for_each(|o| o.on_eval(result));
    }
    fn on_checkpoint_deferred(&self, step: u64) {
        self.0.iter().for_each(|o| o.on_checkpoint_deferred(step));
    }
    fn on_step(&self, report: &StepReport<'_>) {
        self.0.iter().for_each(|o| o.on_step(report));
    }
    fn on_checkpoint_committed(&self, step: u64, bytes: u64, seconds: f64) {
        self.0.iter().for_each(|o| o.on_checkpoint_committed(step, bytes, seconds));
    }
    fn on_checkpoint_abandoned(&self, step: u64) {
        self.0.iter().for_each(|o| o.on_checkpoint_abandoned(step));
    }
    fn on_resumed(&self, step: u64, bytes: u64) {
        self.0.iter().for_each(|o| o.on_resumed(step, bytes));
    }
    fn on_checkpoint_prune_failed(&self, step: u64, failures: usize) {
        self.0.iter().for_each(|o| o.on_checkpoint_prune_failed(step, failures));
    }
}

/// The checkpoint writer's upload events, passed on to `observer`.
pub fn upload_events(observer: Arc<dyn RunObserver>) -> OnUpload {
    Arc::new(move |event| match event {
        UploadEvent::Written { step, bytes, seconds } => observer.on_checkpoint_committed(step, bytes, seconds),
        UploadEvent::Abandoned { step } => observer.on_checkpoint_abandoned(step),
        UploadEvent::PruneFailed { step, failures } => observer.on_checkpoint_prune_failed(step, failures),
    })
}
