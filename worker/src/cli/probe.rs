//! `amdim-worker probe`: frozen-feature evaluation of a checkpoint on the
//! job's labelled dataset (linear probe and k-NN, optionally against raw
//! pixels and a random encoder), printed as a table or one JSON document.
//! A thin shell over `crate::probe`.

use crate::cli::load_spec;
use crate::probe::{ProbeRequest, RowKind, probe, table};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Linear-probe and k-NN accuracy of a checkpoint's frozen r1 features.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job spec: its model shape, its dataset (train split to fit, test
    /// or val split to report) and its evaluation transform.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// A checkpoint folder or URI (the newest complete checkpoint, or
    /// --step), or a model.safetensors file (default: checkpoint.uri).
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// The checkpoint's step (default: the newest complete one).
    #[arg(long)]
    pub step: Option<u64>,
    /// Also probe raw pixels and a randomly initialised encoder of the same
    /// shape (job.seed), through the same recipe.
    #[arg(long)]
    pub baselines: bool,
    /// The feature sets to probe, in order (`--baselines` adds pixels and random).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "checkpoint")]
    pub features: Vec<RowKind>,
    /// Skip the k-NN classifier (all test × training similarities).
    #[arg(long)]
    pub no_knn: bool,
    /// Use only the first N training samples (0: all).
    #[arg(long, default_value_t = 0)]
    pub train_samples: usize,
    /// Use only the first N test samples (0: all).
    #[arg(long, default_value_t = 0)]
    pub test_samples: usize,
    /// Images per encoder forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Batches extracted at once, each on its own share of the CPU threads
    /// (0: one per thread on the CPU, one on a GPU).
    #[arg(long, default_value_t = 0)]
    pub lanes: usize,
    /// Print the report as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file (the table still prints).
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// Runs the probe and prints its report.
pub fn run(args: Args) -> Result<()> {
    let spec = load_spec(&args.config)?;
    let mut rows = args.features.clone();
    if args.baselines {
        rows.extend([RowKind::Pixels, RowKind::Random]);
    }
    let mut seen = Vec::new();
    rows.retain(|r| {
        let first = !seen.contains(r);
        seen.push(*r);
        first
    });
    let request = ProbeRequest {
        rows,
        weights: args.checkpoint,
        step: args.step,
        knn: !args.no_knn,
        max_train: args.train_samples,
        max_test: args.test_samples,
        batch: args.batch_size.max(1),
        lanes: args.lanes,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    let handle = runtime.handle().clone();
    let report = crate::with_backend!(spec, |B, device| probe::<B>(&spec, &request, device, &handle)?);
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_vec(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}
