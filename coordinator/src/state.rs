//! The coordinator's state and its rules (design §3, §8), with no I/O:
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
//! durable. Time is passed in, so every rule is testable without clocks;
//! `server` owns the RPCs, `store` the persistence.

use amdim_shared::proto::v1::TrainingStats;
use amdim_shared::spec::JobSpec;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Pending,
    Running,
    Restarting,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub number: u32,
    /// Worker ids in rank order.
    pub workers: Vec<String>,
    pub rendezvous: String,
    pub started_unix: i64,
    /// Why it ended; None while it runs.
    pub end_reason: Option<String>,
    /// Ranks that reported the end of their part (ok or not).
    pub finished: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub state: JobState,
    pub spec_toml: String,
    pub min_workers: u32,
    pub max_workers: u32,
    pub priority: i32,
    pub max_restarts: u32,
    pub restarts: u32,
    pub global_batch: usize,
    /// Ranks (devices) each worker drives.
    #[serde(default = "one")]
    pub devices_per_worker: u32,
    pub generations: Vec<Generation>,
    pub step: u64,
    pub total_steps: u64,
    pub message: String,
    pub created_unix: i64,
    pub updated_unix: i64,
    /// Submission order, for first-come scheduling.
    pub seq: u64,
    /// Complete checkpoints committed by rank 0, in commit order.
    #[serde(default)]
    pub checkpoints: Vec<CheckpointRecord>,
    /// Rank 0's latest numbers.
    #[serde(default)]
    pub stats: Option<TrainingStats>,
    /// What happened to the job, oldest first (stored as rows of their own).
    #[serde(skip)]
    pub events: Vec<Event>,
}

/// The kinds of moments in a job's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Submitted,
    GenerationStarted,
    CheckpointCommitted,
    WorkerLost,
    GenerationEnded,
    Restarting,
    Succeeded,
    Failed,
    Cancelled,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        Self::Submitted,
        Self::GenerationStarted,
        Self::CheckpointCommitted,
        Self::WorkerLost,
        Self::GenerationEnded,
        Self::Restarting,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The name stored and shown (`generation_started`).
    pub fn name(self) -> &'static str {
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
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One moment of a job: numbered in the order they happened, across jobs.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub job_id: String,
    pub unix: i64,
    pub kind: EventKind,
    /// The generation it concerns (0: none).
    pub generation: u32,
    pub message: String,
}

/// What changed since the store last wrote: jobs and workers to write (or
/// delete, when they are gone from the state) and new events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub jobs: BTreeSet<String>,
    pub workers: BTreeSet<String>,
    pub events: Vec<Event>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.workers.is_empty() && self.events.is_empty()
    }
}

/// A heartbeat's progress: the step reached, the steps in all, and the
/// latest numbers when the worker has any.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Report {
    pub step: u64,
    pub total: u64,
    pub stats: Option<TrainingStats>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub step: u64,
    pub bytes: u64,
    pub generation: u32,
    pub created_unix: i64,
}

impl Job {
    pub fn current(&self) -> Option<&Generation> {
        self.generations.last()
    }

    fn current_mut(&mut self) -> Option<&mut Generation> {
        self.generations.last_mut()
    }

    fn running_generation(&self) -> Option<&Generation> {
        self.current().filter(|g| g.end_reason.is_none())
    }
}

