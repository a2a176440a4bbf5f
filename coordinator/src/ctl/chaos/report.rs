//! The soak's report: faults injected by kind, restarts, preemptions, time
//! lost, the jobs, and each check with what failed it, then one JSON line
//! (stdout). Formatting and the pass/fail decision only.

use super::checks::JobResult;
use std::collections::BTreeMap;

/// What the soak did, counted as it went.
#[derive(Default)]
pub(crate) struct Faults {
    pub(crate) worker_kills: u64,
    pub(crate) worker_terms: u64,
    /// SIGTERMs that reached a worker while it trained (preemptions).
    pub(crate) worker_terms_busy: u64,
    /// Training workers killed while the S3 server was down.
    pub(crate) worker_kills_s3_down: u64,
    pub(crate) coordinator_kills: u64,
    pub(crate) s3_restarts: u64,
    pub(crate) workers_added: u64,
    pub(crate) jobs_submitted: u64,
    /// Seconds the coordinator and the S3 server were down.
    pub(crate) coordinator_down_s: f64,
    pub(crate) s3_down_s: f64,
    /// Seconds from each SIGTERM to the agent's exit.
    pub(crate) term_exit_s: Vec<f64>,
    /// Agents still running long after their SIGTERM (killed).
    pub(crate) term_overdue: Vec<String>,
    /// Agents that exited without being signalled, with their last log line.
    pub(crate) self_exits: Vec<String>,
}

/// Everything the soak found.
pub(crate) struct Report {
    pub(crate) seed: u64,
    pub(crate) minutes: f64,
    pub(crate) wall_s: f64,
    pub(crate) faults: Faults,
    pub(crate) jobs: Vec<JobResult>,
    /// Some job had not ended by the drain deadline.
    pub(crate) stuck: bool,
    /// The harness itself failed (a server did not come back).
    pub(crate) harness_failed: bool,
    /// Processes that did not exit on the final SIGTERM.
    pub(crate) unclean_shutdowns: Vec<String>,
    /// Processes of the soak still alive at the very end.
    pub(crate) leftovers: Vec<(u32, String)>,
}

/// One check: its key (the JSON line's), what it checks, and its failures
/// (none: passed).
struct Check {
    key: &'static str,
    name: &'static str,
    failures: Vec<String>,
}

/// A short kind for a generation's end reason.
fn reason_kind(reason: &str) -> &'static str {
    if reason.contains("coordinator restarted") {
        "coordinator restarted"
    } else if reason.contains("preempt") {
        "preempted"
    } else if reason.contains("lost") {
        "worker lost"
    } else if reason.contains(": stopped") {
        "worker stopped (SIGTERM)"
    } else if reason.contains("failed") {
        "worker failed"
    } else {
        "other"
    }
}

impl Report {
    fn checks(&self) -> Vec<Check> {
        let jobs = |f: &dyn Fn(&JobResult) -> Vec<String>| -> Vec<String> {
            self.jobs
                .iter()
                .flat_map(|j| f(j).into_iter().map(move |p| format!("{}: {p}", j.id)))
                .collect()
        };
        let mut succeeded = jobs(&|j| {
            if j.succeeded() {
                Vec::new()
            } else {
                vec![format!("{:?} at step {}/{}: {}", j.state, j.step, j.total_steps, j.message)]
            }
        });
        if self.stuck {
            succeeded.push("some job had not ended by the drain deadline".into());
        }
        if self.harness_failed || self.jobs.is_empty() {
            succeeded.push("no job was examined (the soak itself failed)".into());
        }
        let mut agents: Vec<String> = self
            .faults
            .term_overdue
            .iter()
            .map(|n| format!("worker {n} ignored its SIGTERM for 120 s"))
            .collect();
        agents.extend(
            self.unclean_shutdowns
                .iter()
                .map(|n| format!("{n} did not exit on the final SIGTERM")),
        );
        vec![
            Check {
                key: "jobs_succeeded",
                name: "every job succeeded",
                failures: succeeded,
            },
            Check {
                key: "samples_exactly_once",
                name: "every epoch's samples trained exactly once from the restored checkpoints",
                failures: jobs(&|j| j.samples.problems.clone()),
            },
            Check {
                key: "checkpoints_verify",
                name: "every checkpoint verifies, every registered one is complete, the final one registered",
                failures: jobs(&|j| j.checkpoint_problems.clone()),
            },
            Check {
                key: "sigterm_exits",
                name: "every SIGTERMed process exited",
                failures: agents,
            },
            Check {
                key: "no_orphans",
                name: "no orphan processes",
                failures: self.leftovers.iter().map(|(pid, cmd)| format!("pid {pid}: {cmd}")).collect(),
            },
        ]
    }

