//! The state's records as their gRPC messages (jobs, generations,
//! checkpoints, events, workers). Pure mapping: no rules, no locking.

use super::state::{Event, EventKind, Generation, Job, JobState, Worker};
use amdim_shared::proto::v1 as pb;

fn job_state(s: JobState) -> pb::JobState {
    match s {
        JobState::Pending => pb::JobState::Pending,
        JobState::Running => pb::JobState::Running,
        JobState::Restarting => pb::JobState::Restarting,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

fn generation(g: &Generation) -> pb::Generation {
    pb::Generation {
        number: g.number,
        workers: g.workers.clone(),
        rendezvous: g.rendezvous.clone(),
        started_unix: g.started_unix,
        end_reason: g.end_reason.clone().unwrap_or_default(),
    }
}

pub(super) fn job_message(j: &Job) -> pb::Job {
    pb::Job {
        id: j.id.clone(),
        name: j.name.clone(),
        state: job_state(j.state) as i32,
        spec_toml: j.spec_toml.clone(),
        min_workers: j.min_workers,
        max_workers: j.max_workers,
        priority: j.priority,
        max_restarts: j.max_restarts,
        restarts: j.restarts,
        preemptions: j.preemptions,
        generations: j.generations.iter().map(generation).collect(),
        step: j.step,
        total_steps: j.total_steps,
        message: j.message.clone(),
        created_unix: j.created_unix,
        updated_unix: j.updated_unix,
        checkpoints: j
            .checkpoints
            .iter()
            .map(|c| pb::Checkpoint {
                step: c.step,
                bytes: c.bytes,
                generation: c.generation,
                created_unix: c.created_unix,
            })
            .collect(),
        stats: j.stats,
        devices_per_worker: j.devices_per_worker,
    }
}

pub(crate) fn event_kind(k: EventKind) -> pb::EventKind {
    match k {
        EventKind::Submitted => pb::EventKind::Submitted,
        EventKind::GenerationStarted => pb::EventKind::GenerationStarted,
        EventKind::CheckpointCommitted => pb::EventKind::CheckpointCommitted,
        EventKind::WorkerLost => pb::EventKind::WorkerLost,
        EventKind::GenerationEnded => pb::EventKind::GenerationEnded,
        EventKind::Restarting => pb::EventKind::Restarting,
        EventKind::Succeeded => pb::EventKind::Succeeded,
        EventKind::Failed => pb::EventKind::Failed,
        EventKind::Cancelled => pb::EventKind::Cancelled,
        EventKind::Preempted => pb::EventKind::Preempted,
    }
}

pub(super) fn event_message(e: &Event) -> pb::Event {
    pb::Event {
        seq: e.seq,
        job_id: e.job_id.clone(),
        unix: e.unix,
        kind: event_kind(e.kind) as i32,
        generation: e.generation,
        message: e.message.clone(),
    }
}

pub(super) fn worker_message(w: &Worker) -> pb::Worker {
    pb::Worker {
        id: w.id.clone(),
        name: w.name.clone(),
        devices: w.devices,
        rendezvous_addr: w.rendezvous_addr.clone(),
        job_id: w.job.as_ref().map(|(j, _)| j.clone()).unwrap_or_default(),
        last_seen_unix: w.last_seen_unix,
        lost: w.lost,
    }
}
