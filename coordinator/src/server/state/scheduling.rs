//! The scheduling rules: the gang size (a generation starts only when at
//! least `min_workers` are free and takes as many as it may, up to
//! `max_workers`, whose ranks divide the global batch), the queue
//! (priority, then first come), rank assignment and rendezvous, the tick
//! that applies heartbeat deadlines (and writes the progress heartbeats reported), and recovery after a coordinator
//! restart.

use super::events::EventKind;
use super::jobs::{Generation, JobState, RECOVERED};
use super::workers::{Assignment, Worker};
use super::{FORGET_LOST_WORKERS_S, State};

/// The largest worker count in [min, max] that is at most `free` and whose
/// ranks (workers × `devices` each) divide the global batch.
pub(crate) fn gang_size(min: u32, max: u32, free: usize, global_batch: usize, devices: u32) -> Option<u32> {
    (min..=max)
        .rev()
        .find(|&n| n as usize <= free && global_batch.is_multiple_of(n as usize * devices.max(1) as usize))
}

impl State {
    /// Hands the progress reported since the last tick to the store,
    /// marks workers silent for longer than `deadline_s` as lost (ending
    /// their generations), forgets workers lost for an hour, then starts
    /// every job that can start.
    pub(crate) fn tick(&mut self, now: i64, deadline_s: i64) {
        let progress = std::mem::take(&mut self.progress);
        self.changes.jobs.extend(progress);
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

    pub(super) fn schedule(&mut self, now: i64) {
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
                .filter(|w| !w.lost && !w.unconfirmed && w.job.is_none() && w.devices >= devices)
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
                completed: Vec::new(),
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

    /// After a coordinator restart: the generations that were running end
    /// (their jobs resume from the latest checkpoint), but the workers that
    /// were alive keep their identity and their part for one heartbeat
    /// lease counted from now. Their training may still be going on, so a
    /// job does not start again while a worker that may train it is neither
    /// done nor lost: the worker's next heartbeat is answered `Stop` (its
    /// generation has ended), its part writes a final checkpoint and
    /// reports its end, and only then is the job scheduled again. A worker
    /// that does not heartbeat within the lease is lost as usual. Until it
    /// heartbeats, a worker gets no new work (it may have died meanwhile).
    pub(crate) fn recover(&mut self, now: i64) {
        let workers: Vec<String> = self.workers.keys().cloned().collect();
        for id in workers {
            if let Some(w) = self.workers.get_mut(&id)
                && !w.lost
            {
                w.last_seen_unix = now;
                w.unconfirmed = true;
                if w.pending.take().is_some() {
                    w.job = None; // an assignment it never picked up: nothing trains
                }
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
                g.end_reason = Some(RECOVERED.into());
                job.state = JobState::Restarting;
                job.message = "coordinator restarted: resuming from the latest checkpoint".into();
                job.updated_unix = now;
            }
            self.emit(&job_id, EventKind::GenerationEnded, generation, RECOVERED.into(), now);
        }
    }
}
