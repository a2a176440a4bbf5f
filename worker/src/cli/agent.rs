//! `amdim-worker agent`: works for a coordinator until stopped. This file
//! turns the flags into `agent::AgentSettings` (name, join token, metrics
//! endpoint, signal handling); registering, heartbeats and training the
//! assigned generations are `agent`'s.

use crate::agent::{AgentSettings, run_agent};
use crate::cli::stop_on_signal;
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// A grace period in seconds: finite, at least 0.1 s, at most a day.
fn parse_grace(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: expected seconds between 0.1 and 86400")),
    }
}

/// The flags of `amdim-worker agent`.
#[derive(clap::Args)]
pub struct Args {
    /// The coordinator's gRPC address.
    #[arg(long, env = "AMDIM_COORDINATOR")]
    coordinator: String,
    /// A name for listings (default: host name and process id).
    #[arg(long, env = "AMDIM_WORKER_NAME")]
    name: Option<String>,
    /// Host or IP the other workers reach this one at.
    #[arg(long, env = "AMDIM_ADVERTISE_HOST", default_value = "127.0.0.1")]
    advertise_host: String,
    /// Devices this agent offers: a job with scheduling.devices_per_worker
    /// = D runs D ranks here, one thread each, on devices
    /// runtime.device … runtime.device + D − 1.
    #[arg(long, env = "AMDIM_DEVICES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    devices: u32,
    /// CUDA device of this agent's first rank, instead of the job's
    /// runtime.device: agents sharing a host each take their own devices
    /// (e.g. --devices 4 --first-device 0 and --devices 4 --first-device
    /// 4). Ordinals count the entries of CUDA_VISIBLE_DEVICES when it is
    /// set (giving each agent its own CUDA_VISIBLE_DEVICES works too), and
    /// the ranks must fit in them. CPU jobs ignore it.
    #[arg(long, env = "AMDIM_FIRST_DEVICE")]
    first_device: Option<usize>,
    /// Seconds a part told to stop may take to end (its step, then rank 0's
    /// checkpoint) before its collectives are cancelled: a rank blocked on a
    /// peer that no longer answers then fails at once, and the job restarts
    /// without waiting for dist.timeout_s. A part still running 5 s after
    /// that is given up: reported failed, and this agent exits (its
    /// supervisor restarts it) so that nothing else runs on its devices.
    #[arg(long, env = "AMDIM_STOP_GRACE_S", default_value_t = 60.0, value_parser = parse_grace)]
    stop_grace_s: f64,
    /// A file holding the join token (or AMDIM_JOIN_TOKEN).
    #[arg(long, env = "AMDIM_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    /// Serve Prometheus /metrics, /healthz and /readyz (ready once
    /// registered with the coordinator) at this address.
    #[arg(long, env = "AMDIM_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// CA certificate (PEM) of the coordinator's TLS certificate, for an
    /// https:// --coordinator (default: the system's roots).
    #[arg(long, env = "AMDIM_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,
    /// Test mode: append the sample indices of every step this agent
    /// trains to DIR/<job>-g<generation>-r<rank>.log (`step epoch i i …`).
    #[arg(long, env = "AMDIM_SAMPLE_LOG_DIR", hide = true)]
    sample_log_dir: Option<PathBuf>,
}

/// Runs `amdim-worker agent`.
pub fn run(args: Args, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = stop_on_signal(runtime, "stopping: the current part ends with a checkpoint, then this agent exits");
    if let Some(addr) = &args.metrics_listen {
        crate::metrics::serve(runtime.handle(), addr, ready.clone())?;
    }
    let join_token = amdim_shared::auth::read_token(
        std::env::var("AMDIM_JOIN_TOKEN").ok(),
        args.join_token_file.as_deref(),
        "--join-token-file",
    )
    .map_err(anyhow::Error::msg)?;
    let name = args.name.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let settings = AgentSettings {
        coordinator: args.coordinator,
        name,
        advertise_host: args.advertise_host,
        devices: args.devices,
        first_device: args.first_device,
        stop_grace: Duration::from_secs_f64(args.stop_grace_s),
        join_token,
        tls_ca_file: args.tls_ca_file,
        ready,
        shutdown,
        sample_log_dir: args.sample_log_dir,
    };
    run_agent(settings, runtime)
}