    /// Prints the report and the JSON line; true when every check passed.
    pub(crate) fn print(&self) -> bool {
        let f = &self.faults;
        let checks = self.checks();
        let ok = checks.iter().all(|c| c.failures.is_empty());
        let restarts: u64 = self.jobs.iter().map(|j| u64::from(j.restarts)).sum();
        let redone: u64 = self.jobs.iter().map(|j| j.samples.steps_redone).sum();
        let trained: u64 = self.jobs.iter().map(|j| j.total_steps).sum();
        let lost: f64 = self.jobs.iter().map(JobResult::time_lost_s).sum();
        let waiting: f64 = self.jobs.iter().map(|j| j.waiting_s).sum();
        let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
        for r in self.jobs.iter().flat_map(|j| &j.end_reasons) {
            *reasons.entry(reason_kind(r)).or_default() += 1;
        }
        let term_max = f.term_exit_s.iter().copied().fold(0.0, f64::max);
        let succeeded = self.jobs.iter().filter(|j| j.succeeded()).count();
        println!(
            "== chaos soak: seed {}, {} min of faults, {:.0} s in all",
            self.seed, self.minutes, self.wall_s
        );
        println!(
            "faults: {} worker kill -9 (+{} while S3 was down), {} worker SIGTERM ({} while training), {} coordinator kill -9 (down {:.1} s), {} S3 server kill -9 (down {:.1} s); {} workers added back",
            f.worker_kills,
            f.worker_kills_s3_down,
            f.worker_terms,
            f.worker_terms_busy,
            f.coordinator_kills,
            f.coordinator_down_s,
            f.s3_restarts,
            f.s3_down_s,
            f.workers_added
        );
        println!(
            "jobs: {} ({} succeeded), {trained} steps; {restarts} restarts; generations ended by: {reasons:?}",
            self.jobs.len(),
            succeeded
        );
        println!(
            "time lost: {lost:.0} s ({waiting:.0} s between generations, {redone} steps trained twice); SIGTERM to exit: max {term_max:.1} s over {} agents",
            f.term_exit_s.len()
        );
        for e in &f.self_exits {
            println!("agent exited on its own: {e}");
        }
        for j in &self.jobs {
            println!(
                "  {} {:?} {}/{} steps, {} restarts, starts {:?}, {} redone, {}/{} checkpoints verified, {} registered, lost {:.0} s",
                j.id,
                j.state,
                j.step,
                j.total_steps,
                j.restarts,
                j.samples.starts,
                j.samples.steps_redone,
                j.checkpoints_verified,
                j.checkpoints,
                j.registered,
                j.time_lost_s()
            );
        }
        for c in &checks {
            let mark = if c.failures.is_empty() { "PASS" } else { "FAIL" };
            println!("[{mark}] {}", c.name);
            for failure in c.failures.iter().take(20) {
                println!("       {failure}");
            }
            if c.failures.len() > 20 {
                println!("       … and {} more", c.failures.len() - 20);
            }
        }
        let json = serde_json::json!({
            "seed": self.seed,
            "minutes": self.minutes,
            "wall_s": (self.wall_s * 10.0).round() / 10.0,
            "faults": {
                "worker_kill": f.worker_kills,
                "worker_kill_s3_down": f.worker_kills_s3_down,
                "worker_sigterm": f.worker_terms,
                "worker_sigterm_training": f.worker_terms_busy,
                "coordinator_kill": f.coordinator_kills,
                "s3_kill": f.s3_restarts,
            },
            "workers_added": f.workers_added,
            "jobs": self.jobs.len(),
            "jobs_succeeded": succeeded,
            "restarts": restarts,
            "generation_end_reasons": reasons,
            "steps": trained,
            "steps_redone": redone,
            "time_lost_s": lost.round(),
            "coordinator_down_s": (f.coordinator_down_s * 10.0).round() / 10.0,
            "s3_down_s": (f.s3_down_s * 10.0).round() / 10.0,
            "sigterm_exit_max_s": (term_max * 10.0).round() / 10.0,
            "check_failures": checks.iter().map(|c| (c.key, c.failures.len())).collect::<BTreeMap<_, _>>(),
            "ok": ok,
        });
        println!("{json}");
        ok
    }
}
