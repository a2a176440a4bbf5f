//! The soak's timeline: start the S3 server, the coordinator and the
//! agents; during the fault phase keep `jobs` jobs submitted, inject a
//! fault after every gap drawn from the seeded RNG and replace lost agents
//! after a short random delay; then stop injecting, wait for every job to
//! end, run the checks, stop everything and look for leftovers.

use super::checks;
use super::cluster::{Client, Cluster, busy_workers};
use super::procs;
use super::report::{Faults, Report};
use super::s3::{BUCKET, WeedServer};
use super::{ChaosOptions, Rng};
use amdim_shared::proto::v1 as pb;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Seconds an agent may take to end its part and exit after SIGTERM
/// before the soak calls it stuck and kills it.
const TERM_BOUND_S: f64 = 120.0;

/// Runs the soak; the exit code says whether every check passed.
pub async fn run(options: ChaosOptions) -> Result<ExitCode> {
    let (dir, temporary) = match &options.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("amdim-chaos-")
                .tempdir()
                .context("a folder for the soak")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let marker = format!("{}-{}", std::process::id(), options.seed);
    eprintln!(
        "chaos: seed {} ({} min, {} jobs, {} workers, a fault every ~{} s); everything under {}",
        options.seed,
        options.minutes,
        options.jobs,
        options.workers,
        options.fault_every_s,
        dir.display()
    );
    let mut s3 = WeedServer::start(&dir, &marker).await?;
    let started = Cluster::start(&dir, options.coordinator_bin.clone(), options.worker_bin.clone(), &marker, s3.env()).await;
    let (mut cluster, client) = match started {
        Ok(c) => c,
        Err(e) => {
            s3.kill().await;
            return Err(e);
        }
    };
    let mut soak = Soak {
        rng: Rng::new(options.seed),
        faults: Faults::default(),
        started: Instant::now(),
        submitted: 0,
        deck: Vec::new(),
        options: &options,
    };
    let outcome = soak.drive(&mut cluster, &mut s3, &client).await;
    let stuck = match &outcome {
        Ok(stuck) => *stuck,
        Err(e) => {
            eprintln!("chaos: the soak itself failed: {e:#}");
            true
        }
    };
    let results = match &outcome {
        Ok(_) => Some(checks::examine(&client, &s3, &cluster.samples_dir).await),
        Err(_) => None,
    };
    // Stop everything: agents first (they end their parts), then the rest.
    let clean_exits = shut_down(&mut cluster, &mut s3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leftovers = procs::marked_processes(&marker);
    let report = Report {
        seed: options.seed,
        minutes: options.minutes,
        wall_s: soak.started.elapsed().as_secs_f64(),
        faults: soak.faults,
        jobs: match results {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                eprintln!("chaos: examining the jobs failed: {e:#}");
                Vec::new()
            }
            None => Vec::new(),
        },
        stuck,
        harness_failed: outcome.is_err(),
        unclean_shutdowns: clean_exits,
        leftovers,
    };
    let ok = report.print();
    match temporary {
        Some(t) if !ok => eprintln!("chaos: FAILED; logs kept in {}", t.keep().display()),
        Some(_) => {}
        None => eprintln!("chaos: logs in {}", dir.display()),
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

struct Soak<'a> {
    rng: Rng,
    faults: Faults,
    started: Instant,
    submitted: usize,
    deck: Vec<Fault>,
    options: &'a ChaosOptions,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillWorker,
    TermWorker,
    KillCoordinator,
    RestartS3,
    /// The S3 server down, then a training worker killed: the restart
    /// resumes while the checkpoints cannot be read.
    KillWorkerDuringS3Outage,
}

impl Soak<'_> {
    fn say(&self, what: &str) {
        eprintln!("chaos [{:>7.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// The fault phase and the drain. Ok(true) when some job had not ended
    /// by the drain's deadline.
    async fn drive(&mut self, cluster: &mut Cluster, s3: &mut WeedServer, client: &Client) -> Result<bool> {
        let chaos_end = self.started + Duration::from_secs_f64(self.options.minutes * 60.0);
        let drain_end = chaos_end + Duration::from_secs(self.options.drain_timeout_s);
        let mut next_fault = self.started + self.gap();
        let mut pending_adds: Vec<Instant> = Vec::new();
        let mut states: BTreeMap<String, i32> = BTreeMap::new();
        let mut polled = Instant::now() - Duration::from_secs(10);
        let mut draining_said = false;
        for _ in 0..self.options.workers {
            cluster.add_agent()?;
        }
        loop {
            let now = Instant::now();
            let chaos = now < chaos_end;
            self.reap(cluster).await;
            // Keep the pool at its size: a lost agent comes back 1-5 s later
            // (at once while draining).
            while cluster.live_agents().count() + pending_adds.len() < self.options.workers {
                let delay = if chaos { self.rng.uniform(1.0, 5.0) } else { 0.0 };
                pending_adds.push(now + Duration::from_secs_f64(delay));
            }
            let due = pending_adds.iter().filter(|t| **t <= now).count();
            pending_adds.retain(|t| *t > now);
            for _ in 0..due {
                let name = cluster.add_agent()?.name.clone();
                self.faults.workers_added += 1;
                self.say(&format!("added worker {name}"));
            }
            if now.duration_since(polled) >= Duration::from_secs(1) {
                if let Ok(list) = client.clone().list(pb::ListJobsRequest {}).await {
                    states = list.into_inner().jobs.into_iter().map(|j| (j.id, j.state)).collect();
                    polled = now;
                }
                let active = states.values().filter(|s| !is_final(**s)).count();
                if chaos && active < self.options.jobs && self.submit(client).await {
                    polled = now - Duration::from_secs(10);
                }
                if !chaos && states.values().all(|s| is_final(*s)) {
                    return Ok(false);
                }
            }
            if chaos && now >= next_fault {
                self.inject(cluster, s3, client).await?;
                next_fault = Instant::now() + self.gap();
            }
            if !chaos && !draining_said {
                draining_said = true;
                self.say("fault phase over: waiting for every job to end");
            }
            if now >= drain_end {
                self.say("some jobs did not end in time");
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn gap(&mut self) -> Duration {
        let mean = self.options.fault_every_s.max(0.5);
        Duration::from_secs_f64(self.rng.uniform(0.5 * mean, 1.5 * mean))
    }

    /// Submits one job; true if the coordinator took it.
    async fn submit(&mut self, client: &Client) -> bool {
        let (lo, hi) = self.options.steps;
        let steps = lo + self.rng.below((hi.saturating_sub(lo) + 1) as usize) as u64;
        let max_workers = 1 + self.rng.below(2);
        let n = self.submitted;
        let spec = format!(
            "[job]\nname = \"chaos-{n}\"\nseed = {n}\n\
             [data]\nformat = \"synthetic\"\nsynthetic_samples = 64\n\
             [model]\nndf = 8\nn_rkhs = 32\ndepth = 1\n\
             [train]\nbatch_size = 8\nmax_steps = {steps}\nlog_every = 10\n\
             [dist]\ntimeout_s = 20\n\
             [checkpoint]\nuri = \"s3://{BUCKET}/{}-{n}\"\nevery_steps = 5\nkeep = 0\n\
             [scheduling]\nmin_workers = 1\nmax_workers = {max_workers}\nmax_restarts = 1000\n",
            self.options.seed
        );
        match client
            .clone()
            .submit(pb::SubmitRequest {
                spec_toml: spec,
                min_workers: 0,
                max_workers: 0,
            })
            .await
        {
            Ok(job) => {
                self.submitted += 1;
                self.faults.jobs_submitted += 1;
                self.say(&format!(
                    "submitted {} ({steps} steps, up to {max_workers} workers)",
                    job.into_inner().id
                ));
                true
            }
            Err(_) => false,
        }
    }

    /// The next fault: drawn from a shuffled deck of twelve (3 worker
    /// kills, 3 worker SIGTERMs, 2 coordinator kills, 2 S3 kills, 2 worker
    /// kills while S3 is down), so that even a short soak meets every kind
    /// in these proportions.
    fn pick_fault(&mut self) -> Fault {
        if self.deck.is_empty() {
            use Fault::*;
            self.deck = vec![
                KillWorker,
                KillWorker,
                KillWorker,
                TermWorker,
                TermWorker,
                TermWorker,
                KillCoordinator,
                KillCoordinator,
                RestartS3,
                RestartS3,
                KillWorkerDuringS3Outage,
                KillWorkerDuringS3Outage,
            ];
            for i in (1..self.deck.len()).rev() {
                let j = self.rng.below(i + 1);
                self.deck.swap(i, j);
            }
        }
        self.deck.pop().unwrap_or(Fault::KillWorker)
    }

    async fn inject(&mut self, cluster: &mut Cluster, s3: &mut WeedServer, client: &Client) -> Result<()> {
        let fault = self.pick_fault();
        match fault {
            Fault::KillWorker | Fault::TermWorker => {
                let live: Vec<String> = cluster.live_agents().map(|a| a.name.clone()).collect();
                if live.is_empty() {
                    return Ok(());
                }
                let name = live[self.rng.below(live.len())].clone();
                let busy = busy_workers(client).await;
                let job = busy.get(&name).cloned();
                let on = job.as_deref().map_or("idle".to_string(), |j| format!("busy on {j}"));
                if let Fault::KillWorker = fault {
                    if let Some(agent) = cluster.take_agent(&name) {
                        agent.process.kill_and_reap().await;
                    }
                    self.faults.worker_kills += 1;
                    self.say(&format!("kill -9 worker {name} ({on})"));
                } else if let Some(agent) = cluster.agents.iter_mut().find(|a| a.name == name) {
                    agent.process.signal(libc::SIGTERM);
                    agent.terminated_at = Some(Instant::now());
                    self.faults.worker_terms += 1;
                    self.faults.worker_terms_busy += u64::from(job.is_some());
                    self.say(&format!("SIGTERM worker {name} ({on})"));
                }
            }
            Fault::KillCoordinator => {
                let down = self.rng.uniform(0.5, 3.0);
                self.say(&format!("kill -9 coordinator (down {down:.1} s)"));
                cluster.kill_coordinator().await;
                tokio::time::sleep(Duration::from_secs_f64(down)).await;
                let back = Instant::now();
                cluster.start_coordinator(client).await?;
                self.faults.coordinator_kills += 1;
                self.faults.coordinator_down_s += down + back.elapsed().as_secs_f64();
            }
            Fault::RestartS3 | Fault::KillWorkerDuringS3Outage => {
                let down = self.rng.uniform(1.0, 8.0);
                self.say(&format!("kill -9 S3 server (down {down:.1} s)"));
                s3.kill().await;
                if let Fault::KillWorkerDuringS3Outage = fault {
                    let busy = busy_workers(client).await;
                    let training: Vec<String> = cluster
                        .live_agents()
                        .map(|a| a.name.clone())
                        .filter(|n| busy.contains_key(n))
                        .collect();
                    if !training.is_empty() {
                        let name = training[self.rng.below(training.len())].clone();
                        let job = busy.get(&name).cloned().unwrap_or_default();
                        tokio::time::sleep(Duration::from_secs_f64(down.min(1.0) / 2.0)).await;
                        if let Some(agent) = cluster.take_agent(&name) {
                            agent.process.kill_and_reap().await;
                        }
                        self.faults.worker_kills_s3_down += 1;
                        self.say(&format!("kill -9 worker {name} (busy on {job}) while S3 is down"));
                    }
                }
                tokio::time::sleep(Duration::from_secs_f64(down)).await;
                let back = Instant::now();
                s3.restart().await?;
                self.faults.s3_restarts += 1;
                self.faults.s3_down_s += down + back.elapsed().as_secs_f64();
            }
        }
        Ok(())
    }

    /// Reaps agents that exited: after a SIGTERM, its time to exit; on its
    /// own, recorded (with its log's last line). Kills one SIGTERMed too long ago.
    async fn reap(&mut self, cluster: &mut Cluster) {
        for (name, since_term) in cluster.reap_exited() {
            match since_term {
                Some(s) => {
                    self.faults.term_exit_s.push(s);
                    self.say(&format!("worker {name} exited {s:.1} s after its SIGTERM"));
                }
                None => {
                    let log = std::fs::read_to_string(cluster.agent_log(&name)).unwrap_or_default();
                    let last = exit_reason(&log);
                    self.say(&format!("worker {name} exited on its own: {last}"));
                    self.faults.self_exits.push(format!("{name}: {last}"));
                }
            }
        }
        let overdue: Vec<String> = cluster
            .agents
            .iter()
            .filter(|a| a.terminated_at.is_some_and(|t| t.elapsed().as_secs_f64() > TERM_BOUND_S))
            .map(|a| a.name.clone())
            .collect();
        for name in overdue {
            if let Some(agent) = cluster.take_agent(&name) {
                agent.process.kill_and_reap().await;
            }
            self.say(&format!("worker {name} still running {TERM_BOUND_S} s after its SIGTERM: killed"));
            self.faults.term_overdue.push(name);
        }
    }
}

fn is_final(state: i32) -> bool {
    matches!(
        pb::JobState::try_from(state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    )
}

/// SIGTERM to every agent (60 s to exit), then the coordinator and the S3
/// server. Returns what did not exit on its SIGTERM.
async fn shut_down(cluster: &mut Cluster, s3: &mut WeedServer) -> Vec<String> {
    let mut unclean = Vec::new();
    for a in &cluster.agents {
        a.process.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster.agents.is_empty() && Instant::now() < deadline {
        cluster.reap_exited();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for a in std::mem::take(&mut cluster.agents) {
        unclean.push(format!("worker {}", a.name));
        a.process.kill_and_reap().await;
    }
    if !cluster.stop_coordinator().await {
        unclean.push("coordinator".into());
    }
    s3.stop(Duration::from_secs(20)).await;
    unclean
}

/// Why an agent exited, from its log: the error it exited with (the
/// `Error:` line and its causes, before any backtrace), else its last line.
fn exit_reason(log: &str) -> String {
    let mut lines = log.lines().skip_while(|l| !l.starts_with("Error: "));
    match lines.next() {
        Some(first) => {
            let causes = lines
                .take_while(|l| !l.starts_with("Stack backtrace:"))
                .map(str::trim)
                .filter(|l| !l.is_empty() && *l != "Caused by:");
            std::iter::once(first).chain(causes).collect::<Vec<_>>().join(" ")
        }
        None => log.lines().last().unwrap_or("").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::exit_reason;

    #[test]
    fn the_exit_reason_is_the_error_and_its_causes_not_the_backtrace() {
        let log = "INFO part ended\nError: job job-1: the part did not end\n\nCaused by:\n    0: stuck\n\nStack backtrace:\n   0: main\n  31: _start\n";
        assert_eq!(exit_reason(log), "Error: job job-1: the part did not end 0: stuck");
        assert_eq!(exit_reason("a\nlast line\n"), "last line");
    }
}
