//! `amdim-worker bench-data`: throughput of the input pipeline on the job's
//! own photos — decode from memory plus the two training views at the job's
//! image size — on one thread (split into decode and views) and on the data
//! thread pool; then the real pipeline (reads from the job's source, local
//! or object storage, batches of the job's size through the prefetch queue)
//! feeding a simulated training step of `step_ms`, reporting how long each
//! step waited for its batch. A benchmark, not a test: it asserts nothing.

use crate::cli::{load_spec, print_result};
use crate::data::dataset::Split;
use crate::data::photo;
use crate::data::pipeline::{Pipeline, Source};
use crate::data::prefetch::{StepRange, spawn_batches};
use amdim_shared::order::steps_per_epoch;
use amdim_shared::spec::{DataFormat, JobSpec};
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

#[derive(Debug, serde::Serialize)]
pub struct DataBenchResult {
    pub image_size: usize,
    /// Distinct files held in memory and cycled through.
    pub files: usize,
    pub mean_width: f64,
    pub mean_height: f64,
    pub one_thread_images_per_s: f64,
    pub decode_ms: f64,
    pub two_views_ms: f64,
    pub threads: usize,
    pub pool_images_per_s: f64,
    pub pool_images_per_s_per_core: f64,
    /// The simulated training step: `steps` steps of `batch` images, each
    /// taking `step_ms` after its batch arrived.
    pub steps: u64,
    pub batch: usize,
    pub step_ms: f64,
    /// Images/s delivered by the whole pipeline (source reads included).
    pub pipeline_images_per_s: f64,
    /// Mean time a step waited for its batch (the first step excluded: it
    /// waits for the queue to fill).
    pub data_wait_ms_per_step: f64,
}

/// The flags of `amdim-worker bench-data`.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Photos of the training split held in memory and cycled through.
    #[arg(long, default_value_t = 256)]
    files: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Steps of the simulated training loop (batches of train.batch_size).
    #[arg(long, default_value_t = 10)]
    steps: u64,
    /// Duration of one simulated training step, e.g. the GPU's step time.
    #[arg(long, default_value_t = 0.0)]
    step_ms: f64,
    #[arg(long)]
    json: bool,
}

/// Runs `amdim-worker bench-data`.
pub fn run(args: Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let spec = load_spec(&args.config)?;
    let sim = StepSimulation {
        steps: args.steps,
        step_ms: args.step_ms,
    };
    let r = bench_data(&spec, args.files, args.seconds, sim, runtime.handle())?;
    print_result(&r, args.json)
}

/// The simulated-step part of the benchmark.
pub struct StepSimulation {
    pub steps: u64,
    pub step_ms: f64,
}

/// Runs `f` on `n` items until at least `min_time` has passed; (items, seconds).
fn timed(min_time: Duration, mut f: impl FnMut(usize)) -> (usize, f64) {
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < min_time {
        f(done);
        done += 1;
    }
    (done, start.elapsed().as_secs_f64())
}

