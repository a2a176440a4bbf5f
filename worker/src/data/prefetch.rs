//! Batches built ahead of the training step: one producer thread walks the
//! global sample order (`amdim_shared::order`) from a start step, takes this
//! rank's slice of each global batch, and hands finished batches, in step
//! order, through a bounded queue. A full queue
//! blocks the producer (back-pressure, bounded memory); dropping the
//! receiver or raising the stop flag ends it. A batch that cannot be built
//! (the dataset's store is unreachable) is sent as its error, and ends it.

use crate::data::dataset::DataError;
use crate::data::pipeline::{Pipeline, TrainBatch};
use amdim_shared::order::{epoch_permutation, global_batch, rank_slice, step_position};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::Scope;

/// Which global steps to build, and how.
#[derive(Clone, Copy, Debug)]
pub struct StepRange {
    pub seed: u64,
    pub global_batch: usize,
    pub steps_per_epoch: u64,
    /// Steps [start, end).
    pub start: u64,
    pub end: u64,
    /// This rank's slice of each global batch.
    pub rank: usize,
    pub world: usize,
}

/// One step's (epoch, batch), or why it could not be built.
pub type Batch = Result<(u64, TrainBatch), DataError>;

/// Starts the producer on `scope`; receives (epoch, batch) per step.
pub fn spawn_batches<'scope>(
    scope: &'scope Scope<'scope, '_>,
    pipeline: &'scope Pipeline,
    steps: StepRange,
    queue: usize,
    stop: &'scope AtomicBool,
) -> Receiver<Batch> {
    let (tx, rx) = sync_channel(queue);
    let n = pipeline.source.len();
    scope.spawn(move || {
        let mut perm_epoch = u64::MAX;
        let mut perm = Vec::new();
        for k in steps.start..steps.end {
            let pos = step_position(k, steps.steps_per_epoch);
            if pos.epoch != perm_epoch {
                perm = epoch_permutation(n, steps.seed, pos.epoch);
                perm_epoch = pos.epoch;
            }
            let indices = global_batch(&perm, pos.step_in_epoch, steps.global_batch);
            let batch = pipeline.train_batch(rank_slice(&indices, steps.rank, steps.world), pos.epoch);
            let failed = batch.is_err();
            if tx.send(batch.map(|b| (pos.epoch, b))).is_err() || failed || stop.load(Ordering::Relaxed) {
                break;
            }
        }
    });
    rx
}
