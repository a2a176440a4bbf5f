//! What the agent learns from a part it trains, as run observers: the
//! progress its heartbeats carry ([`Progress`]: step, total, smoothed
//! throughput, losses, accuracy — the coordinator's wire type lives here,
//! not in the training loop), the checkpoints to commit to the coordinator
//! ([`CheckpointCommits`]), and the observers of each local rank of a part
//! ([`PartObservers`]). Talking to the coordinator is `agent`'s.

use crate::metrics::WorkerMetrics;
use crate::train::eval::EvalResult;
use crate::train::observer::{Observers, RunObserver, StepReport, StepTiming};
use crate::train::sample_log::SampleLog;
use crate::train::step::StepMetrics;
use amdim_shared::proto::v1::TrainingStats;
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;

/// The step a run has reached, readable from another thread.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) step: AtomicU64,
    pub(crate) total: AtomicU64,
    /// Throughput (smoothed), losses and the last test accuracy.
    pub(crate) stats: std::sync::Mutex<Option<TrainingStats>>,
}

impl Progress {
    /// Folds in one step: rates are smoothed (weight 0.1 per step), losses
    /// and accuracy are the latest.
    pub(crate) fn record(&self, m: &StepMetrics, t: &StepTiming, world: usize, eval: Option<&EvalResult>) {
        const WEIGHT: f64 = 0.1;
        let rate = (t.samples * world) as f64 / t.total_s.max(1e-9);
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let s = stats.get_or_insert_with(|| TrainingStats {
            samples_per_second: rate,
            step_seconds: t.total_s,
            ..TrainingStats::default()
        });
        s.samples_per_second += WEIGHT * (rate - s.samples_per_second);
        s.step_seconds += WEIGHT * (t.total_s - s.step_seconds);
        (s.loss, s.loss_1t5, s.loss_1t7, s.loss_5t5) = (
            f64::from(m.loss),
            f64::from(m.loss_1t5),
            f64::from(m.loss_1t7),
            f64::from(m.loss_5t5),
        );
        s.linear_accuracy = eval.map(|e| e.linear);
        s.mlp_accuracy = eval.map(|e| e.mlp);
    }
}

impl RunObserver for Progress {
    fn on_start(&self, step: u64, total: u64) -> Result<()> {
        // A part resumed at step k is at k before its first update (at the
        // end, for one resumed from the final checkpoint: it trains none).
        self.step.store(step, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        Ok(())
    }

    fn on_update(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }

    fn on_step(&self, report: &StepReport<'_>) {
        self.record(report.metrics, report.timing, report.world, report.last_eval);
    }
}

/// Sends every complete checkpoint (step, bytes) to the agent, which
/// commits it to the coordinator: those the part writes, and the one it
/// resumed from (a generation ended early, by a coordinator restart say,
/// may have written it after its commits stopped being accepted; the
/// coordinator ignores a step it already has).
pub(crate) struct CheckpointCommits(Sender<(u64, u64)>);

impl CheckpointCommits {
    pub(crate) fn new(tx: Sender<(u64, u64)>) -> Self {
        Self(tx)
    }
}

impl RunObserver for CheckpointCommits {
    fn on_checkpoint_committed(&self, step: u64, bytes: u64, _seconds: f64) {
        let _ = self.0.send((step, bytes));
    }

    fn on_resumed(&self, step: u64, bytes: u64) {
        let _ = self.0.send((step, bytes));
    }
}

/// The observers shared by the local ranks of one part.
pub(crate) struct PartObservers {
    pub(crate) job_id: String,
    pub(crate) generation: u32,
    /// The rank that reports progress (every rank is at the same step).
    pub(crate) first_rank: usize,
    pub(crate) progress: Arc<Progress>,
    pub(crate) commits: Arc<CheckpointCommits>,
    /// Test mode: where each rank logs the sample indices it trains.
    pub(crate) sample_log_dir: Option<PathBuf>,
}

impl PartObservers {
    /// What local rank `rank` reports to: its metrics, the checkpoint
    /// commits, the part's progress (first rank only) and its sample log.
    pub(crate) fn for_rank(&self, rank: usize) -> Arc<dyn RunObserver> {
        let mut list: Vec<Arc<dyn RunObserver>> = vec![Arc::new(WorkerMetrics::global().for_run(&self.job_id, rank)), self.commits.clone()];
        if rank == self.first_rank {
            list.push(self.progress.clone());
        }
        if let Some(dir) = &self.sample_log_dir {
            let (job_id, generation) = (&self.job_id, self.generation);
            list.push(Arc::new(SampleLog::new(dir.join(format!("{job_id}-g{generation}-r{rank}.log")))));
        }
        Arc::new(Observers::new(list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_part_is_at_its_resume_step_before_its_first_update() {
        let p = Progress::default();
        p.on_start(253, 253).unwrap();
        assert_eq!((p.step.load(Ordering::Relaxed), p.total.load(Ordering::Relaxed)), (253, 253));
        p.on_start(200, 253).unwrap();
        p.on_update(201);
        assert_eq!(p.step.load(Ordering::Relaxed), 201);
    }
}