/// Benchmarks decode + two views on up to `max_files` photos of the job's
/// training split, for about `seconds` per measurement.
pub fn bench_data(
    spec: &JobSpec,
    max_files: usize,
    seconds: f64,
    sim: StepSimulation,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<DataBenchResult> {
    if !matches!(spec.data.format, DataFormat::ImageFolder | DataFormat::Shards) {
        anyhow::bail!(
            "data.format = {:?}: bench-data measures photo decoding; use an image_folder or shards dataset",
            spec.data.format
        );
    }
    let source = Source::open(&spec.data, Split::Train, runtime)?.truncate(spec.data.max_train_samples);
    let Source::Encoded(encoded) = &source else {
        anyhow::bail!("data.format = {:?} is not a photo dataset", spec.data.format);
    };
    let held: Vec<usize> = (0..encoded.len().min(max_files.max(1))).collect();
    let files: Vec<bytes::Bytes> = encoded
        .read_many(&held)
        .into_iter()
        .zip(&held)
        .map(|(r, &i)| r.map_err(|e| anyhow::anyhow!("{}: {e}", encoded.name(i))))
        .collect::<anyhow::Result<_>>()?;
    let max_pixels = spec.data.max_pixels;
    let decoded: Vec<photo::Rgb> = files
        .iter()
        .map(|b| photo::decode(b, max_pixels))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("bench-data needs readable photos: {e}"))?;
    let size = spec.model.image_size;
    let (aug, seed) = (&spec.augment, spec.job.seed);
    let min_time = Duration::from_secs_f64(seconds.max(0.1));
    let (n_decode, t_decode) = timed(min_time, |i| {
        let _ = photo::decode(&files[i % files.len()], max_pixels);
    });
    let (n_views, t_views) = timed(min_time, |i| {
        let _ = photo::two_views(&decoded[i % decoded.len()], size, aug, seed, 0, i as u64);
    });
    let (n_both, t_both) = timed(min_time, |i| {
        if let Ok(img) = photo::decode(&files[i % files.len()], max_pixels) {
            let _ = photo::two_views(&img, size, aug, seed, 0, i as u64);
        }
    });
    let threads = match spec.data.workers {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let chunk = 64 * threads;
    let start = Instant::now();
    let mut pooled = 0;
    while start.elapsed() < min_time {
        pool.install(|| {
            (pooled..pooled + chunk).into_par_iter().for_each(|i| {
                if let Ok(img) = photo::decode(&files[i % files.len()], max_pixels) {
                    let _ = photo::two_views(&img, size, aug, seed, 0, i as u64);
                }
            })
        });
        pooled += chunk;
    }
    let t_pool = start.elapsed().as_secs_f64();
    let pool_rate = pooled as f64 / t_pool;
    let (steps, batch, pipeline_rate, wait_ms) = simulate_steps(spec, source, &sim)?;
    Ok(DataBenchResult {
        image_size: size,
        files: files.len(),
        mean_width: decoded.iter().map(|d| d.width as f64).sum::<f64>() / decoded.len() as f64,
        mean_height: decoded.iter().map(|d| d.height as f64).sum::<f64>() / decoded.len() as f64,
        one_thread_images_per_s: n_both as f64 / t_both,
        decode_ms: 1e3 * t_decode / n_decode.max(1) as f64,
        two_views_ms: 1e3 * t_views / n_views.max(1) as f64,
        threads,
        pool_images_per_s: pool_rate,
        pool_images_per_s_per_core: pool_rate / threads as f64,
        steps,
        batch,
        step_ms: sim.step_ms,
        pipeline_images_per_s: pipeline_rate,
        data_wait_ms_per_step: wait_ms,
    })
}

/// Runs the job's pipeline through the prefetch queue into a training step
/// that sleeps `step_ms`; (steps, batch, images/s, mean wait ms).
fn simulate_steps(spec: &JobSpec, source: Source, sim: &StepSimulation) -> anyhow::Result<(u64, usize, f64, f64)> {
    let d = &spec.data;
    let n = source.len();
    let batch = spec.train.batch_size.min(n);
    let pipeline = Pipeline::for_job(source, spec)?;
    let steps = StepRange {
        seed: spec.job.seed,
        global_batch: batch,
        steps_per_epoch: steps_per_epoch(n, batch, d.last_batch).max(1),
        start: 0,
        end: sim.steps.max(2),
        rank: 0,
        world: 1,
    };
    let stop = AtomicBool::new(false);
    let step_time = Duration::from_secs_f64(sim.step_ms.max(0.0) / 1e3);
    let start = Instant::now();
    let mut waits = Vec::new();
    std::thread::scope(|scope| {
        let rx = spawn_batches(scope, &pipeline, steps, d.prefetch_batches, &stop);
        loop {
            let waiting = Instant::now();
            let Ok(_batch) = rx.recv() else { break };
            waits.push(waiting.elapsed().as_secs_f64());
            std::thread::sleep(step_time);
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let done = waits.len() as u64;
    let later = &waits[1.min(waits.len())..];
    let wait_ms = 1e3 * later.iter().sum::<f64>() / later.len().max(1) as f64;
    Ok((done, batch, (done as usize * batch) as f64 / elapsed, wait_ms))
}
