//! The coordinator scale benchmark (`amdim-coordinator bench`): a real
//! coordinator process (this binary, or `--coordinator-bin`, with its
//! SQLite store and tokens) and N simulated workers (`sim`), each on its
//! own TCP connection, that register as agents do (with backoff, jitter
//! and the coordinator's retry-after when it sheds load) and heartbeat
//! every second on their heartbeat streams. Jobs are submitted so that
//! workers are assigned, and rank 0 of each reports progress and commits
//! checkpoints; one client watches a job and one polls `Get` and `List`,
//! as users do. It prints the registration outcome (failed, retries,
//! shed answers), p50/p99/max RPC latency over the steady window after
//! every worker registered, and the coordinator's CPU and memory (from
//! /proc; per worker above its idle size), then one JSON line. A
//! benchmark, not a test: it asserts nothing about speed. With
//! `--coordinator-cpu N` the coordinator runs on core N alone and the
//! simulated workers on the other cores; without it they share them.
//! It lives in `ctl`, not `server`, although `amdim-coordinator` runs it:
//! it measures the coordinator from outside, as a separate process reached
//! only over gRPC with the clients' own code (`jobs::connect`), and links
//! nothing of the server's internals.

mod sim;
mod usage;

use super::jobs;
use amdim_shared::proto::v1 as pb;
use anyhow::{Context, Result, bail};
use sim::{Fleet, take};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use usage::{Samples, process_usage, summary};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Simulated workers, each on its own connection.
    pub workers: usize,
    /// Jobs submitted.
    pub jobs: usize,
    /// Length of the steady window measured.
    pub seconds: u64,
    /// Heartbeat interval of the coordinator and the workers.
    pub heartbeat_ms: u64,
    /// The coordinator binary to start.
    pub coordinator_bin: PathBuf,
    /// The core the coordinator runs on alone (None: not pinned).
    pub coordinator_cpu: Option<usize>,
    /// Passed as `--max-registrations-per-s` (None: the coordinator's default).
    pub registrations_per_s: Option<u32>,
}

/// Pins this process (call it before its runtime starts threads) to every
/// core it may use but `coordinator_cpu`; returns those cores.
pub fn pin_simulator(coordinator_cpu: usize) -> Result<Vec<usize>> {
    let others: Vec<usize> = usage::allowed_cpus().into_iter().filter(|&c| c != coordinator_cpu).collect();
    if others.is_empty() {
        bail!("--coordinator-cpu {coordinator_cpu}: no other core is left for the simulated workers");
    }
    usage::pin_to(&others).context("pinning the simulated workers")?;
    Ok(others)
}

fn bench_spec(i: usize, workers_per_job: usize) -> String {
    format!(
        "[job]\nname = \"bench-{i}\"\n[data]\nformat = \"synthetic\"\n[train]\nbatch_size = {}\nmax_steps = 1000000\n\
         [scheduling]\nmin_workers = {workers_per_job}\nmax_workers = {workers_per_job}\n",
        workers_per_job * 8
    )
}

