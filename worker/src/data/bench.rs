//! `amdim-worker bench-data`: throughput of the input pipeline on the job's
//! own photos — decode from memory plus the two training views at the job's
//! image size — on one thread (split into decode and views) and on the data
//! thread pool. A benchmark, not a test: it asserts nothing.

use crate::data::dataset::Split;
use crate::data::folder::ImageFolder;
use crate::data::photo;
use amdim_shared::spec::{DataFormat, JobSpec};
use rayon::prelude::*;
use std::path::Path;
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
pub fn bench_data(spec: &JobSpec, max_files: usize, seconds: f64) -> anyhow::Result<DataBenchResult> {
    if spec.data.format != DataFormat::ImageFolder {
        anyhow::bail!(
            "data.format = {:?}: bench-data measures photo decoding; use an image_folder dataset",
            spec.data.format
        );
    }
    let folder = ImageFolder::open(Path::new(&spec.data.path), Split::Train)?;
    let files: Vec<Vec<u8>> = (0..folder.len().min(max_files.max(1)))
        .map(|i| folder.read(i))
        .collect::<std::io::Result<_>>()?;
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
    })
}
