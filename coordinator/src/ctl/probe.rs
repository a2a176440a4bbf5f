//! `amdimctl probe JOB|URI`: frozen-feature evaluation of a job's (or a
//! checkpoint URI's) newest checkpoint. A job id is looked up on the
//! coordinator for its spec and `checkpoint.uri`; the work itself is
//! `amdim-worker probe`, run as a child process (next to amdimctl, else on
//! PATH), so this crate links no ML code. Its exit status is the child's.

use crate::ctl::jobs::{self, Client};
use amdim_shared::proto::v1 as pb;
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Linear-probe and k-NN accuracy of a checkpoint's frozen features.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A job id (its spec and checkpoint.uri come from the coordinator), or
    /// a checkpoint folder/URI or model.safetensors file (then -f is needed).
    #[arg(value_name = "JOB|URI")]
    pub target: String,
    /// The job spec whose model and dataset to use (required for a URI;
    /// overrides the coordinator's copy for a job id).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// The checkpoint's step (default: the newest complete one).
    #[arg(long)]
    pub step: Option<u64>,
    /// Also probe raw pixels and a randomly initialised encoder.
    #[arg(long)]
    pub baselines: bool,
    /// Skip the k-NN classifier.
    #[arg(long)]
    pub no_knn: bool,
    /// Print the results as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// The amdim-worker binary (default: next to amdimctl, then PATH).
    #[arg(long, env = "AMDIM_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// Further `amdim-worker probe` flags, after `--` (e.g. `-- --train-samples 10000`).
    #[arg(last = true)]
    pub worker_flags: Vec<String>,
}

impl Args {
    /// Whether the target names a job rather than a checkpoint location.
    pub fn is_job(&self) -> bool {
        jobs::is_job_id(&self.target) && !Path::new(&self.target).exists()
    }
}

/// `amdim-worker probe` arguments for spec file `config` and weights `checkpoint`.
fn worker_args(args: &Args, config: &Path, checkpoint: &str) -> Vec<String> {
    let mut out = vec![
        "probe".to_string(),
        "--config".into(),
        config.display().to_string(),
        "--checkpoint".into(),
        checkpoint.to_string(),
    ];
    if let Some(step) = args.step {
        out.extend(["--step".into(), step.to_string()]);
    }
    for (on, flag) in [(args.baselines, "--baselines"), (args.no_knn, "--no-knn"), (args.json, "--json")] {
        if on {
            out.push(flag.into());
        }
    }
    out.extend(args.worker_flags.iter().cloned());
    out
}

async fn run_worker(args: &Args, config: &Path, checkpoint: &str) -> Result<ExitCode> {
    let bin = crate::ctl::local::worker_binary(args.worker_bin.clone());
    let status = tokio::process::Command::new(&bin)
        .args(worker_args(args, config, checkpoint))
        .status()
        .await
        .with_context(|| format!("running {} (--worker-bin or AMDIM_WORKER_BIN)", bin.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Probes a checkpoint location with the spec given by `-f`.
pub async fn for_uri(args: Args) -> Result<ExitCode> {
    let Some(file) = args.file.clone() else {
        bail!(
            "{}: a checkpoint location needs the job spec its model and dataset come from: -f job.toml",
            args.target
        );
    };
    run_worker(&args, &file, &args.target).await
}

/// Probes job `args.target`'s checkpoints with the spec the coordinator holds.
pub async fn for_job(mut c: Client, args: Args) -> Result<ExitCode> {
    let id = args.target.clone();
    let job = c
        .get(pb::GetJobRequest { id: id.clone() })
        .await
        .map_err(jobs::refused)?
        .into_inner();
    let spec = JobSpec::from_toml_with_env(&job.spec_toml, &[]).map_err(|e| anyhow::anyhow!("job {id}: its spec: {e}"))?;
    if let Some(file) = args.file.clone() {
        return run_worker(&args, &file, &spec.checkpoint.uri).await;
    }
    let dir = tempfile::tempdir().context("a temporary folder for the job's spec")?;
    let file = dir.path().join(format!("{id}.toml"));
    std::fs::write(&file, &job.spec_toml).with_context(|| format!("writing {}", file.display()))?;
    run_worker(&args, &file, &spec.checkpoint.uri).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_reach_the_worker_command() {
        let cli = Cli::parse_from([
            "amdimctl",
            "runs/x/checkpoints",
            "-f",
            "job.toml",
            "--step",
            "40",
            "--baselines",
            "--json",
            "--",
            "--no-knn",
        ]);
        assert!(!cli.args.is_job());
        let argv = worker_args(&cli.args, Path::new("job.toml"), "runs/x/checkpoints");
        assert_eq!(
            argv.join(" "),
            "probe --config job.toml --checkpoint runs/x/checkpoints --step 40 --baselines --json --no-knn"
        );
        let job = Cli::parse_from(["amdimctl", "job-000042"]);
        assert!(job.args.is_job());
    }
}
