//! `amdim-worker bench-checkpoint`: the cost of a checkpoint of the job's
//! model with a full Adam state — how long the training step is blocked
//! (the host snapshot), how fast the background upload goes to
//! `checkpoint.uri`, and how long a restore takes (download, SHA-256
//! verification, parsing). Measures only; writes one checkpoint there.

use crate::checkpoint::CheckpointStore;
use crate::checkpoint::store::Retention;
use crate::checkpoint::writer::{AsyncCheckpointer, OnUpload, UploadEvent};
use crate::cli::{load_spec, print_result};
use crate::model::kernels::Kernels;
use crate::optim::adam::AdamState;
use crate::train::run::{resume, snapshot};
use crate::train::step::Trainer;
use crate::with_backend;
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result};
use burn::tensor::Tensor;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The flags of `amdim-worker bench-checkpoint`.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short = 'c')]
    config: PathBuf,
    #[arg(long)]
    json: bool,
}

/// Runs `amdim-worker bench-checkpoint`.
pub fn run(args: Args, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let spec = load_spec(&args.config)?;
    let handle = runtime.handle().clone();
    let r = with_backend!(spec, |B, device| bench_checkpoint::<B>(spec.clone(), device, handle)?);
    print_result(&r, args.json)
}

/// What one checkpoint of the job's model cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckpointBench {
    pub parameters: usize,
    /// model + optimizer files.
    pub bytes: u64,
    /// Seconds the step is blocked: copying the state to host memory.
    pub step_blocked_s: f64,
    /// Seconds from the snapshot to the manifest being written.
    pub upload_s: f64,
    pub upload_mb_s: f64,
    /// Seconds to find, download, verify and load the newest checkpoint.
    pub restore_s: f64,
    pub uri: String,
}

pub fn bench_checkpoint<B: Kernels>(spec: JobSpec, device: B::Device, runtime: tokio::runtime::Handle) -> Result<CheckpointBench> {
    let mut t = Trainer::<B>::new(spec.clone(), None, device);
    // A full optimizer state, as after the first update.
    for (i, state) in t.adam.states.iter_mut().enumerate() {
        if t.plan.entries[i].kind == crate::model::plan::EntryKind::Param {
            let n = t.params.values[i].dims()[0];
            *state = Some(AdamState {
                exp_avg: Tensor::zeros([n], &t.device),
                exp_avg_sq: Tensor::zeros([n], &t.device),
                step: 1,
            });
        }
    }
    t.step = 1;
    let store = Arc::new(CheckpointStore::open(&spec.checkpoint.uri, runtime)?);
    let keep_all = Retention { newest: 0, every_steps: 0 };
    let written = Arc::new(AtomicU64::new(0));
    let record = written.clone();
    let on_upload: OnUpload = Arc::new(move |event| {
        if let UploadEvent::Written { bytes, .. } = event {
            record.store(bytes, Ordering::Relaxed);
        }
    });
    let mut writer = AsyncCheckpointer::new(store.clone(), t.plan.clone(), keep_all).on_upload(on_upload);
    let started = Instant::now();
    let snap = snapshot(&t, 0);
    writer.submit(snap);
    let step_blocked_s = started.elapsed().as_secs_f64();
    writer.wait().context("uploading the benchmark checkpoint")?;
    let upload_s = started.elapsed().as_secs_f64() - step_blocked_s;
    let bytes = written.load(Ordering::Relaxed);
    let mut fresh = Trainer::<B>::new(spec.clone(), None, t.device.clone());
    let started = Instant::now();
    resume(&mut fresh, &store)?;
    let restore_s = started.elapsed().as_secs_f64();
    Ok(CheckpointBench {
        parameters: t.plan.count_params(""),
        bytes,
        step_blocked_s,
        upload_s,
        upload_mb_s: bytes as f64 / upload_s.max(1e-9) / 1e6,
        restore_s,
        uri: spec.checkpoint.uri,
    })
}