async fn wait_until_serving(server: &str, token: &str) -> Result<jobs::Client> {
    let started = Instant::now();
    loop {
        if let Ok(mut c) = jobs::connect(server, Some(token), None).await
            && c.list(pb::ListJobsRequest {}).await.is_ok()
        {
            return Ok(c);
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the coordinator at {server} did not come up within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the coordinator child process, pinned when asked.
fn start_coordinator(o: &BenchOptions, listen: &str, http: &str, store: &Path, tokens: (&str, &str)) -> Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(&o.coordinator_bin);
    command
        .args(["--listen", listen, "--http-listen", http, "--heartbeat-ms"])
        .arg(o.heartbeat_ms.to_string())
        .args(["--heartbeat-timeout-s", "10", "--store"])
        .arg(store)
        .env("AMDIM_CLIENT_TOKEN", tokens.0)
        .env("AMDIM_JOIN_TOKEN", tokens.1)
        .env("AMDIM_LOG", "warn")
        .kill_on_drop(true);
    if let Some(per_s) = o.registrations_per_s {
        command.arg("--max-registrations-per-s").arg(per_s.to_string());
    }
    if let Some(cpu) = o.coordinator_cpu {
        // SAFETY: only a system call between fork and exec.
        unsafe {
            command.pre_exec(move || usage::pin_to(&[cpu]));
        }
    }
    command.spawn().with_context(|| format!("starting {}", o.coordinator_bin.display()))
}

/// Runs the benchmark; the report goes to stdout.
pub async fn run(o: BenchOptions, dir: &Path) -> Result<()> {
    if o.workers == 0 || o.jobs == 0 || o.workers < o.jobs {
        bail!("--workers ({}) must be at least --jobs ({}) and not 0", o.workers, o.jobs);
    }
    let free = |what: &str| -> Result<String> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").with_context(|| format!("a free port for {what}"))?;
        Ok(l.local_addr()?.to_string())
    };
    let (listen, http) = (free("gRPC")?, free("HTTP")?);
    let (client_token, join_token) = ("bench-client-token".to_string(), "bench-join-token".to_string());
    let store = dir.join("coordinator.db");
    let mut child = start_coordinator(&o, &listen, &http, &store, (&client_token, &join_token))?;
    let pid = child.id().context("the coordinator exited at once")?;
    let server = format!("http://{listen}");
    let mut client = wait_until_serving(&server, &client_token).await?;
    let per_job = o.workers / o.jobs;
    let mut job_ids = Vec::new();
    for i in 0..o.jobs {
        let job = client
            .submit(pb::SubmitRequest {
                spec_toml: bench_spec(i, per_job),
                min_workers: 0,
                max_workers: 0,
            })
            .await
            .map_err(jobs::refused)?
            .into_inner();
        job_ids.push(job.id);
    }
    let pinned = match o.coordinator_cpu {
        Some(cpu) => format!("coordinator on core {cpu}, simulated workers on cores {:?}", usage::allowed_cpus()),
        None => "coordinator and simulated workers share the cores".to_string(),
    };
    println!(
        "coordinator pid {pid}: {} simulated workers (one connection each), heartbeat every {} ms, {} jobs of {per_job} workers, {} s; {pinned}",
        o.workers, o.heartbeat_ms, o.jobs, o.seconds
    );
    let (_, idle_kib, _) = process_usage(pid)?;
    let interval = Duration::from_millis(o.heartbeat_ms);
    let fleet = Arc::new(Fleet::new(server.clone(), join_token.clone(), interval));
    let (cpu_start, _, _) = process_usage(pid)?;
    let registering = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..o.workers {
        tasks.spawn(sim::simulated_worker(fleet.clone(), i));
    }
    // Users: one watching a job's stream, one polling Get and List.
    let (mut gets, mut lists) = (Samples::default(), Samples::default());
    let watch_updates = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (mut c, id, updates) = (client.clone(), job_ids[0].clone(), watch_updates.clone());
        tokio::spawn(async move {
            if let Ok(s) = c
                .watch(pb::WatchRequest {
                    id,
                    after_seq: 0,
                    min_interval_ms: 250,
                })
                .await
            {
                let mut s = s.into_inner();
                while let Ok(Some(_)) = s.message().await {
                    updates.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Registration: until every worker registered or gave up.
    while fleet.settled() < o.workers as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let registration_s = registering.elapsed().as_secs_f64();
    let (cpu_registered, _, _) = process_usage(pid)?;
    // Ramp: every worker's first heartbeats and assignments.
    tokio::time::sleep(interval * 2 + Duration::from_secs(1)).await;
    let (cpu0, _, _) = process_usage(pid)?;
    let window = Instant::now();
    let until = window + Duration::from_secs(o.seconds);
    take(&fleet.heartbeats);
    while Instant::now() < until {
        let started = Instant::now();
        let reply = client.get(pb::GetJobRequest { id: job_ids[0].clone() }).await;
        gets.record_result(started, &reply);
        let started = Instant::now();
        let reply = client.list(pb::ListJobsRequest {}).await;
        lists.record_result(started, &reply);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall = window.elapsed().as_secs_f64();
    let (cpu1, rss_kib, peak_kib) = process_usage(pid)?;
    let hb = take(&fleet.heartbeats);
    // Who is busy while every simulated worker still heartbeats.
    let workers = client
        .workers(pb::ListWorkersRequest {})
        .await
        .map_err(jobs::refused)?
        .into_inner()
        .workers;
    let busy = workers.iter().filter(|w| !w.lost && !w.job_id.is_empty()).count();
    let running = client
        .list(pb::ListJobsRequest {})
        .await
        .map_err(jobs::refused)?
        .into_inner()
        .jobs
        .iter()
        .filter(|j| j.state == pb::JobState::Running as i32)
        .count();
    fleet.stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        if !matches!(done, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    let store_bytes = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", store.display())).ok())
        .map(|m| m.len())
        .sum::<u64>();
    let cpu_share = (cpu1 - cpu0) / wall;
    let registration_cpu = (cpu_registered - cpu_start) / registration_s.max(1e-3);
    let per_worker_kib = rss_kib.saturating_sub(idle_kib) as f64 / o.workers as f64;
    let rate = hb.micros.len() as f64 / wall;
    let count = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (registered, gave_up) = (count(&fleet.registered), count(&fleet.gave_up));
    let (retries, shed, reconnects) = (count(&fleet.retries), count(&fleet.shed), count(&fleet.reconnects));
    println!(
        "registration {registration_s:.1} s ({:.0}% of a core): {registered} registered, {gave_up} failed, {retries} retries ({shed} shed with retry-after), {reconnects} reconnects",
        100.0 * registration_cpu
    );
    let register_calls = summary("register", take(&fleet.register_calls));
    let to_register = summary("→ in", take(&fleet.time_to_register));
    println!(
        "steady window {wall:.1} s: {rate:.0} heartbeats/s, {busy} workers busy, {running} jobs running, {} watch updates, {failed} worker tasks failed",
        watch_updates.load(Ordering::Relaxed)
    );
    let json = serde_json::json!({
        "benchmark": "coordinator_scale",
        "workers": o.workers,
        "jobs": o.jobs,
        "heartbeat_ms": o.heartbeat_ms,
        "coordinator_cpu": o.coordinator_cpu,
        "registration": {
            "seconds": registration_s,
            "registered": registered,
            "failed": gave_up,
            "retries": retries,
            "shed": shed,
            "reconnects": reconnects,
            "coordinator_cpu_cores": registration_cpu,
            "calls": register_calls,
            "time_to_register": to_register,
        },
        "window_s": wall,
        "heartbeats_per_s": rate,
        "heartbeat": summary("heartbeat", hb),
        "get": summary("get", gets),
        "list": summary("list", lists),
        "coordinator_cpu_cores": cpu_share,
        "coordinator_rss_mib": rss_kib as f64 / 1024.0,
        "coordinator_peak_rss_mib": peak_kib as f64 / 1024.0,
        "coordinator_kib_per_worker": per_worker_kib,
        "store_bytes": store_bytes,
        "busy_workers": busy,
        "running_jobs": running,
        "failed_worker_tasks": failed,
    });
    println!(
        "coordinator: {:.1}% of one core, RSS {:.1} MiB (peak {:.1} MiB; {per_worker_kib:.1} KiB per worker above idle {:.1} MiB), store {:.1} MiB",
        100.0 * cpu_share,
        rss_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        idle_kib as f64 / 1024.0,
        store_bytes as f64 / (1 << 20) as f64
    );
    println!("{json}");
    Ok(())
}
