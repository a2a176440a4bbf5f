//! Jobs and their generations: the job record, submitting (spec
//! validation and the gang-size check), a rank's end of its part, rank 0's
//! checkpoint commits, cancelling, and ending a generation early (restart
//! from the latest checkpoint, or fail once `max_restarts` is spent; a
//! preemption — a worker stopped gracefully — resumes the same way without
//! spending a restart), and forgetting long-finished jobs. Starting
//! generations is `scheduling`'s.

use super::events::{Event, EventKind};
use super::scheduling::gang_size;
use super::{State, StateError};
use amdim_shared::proto::v1::TrainingStats;
use amdim_shared::spec::JobSpec;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum JobState {
    Pending,
    Running,
    Restarting,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub(crate) fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Generation {
    pub(crate) number: u32,
    /// Worker ids in rank order.
    pub(crate) workers: Vec<String>,
    pub(crate) rendezvous: String,
    pub(crate) started_unix: i64,
    /// Why it ended; None while it runs.
    pub(crate) end_reason: Option<String>,
    /// Ranks that reported the end of their part (ok or not).
    pub(crate) finished: Vec<String>,
    /// Ranks that reported training their part to the end.
    #[serde(default)]
    pub(crate) completed: Vec<String>,
}

/// Why `recover` ends the generations that ran when the coordinator stopped.
pub(crate) const RECOVERED: &str = "coordinator restarted";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) state: JobState,
    pub(crate) spec_toml: String,
    pub(crate) min_workers: u32,
    pub(crate) max_workers: u32,
    pub(crate) priority: i32,
    pub(crate) max_restarts: u32,
    pub(crate) restarts: u32,
    /// Generations ended by a graceful stop of a worker (not in `restarts`).
    #[serde(default)]
    pub(crate) preemptions: u32,
    pub(crate) global_batch: usize,
    /// Ranks (devices) each worker drives.
    #[serde(default = "one")]
    pub(crate) devices_per_worker: u32,
    pub(crate) generations: Vec<Generation>,
    pub(crate) step: u64,
    pub(crate) total_steps: u64,
    pub(crate) message: String,
    pub(crate) created_unix: i64,
    pub(crate) updated_unix: i64,
    /// Submission order, for first-come scheduling.
    pub(crate) seq: u64,
    /// Complete checkpoints committed by rank 0, in commit order.
    #[serde(default)]
    pub(crate) checkpoints: Vec<CheckpointRecord>,
    /// Rank 0's latest numbers.
    #[serde(default)]
    pub(crate) stats: Option<TrainingStats>,
    /// What happened to the job, oldest first (stored as rows of their own).
    #[serde(skip)]
    pub(crate) events: Vec<Event>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct CheckpointRecord {
    pub(crate) step: u64,
    pub(crate) bytes: u64,
    pub(crate) generation: u32,
    pub(crate) created_unix: i64,
}

impl Job {
    pub(crate) fn current(&self) -> Option<&Generation> {
        self.generations.last()
    }

    pub(super) fn current_mut(&mut self) -> Option<&mut Generation> {
        self.generations.last_mut()
    }

    pub(super) fn running_generation(&self) -> Option<&Generation> {
        self.current().filter(|g| g.end_reason.is_none())
    }
}

fn one() -> u32 {
    1
}

