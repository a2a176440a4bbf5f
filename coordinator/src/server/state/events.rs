//! A job's events: the kinds of moments in its life, the event record
//! (numbered across jobs, in the order they happened) and the one place an
//! event is recorded. What `amdimctl events` and `watch` show.

use super::State;
use serde::{Deserialize, Serialize};

/// The kinds of moments in a job's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum EventKind {
    Submitted,
    GenerationStarted,
    CheckpointCommitted,
    WorkerLost,
    GenerationEnded,
    Restarting,
    Succeeded,
    Failed,
    Cancelled,
    Preempted,
}

impl EventKind {
    pub(crate) const ALL: [EventKind; 10] = [
        Self::Submitted,
        Self::GenerationStarted,
        Self::CheckpointCommitted,
        Self::WorkerLost,
        Self::GenerationEnded,
        Self::Restarting,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Preempted,
    ];

    /// The name stored and shown (`generation_started`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::GenerationStarted => "generation_started",
            Self::CheckpointCommitted => "checkpoint_committed",
            Self::WorkerLost => "worker_lost",
            Self::GenerationEnded => "generation_ended",
            Self::Restarting => "restarting",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Preempted => "preempted",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One moment of a job: numbered in the order they happened, across jobs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Event {
    pub(crate) seq: u64,
    pub(crate) job_id: String,
    pub(crate) unix: i64,
    pub(crate) kind: EventKind,
    /// The generation it concerns (0: none).
    pub(crate) generation: u32,
    pub(crate) message: String,
}

impl State {
    /// Records an event of `job_id` (which is then written too).
    pub(super) fn emit(&mut self, job_id: &str, kind: EventKind, generation: u32, message: String, now: i64) {
        self.last_event += 1;
        let event = Event {
            seq: self.last_event,
            job_id: job_id.to_string(),
            unix: now,
            kind,
            generation,
            message,
        };
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.events.push(event.clone());
        }
        self.changes.jobs.insert(job_id.to_string());
        self.changes.events.push(event);
    }
}
