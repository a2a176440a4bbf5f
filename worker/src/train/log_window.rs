//! The step log: what accumulates between two `step` log lines (images of
//! every rank, data wait, compute and each kind of exchange) and the line
//! itself, with throughput and the share of time spent in exposed
//! communication. It only logs; metrics and progress are observers' (see
//! `train::observer`).

use crate::collective::ops::CommTimes;
use crate::train::step::StepMetrics;
use std::time::Instant;

/// The steps since the last log line.
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

    /// Logs the `step` line of `step` (`m` its metrics) over the window,
    /// then starts a new window.
    pub(crate) fn log(&mut self, step: u64, epoch: u64, m: &StepMetrics, skipped_samples: u64, param_checksum: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        let comm_s = self.comm.total();
        tracing::info!(
            step,
            epoch,
            loss = m.loss,
            nce_1t5 = m.loss_1t5,
            nce_1t7 = m.loss_1t7,
            nce_5t5 = m.loss_5t5,
            reg = m.reg,
            class_lin = m.class_lin,
            class_mlp = m.class_mlp,
            lr = m.lr,
            images_per_s = self.images as f64 / secs.max(1e-9),
            data_wait_s = self.wait_s,
            compute_s = self.compute_s,
            gather_s = self.comm.gather_s,
            bn_sync_s = self.comm.bn_s,
            all_reduce_s = self.comm.all_reduce_s,
            rank_sync_s = self.comm.rank_sync_s,
            exposed_comm_share = comm_s / (self.compute_s + comm_s + self.wait_s).max(1e-9),
            skipped_samples,
            param_checksum = %param_checksum,
            "step"
        );
        *self = Self::new();
    }
}
