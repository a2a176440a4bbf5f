//! The coordinator's `/metrics` (docs/architecture.md §9): jobs and workers by state, and
//! per job its step, generation, restarts, preemptions and committed checkpoints. Every
//! value is derived from the durable state at scrape time, so the numbers
//! survive a coordinator restart and never disagree with `amdimctl get`.
//! Label sets stay bounded: per-job series exist for unfinished jobs and
//! for jobs that ended within the last hour. Pure: no I/O, no clock.

use super::state::{JobState, State};
use amdim_shared::metrics::Registry;

/// How long a finished job keeps its per-job series.
pub(crate) const FINISHED_JOB_SERIES_S: i64 = 3600;

const JOB_STATES: [(JobState, &str); 6] = [
    (JobState::Pending, "pending"),
    (JobState::Running, "running"),
    (JobState::Restarting, "restarting"),
    (JobState::Succeeded, "succeeded"),
    (JobState::Failed, "failed"),
    (JobState::Cancelled, "cancelled"),
];

/// The metrics of `state` at `now_unix`, in the Prometheus text format.
pub(crate) fn encode(state: &State, now_unix: i64) -> String {
    let r = Registry::new();
    // backend="none": the coordinator trains nothing; the label set matches the workers'.
    r.gauge("amdim_build_info", "Always 1: the coordinator's version.", &["version", "backend"])
        .with(&[env!("CARGO_PKG_VERSION"), "none"])
        .set(1.0);
    let jobs = r.gauge("amdim_jobs", "Jobs known to the coordinator, by state.", &["state"]);
    for (s, name) in JOB_STATES {
        jobs.with(&[name]).set(state.jobs.values().filter(|j| j.state == s).count() as f64);
    }
    let workers = r.gauge("amdim_workers", "Registered worker agents, by state.", &["state"]);
    let lost = state.workers.values().filter(|w| w.lost).count();
    let busy = state.workers.values().filter(|w| !w.lost && w.job.is_some()).count();
    workers.with(&["idle"]).set((state.workers.len() - lost - busy) as f64);
    workers.with(&["busy"]).set(busy as f64);
    workers.with(&["lost"]).set(lost as f64);

    let restarts = r.counter(
        "amdim_job_restarts_total",
        "Generations a job started after a failure.",
        &["job_id"],
    );
    let preemptions = r.counter(
        "amdim_job_preemptions_total",
        "Generations of a job ended by a graceful stop of a worker (SIGTERM); not counted as restarts.",
        &["job_id"],
    );
    let step = r.gauge("amdim_job_step", "The latest step a job's workers reported.", &["job_id"]);
    let total = r.gauge("amdim_job_total_steps", "Steps a job trains for.", &["job_id"]);
    let generation = r.gauge("amdim_job_generation", "A job's current generation number.", &["job_id"]);
    let world = r.gauge(
        "amdim_job_workers",
        "Workers in a job's running generation (0 when none runs).",
        &["job_id"],
    );
    let checkpoints = r.counter(
        "amdim_checkpoints_committed_total",
        "Complete checkpoints registered for a job.",
        &["job_id"],
    );
    let shown = state
        .jobs
        .values()
        .filter(|j| !j.state.is_final() || now_unix - j.updated_unix <= FINISHED_JOB_SERIES_S);
    for j in shown {
        let id = [j.id.as_str()];
        restarts.with(&id).add(f64::from(j.restarts));
        preemptions.with(&id).add(f64::from(j.preemptions));
        step.with(&id).set(j.step as f64);
        total.with(&id).set(j.total_steps as f64);
        generation.with(&id).set(j.current().map_or(0.0, |g| f64::from(g.number)));
        let running = j.current().filter(|g| g.end_reason.is_none()).map_or(0, |g| g.workers.len());
        world.with(&id).set(running as f64);
        checkpoints.with(&id).add(j.checkpoints.len() as f64);
    }
    r.encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::state::{Job, Worker};

    fn job(id: &str, state: JobState, updated_unix: i64) -> Job {
        Job {
            id: id.into(),
            name: id.into(),
            state,
            spec_toml: String::new(),
            min_workers: 1,
            max_workers: 1,
            priority: 0,
            max_restarts: 3,
            restarts: 2,
            preemptions: 1,
            global_batch: 8,
            devices_per_worker: 1,
            generations: Vec::new(),
            step: 7,
            total_steps: 10,
            message: String::new(),
            created_unix: 0,
            updated_unix,
            seq: 0,
            checkpoints: Vec::new(),
            stats: None,
            events: Vec::new(),
        }
    }

    fn worker(id: &str, job: Option<&str>, lost: bool) -> Worker {
        Worker {
            id: id.into(),
            name: id.into(),
            devices: 1,
            rendezvous_addr: String::new(),
            job: job.map(|j| (j.to_string(), 1)),
            pending: None,
            last_seen_unix: 0,
            lost,
            session: 0,
            unconfirmed: false,
        }
    }

    #[test]
    fn states_are_counted_and_old_finished_jobs_drop_out() {
        let mut s = State::default();
        s.jobs.insert("a".into(), job("a", JobState::Running, 0));
        s.jobs.insert("b".into(), job("b", JobState::Succeeded, 10_000));
        s.jobs.insert("old".into(), job("old", JobState::Failed, 0));
        s.workers.insert("w1".into(), worker("w1", Some("a"), false));
        s.workers.insert("w2".into(), worker("w2", None, false));
        s.workers.insert("w3".into(), worker("w3", Some("a"), true));
        let text = encode(&s, 10_000 + 60);
        for line in [
            "amdim_jobs{state=\"running\"} 1",
            "amdim_jobs{state=\"succeeded\"} 1",
            "amdim_jobs{state=\"failed\"} 1",
            "amdim_jobs{state=\"pending\"} 0",
            "amdim_workers{state=\"busy\"} 1",
            "amdim_workers{state=\"idle\"} 1",
            "amdim_workers{state=\"lost\"} 1",
            "amdim_job_restarts_total{job_id=\"a\"} 2",
            "amdim_job_preemptions_total{job_id=\"a\"} 1",
            "amdim_job_step{job_id=\"b\"} 7",
            "amdim_job_total_steps{job_id=\"a\"} 10",
            format!("amdim_build_info{{version=\"{}\",backend=\"none\"}} 1", env!("CARGO_PKG_VERSION")).as_str(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("job_id=\"old\""), "a job finished long ago keeps series:\n{text}");
    }
}
