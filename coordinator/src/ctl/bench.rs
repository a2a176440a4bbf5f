//! The coordinator scale benchmark (`amdim-coordinator bench`): a real
//! coordinator process (this binary, with its SQLite store and tokens)
//! and N simulated workers, each on its own TCP connection, that register
//! and heartbeat every second on their heartbeat streams, as agents do. Jobs are submitted so that workers are
//! assigned, and rank 0 of each reports progress and commits checkpoints;
//! one client watches a job and one polls `Get` and `List`, as users do.
//! It prints p50/p99/max RPC latency and the coordinator's CPU and memory
//! (from /proc) over the steady window, then one JSON line. A benchmark,
//! not a test: it asserts nothing about speed. The simulated workers run
//! on the same machine and compete with the coordinator for its cores.
//! It lives in `ctl`, not `server`, although `amdim-coordinator` runs it:
//! it measures the coordinator from outside, as a separate process reached
//! only over gRPC with the clients' own code (`jobs::connect`), and links
//! nothing of the server's internals.

use super::jobs;
use amdim_shared::auth::BearerToken;
use amdim_shared::proto::v1 as pb;
use amdim_shared::session::{HeartbeatSession, WorkerClient};
use anyhow::{Context, Result, bail};
use pb::worker_service_client::WorkerServiceClient;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
}

/// Latencies of one kind of call, in microseconds.
#[derive(Default)]
struct Samples {
    micros: Vec<f64>,
    errors: u64,
}

impl Samples {
    fn record(&mut self, started: Instant, ok: bool) {
        if ok {
            self.micros.push(started.elapsed().as_secs_f64() * 1e6);
        } else {
            self.errors += 1;
        }
    }
}

/// The q-quantile (0..=1) of `sorted` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// CPU seconds (user + system) and resident memory of a process, from /proc.
fn process_usage(pid: u32) -> Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ")".
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ")" and state.
    let clock = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (ticks(11) + ticks(12)) as f64 / clock;
    let kib = |key: &str| -> Result<u64> {
        let value = amdim_shared::procfs::status_kib(&pid.to_string(), key).with_context(|| format!("/proc/{pid}/status"))?;
        Ok(value.unwrap_or(0))
    };
    Ok((cpu, kib("VmRSS")?, kib("VmHWM")?))
}

fn bench_spec(i: usize, workers_per_job: usize) -> String {
    format!(
        "[job]\nname = \"bench-{i}\"\n[data]\nformat = \"synthetic\"\n[train]\nbatch_size = {}\nmax_steps = 1000000\n\
         [scheduling]\nmin_workers = {workers_per_job}\nmax_workers = {workers_per_job}\n",
        workers_per_job * 8
    )
}

/// One simulated worker: registers, then heartbeats every interval until
/// `until`; as rank 0 it reports a step per heartbeat and commits a
/// checkpoint every 30 steps.
async fn simulated_worker(
    server: String,
    token: String,
    index: usize,
    interval: Duration,
    until: Instant,
    register: Arc<Mutex<Samples>>,
    heartbeat: Arc<Mutex<Samples>>,
) -> Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(server.clone())?
        .connect()
        .await
        .with_context(|| format!("worker {index}: {server}"))?;
    let token = BearerToken::new(Some(&token)).map_err(anyhow::Error::msg)?;
    let mut c: WorkerClient = WorkerServiceClient::with_interceptor(channel, token);
    let started = Instant::now();
    let reply = c
        .register(pb::RegisterRequest {
            name: format!("sim-{index}"),
            devices: 1,
            rendezvous_addr: format!("10.0.{}.{}:29500", index / 250, index % 250),
        })
        .await;
    register
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .record(started, reply.is_ok());
    let worker_id = reply
        .map_err(|s| anyhow::anyhow!("worker {index}: register: {}", s.message()))?
        .into_inner()
        .worker_id;
    // Spread the heartbeats over the interval, as real workers drift apart.
    tokio::time::sleep(interval.mul_f64((index % 1000) as f64 / 1000.0)).await;
    let mut ticker = tokio::time::interval(interval);
    let mut job: Option<(String, u32, bool)> = None;
    let mut session: Option<HeartbeatSession> = None;
    let mut step = 0u64;
    while Instant::now() < until {
        ticker.tick().await;
        let mut request = pb::HeartbeatRequest {
            worker_id: worker_id.clone(),
            ..Default::default()
        };
        if let Some((job_id, generation, rank0)) = &job {
            request.job_id = job_id.clone();
            request.generation = *generation;
            if *rank0 {
                step += 1;
                request.step = step;
                request.total_steps = 1_000_000;
            }
        }
        let started = Instant::now();
        let reply = HeartbeatSession::beat_on(&mut c, &mut session, request).await;
        heartbeat
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .record(started, reply.is_ok());
        let Ok(reply) = reply else { continue };
        use pb::heartbeat_response::Command as C;
        match reply.command {
            Some(C::Assign(a)) => job = Some((a.job_id, a.generation, a.rank == 0)),
            Some(C::Stop(_)) => job = None,
            _ => {}
        }
        if let Some((job_id, generation, true)) = &job
            && step.is_multiple_of(30)
        {
            let _ = c
                .commit_checkpoint(pb::CommitCheckpointRequest {
                    worker_id: worker_id.clone(),
                    job_id: job_id.clone(),
                    generation: *generation,
                    step,
                    bytes: 1 << 20,
                })
                .await;
        }
    }
    Ok(())
}

