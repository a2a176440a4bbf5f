//! The coordinator's state and its rules (docs/architecture.md §3, §8), with no I/O:
//! jobs and their generations, workers and their liveness, the queue
//! (priority, then first come), gang scheduling (a generation starts only
//! when at least `min_workers` are free; it takes as many as it may, up to
//! `max_workers`, that divide the global batch), rank assignment and
//! rendezvous, and what ends a generation: every rank finished, a rank
//! failed, a worker missed its heartbeat deadline, or a cancel. An early end
//! restarts the job from its latest checkpoint in a new generation, up to
//! `max_restarts`, and records why. Every such moment is also an [`Event`]
//! of the job (what `amdimctl events` and `watch` show). Each rule notes
//! which jobs and workers it changed in [`Changes`], so the store writes
//! only those rows; a heartbeat that only proves liveness changes nothing
//! durable, and rank 0's progress is written with the next tick. Time is passed in, so every rule is testable without clocks;
//! the gRPC services own the RPCs, `store` the persistence. The rules are split by
//! concern: `jobs` (jobs and generations), `workers` (registration and
//! liveness), `scheduling` (gang size, queue, ticks, recovery) and
//! `events`; this file holds the state itself and its change log.

mod events;
#[cfg(test)]
mod fault_tests;
mod jobs;
mod scheduling;
#[cfg(test)]
mod tests;
mod workers;

pub(crate) use events::{Event, EventKind};
pub(crate) use jobs::{Generation, Job, JobState};
pub(crate) use workers::{Command, Report, Worker};

use std::collections::{BTreeMap, BTreeSet};

/// What changed since the store last wrote: jobs and workers to write (or
/// delete, when they are gone from the state) and new events.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Changes {
    pub(crate) jobs: BTreeSet<String>,
    pub(crate) workers: BTreeSet<String>,
    pub(crate) events: Vec<Event>,
}

impl Changes {
    pub(crate) fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.workers.is_empty() && self.events.is_empty()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum StateError {
    #[error("{0}")]
    InvalidSpec(String),
    #[error("no job {0}")]
    NoJob(String),
    #[error("no worker {0} (register again)")]
    NoWorker(String),
    #[error("job {job} is {state:?}")]
    Final { job: String, state: JobState },
}

/// Everything the coordinator knows.
#[derive(Clone, Debug, Default)]
pub(crate) struct State {
    pub(crate) jobs: BTreeMap<String, Job>,
    pub(crate) workers: BTreeMap<String, Worker>,
    /// The last number given to a job id (also its place in the queue).
    pub(crate) last_job: u64,
    /// The last number given to a worker id.
    pub(crate) last_worker: u64,
    /// The last event number.
    pub(crate) last_event: u64,
    /// Not yet written to the store.
    pub(crate) changes: Changes,
    /// Jobs whose rank 0 reported progress since the last tick: soft
    /// state, written with the tick's change (at most a quarter heartbeat
    /// interval later, all of them in one transaction) instead of one
    /// write per heartbeat; nothing is answered on it.
    pub(crate) progress: BTreeSet<String>,
}

/// A lost worker is forgotten this long after it was last seen.
pub(crate) const FORGET_LOST_WORKERS_S: i64 = 3600;

impl State {
    /// The changes since the last call (for the store).
    pub(crate) fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }
}
