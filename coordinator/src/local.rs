//! `amdimctl local -f job.toml`: the embedded default (design §1). A
//! coordinator runs inside this process (state in memory), N
//! `amdim-worker agent` processes run on this machine and register with it,
//! the job is submitted and watched, and everything stops when it ends.

use crate::jobs;
use crate::server::{Coordinator, Settings};
use amdim_shared::proto::v1 as pb;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// `amdim-worker`: `explicit`, else next to this executable, else on PATH.
fn worker_binary(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("amdim-worker")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("amdim-worker"))
    })
}

pub async fn run(spec_file: &Path, workers: u32, worker_bin: Option<PathBuf>) -> Result<ExitCode> {
    let coordinator = Coordinator::open(Settings {
        state_file: None,
        heartbeat_interval: Duration::from_millis(250),
        heartbeat_timeout: Duration::from_secs(5),
        // Loopback only, for this process and its children.
        client_token: None,
        join_token: None,
    })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(coordinator.serve(listener, async {
        let _ = stop_rx.await;
    }));
    let bin = worker_binary(worker_bin);
    let mut agents = Vec::new();
    for i in 0..workers {
        let child = tokio::process::Command::new(&bin)
            .args(["agent", "--coordinator", &server, "--name", &format!("local-{i}")])
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it with `cargo build -p amdim-worker`, or pass --worker-bin)",
                    bin.display()
                )
            })?;
        agents.push(child);
    }
    eprintln!("amdimctl local: coordinator at {server}, {workers} worker process(es)");
    let client = jobs::connect(&server, None).await?;
    let code = jobs::submit(client.clone(), spec_file, Some(1), Some(workers), true, false).await?;
    let mut client = client;
    if let Ok(job) = client.list(pb::ListJobsRequest {}).await
        && let Some(j) = job.into_inner().jobs.last()
    {
        eprintln!("amdimctl local: {} {}", j.id, j.message);
    }
    for mut a in agents {
        let _ = a.kill().await;
    }
    let _ = stop_tx.send(());
    let _ = serving.await;
    Ok(code)
}