/// Prints the percentile line of one kind of call and returns it as JSON.
fn summary(name: &str, s: Samples) -> serde_json::Value {
    let mut v = s.micros;
    v.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        quantile(&v, 0.5) / 1e3,
        quantile(&v, 0.99) / 1e3,
        v.last().copied().unwrap_or(f64::NAN) / 1e3,
    );
    println!(
        "{name:<10} {:>8} calls {:>5} errors   p50 {p50:>7.2} ms   p99 {p99:>7.2} ms   max {max:>7.2} ms",
        v.len(),
        s.errors
    );
    serde_json::json!({"calls": v.len(), "errors": s.errors, "p50_ms": p50, "p99_ms": p99, "max_ms": max})
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
    let mut child = tokio::process::Command::new(&o.coordinator_bin)
        .args(["--listen", &listen, "--http-listen", &http, "--heartbeat-ms"])
        .arg(o.heartbeat_ms.to_string())
        .args(["--heartbeat-timeout-s", "10", "--store"])
        .arg(&store)
        .env("AMDIM_CLIENT_TOKEN", &client_token)
        .env("AMDIM_JOIN_TOKEN", &join_token)
        .env("AMDIM_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", o.coordinator_bin.display()))?;
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
    println!(
        "coordinator pid {pid}: {} simulated workers (one connection each), heartbeat every {} ms, {} jobs of {per_job} workers, {} s",
        o.workers, o.heartbeat_ms, o.jobs, o.seconds
    );
    let register = Arc::new(Mutex::new(Samples::default()));
    let heartbeat = Arc::new(Mutex::new(Samples::default()));
    let interval = Duration::from_millis(o.heartbeat_ms);
    // Registration and ramp-up: one heartbeat interval plus a little.
    let ramp = interval + Duration::from_secs(2);
    let until = Instant::now() + ramp + Duration::from_secs(o.seconds);
    let workers_until = until + Duration::from_secs(2);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..o.workers {
        tasks.spawn(simulated_worker(
            server.clone(),
            join_token.clone(),
            i,
            interval,
            workers_until,
            register.clone(),
            heartbeat.clone(),
        ));
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
                    updates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    tokio::time::sleep(ramp).await;
    let (cpu0, _, _) = process_usage(pid)?;
    let window = Instant::now();
    heartbeat.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.micros.clear();
    while Instant::now() < until {
        let started = Instant::now();
        let ok = client.get(pb::GetJobRequest { id: job_ids[0].clone() }).await.is_ok();
        gets.record(started, ok);
        let started = Instant::now();
        let ok = client.list(pb::ListJobsRequest {}).await.is_ok();
        lists.record(started, ok);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall = window.elapsed().as_secs_f64();
    let (cpu1, rss_kib, peak_kib) = process_usage(pid)?;
    let take = |s: &Arc<Mutex<Samples>>| std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner()));
    let (reg, hb) = (take(&register), take(&heartbeat));
    // Who is busy while every simulated worker still heartbeats (they stop
    // a little after the window; their closing streams then lose them).
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
    let rate = hb.micros.len() as f64 / wall;
    println!(
        "steady window {wall:.1} s: {rate:.0} heartbeats/s, {busy} workers busy, {running} jobs running, {} watch updates, {failed} worker tasks failed",
        watch_updates.load(std::sync::atomic::Ordering::Relaxed)
    );
    let json = serde_json::json!({
        "benchmark": "coordinator_scale",
        "workers": o.workers,
        "jobs": o.jobs,
        "heartbeat_ms": o.heartbeat_ms,
        "window_s": wall,
        "heartbeats_per_s": rate,
        "register": summary("register", reg),
        "heartbeat": summary("heartbeat", hb),
        "get": summary("get", gets),
        "list": summary("list", lists),
        "coordinator_cpu_cores": cpu_share,
        "coordinator_rss_mib": rss_kib as f64 / 1024.0,
        "coordinator_peak_rss_mib": peak_kib as f64 / 1024.0,
        "store_bytes": store_bytes,
        "busy_workers": busy,
        "running_jobs": running,
        "failed_worker_tasks": failed,
    });
    println!(
        "coordinator: {:.1}% of one core, RSS {:.1} MiB (peak {:.1} MiB), store {:.1} MiB",
        100.0 * cpu_share,
        rss_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        store_bytes as f64 / (1 << 20) as f64
    );
    println!("{json}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn this_process_reports_cpu_time_and_memory() {
        let busy = Instant::now();
        let mut x = 0u64;
        while busy.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let (cpu, rss, peak) = process_usage(std::process::id()).unwrap();
        assert!(cpu > 0.0 && rss > 0 && peak >= rss, "{cpu} {rss} {peak}");
    }
}
