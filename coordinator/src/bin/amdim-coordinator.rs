//! `amdim-coordinator`: the job queue, gang scheduler and rendezvous of an
//! amdim installation (gRPC, default 0.0.0.0:7070), with its state in a
//! local SQLite file so that a restart carries on. A thin shell over
//! `amdim_coordinator::server`. `amdim-coordinator bench` is the scale
//! benchmark (`amdim_coordinator::ctl::bench`), `amdim-coordinator chaos`
//! the fault soak (`amdim_coordinator::ctl::chaos`).

use amdim_coordinator::server::{Coordinator, Settings};
use amdim_shared::auth::read_token;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "amdim-coordinator",
    version,
    about = "amdim coordinator",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Tool>,
    /// gRPC address.
    #[arg(long, env = "AMDIM_LISTEN", default_value = "0.0.0.0:7070")]
    listen: String,
    /// HTTP address of /healthz, /readyz and /metrics (Prometheus).
    #[arg(long, env = "AMDIM_HTTP_LISTEN", default_value = "0.0.0.0:9464")]
    http_listen: String,
    /// The store (an SQLite file, created if missing) that keeps jobs,
    /// generations, events, workers and checkpoints across restarts.
    #[arg(long, env = "AMDIM_STORE", default_value = "amdim-coordinator.db")]
    store: PathBuf,
    /// How often workers report.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// A worker silent for this long is lost.
    #[arg(long, default_value_t = 10.0)]
    heartbeat_timeout_s: f64,
    /// Jobs that ended this many days ago are forgotten, with their events
    /// (their checkpoints stay where they are).
    #[arg(long, env = "AMDIM_KEEP_FINISHED_JOBS_DAYS", default_value_t = 30.0)]
    keep_finished_jobs_days: f64,
    /// Token amdimctl must present (or AMDIM_CLIENT_TOKEN).
    #[arg(long)]
    client_token_file: Option<PathBuf>,
    /// Token worker agents must present (or AMDIM_JOIN_TOKEN).
    #[arg(long)]
    join_token_file: Option<PathBuf>,
    /// Registrations admitted a second; more are answered RESOURCE_EXHAUSTED
    /// with a retry-after hint, which agents follow (0: no limit).
    #[arg(long, env = "AMDIM_MAX_REGISTRATIONS_PER_S", default_value_t = 1000)]
    max_registrations_per_s: u32,
    /// Serve gRPC over TLS with this certificate chain (PEM; with --tls-key-file).
    #[arg(long, env = "AMDIM_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM).
    #[arg(long, env = "AMDIM_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Tool {
    /// Scale benchmark: this coordinator (as a child process, with its
    /// store and tokens) and N simulated workers heartbeating; prints RPC
    /// latency percentiles and the coordinator's CPU and memory, then a
    /// JSON line.
    Bench {
        #[arg(long, default_value_t = 1000)]
        workers: usize,
        /// Jobs submitted first (their workers split evenly among them).
        #[arg(long, default_value_t = 10)]
        jobs: usize,
        /// The measured window after registration.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u64,
        /// Run the coordinator alone on this core and the simulated
        /// workers on the others (default: they share the cores).
        #[arg(long)]
        coordinator_cpu: Option<usize>,
        /// The coordinator binary to measure (default: this one).
        #[arg(long)]
        coordinator_bin: Option<PathBuf>,
        /// Passed to the coordinator as --max-registrations-per-s.
        #[arg(long)]
        registrations_per_s: Option<u32>,
    },
    /// Chaos soak: this coordinator, `amdim-worker agent` processes and a
    /// SeaweedFS S3 server on this machine; for N minutes random workers
    /// are killed or SIGTERMed and the coordinator and S3 server killed
    /// and restarted, while tiny jobs keep coming; then every job must
    /// succeed, train each sample once per epoch, and leave checkpoints
    /// that verify. Prints a report and a JSON line; exit 1 if a check fails.
    Chaos {
        /// Minutes of faults (then it waits for the jobs to end).
        #[arg(long, default_value_t = 3.0)]
        minutes: f64,
        /// Seed of the fault schedule (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Jobs kept submitted at once.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Worker agents kept running.
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// Mean seconds between faults.
        #[arg(long, default_value_t = 8.0)]
        fault_every_s: f64,
        /// Shortest and longest job, in steps.
        #[arg(long, default_value_t = 150)]
        min_steps: u64,
        #[arg(long, default_value_t = 500)]
        max_steps: u64,
        /// Seconds allowed after the faults for every job to end.
        #[arg(long, default_value_t = 600)]
        drain_timeout_s: u64,
        /// `amdim-worker` (default: next to this binary, else on PATH).
        #[arg(long)]
        worker_bin: Option<PathBuf>,
        /// Keep the logs, store, S3 data and sample logs here (default: a
        /// temporary folder, kept only when a check fails).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn bench(options: amdim_coordinator::ctl::bench::BenchOptions) -> Result<()> {
    let dir = tempfile::tempdir().context("a temporary folder for the store")?;
    if let Some(cpu) = options.coordinator_cpu {
        amdim_coordinator::ctl::bench::pin_simulator(cpu)?;
    }
    // Built after pinning: its threads inherit the simulator's cores.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(amdim_coordinator::ctl::bench::run(options, dir.path()))
}

