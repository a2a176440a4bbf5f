//! When a run takes a checkpoint (docs/architecture.md §7): every `checkpoint.every_steps`
//! steps and at the last step, on the rank that writes them (rank 0). A
//! checkpoint that falls due while the previous upload is still running is
//! deferred to the first step after the upload ends (`when_busy = "defer"`),
//! unless it must wait: the last step, a step that retention keeps for ever
//! (`keep_every_steps`), or `when_busy = "wait"`. Which checkpoints survive
//! pruning ([`Retention`]) is decided here too.
//!
//! This type only decides; taking the snapshot and uploading it are the
//! training loop's and `checkpoint::writer`'s.

use crate::checkpoint::store::Retention;
use amdim_shared::spec::{CheckpointSpec, WhenBusy};

/// What the loop does about checkpoints after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CheckpointDecision {
    /// Nothing this step.
    Skip,
    /// Take a checkpoint now (waiting for a previous upload if one runs).
    Take,
    /// One fell due but the previous upload is still running: it is taken
    /// at the first step after that upload ends.
    Defer,
}

/// The checkpoint timing of one rank's run.
#[derive(Clone, Debug)]
pub(crate) struct CheckpointPolicy {
    every_steps: u64,
    when_busy: WhenBusy,
    keep: Retention,
    /// The run's last step.
    total: u64,
    /// Whether this rank writes checkpoints.
    writes: bool,
    /// A checkpoint fell due and has not been taken yet.
    due: bool,
}

impl CheckpointPolicy {
    /// The policy of `spec` for a run that ends at step `total`; `writes`:
    /// this rank writes the checkpoints.
    pub(crate) fn new(spec: &CheckpointSpec, total: u64, writes: bool) -> Self {
        Self {
            every_steps: spec.every_steps,
            when_busy: spec.when_busy,
            keep: Retention {
                newest: spec.keep,
                every_steps: spec.keep_every_steps,
            },
            total,
            writes,
            due: false,
        }
    }

    /// Which complete checkpoints survive pruning.
    pub(crate) fn retention(&self) -> Retention {
        self.keep
    }

    /// Decides after `step` has trained; `upload_busy`: the previous
    /// checkpoint is still uploading.
    pub(crate) fn after_step(&mut self, step: u64, upload_busy: bool) -> CheckpointDecision {
        let due_now = self.every_steps > 0 && step.is_multiple_of(self.every_steps);
        self.due |= self.writes && due_now;
        let last = step == self.total;
        if !self.writes || !(self.due || last) {
            return CheckpointDecision::Skip;
        }
        let kept_for_ever = self.keep.every_steps > 0 && step.is_multiple_of(self.keep.every_steps);
        let must_wait = last || kept_for_ever || self.when_busy == WhenBusy::Wait;
        if must_wait || !upload_busy {
            self.due = false;
            CheckpointDecision::Take
        } else if due_now {
            CheckpointDecision::Defer
        } else {
            CheckpointDecision::Skip
        }
    }

    /// Whether a run stopped on request ends with a checkpoint.
    pub(crate) fn on_stop(&self) -> bool {
        self.writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckpointDecision::{Defer, Skip, Take};

    fn spec(every_steps: u64, keep_every_steps: u64, when_busy: WhenBusy) -> CheckpointSpec {
        CheckpointSpec {
            uri: String::new(),
            every_steps,
            keep: 2,
            keep_every_steps,
            when_busy,
        }
    }

    /// The decisions of steps 1..=total, with the upload busy at the steps in `busy`.
    fn decisions(policy: &mut CheckpointPolicy, total: u64, busy: &[u64]) -> Vec<CheckpointDecision> {
        (1..=total).map(|s| policy.after_step(s, busy.contains(&s))).collect()
    }

    #[test]
    fn due_every_n_steps_and_at_the_last_one() {
        let mut p = CheckpointPolicy::new(&spec(3, 0, WhenBusy::Defer), 7, true);
        assert_eq!(decisions(&mut p, 7, &[]), [Skip, Skip, Take, Skip, Skip, Take, Take]);
    }

    #[test]
    fn a_busy_upload_defers_to_the_first_free_step() {
        let mut p = CheckpointPolicy::new(&spec(3, 0, WhenBusy::Defer), 10, true);
        assert_eq!(
            decisions(&mut p, 10, &[3, 4, 5]),
            [Skip, Skip, Defer, Skip, Skip, Take, Skip, Skip, Take, Take]
        );
        let mut p = CheckpointPolicy::new(&spec(2, 0, WhenBusy::Defer), 5, true);
        assert_eq!(decisions(&mut p, 5, &[2, 3]), [Skip, Defer, Skip, Take, Take]);
    }

    #[test]
    fn the_last_step_kept_steps_and_wait_mode_never_defer() {
        let mut p = CheckpointPolicy::new(&spec(2, 4, WhenBusy::Defer), 6, true);
        assert_eq!(decisions(&mut p, 6, &[2, 3, 4, 6]), [Skip, Defer, Skip, Take, Skip, Take]);
        let mut p = CheckpointPolicy::new(&spec(2, 0, WhenBusy::Wait), 4, true);
        assert_eq!(decisions(&mut p, 4, &[1, 2, 3, 4]), [Skip, Take, Skip, Take]);
    }

    #[test]
    fn ranks_that_do_not_write_never_take_one() {
        let mut p = CheckpointPolicy::new(&spec(1, 0, WhenBusy::Defer), 3, false);
        assert_eq!(decisions(&mut p, 3, &[]), [Skip, Skip, Skip]);
        assert!(!p.on_stop());
        assert_eq!(p.retention().newest, 2);
    }
}