/// What a worker should do next; sent in its heartbeat reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Idle,
    Assign(Assignment),
    Continue,
    Stop(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub job_id: String,
    pub generation: u32,
    pub spec_toml: String,
    /// The first rank of this worker.
    pub rank: u32,
    pub world_size: u32,
    /// Ranks this worker drives (one per device).
    pub local_ranks: u32,
    pub rendezvous: String,
    pub resume: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    pub name: String,
    pub devices: u32,
    pub rendezvous_addr: String,
    /// (job, generation) it belongs to until it reports the end of its part.
    pub job: Option<(String, u32)>,
    /// An assignment not yet picked up by a heartbeat.
    pub pending: Option<Assignment>,
    pub last_seen_unix: i64,
    pub lost: bool,
    /// The heartbeat stream it is connected by (0: none); a stream that
    /// closes makes the worker lost only while it is still the current one.
    #[serde(skip)]
    pub session: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StateError {
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
pub struct State {
    pub jobs: BTreeMap<String, Job>,
    pub workers: BTreeMap<String, Worker>,
    /// The last number given to a job id (also its place in the queue).
    pub last_job: u64,
    /// The last number given to a worker id.
    pub last_worker: u64,
    /// The last event number.
    pub last_event: u64,
    /// Not yet written to the store.
    pub changes: Changes,
}

/// A lost worker is forgotten this long after it was last seen.
pub const FORGET_LOST_WORKERS_S: i64 = 3600;

fn one() -> u32 {
    1
}

/// The largest worker count in [min, max] that is at most `free` and whose
/// ranks (workers × `devices` each) divide the global batch.
pub fn gang_size(min: u32, max: u32, free: usize, global_batch: usize, devices: u32) -> Option<u32> {
    (min..=max)
        .rev()
        .find(|&n| n as usize <= free && global_batch.is_multiple_of(n as usize * devices.max(1) as usize))
}

impl State {
    /// Records an event of `job_id` (which is then written too).
    fn emit(&mut self, job_id: &str, kind: EventKind, generation: u32, message: String, now: i64) {
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

    fn touch_worker(&mut self, id: &str) {
        self.changes.workers.insert(id.to_string());
    }

    /// The changes since the last call (for the store).
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Queues a job after validating its spec.
    pub fn submit(&mut self, spec_toml: &str, min: u32, max: u32, now: i64) -> Result<Job, StateError> {
        let spec = JobSpec::from_toml_with_env(spec_toml, &[]).map_err(|e| StateError::InvalidSpec(e.to_string()))?;
        let min = if min > 0 { min } else { spec.scheduling.min_workers };
        let max = if max > 0 { max } else { spec.scheduling.max_workers.max(min) };
        if max < min {
            return Err(StateError::InvalidSpec(format!("max_workers {max} < min_workers {min}")));
        }
        let devices = spec.scheduling.devices_per_worker.max(1);
        if gang_size(min, max, usize::MAX, spec.train.batch_size, devices).is_none() {
            return Err(StateError::InvalidSpec(format!(
                "train.batch_size = {} is not divisible by any rank count (workers in {min}..={max} × {devices} device(s) each)",
                spec.train.batch_size
            )));
        }
        self.last_job += 1;
        let id = format!("job-{:06}", self.last_job);
        let job = Job {
            id: id.clone(),
            name: spec.job.name.clone(),
            state: JobState::Pending,
            spec_toml: spec_toml.to_string(),
            min_workers: min,
            max_workers: max,
            priority: spec.scheduling.priority,
            max_restarts: spec.scheduling.max_restarts,
            restarts: 0,
            global_batch: spec.train.batch_size,
            devices_per_worker: devices,
            generations: Vec::new(),
            step: 0,
            total_steps: 0,
            message: format!("waiting for {min} free worker(s)"),
            created_unix: now,
            updated_unix: now,
            seq: self.last_job,
            checkpoints: Vec::new(),
            stats: None,
            events: Vec::new(),
        };
        self.jobs.insert(id.clone(), job);
        let what = format!(
            "queued \"{}\": {min}..{max} worker(s), priority {}, global batch {}",
            spec.job.name, spec.scheduling.priority, spec.train.batch_size
        );
        self.emit(&id, EventKind::Submitted, 0, what, now);
        Ok(self.jobs[&id].clone())
    }

    pub fn register(&mut self, name: &str, devices: u32, rendezvous_addr: &str, now: i64) -> Worker {
        self.last_worker += 1;
        let w = Worker {
            id: format!("worker-{:06}", self.last_worker),
            name: name.to_string(),
            devices,
            rendezvous_addr: rendezvous_addr.to_string(),
            job: None,
            pending: None,
            last_seen_unix: now,
            lost: false,
            session: 0,
        };
        self.workers.insert(w.id.clone(), w.clone());
        self.touch_worker(&w.id);
        w
    }

    /// A worker's heartbeat with its progress; returns its next command.
    /// Liveness alone is not durable (a restarted coordinator waits for
    /// every worker to register again), so only rank 0's progress is a change.
    pub fn heartbeat(&mut self, worker: &str, report: Option<Report>, now: i64) -> Result<Command, StateError> {
        let w = self.workers.get_mut(worker).ok_or_else(|| StateError::NoWorker(worker.into()))?;
        if w.lost {
            return Err(StateError::NoWorker(worker.into()));
        }
        w.last_seen_unix = now;
        if let Some(a) = w.pending.take() {
            return Ok(Command::Assign(a));
        }
        let Some((job_id, generation)) = w.job.clone() else {
            return Ok(Command::Idle);
        };
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return Ok(Command::Stop(format!("job {job_id} is gone")));
        };
        let current = job.current().filter(|g| g.number == generation);
        match current {
            Some(g) if g.end_reason.is_none() => {
                if let Some(r) = report
                    && g.workers.first().map(String::as_str) == Some(worker)
                {
                    job.step = r.step;
                    job.total_steps = r.total;
                    job.stats = r.stats.or(job.stats);
                    job.updated_unix = now;
                    self.changes.jobs.insert(job_id);
                }
                Ok(Command::Continue)
            }
            Some(g) => Ok(Command::Stop(g.end_reason.clone().unwrap_or_default())),
            None => Ok(Command::Stop(format!("generation {generation} of {job_id} is over"))),
        }
    }

    /// A worker's part of a generation ended.
    pub fn finish(&mut self, worker: &str, job_id: &str, generation: u32, ok: bool, message: &str, now: i64) -> Result<(), StateError> {
        let w = self.workers.get_mut(worker).ok_or_else(|| StateError::NoWorker(worker.into()))?;
        if w.job.as_ref() == Some(&(job_id.to_string(), generation)) {
            w.job = None;
        }
        w.last_seen_unix = now;
        self.touch_worker(worker);
        let job = self.jobs.get_mut(job_id).ok_or_else(|| StateError::NoJob(job_id.into()))?;
        let Some(g) = job.current_mut().filter(|g| g.number == generation) else {
            return Ok(()); // a message from an older generation: ignored
        };
        if !g.finished.iter().any(|f| f == worker) {
            g.finished.push(worker.to_string());
        }
        self.changes.jobs.insert(job_id.to_string());
        if g.end_reason.is_some() {
            return Ok(());
        }
        if !ok {
            let reason = format!("{worker} failed: {message}");
            self.end_generation(job_id, &reason, now);
        } else if g.finished.len() == g.workers.len() {
            g.end_reason = Some("completed".into());
            job.state = JobState::Succeeded;
            job.step = job.total_steps.max(job.step);
            job.message = "finished".into();
            job.updated_unix = now;
            let what = format!("trained {} steps", job.step);
            self.emit(job_id, EventKind::Succeeded, generation, what, now);
        }
        Ok(())
    }

    /// Records a checkpoint that rank 0 of the job's current generation has
    /// completed (manifest written); anything else is ignored.
    pub fn commit_checkpoint(
        &mut self,
        worker: &str,
        job_id: &str,
        generation: u32,
        step: u64,
        bytes: u64,
        now: i64,
    ) -> Result<bool, StateError> {
        let job = self.jobs.get_mut(job_id).ok_or_else(|| StateError::NoJob(job_id.into()))?;
        let from_rank0 = job
            .current()
            .is_some_and(|g| g.number == generation && g.workers.first().map(String::as_str) == Some(worker));
        if !from_rank0 || job.checkpoints.iter().any(|c| c.step == step) {
            return Ok(false);
        }
        job.checkpoints.push(CheckpointRecord {
            step,
            bytes,
            generation,
            created_unix: now,
        });
        job.updated_unix = now;
        self.emit(
            job_id,
            EventKind::CheckpointCommitted,
            generation,
            format!("step {step}, {bytes} bytes"),
            now,
        );
        Ok(true)
    }

    pub fn cancel(&mut self, job_id: &str, now: i64) -> Result<Job, StateError> {
        let job = self.jobs.get_mut(job_id).ok_or_else(|| StateError::NoJob(job_id.into()))?;
        if job.state.is_final() {
            return Err(StateError::Final {
                job: job_id.into(),
                state: job.state,
            });
        }
        job.state = JobState::Cancelled;
        job.message = "cancelled by the user".into();
        job.updated_unix = now;
        if let Some(g) = job.current_mut().filter(|g| g.end_reason.is_none()) {
            g.end_reason = Some("cancelled".into());
        }
        let generation = job.current().map_or(0, |g| g.number);
        self.emit(
            job_id,
            EventKind::Cancelled,
            generation,
            format!("cancelled at step {}", self.jobs[job_id].step),
            now,
        );
        self.drop_pending(job_id);
        Ok(self.jobs[job_id].clone())
    }

    fn drop_pending(&mut self, job_id: &str) {
        for w in self.workers.values_mut() {
            if w.pending.as_ref().is_some_and(|a| a.job_id == job_id) {
                w.pending = None;
                w.job = None;
                self.changes.workers.insert(w.id.clone());
            }
        }
    }

    /// Ends the running generation of `job_id` early: restart or fail.
    fn end_generation(&mut self, job_id: &str, reason: &str, now: i64) {
        let Some(job) = self.jobs.get_mut(job_id) else { return };
        let Some(g) = job.current_mut().filter(|g| g.end_reason.is_none()) else {
            return;
        };
        g.end_reason = Some(reason.to_string());
        let generation = g.number;
        job.updated_unix = now;
        let next = if job.restarts < job.max_restarts {
            job.restarts += 1;
            job.state = JobState::Restarting;
            job.message = format!("restart {}/{}: {reason}", job.restarts, job.max_restarts);
            let from = job
                .checkpoints
                .last()
                .map_or("step 0".to_string(), |c| format!("the checkpoint of step {}", c.step));
            (
                EventKind::Restarting,
                format!("restart {}/{} from {from}", job.restarts, job.max_restarts),
            )
        } else {
            job.state = JobState::Failed;
            job.message = format!("failed after {} restart(s): {reason}", job.restarts);
            (EventKind::Failed, job.message.clone())
        };
        self.emit(job_id, EventKind::GenerationEnded, generation, reason.to_string(), now);
        self.emit(job_id, next.0, generation, next.1, now);
        self.drop_pending(job_id);
    }

    /// Marks `worker` lost; a generation it belonged to ends with `reason`.
    fn lose_worker(&mut self, worker: &str, reason: &str, now: i64) {
        let Some(w) = self.workers.get_mut(worker).filter(|w| !w.lost) else {
            return;
        };
        w.lost = true;
        w.pending = None;
        w.session = 0;
        let job = w.job.take();
        self.touch_worker(worker);
        if let Some((job_id, generation)) = job
            && self.jobs.get(&job_id).and_then(Job::running_generation).map(|g| g.number) == Some(generation)
        {
            self.emit(&job_id, EventKind::WorkerLost, generation, reason.to_string(), now);
            self.end_generation(&job_id, reason, now);
        }
    }

    /// Forgets jobs that ended more than `keep_s` seconds ago, with their
    /// events (the store deletes their rows).
    pub fn forget_finished_jobs(&mut self, now: i64, keep_s: i64) {
        let old: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.state.is_final() && now - j.updated_unix > keep_s)
            .map(|j| j.id.clone())
            .collect();
        for id in old {
            self.jobs.remove(&id);
            self.changes.jobs.insert(id);
        }
    }

    /// The heartbeat stream `session` of `worker` opened (see [`Worker::session`]).
    pub fn connected(&mut self, worker: &str, session: u64) -> Result<(), StateError> {
        let w = self.workers.get_mut(worker).filter(|w| !w.lost);
        let w = w.ok_or_else(|| StateError::NoWorker(worker.into()))?;
        w.session = session;
        Ok(())
    }

    /// The heartbeat stream `session` of `worker` closed (the process died,
    /// or its connection broke): the worker is lost at once, unless it has
    /// opened a newer stream since.
    pub fn disconnected(&mut self, worker: &str, session: u64, now: i64) {
        if self.workers.get(worker).is_some_and(|w| w.session == session && session != 0) {
            self.lose_worker(worker, &format!("{worker} lost (its heartbeat stream closed)"), now);
        }
    }

    /// Marks workers silent for longer than `deadline_s` as lost (ending
    /// their generations), forgets workers lost for an hour, then starts
    /// every job that can start.
    pub fn tick(&mut self, now: i64, deadline_s: i64) {
        let silent: Vec<String> = self
            .workers
            .values()
            .filter(|w| !w.lost && now - w.last_seen_unix > deadline_s)
            .map(|w| w.id.clone())
            .collect();
        for worker in silent {
            self.lose_worker(&worker, &format!("{worker} lost (no heartbeat for {deadline_s} s)"), now);
        }
        let forgotten: Vec<String> = self
            .workers
            .values()
            .filter(|w| w.lost && now - w.last_seen_unix > FORGET_LOST_WORKERS_S)
            .map(|w| w.id.clone())
            .collect();
        for id in forgotten {
            self.workers.remove(&id);
            self.touch_worker(&id);
        }
        self.schedule(now);
    }

    fn schedule(&mut self, now: i64) {
        let mut queue: Vec<(i32, u64, String)> = self
            .jobs
            .values()
            .filter(|j| matches!(j.state, JobState::Pending | JobState::Restarting))
            .map(|j| (-j.priority, j.seq, j.id.clone()))
            .collect();
        queue.sort();
        for (_, _, job_id) in queue {
            // A restarting job waits until its previous generation's workers are done or lost.
            let busy_with_it = self
                .workers
                .values()
                .any(|w| !w.lost && w.job.as_ref().is_some_and(|(j, _)| *j == job_id));
            if busy_with_it {
                continue;
            }
            let job = &self.jobs[&job_id];
            let devices = job.devices_per_worker.max(1);
            let mut free: Vec<&Worker> = self
                .workers
                .values()
                .filter(|w| !w.lost && w.job.is_none() && w.devices >= devices)
                .collect();
            free.sort_by(|a, b| a.id.cmp(&b.id));
            let Some(n) = gang_size(job.min_workers, job.max_workers, free.len(), job.global_batch, devices) else {
                continue;
            };
            let chosen: Vec<String> = free.iter().take(n as usize).map(|w| w.id.clone()).collect();
            let rendezvous = free[0].rendezvous_addr.clone();
            let Some(job) = self.jobs.get_mut(&job_id) else { continue };
            let number = job.generations.len() as u32 + 1;
            let resume = !job.generations.is_empty();
            job.generations.push(Generation {
                number,
                workers: chosen.clone(),
                rendezvous: rendezvous.clone(),
                started_unix: now,
                end_reason: None,
                finished: Vec::new(),
            });
            job.state = JobState::Running;
            job.message = format!("generation {number} on {n} worker(s)");
            job.updated_unix = now;
            let from = match (resume, job.checkpoints.last()) {
                (false, _) => "from step 0".to_string(),
                (true, Some(c)) => format!("resuming from the checkpoint of step {}", c.step),
                (true, None) => "resuming from the newest checkpoint in storage, if any".to_string(),
            };
            let spec_toml = job.spec_toml.clone();
            for (rank, id) in chosen.iter().enumerate() {
                if let Some(w) = self.workers.get_mut(id) {
                    w.job = Some((job_id.clone(), number));
                    w.pending = Some(Assignment {
                        job_id: job_id.clone(),
                        generation: number,
                        spec_toml: spec_toml.clone(),
                        rank: rank as u32 * devices,
                        world_size: n * devices,
                        local_ranks: devices,
                        rendezvous: rendezvous.clone(),
                        resume,
                    });
                }
                self.touch_worker(id);
            }
            let what = format!(
                "{n} worker(s) × {devices} device(s) [{}], rendezvous {rendezvous}, {from}",
                chosen.join(", ")
            );
            self.emit(&job_id, EventKind::GenerationStarted, number, what, now);
        }
    }

    /// After a coordinator restart: workers must register again, and the
    /// generations that were running end (their jobs resume from the
    /// latest checkpoint once workers are back).
    pub fn recover(&mut self, now: i64) {
        let workers: Vec<String> = self.workers.keys().cloned().collect();
        for id in workers {
            if let Some(w) = self.workers.get_mut(&id) {
                w.lost = true;
                w.pending = None;
                w.job = None;
            }
            self.touch_worker(&id);
        }
        let running: Vec<(String, u32)> = self
            .jobs
            .values()
            .filter(|j| !j.state.is_final())
            .filter_map(|j| j.running_generation().map(|g| (j.id.clone(), g.number)))
            .collect();
        for (job_id, generation) in running {
            if let Some(job) = self.jobs.get_mut(&job_id)
                && let Some(g) = job.current_mut()
            {
                g.end_reason = Some("coordinator restarted".into());
                job.state = JobState::Restarting;
                job.message = "coordinator restarted: resuming from the latest checkpoint".into();
                job.updated_unix = now;
            }
            self.emit(&job_id, EventKind::GenerationEnded, generation, "coordinator restarted".into(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str =
        "[job]\nname = \"t\"\n[data]\nformat = \"synthetic\"\n[train]\nbatch_size = 8\n[scheduling]\nmin_workers = 1\nmax_workers = 2\n";

    fn assignment(c: Command) -> Assignment {
        match c {
            Command::Assign(a) => a,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    #[test]
    fn gang_sizes_divide_the_batch_and_fit_the_free_workers() {
        assert_eq!(gang_size(1, 4, 3, 8, 1), Some(2));
        assert_eq!(gang_size(2, 4, 4, 12, 1), Some(4));
        assert_eq!(gang_size(3, 3, 2, 12, 1), None);
        assert_eq!(gang_size(3, 3, 3, 8, 1), None);
        // With 4 devices per worker, 3 workers would be 12 ranks: not a divisor of 16.
        assert_eq!(gang_size(1, 4, 3, 16, 4), Some(2));
        assert_eq!(gang_size(1, 4, 4, 16, 4), Some(4));
    }

    #[test]
    fn workers_with_several_devices_take_consecutive_ranks_and_small_ones_wait() {
        let mut s = State::default();
        let spec = format!("{SPEC}devices_per_worker = 2\n");
        let job = s.submit(&spec, 2, 2, 0).unwrap();
        assert_eq!(job.devices_per_worker, 2);
        let small = s.register("one-gpu", 1, "h:1", 0).id;
        let a = s.register("a", 2, "h:2", 0).id;
        s.tick(0, 5);
        assert_eq!(s.jobs[&job.id].state, JobState::Pending, "a 1-device worker does not count");
        let b = s.register("b", 4, "h:3", 0).id;
        s.tick(1, 5);
        let (ra, rb) = (
            assignment(s.heartbeat(&a, None, 1).unwrap()),
            assignment(s.heartbeat(&b, None, 1).unwrap()),
        );
        assert_eq!((ra.rank, ra.local_ranks, ra.world_size), (0, 2, 4));
        assert_eq!((rb.rank, rb.local_ranks, rb.world_size), (2, 2, 4));
        assert_eq!(ra.rendezvous, "h:2");
        assert_eq!(s.heartbeat(&small, None, 1).unwrap(), Command::Idle);
        let e = s
            .submit(&format!("{SPEC}devices_per_worker = 3\n"), 1, 1, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.batch_size = 8") && e.contains("3 device(s)"), "{e}");
    }

    #[test]
    fn a_job_runs_on_two_workers_and_succeeds_when_both_finish() {
        let mut s = State::default();
        let job = s.submit(SPEC, 2, 2, 0).unwrap();
        let a = s.register("a", 1, "10.0.0.1:5000", 0).id;
        s.tick(1, 10);
        assert_eq!(s.jobs[&job.id].state, JobState::Pending, "a gang of 2 needs 2 free workers");
        let b = s.register("b", 1, "10.0.0.2:5000", 1).id;
        s.tick(2, 10);
        let (ra, rb) = (
            assignment(s.heartbeat(&a, None, 2).unwrap()),
            assignment(s.heartbeat(&b, None, 2).unwrap()),
        );
        assert_eq!((ra.rank, rb.rank, ra.world_size), (0, 1, 2));
        assert_eq!(ra.rendezvous, "10.0.0.1:5000");
        assert!(!ra.resume);
        assert_eq!(
            s.heartbeat(
                &a,
                Some(Report {
                    step: 3,
                    total: 10,
                    stats: None
                }),
                3
            )
            .unwrap(),
            Command::Continue
        );
        assert_eq!(s.jobs[&job.id].step, 3, "rank 0 reports progress");
        assert!(s.commit_checkpoint(&a, &job.id, 1, 3, 100, 3).unwrap(), "rank 0 commits");
        assert!(!s.commit_checkpoint(&b, &job.id, 1, 3, 100, 3).unwrap(), "rank 1 does not");
        assert!(!s.commit_checkpoint(&a, &job.id, 1, 3, 100, 3).unwrap(), "once per step");
        assert_eq!(s.jobs[&job.id].checkpoints.len(), 1);
        s.finish(&a, &job.id, 1, true, "", 4).unwrap();
        assert_eq!(s.jobs[&job.id].state, JobState::Running);
        s.finish(&b, &job.id, 1, true, "", 4).unwrap();
        assert_eq!(s.jobs[&job.id].state, JobState::Succeeded);
        assert_eq!(s.heartbeat(&a, None, 5).unwrap(), Command::Idle);
    }

    #[test]
    fn a_lost_worker_restarts_the_job_on_the_survivor_from_its_checkpoint() {
        let mut s = State::default();
        let job = s.submit(SPEC, 0, 0, 0).unwrap();
        let a = s.register("a", 1, "h:1", 0).id;
        let b = s.register("b", 1, "h:2", 0).id;
        s.tick(0, 5);
        assert_eq!(assignment(s.heartbeat(&a, None, 1).unwrap()).world_size, 2);
        assignment(s.heartbeat(&b, None, 1).unwrap());
        // b dies; a's collective fails first and a reports it.
        s.finish(&a, &job.id, 1, false, "all_reduce: lost rank 1", 2).unwrap();
        assert_eq!(s.jobs[&job.id].state, JobState::Restarting);
        s.tick(3, 5);
        assert_eq!(
            s.heartbeat(&a, None, 3).unwrap(),
            Command::Idle,
            "waits until b is finished or lost"
        );
        assert_eq!(s.heartbeat(&a, None, 9).unwrap(), Command::Idle);
        s.tick(10, 5);
        assert!(s.workers[&b].lost && !s.workers[&a].lost);
        let r = assignment(s.heartbeat(&a, None, 10).unwrap());
        assert_eq!((r.generation, r.world_size, r.resume), (2, 1, true));
        let j = &s.jobs[&job.id];
        assert_eq!(j.restarts, 1);
        assert!(j.generations[0].end_reason.as_deref().unwrap().contains("lost rank 1"));
        // A late message from generation 1 changes nothing.
        s.finish(&b, &job.id, 1, false, "late", 11).unwrap();
        assert_eq!(s.jobs[&job.id].state, JobState::Running);
        s.finish(&a, &job.id, 2, true, "", 12).unwrap();
        assert_eq!(s.jobs[&job.id].state, JobState::Succeeded);
        let events: Vec<(&str, u32)> = s.jobs[&job.id].events.iter().map(|e| (e.kind.name(), e.generation)).collect();
        assert_eq!(
            events,
            [
                ("submitted", 0),
                ("generation_started", 1),
                ("generation_ended", 1),
                ("restarting", 1),
                ("generation_started", 2),
                ("succeeded", 2)
            ]
        );
        let seqs: Vec<u64> = s.jobs[&job.id].events.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert!(s.jobs[&job.id].events[2].message.contains("lost rank 1"));
        assert!(s.jobs[&job.id].events[4].message.contains("1 worker(s)"));
    }

    #[test]
    fn a_closed_heartbeat_stream_loses_its_worker_at_once_but_an_old_one_does_not() {
        let mut s = State::default();
        let job = s.submit(SPEC, 2, 2, 0).unwrap();
        let a = s.register("a", 1, "h:1", 0).id;
        let b = s.register("b", 1, "h:2", 0).id;
        s.connected(&a, 1).unwrap();
        s.connected(&b, 2).unwrap();
        s.tick(0, 60);
        assignment(s.heartbeat(&a, None, 1).unwrap());
        assignment(s.heartbeat(&b, None, 1).unwrap());
        // b reconnected on a new stream: its old one closing changes nothing.
        s.connected(&b, 3).unwrap();
        s.disconnected(&b, 2, 2);
        assert!(!s.workers[&b].lost && s.jobs[&job.id].state == JobState::Running);
        // a's process dies: its stream closes long before any deadline.
        s.disconnected(&a, 1, 2);
        assert!(s.workers[&a].lost);
        let j = &s.jobs[&job.id];
        assert_eq!(j.state, JobState::Restarting);
        assert!(j.generations[0].end_reason.as_deref().unwrap().contains("heartbeat stream closed"));
        assert_eq!(j.events.iter().filter(|e| e.kind == EventKind::WorkerLost).count(), 1);
        assert!(
            matches!(s.connected(&a, 4), Err(StateError::NoWorker(_))),
            "a lost worker registers again"
        );
    }

    #[test]
    fn restarts_are_bounded_and_cancel_stops_the_workers() {
        let mut s = State::default();
        let spec = format!("{SPEC}max_restarts = 0\n");
        let job = s.submit(&spec, 1, 1, 0).unwrap();
        let a = s.register("a", 1, "h:1", 0).id;
        s.tick(0, 5);
        assignment(s.heartbeat(&a, None, 0).unwrap());
        s.finish(&a, &job.id, 1, false, "boom", 1).unwrap();
        assert_eq!(s.jobs[&job.id].state, JobState::Failed);
        assert!(s.jobs[&job.id].message.contains("boom"));

        let job = s.submit(SPEC, 1, 1, 2).unwrap();
        s.tick(2, 5);
        assignment(s.heartbeat(&a, None, 2).unwrap());
        s.cancel(&job.id, 3).unwrap();
        assert_eq!(s.heartbeat(&a, None, 3).unwrap(), Command::Stop("cancelled".into()));
        assert!(matches!(s.cancel(&job.id, 4), Err(StateError::Final { .. })));
    }

    #[test]
    fn bad_specs_are_refused_naming_the_field_and_priority_goes_first() {
        let mut s = State::default();
        let e = s.submit("[optim]\nlr = -1\n", 0, 0, 0).unwrap_err().to_string();
        assert!(e.contains("optim.lr"), "{e}");
        let low = s.submit(SPEC, 1, 1, 0).unwrap();
        let high = s.submit(&format!("{SPEC}priority = 5\n"), 1, 1, 0).unwrap();
        let a = s.register("a", 1, "h:1", 0).id;
        s.tick(1, 5);
        assert_eq!(assignment(s.heartbeat(&a, None, 1).unwrap()).job_id, high.id);
        assert_eq!(s.jobs[&low.id].state, JobState::Pending);
    }
}
