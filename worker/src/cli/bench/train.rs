//! `amdim-worker bench`: training throughput on synthetic images of the job's
//! size (forward + backward + Adam, and forward only), plus peak RSS, printed
//! as one JSON line (`--json`) or a readable listing. A benchmark, not a
//! test: it asserts nothing.

use crate::cli::{backend_name, load_spec, print_result};
use crate::data::pipeline::TrainBatch;
use crate::loss::nce::multiscale_nce;
use crate::model::BnMode;
use crate::model::encoder::Forward;
use crate::model::kernels::Kernels;
use crate::model::params::scalar;
use crate::train::step::{Trainer, images, nce_inputs};
use crate::with_backend;
use amdim_shared::rng::{KeyedRng, Stream};
use amdim_shared::spec::JobSpec;
use std::path::PathBuf;
use std::time::Instant;

/// The flags of `amdim-worker bench`.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short = 'c')]
    config: PathBuf,
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long)]
    json: bool,
}

/// Runs `amdim-worker bench`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = load_spec(&args.config)?;
    let name = backend_name(spec.runtime.backend);
    let r = with_backend!(spec, |B, device| bench::<B>(spec.clone(), device, args.steps, name));
    print_result(&r, args.json)
}

#[derive(Debug, serde::Serialize)]
pub struct BenchResult {
    pub backend: String,
    pub image_size: usize,
    pub ndf: usize,
    pub n_rkhs: usize,
    pub depth: usize,
    pub batch: usize,
    pub steps: usize,
    pub train_pairs_per_s: f64,
    pub train_step_s: f64,
    pub forward_pairs_per_s: f64,
    pub forward_s: f64,
    pub peak_rss_mib: f64,
}

/// Peak resident set size of this process (Linux VmHWM), MiB.
pub fn peak_rss_mib() -> f64 {
    amdim_shared::procfs::status_kib("self", "VmHWM")
        .ok()
        .flatten()
        .map_or(0.0, |kb| kb as f64 / 1024.0)
}

/// Standard-normal views of any size with keyed 5×5 locations: the compute
/// of a training step without the data pipeline.
fn synthetic_batch(n: usize, size: usize, seed: u64) -> TrainBatch {
    let mut rng = KeyedRng::new(Stream::Synthetic, &[seed, size as u64]);
    let mut pixels = |count: usize| (0..count).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
    let (view1, view2) = (pixels(n * 3 * size * size), pixels(n * 3 * size * size));
    TrainBatch {
        n,
        view1,
        view2,
        labels: None,
        loc1: (0..n).map(|i| i * 7 % 25).collect(),
        loc2: (0..n).map(|i| i * 11 % 25).collect(),
        indices: (0..n as u32).collect(),
    }
}

pub fn bench<B: Kernels>(spec: JobSpec, device: B::Device, steps: usize, backend: &str) -> BenchResult {
    let g = spec.train.batch_size;
    let mut t = Trainer::<B>::new(spec.clone(), None, device);
    let batch = synthetic_batch(g, spec.model.image_size, spec.job.seed);
    // One process: no exchanges, so a step cannot fail.
    let _ = t.train_step(&batch, 0); // warm-up
    let started = Instant::now();
    for _ in 0..steps {
        let _ = t.train_step(&batch, 0);
    }
    let train_s = started.elapsed().as_secs_f64() / steps.max(1) as f64;
    let size = spec.model.image_size;
    let forward = |t: &Trainer<B>| {
        let mut fwd = Forward::new(&t.params.values, BnMode::Train);
        let e1 = fwd.encode(&t.plan.encoder, images::<B>(&batch.view1, g, size, &t.device));
        let e2 = fwd.encode(&t.plan.encoder, images::<B>(&batch.view2, g, size, &t.device));
        let (src, trg) = nce_inputs(&fwd, &t.plan, [&e1, &e2], [&batch.loc1, &batch.loc2]);
        scalar(multiscale_nce([&src[0], &src[1]], [&trg[0], &trg[1]], 0, &t.spec.loss).total)
    };
    forward(&t);
    let started = Instant::now();
    for _ in 0..steps {
        forward(&t);
    }
    let forward_s = started.elapsed().as_secs_f64() / steps.max(1) as f64;
    BenchResult {
        backend: backend.into(),
        image_size: size,
        ndf: spec.model.ndf,
        n_rkhs: spec.model.n_rkhs,
        depth: spec.model.depth,
        batch: g,
        steps,
        train_pairs_per_s: g as f64 / train_s,
        train_step_s: train_s,
        forward_pairs_per_s: g as f64 / forward_s,
        forward_s,
        peak_rss_mib: peak_rss_mib(),
    }
}
