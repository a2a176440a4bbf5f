//! The `amdim-worker` commands: one file per subcommand, each with its clap
//! `Args` and a `run` that the binary's `main` dispatches to — `train` (one
//! rank or several), `agent`, `gradients`, `embed`, `score` (which share
//! [`encoder`]: the weights file and the spec it is used with), and the
//! benchmarks under [`bench`]. Every command picks the backend from the job
//! spec (`runtime.backend`) and reports bad input with the file or field it
//! came from. Commands parse, launch and print; the work itself is the
//! library's (`train`, `agent`, `model`, …), except for the benchmarks,
//! which measure and assert nothing.

pub mod agent;
pub mod bench;
pub mod dist;
pub mod embed;
pub mod encoder;
pub mod gradients;
pub mod probe;
pub mod score;
pub mod summary;
pub mod train;

use amdim_shared::spec::{BackendKind, JobSpec};
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Loads and validates a job spec, naming the file on error.
pub fn load_spec(path: &Path) -> Result<JobSpec> {
    JobSpec::load(path).with_context(|| format!("job spec {}", path.display()))
}

pub fn backend_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Cpu => "cpu-flex",
        BackendKind::Cuda => "cuda",
    }
}

/// A flag set (and `what` logged) at the first SIGINT or SIGTERM.
pub fn stop_on_signal(runtime: &tokio::runtime::Runtime, what: &'static str) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    runtime.spawn(async move {
        let signal = amdim_shared::shutdown::signalled().await;
        tracing::warn!(signal, "{what}");
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

/// Prints a command's result: one JSON line with `--json`, else its
/// `{:#?}` form.
pub fn print_result<T: serde::Serialize + std::fmt::Debug>(result: &T, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(result)?);
    } else {
        println!("{result:#?}");
    }
    Ok(())
}