/// The gRPC listener, with an accept queue deep enough for thousands of
/// agents connecting at once (after a coordinator restart); the kernel
/// caps it at `net.core.somaxconn`.
async fn listen(addr: &str) -> Result<tokio::net::TcpListener> {
    let at = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("--listen {addr}"))?
        .next()
        .with_context(|| format!("--listen {addr}: no address"))?;
    let socket = if at.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .with_context(|| format!("--listen {addr}"))?;
    socket.set_reuseaddr(true).with_context(|| format!("--listen {addr}"))?;
    socket.bind(at).with_context(|| format!("--listen {addr}"))?;
    socket.listen(16_384).with_context(|| format!("--listen {addr}"))
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Some(Tool::Bench {
            workers,
            jobs,
            seconds,
            heartbeat_ms,
            coordinator_cpu,
            coordinator_bin,
            registrations_per_s,
        }) => {
            let coordinator_bin = match coordinator_bin {
                Some(bin) => bin,
                None => std::env::current_exe().context("finding this binary")?,
            };
            return bench(amdim_coordinator::ctl::bench::BenchOptions {
                workers,
                jobs,
                seconds,
                heartbeat_ms: heartbeat_ms.max(50),
                coordinator_bin,
                coordinator_cpu,
                registrations_per_s,
            })
            .map(|()| ExitCode::SUCCESS);
        }
        Some(Tool::Chaos {
            minutes,
            seed,
            jobs,
            workers,
            fault_every_s,
            min_steps,
            max_steps,
            drain_timeout_s,
            worker_bin,
            dir,
        }) => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
            });
            let options = amdim_coordinator::ctl::chaos::ChaosOptions {
                minutes: minutes.max(0.0),
                seed,
                jobs: jobs.max(1),
                workers: workers.max(1),
                fault_every_s,
                steps: (min_steps.max(1), max_steps.max(min_steps.max(1))),
                drain_timeout_s,
                coordinator_bin: std::env::current_exe().context("finding this binary")?,
                worker_bin: amdim_coordinator::ctl::local::worker_binary(worker_bin),
                dir,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            return runtime.block_on(amdim_coordinator::ctl::chaos::run(options));
        }
        None => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AMDIM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    // One thread per core it may use (taskset, CPU quota), at most two: one
    // state lock serialises the work anyway, and a second thread on one core
    // would only be preempted while holding it.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(2));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let token = |env: &str, file: &Option<PathBuf>, flag: &str| {
        read_token(std::env::var(env).ok(), file.as_deref(), flag).map_err(anyhow::Error::msg)
    };
    let client_token = token("AMDIM_CLIENT_TOKEN", &cli.client_token_file, "--client-token-file")?;
    let join_token = token("AMDIM_JOIN_TOKEN", &cli.join_token_file, "--join-token-file")?;
    let tls = match (&cli.tls_cert_file, &cli.tls_key_file) {
        (Some(cert), Some(key)) => Some(amdim_shared::tls::server_config(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    runtime.block_on(async {
        let coordinator = Coordinator::open(Settings {
            store: Some(cli.store.clone()),
            heartbeat_interval: Duration::from_millis(cli.heartbeat_ms.max(50)),
            heartbeat_timeout: Duration::from_secs_f64(cli.heartbeat_timeout_s.max(1.0)),
            keep_finished_jobs: Duration::from_secs_f64(cli.keep_finished_jobs_days.max(0.0) * 86_400.0),
            client_token,
            join_token,
            tls,
        })?
        .limit_registrations(cli.max_registrations_per_s);
        // The log's fsyncs happen here, never inside a state change.
        amdim_coordinator::server::spawn_wal_checkpointer(cli.store.clone(), Duration::from_secs(1)).context("starting the store checkpointer")?;
        let listener = listen(&cli.listen).await?;
        let http = tokio::net::TcpListener::bind(&cli.http_listen)
            .await
            .with_context(|| format!("--http-listen {}", cli.http_listen))?;
        tracing::info!(addr = %format!("{scheme}://{}", listener.local_addr()?), http = %http.local_addr()?, store = %cli.store.display(), "coordinator listening");
        let ready = Arc::new(AtomicBool::new(true));
        let probes = coordinator.spawn_http(http, ready.clone());
        let served = coordinator
            .serve(listener, async {
                let signal = amdim_shared::shutdown::signalled().await;
                tracing::info!(signal, "shutting down");
            })
            .await;
        ready.store(false, Ordering::Relaxed);
        probes.abort();
        served
    })?;
    Ok(ExitCode::SUCCESS)
}
