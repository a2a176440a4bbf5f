//! Workers and their liveness: registering, heartbeats (which hand out a
//! pending assignment, record rank 0's progress and answer continue or
//! stop; a worker and the coordinator that disagree on the part it runs
//! are set straight: a part the coordinator does not know is stopped, a
//! part the worker no longer runs ends its generation), the heartbeat stream that makes a worker lost the moment it
//! closes, and losing a worker (which ends its generation). Deadlines are
//! `scheduling`'s tick.

use super::events::EventKind;
use super::jobs::Job;
use super::{State, StateError};
use amdim_shared::proto::v1::TrainingStats;
use serde::{Deserialize, Serialize};

/// A heartbeat's part and progress: the (job, generation) the worker
/// trains, the step reached, the steps in all, and the latest numbers when
/// the worker has any.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Report {
    pub(crate) job_id: String,
    pub(crate) generation: u32,
    pub(crate) step: u64,
    pub(crate) total: u64,
    pub(crate) stats: Option<TrainingStats>,
}

/// What a worker should do next; sent in its heartbeat reply.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Command {
    Idle,
    Assign(Assignment),
    Continue,
    Stop(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Assignment {
    pub(crate) job_id: String,
    pub(crate) generation: u32,
    pub(crate) spec_toml: String,
    /// The first rank of this worker.
    pub(crate) rank: u32,
    pub(crate) world_size: u32,
    /// Ranks this worker drives (one per device).
    pub(crate) local_ranks: u32,
    pub(crate) rendezvous: String,
    pub(crate) resume: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Worker {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) devices: u32,
    pub(crate) rendezvous_addr: String,
    /// (job, generation) it belongs to until it reports the end of its part.
    pub(crate) job: Option<(String, u32)>,
    /// An assignment not yet picked up by a heartbeat.
    pub(crate) pending: Option<Assignment>,
    pub(crate) last_seen_unix: i64,
    pub(crate) lost: bool,
    /// The heartbeat stream it is connected by (0: none); a stream that
    /// closes makes the worker lost only while it is still the current one.
    #[serde(skip)]
    pub(crate) session: u64,
    /// Known from before a coordinator restart and not heard from since:
    /// it keeps its part until then (or until its lease runs out) but is
    /// given no new work ([`State::recover`]).
    #[serde(skip)]
    pub(crate) unconfirmed: bool,
}

impl State {
    pub(super) fn touch_worker(&mut self, id: &str) {
        self.changes.workers.insert(id.to_string());
    }

    pub(crate) fn register(&mut self, name: &str, devices: u32, rendezvous_addr: &str, now: i64) -> Worker {
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
            unconfirmed: false,
        };
        self.workers.insert(w.id.clone(), w.clone());
        self.touch_worker(&w.id);
        w
    }

    /// A worker's heartbeat with the part it trains and its progress (None:
    /// it trains nothing); returns its next command. Liveness alone is not
    /// durable (a restarted coordinator gives every worker it knew one lease
    /// to heartbeat again, see [`State::recover`]); a hand-over of an
    /// assignment and a disagreement about the part are changes, and rank
    /// 0's progress is written with the next tick ([`State::progress`]).
    pub(crate) fn heartbeat(&mut self, worker: &str, report: Option<Report>, now: i64) -> Result<Command, StateError> {
        let w = self.workers.get_mut(worker).ok_or_else(|| StateError::NoWorker(worker.into()))?;
        if w.lost {
            return Err(StateError::NoWorker(worker.into()));
        }
        w.last_seen_unix = now;
        w.unconfirmed = false;
        if let Some(a) = w.pending.take() {
            self.touch_worker(worker);
            return Ok(Command::Assign(a));
        }
        let assigned = w.job.clone();
        let (job_id, generation) = match (assigned, &report) {
            (None, None) => return Ok(Command::Idle),
            (None, Some(r)) => {
                return Ok(Command::Stop(format!(
                    "{worker} is not part of generation {} of {} (the coordinator does not know that part): drop it",
                    r.generation, r.job_id
                )));
            }
            (Some((j, g)), None) => return Ok(self.part_not_running(worker, &j, g, now)),
            (Some((j, g)), Some(r)) if (r.job_id.as_str(), r.generation) != (j.as_str(), g) => {
                return Ok(Command::Stop(format!(
                    "{worker} belongs to generation {g} of {j}, not to generation {} of {}: drop that part",
                    r.generation, r.job_id
                )));
            }
            (Some(part), Some(_)) => part,
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
                    self.progress.insert(job_id);
                }
                Ok(Command::Continue)
            }
            Some(g) => Ok(Command::Stop(g.end_reason.clone().unwrap_or_default())),
            None => Ok(Command::Stop(format!("generation {generation} of {job_id} is over"))),
        }
    }

    /// `worker` trains nothing, yet belongs to `generation` of `job_id`: its
    /// assignment or the report of its part's end was lost. It is free
    /// again, and a generation still running with it ends (the job restarts
    /// from its latest checkpoint, or fails once its restarts are spent),
    /// so that no job waits for ever on a part nobody trains.
    fn part_not_running(&mut self, worker: &str, job_id: &str, generation: u32, now: i64) -> Command {
        if let Some(w) = self.workers.get_mut(worker) {
            w.job = None;
        }
        self.touch_worker(worker);
        if self.jobs.get(job_id).and_then(Job::running_generation).map(|g| g.number) == Some(generation) {
            let reason = format!("{worker} is not training its part of generation {generation} (its assignment or its end was lost)");
            self.end_generation(job_id, &reason, now);
        }
        Command::Idle
    }

    /// The heartbeat stream `session` of `worker` opened (see [`Worker::session`]).
    pub(crate) fn connected(&mut self, worker: &str, session: u64) -> Result<(), StateError> {
        let w = self.workers.get_mut(worker).filter(|w| !w.lost);
        let w = w.ok_or_else(|| StateError::NoWorker(worker.into()))?;
        w.session = session;
        Ok(())
    }

    /// The heartbeat stream `session` of `worker` closed (the process died,
    /// or its connection broke): the worker is lost at once, unless it has
    /// opened a newer stream since.
    pub(crate) fn disconnected(&mut self, worker: &str, session: u64, now: i64) {
        if self.workers.get(worker).is_some_and(|w| w.session == session && session != 0) {
            self.lose_worker(worker, &format!("{worker} lost (its heartbeat stream closed)"), now);
        }
    }

    /// Marks `worker` lost; a generation it belonged to ends with `reason`.
    pub(super) fn lose_worker(&mut self, worker: &str, reason: &str, now: i64) {
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
}
