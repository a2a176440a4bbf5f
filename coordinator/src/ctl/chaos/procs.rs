//! The soak's child processes: starting one with the run's marker in its
//! environment (inherited by anything it starts, so that leftovers can be
//! found in /proc whoever their parent is now) and with SIGKILL as its
//! parent-death signal, signalling it, reaping it, and the orphan scan.
//! Which process to start and when is the caller's.

use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;

/// The variable that marks every process of one soak.
pub(crate) const MARKER_VAR: &str = "AMDIM_CHAOS_RUN";

/// A started child process.
pub(crate) struct Spawned {
    child: tokio::process::Child,
    /// Its process id.
    pub(crate) pid: u32,
}

/// Starts `program args` with `env` and the marker, stdout and stderr
/// appended to `log`.
pub(crate) fn spawn_marked(program: &Path, args: &[String], env: &[(String, String)], log: &Path, marker: &str) -> Result<Spawned> {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| log.display().to_string())
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(MARKER_VAR, marker)
        .stdin(std::process::Stdio::null())
        .stdout(open()?)
        .stderr(open()?);
    // Nothing outlives the soak, even when the soak itself is killed.
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = command.spawn().with_context(|| format!("starting {}", program.display()))?;
    let pid = child.id().context("a started process without a pid")?;
    Ok(Spawned { child, pid })
}

impl Spawned {
    /// Sends `signal` (a libc signal number).
    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a child we have not reaped yet, so the pid is ours.
        unsafe {
            libc::kill(self.pid as libc::pid_t, signal);
        }
    }

    /// Whether it has exited (and is now reaped).
    pub(crate) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, then waits for it.
    pub(crate) async fn kill_and_reap(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM; SIGKILL if it is still there after `grace`. True if it
    /// exited on the SIGTERM.
    pub(crate) async fn terminate_and_reap(mut self, grace: Duration) -> bool {
        self.signal(libc::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(_) => true,
            Err(_) => {
                self.kill_and_reap().await;
                false
            }
        }
    }
}

/// Processes (pid and command line) whose environment holds `marker`,
/// other than this one: what the soak left behind.
pub(crate) fn marked_processes(marker: &str) -> Vec<(u32, String)> {
    let wanted = format!("{MARKER_VAR}={marker}");
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Processes of other users, or gone meanwhile, cannot be read: not ours.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes()) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string();
            found.push((pid, cmdline));
        }
    }
    found
}
