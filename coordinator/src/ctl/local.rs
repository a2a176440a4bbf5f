//! `amdimctl local -f job.toml`: the embedded default (docs/architecture.md §1). A
//! coordinator runs inside this process (state in memory), N
//! `amdim-worker agent` processes run on this machine and register with it,
//! the job is submitted and watched, and everything stops when it ends.
//! The terminal shows only the progress line (fitted to its width) and a
//! summary at the end; the workers' output and the job's events go to files
//! in the run's log folder, whose path is printed. It lives in `ctl`, not
//! `server`: it is an `amdimctl` command that starts a coordinator through
//! `server::Coordinator` and from then on is only its client (submit and
//! watch through `jobs` and `watch`), like any other command.

use super::exit::{Exit, tagged};
use super::progress::{clock, fit, terminal_width};
use super::watch::{self, Shown};
use super::{client::state_name, jobs};
use crate::server::{Coordinator, Settings};
use amdim_shared::proto::v1 as pb;
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// Where a local run's logs go by default: `logs/` in the run folder (the
/// folder holding a local `checkpoint.uri`), else a folder under the
/// system's temporary directory.
pub(crate) fn default_log_dir(checkpoint_uri: &str) -> PathBuf {
    let local = checkpoint_uri.strip_prefix("file://").unwrap_or(checkpoint_uri);
    if !local.contains("://")
        && let Some(run) = Path::new(local).parent()
    {
        return run.join("logs");
    }
    std::env::temp_dir().join(format!("amdimctl-local-{}", std::process::id()))
}

/// What `amdimctl local` runs.
pub struct Run<'a> {
    /// The spec file (named in errors).
    pub spec_file: &'a Path,
    /// The effective spec.
    pub spec: &'a JobSpec,
    /// Worker processes.
    pub workers: u32,
    /// The amdim-worker binary, when given.
    pub worker_bin: Option<PathBuf>,
    /// Serve metrics: the coordinator at this port, worker i at port + 1 + i.
    pub metrics_port: Option<u16>,
    /// The folder for the workers' logs and the events (default: `default_log_dir`).
    pub log_dir: Option<PathBuf>,
}

/// Runs the job: Ok when it succeeded, an error with exit 1 when it did
/// not, exit 130 when interrupted.
pub async fn run(run: Run<'_>) -> Result<()> {
    let log_dir = run.log_dir.clone().unwrap_or_else(|| default_log_dir(&run.spec.checkpoint.uri));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating the log folder {}", log_dir.display()))?;
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
    let http = match run.metrics_port {
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
    let bin = worker_binary(run.worker_bin.clone());
    let mut agents = Vec::new();
    for i in 0..run.workers {
        agents.push(spawn_agent(&bin, &server, i, &run, &log_dir)?);
    }
    eprintln!("amdimctl local: {} worker(s); their logs and the events in", run.workers);
    eprintln!("  {}", log_dir.display());
    let started = Instant::now();
    let result = tokio::select! {
        r = submit_and_follow(&server, &run, &log_dir) => r,
        signal = amdim_shared::shutdown::signalled() => Err(tagged(
            Exit::Interrupted,
            anyhow::anyhow!("{signal}: stopped the job and its workers"),
        )),
    };
    for mut a in agents {
        let _ = a.kill().await;
    }
    if let Some(h) = http {
        h.abort();
    }
    let _ = stop_tx.send(());
    let _ = serving.await;
    let job = result?;
    print_summary(&job, started.elapsed(), run.spec, &log_dir);
    watch::succeeded(&job)
}

/// Starts worker `i` as an agent of `server`, its output into `log_dir`.
fn spawn_agent(bin: &Path, server: &str, i: u32, run: &Run<'_>, log_dir: &Path) -> Result<tokio::process::Child> {
    let log_path = log_dir.join(format!("worker-{i}.log"));
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let log_err = log.try_clone().with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = tokio::process::Command::new(bin);
    command.args(["agent", "--coordinator", server, "--name", &format!("local-{i}")]);
    command.args(["--devices", &run.spec.scheduling.devices_per_worker.max(1).to_string()]);
    if let Some(port) = run.metrics_port {
        let worker_port = u32::from(port) + 1 + i;
        command.args(["--metrics-listen", &format!("127.0.0.1:{worker_port}")]);
    }
    command.stdin(std::process::Stdio::null()).stdout(log).stderr(log_err);
    // The agents end with this process, even when it is killed outright.
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command.kill_on_drop(true).spawn().with_context(|| {
        format!(
            "starting {} (build it with `cargo build -p amdim-worker`, or pass --worker-bin)",
            bin.display()
        )
    })
}

/// Submits the job to the local coordinator and follows it to its end.
async fn submit_and_follow(server: &str, run: &Run<'_>, log_dir: &Path) -> Result<pb::Job> {
    let mut client = jobs::connect(server, None, None).await?;
    let job = jobs::submit_spec(&mut client, run.spec_file, run.spec, (Some(1), Some(run.workers))).await?;
    let events_path = log_dir.join("events.jsonl");
    let mut events = std::fs::File::create(&events_path).with_context(|| format!("creating {}", events_path.display()))?;
    watch::follow_job(client, &job.id, Shown::Progress, Some(&mut events)).await
}

/// The end of a run for people: how it ended, steps and time, the last
/// losses and accuracies, where checkpoints and logs are; on stdout, each
/// line within the terminal's width.
fn print_summary(job: &pb::Job, took: Duration, spec: &JobSpec, log_dir: &Path) {
    let mut rows = vec![
        ("job", format!("{} {}  {}", job.id, state_name(job.state), job.message)),
        (
            "steps",
            format!("{}/{} in {}", job.step, job.total_steps, clock(took.as_secs_f64())),
        ),
    ];
    if let Some(t) = &job.stats {
        rows.push((
            "loss",
            format!("{:.3} (1t5 {:.3} 1t7 {:.3} 5t5 {:.3})", t.loss, t.loss_1t5, t.loss_1t7, t.loss_5t5),
        ));
        rows.push(("throughput", format!("{:.0} img/s", t.samples_per_second)));
        if let (Some(lin), Some(mlp)) = (t.linear_accuracy, t.mlp_accuracy) {
            rows.push(("accuracy", format!("linear {lin:.3}, mlp {mlp:.3} (online)")));
        }
    }
    let newest = job.checkpoints.iter().map(|c| c.step).max();
    rows.push((
        "checkpoints",
        match newest {
            Some(step) => format!("{} (newest step {step})", spec.checkpoint.uri),
            None => format!("{} (none written)", spec.checkpoint.uri),
        },
    ));
    rows.push(("logs", format!("{} (worker-*.log, events.jsonl)", log_dir.display())));
    let width = if std::io::stdout().is_terminal() {
        terminal_width().saturating_sub(1)
    } else {
        usize::MAX
    };
    for (key, value) in rows {
        println!("{}", fit(&format!("{:<12} {value}", key.to_ascii_uppercase()), width));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_go_next_to_local_checkpoints() {
        assert_eq!(
            default_log_dir("runs/fashion-mnist/checkpoints"),
            Path::new("runs/fashion-mnist/logs")
        );
        assert_eq!(default_log_dir("file:///data/run/ckpt"), Path::new("/data/run/logs"));
        assert!(default_log_dir("s3://bucket/run/ckpt").starts_with(std::env::temp_dir()));
    }
}
