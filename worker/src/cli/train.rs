//! `amdim-worker train`: trains a job in this process — one rank, or several
//! (`--local-ranks`), one thread and one device each — with a progress bar
//! per rank on a terminal, then prints each rank's summary: a short table
//! on a terminal (`cli::summary`), a JSON line on stdout for programs.
//! Ctrl-C finishes the current step, writes a checkpoint and stops. The
//! training loop itself is `train::run`'s.

use crate::cli::dist::DistArgs;
use crate::cli::{load_spec, stop_on_signal};
use crate::collective::launch::LocalRank;
use crate::metrics::WorkerMetrics;
use crate::train::Observers;
use crate::train::progress::RunProgress;
use crate::train::run::{RunOptions, RunSummary, run as train};
use crate::with_backend;
use amdim_shared::spec::JobSpec;
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// The flags of `amdim-worker train`.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Continue from the newest complete checkpoint under checkpoint.uri.
    #[arg(long)]
    resume: bool,
    /// Serve Prometheus /metrics (and /healthz, /readyz) at this address.
    #[arg(long, env = "AMDIM_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    dist: DistArgs,
}

/// Runs `amdim-worker train`.
pub fn run(args: Args, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let spec = load_spec(&args.config)?;
    if let Some(addr) = &args.metrics_listen {
        crate::metrics::serve(runtime.handle(), addr, Arc::new(AtomicBool::new(true)))?;
    }
    let stop = stop_on_signal(runtime, "finishing the current step, writing a checkpoint, then stopping");
    let summaries = train_local_ranks(&args.dist, &spec, args.resume, &stop, runtime.handle())?;
    let (people, programs) = crate::cli::summary::audiences();
    for summary in &summaries {
        if people {
            eprint!("{}", crate::cli::summary::table(&spec.job.name, summary));
        }
        if programs {
            println!("{}", serde_json::to_string(summary)?);
        }
    }
    Ok(())
}

/// Trains every rank of this process, each on its own thread and device,
/// connected to the other ranks of the world.
fn train_local_ranks(
    dist: &DistArgs,
    spec: &JobSpec,
    resume: bool,
    stop: &Arc<AtomicBool>,
    runtime: &tokio::runtime::Handle,
) -> Result<Vec<RunSummary>> {
    let handle = runtime.clone();
    let several = dist.world_size() > 1;
    dist.layout().launch(spec, |LocalRank { rank, spec, comm }| {
        let progress = Arc::new(RunProgress::new(&spec.job.name, several.then_some(rank)));
        let options = RunOptions {
            resume,
            stop: stop.clone(),
            comm,
            observer: Arc::new(Observers::new(vec![
                Arc::new(WorkerMetrics::global().for_run(&spec.job.name, rank)),
                progress.clone(),
            ])),
        };
        let summary = with_backend!(spec, |B, device| train::<B>(spec.clone(), device, options, handle.clone()));
        progress.finish();
        summary
    })
}
