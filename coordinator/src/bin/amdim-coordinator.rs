//! `amdim-coordinator`: the job queue, gang scheduler and rendezvous of an
//! amdim installation (gRPC, default 0.0.0.0:7070), with its state in a
//! local file so that a restart carries on. A thin shell over
//! `amdim_coordinator::server`.

use amdim_coordinator::server::{Coordinator, Settings};
use amdim_shared::auth::read_token;
use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Parser)]
#[command(name = "amdim-coordinator", version, about = "amdim coordinator")]
struct Cli {
    /// gRPC address.
    #[arg(long, env = "AMDIM_LISTEN", default_value = "0.0.0.0:7070")]
    listen: String,
    /// HTTP address of /healthz, /readyz and /metrics (Prometheus).
    #[arg(long, env = "AMDIM_HTTP_LISTEN", default_value = "0.0.0.0:9090")]
    http_listen: String,
    /// Where jobs, generations and workers are kept.
    #[arg(long, env = "AMDIM_STATE_FILE", default_value = "amdim-coordinator.json")]
    state_file: PathBuf,
    /// How often workers report.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// A worker silent for this long is lost.
    #[arg(long, default_value_t = 10.0)]
    heartbeat_timeout_s: f64,
    /// Token amdimctl must present (or AMDIM_CLIENT_TOKEN).
    #[arg(long)]
    client_token_file: Option<PathBuf>,
    /// Token worker agents must present (or AMDIM_JOIN_TOKEN).
    #[arg(long)]
    join_token_file: Option<PathBuf>,
    /// Serve gRPC over TLS with this certificate chain (PEM; with --tls-key-file).
    #[arg(long, env = "AMDIM_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM).
    #[arg(long, env = "AMDIM_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AMDIM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
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
            state_file: Some(cli.state_file.clone()),
            heartbeat_interval: Duration::from_millis(cli.heartbeat_ms.max(50)),
            heartbeat_timeout: Duration::from_secs_f64(cli.heartbeat_timeout_s.max(1.0)),
            client_token,
            join_token,
            tls,
        })?;
        let listener = tokio::net::TcpListener::bind(&cli.listen)
            .await
            .with_context(|| format!("--listen {}", cli.listen))?;
        let http = tokio::net::TcpListener::bind(&cli.http_listen)
            .await
            .with_context(|| format!("--http-listen {}", cli.http_listen))?;
        tracing::info!(addr = %format!("{scheme}://{}", listener.local_addr()?), http = %http.local_addr()?, state = %cli.state_file.display(), "coordinator listening");
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
    })
}
