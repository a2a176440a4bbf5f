//! `amdimctl local -f job.toml`: the embedded default (docs/architecture.md §1). A
//! coordinator runs inside this process (state in memory), N
//! `amdim-worker agent` processes run on this machine and register with it,
//! the job is submitted and watched, and everything stops when it ends.
//! It lives in `ctl`, not `server`: it is an `amdimctl` command that starts
//! a coordinator through `server::Coordinator` and from then on is only its
//! client (submit and watch through `jobs`), like any other command.

use super::jobs;
use crate::server::{Coordinator, Settings};
use amdim_shared::proto::v1 as pb;
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// `amdim-worker`: `explicit`, else next to this executable, else on PATH.
pub fn worker_binary(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("amdim-worker")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("amdim-worker"))
    })
}

/// Runs `spec` (read from `spec_file`) on `workers` local agents. With
/// `metrics_port`, the coordinator serves `/metrics` on 127.0.0.1 at that
/// port and worker i at the port + 1 + i.
pub async fn run(
    spec_file: &Path,
    spec: &JobSpec,
    workers: u32,
    worker_bin: Option<PathBuf>,
    metrics_port: Option<u16>,
) -> Result<ExitCode> {
    let coordinator = Coordinator::open(Settings {
        store: None,
        heartbeat_interval: Duration::from_millis(250),
        heartbeat_timeout: Duration::from_secs(5),
        keep_finished_jobs: Duration::from_secs(86_400),
        // Loopback only, for this process and its children.
        client_token: None,
        join_token: None,
        tls: None,
    })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = match metrics_port {
        Some(port) => {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .with_context(|| format!("--metrics-port {port}: cannot listen on 127.0.0.1:{port}"))?;
            eprintln!("amdimctl local: coordinator metrics at http://127.0.0.1:{port}/metrics");
            Some(coordinator.spawn_http(l, std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true))))
        }
        None => None,
    };
    let serving = tokio::spawn(coordinator.serve(listener, async {
        let _ = stop_rx.await;
    }));
    let bin = worker_binary(worker_bin);
    let mut agents = Vec::new();
    for i in 0..workers {
        let mut command = tokio::process::Command::new(&bin);
        command.args(["agent", "--coordinator", &server, "--name", &format!("local-{i}")]);
        command.args(["--devices", &spec.scheduling.devices_per_worker.max(1).to_string()]);
        if let Some(port) = metrics_port {
            let worker_port = u32::from(port) + 1 + i;
            command.args(["--metrics-listen", &format!("127.0.0.1:{worker_port}")]);
        }
        // The agents end with this process, even when it is killed outright.
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command.kill_on_drop(true).spawn().with_context(|| {
            format!(
                "starting {} (build it with `cargo build -p amdim-worker`, or pass --worker-bin)",
                bin.display()
            )
        })?;
        agents.push(child);
    }
    eprintln!("amdimctl local: coordinator at {server}, {workers} worker process(es)");
    let client = jobs::connect(&server, None, None).await?;
    let code = tokio::select! {
        code = jobs::submit(client.clone(), spec_file, spec, Some(1), Some(workers), true, super::output::Output::Table) => code?,
        signal = amdim_shared::shutdown::signalled() => {
            eprintln!("amdimctl local: {signal}: stopping the workers");
            ExitCode::from(130)
        }
    };
    let mut client = client;
    if let Ok(job) = client.list(pb::ListJobsRequest {}).await
        && let Some(j) = job.into_inner().jobs.last()
    {
        eprintln!("amdimctl local: {} {}", j.id, j.message);
    }
    for mut a in agents {
        let _ = a.kill().await;
    }
    if let Some(h) = http {
        h.abort();
    }
    let _ = stop_tx.send(());
    let _ = serving.await;
    Ok(code)
}