impl State {
    /// Queues a job after validating its spec.
    pub(crate) fn submit(&mut self, spec_toml: &str, min: u32, max: u32, now: i64) -> Result<Job, StateError> {
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
            preemptions: 0,
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

    /// A worker's part of a generation ended, at `step` (for a part that
    /// trained to the end: the job's last step).
    pub(crate) fn finish(
        &mut self,
        worker: &str,
        job_id: &str,
        generation: u32,
        (ok, step): (bool, u64),
        message: &str,
        now: i64,
    ) -> Result<(), StateError> {
        let w = self.workers.get_mut(worker).ok_or_else(|| StateError::NoWorker(worker.into()))?;
        if w.job.as_ref() == Some(&(job_id.to_string(), generation)) {
            w.job = None;
        }
        w.last_seen_unix = now;
        self.touch_worker(worker);
        let job = self.jobs.get_mut(job_id).ok_or_else(|| StateError::NoJob(job_id.into()))?;
        if job.current().is_none_or(|g| g.number != generation) {
            return Ok(()); // a message from an older generation: ignored
        }
        if ok {
            // Trained to the end: its step is the last. A part resumed from
            // the final checkpoint trains nothing and may end before any
            // heartbeat has carried its progress (or before one reached a
            // coordinator that restarted meanwhile).
            job.total_steps = job.total_steps.max(step);
            job.step = job.step.max(step);
        }
        let Some(g) = job.current_mut() else { return Ok(()) };
        if !g.finished.iter().any(|f| f == worker) {
            g.finished.push(worker.to_string());
        }
        if ok && !g.completed.iter().any(|f| f == worker) {
            g.completed.push(worker.to_string());
        }
        let all_completed = g.workers.iter().all(|w| g.completed.contains(w));
        let all_finished = g.finished.len() == g.workers.len();
        let end = g.end_reason.clone();
        if end.is_none() && ok && all_finished {
            g.end_reason = Some("completed".into());
        }
        let restarting = job.state == JobState::Restarting;
        self.changes.jobs.insert(job_id.to_string());
        if let Some(end) = end {
            // A coordinator that restarted ended the generation on recovery;
            // its ranks may still have trained to the end and report it late
            // (their finish is retried): then the job is done.
            if end == RECOVERED && restarting && all_completed {
                self.succeed(job_id, generation, " (reported after the coordinator restarted)", now);
            }
            return Ok(());
        }
        if !ok {
            let reason = format!("{worker} failed: {message}");
            self.end_generation(job_id, &reason, now);
        } else if all_finished {
            self.succeed(job_id, generation, "", now);
        }
        Ok(())
    }

    /// Marks `job_id` succeeded (its generation `generation` trained to the end).
    fn succeed(&mut self, job_id: &str, generation: u32, note: &str, now: i64) {
        let Some(job) = self.jobs.get_mut(job_id) else { return };
        job.state = JobState::Succeeded;
        job.step = job.total_steps.max(job.step);
        job.message = "finished".into();
        job.updated_unix = now;
        let what = format!("trained {} steps{note}", job.step);
        self.emit(job_id, EventKind::Succeeded, generation, what, now);
    }

    /// `worker`, a rank of the running generation `generation` of
    /// `job_id`, is being stopped gracefully (SIGTERM: a node drain, a
    /// rolling upgrade): the generation ends as preempted, which does not
    /// spend a restart; the job resumes from the checkpoint the part writes
    /// on its way out once enough workers are free. Anything else (an older
    /// generation, a worker not in it) changes nothing.
    pub(crate) fn preempt(&mut self, worker: &str, job_id: &str, generation: u32, now: i64) -> Result<(), StateError> {
        let job = self.jobs.get_mut(job_id).ok_or_else(|| StateError::NoJob(job_id.into()))?;
        let Some(g) = job
            .current_mut()
            .filter(|g| g.number == generation && g.end_reason.is_none() && g.workers.iter().any(|w| w == worker))
        else {
            return Ok(());
        };
        let reason = format!("{worker} preempted (stopped gracefully; its part ends with a checkpoint)");
        g.end_reason = Some(reason.clone());
        job.preemptions += 1;
        job.state = JobState::Restarting;
        job.message = format!(
            "preempted: resumes from the latest checkpoint when {} worker(s) are free",
            job.min_workers
        );
        job.updated_unix = now;
        let what = format!(
            "preemption {} by {worker}: resumes from the latest checkpoint when {} worker(s) are free (restarts stay {}/{})",
            job.preemptions, job.min_workers, job.restarts, job.max_restarts
        );
        self.emit(job_id, EventKind::GenerationEnded, generation, reason, now);
        self.emit(job_id, EventKind::Preempted, generation, what, now);
        self.drop_pending(job_id);
        Ok(())
    }

    /// Records a checkpoint that rank 0 of the job's current generation has
    /// completed (manifest written); anything else is ignored.
    pub(crate) fn commit_checkpoint(
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

    pub(crate) fn cancel(&mut self, job_id: &str, now: i64) -> Result<Job, StateError> {
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

    pub(super) fn drop_pending(&mut self, job_id: &str) {
        for w in self.workers.values_mut() {
            if w.pending.as_ref().is_some_and(|a| a.job_id == job_id) {
                w.pending = None;
                w.job = None;
                self.changes.workers.insert(w.id.clone());
            }
        }
    }

    /// Ends the running generation of `job_id` early: restart or fail.
    pub(super) fn end_generation(&mut self, job_id: &str, reason: &str, now: i64) {
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

    /// Forgets jobs that ended more than `keep_s` seconds ago, with their
    /// events (the store deletes their rows).
    pub(crate) fn forget_finished_jobs(&mut self, now: i64, keep_s: i64) {
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
}
