//! The logged step: what accumulates between two logged steps (images of
//! every rank, data wait, compute and each kind of exchange), closed into
//! the run history's [`StepRecord`] (every loss term, throughput, the time
//! split), and the short `step` log line made from it. It only measures and
//! logs; metrics and progress are observers' (see `train::observer`), and
//! storing the record is `train::history`'s.

use crate::collective::ops::CommTimes;
use crate::train::step::StepMetrics;
use amdim_shared::history::StepRecord;
use std::time::Instant;

/// The steps since the last logged step.
pub(crate) struct StepWindow {
    started: Instant,
    images: usize,
    wait_s: f64,
    compute_s: f64,
    comm: CommTimes,
}

impl StepWindow {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            images: 0,
            wait_s: 0.0,
            compute_s: 0.0,
            comm: CommTimes::default(),
        }
    }

    /// Adds one step: the images of every rank, its wait for its batch, and
    /// its compute and exchange times.
    pub(crate) fn add(&mut self, images: usize, wait_s: f64, m: &StepMetrics) {
        self.images += images;
        self.wait_s += wait_s;
        self.compute_s += m.compute_s;
        self.comm.add(&m.comm);
    }

    /// The record of logged step `step` (updates done; `m` its metrics)
    /// over the window (`elapsed_s` since the run's first start), then
    /// starts a new window.
    pub(crate) fn close(&mut self, step: u64, epoch: u64, m: &StepMetrics, skipped_samples: u64, elapsed_s: f64) -> StepRecord {
        let secs = self.started.elapsed().as_secs_f64();
        let record = StepRecord {
            step,
            epoch,
            elapsed_s,
            loss: f64::from(m.loss),
            nce_1t5: f64::from(m.loss_1t5),
            nce_1t7: f64::from(m.loss_1t7),
            nce_5t5: f64::from(m.loss_5t5),
            reg: f64::from(m.reg),
            class_lin: f64::from(m.class_lin),
            class_mlp: f64::from(m.class_mlp),
            lr: m.lr,
            images_per_s: self.images as f64 / secs.max(1e-9),
            data_wait_s: self.wait_s,
            compute_s: self.compute_s,
            gather_s: self.comm.gather_s,
            bn_sync_s: self.comm.bn_s,
            all_reduce_s: self.comm.all_reduce_s,
            rank_sync_s: self.comm.rank_sync_s,
            skipped_samples,
        };
        *self = Self::new();
        record
    }
}

/// Logs the short `step` line of `r` (the detail is in the history file
/// and the metrics). With several ranks it adds the share of time in
/// exposed communication and the parameter fingerprint (`checksum`), which
/// must agree between ranks.
pub(crate) fn log_step(r: &StepRecord, total: u64, checksum: Option<&str>) {
    let (step, epoch, loss, lr, images_per_s) = (r.step, r.epoch, r.loss, r.lr, r.images_per_s.round());
    match checksum {
        None => tracing::info!(step, total, epoch, loss, lr, images_per_s, "step"),
        Some(param_checksum) => {
            let comm_s = r.gather_s + r.bn_sync_s + r.all_reduce_s + r.rank_sync_s;
            let exposed_comm_share = comm_s / (r.compute_s + comm_s + r.data_wait_s).max(1e-9);
            tracing::info!(
                step,
                total,
                epoch,
                loss,
                lr,
                images_per_s,
                exposed_comm_share,
                param_checksum,
                "step"
            );
        }
    }
}
