//! Frozen features of a labelled split for the probes: the evaluation view
//! of every image (the dataset's evaluation transform, no augmentation)
//! either as raw pixels or through an encoder in eval mode (BatchNorm with
//! its running statistics), whose r1 vector is the feature. Batches are
//! independent, so several lanes extract at once, each on its own share of
//! the CPU threads; rows come back in the split's order whatever the lanes.
//! Reads images through the data pipeline; never trains or changes the
//! encoder.

use crate::backend::{on_own_pool, threads_per_lane};
use crate::data::dataset::DataError;
use crate::data::pipeline::Pipeline;
use crate::model::encoder::Forward;
use crate::model::kernels::Kernels;
use crate::model::params::to_vec;
use crate::model::{BnMode, ModelPlan, ParamStore};
use crate::probe::progress::Progress;
use crate::train::step::images;
use amdim_shared::spec::BackendKind;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Row-major features `[n, dim]`.
#[derive(Clone, Debug)]
pub(crate) struct Features {
    pub(crate) data: Vec<f32>,
    pub(crate) dim: usize,
}

/// What turns an evaluation view into a feature vector.
pub(crate) enum Extractor<'a, B: Kernels> {
    /// The normalised pixels themselves, `3·size·size` values.
    Pixels,
    /// r1 of this encoder in eval mode.
    Encoder {
        plan: &'a ModelPlan,
        params: &'a ParamStore<B>,
        device: &'a B::Device,
    },
}

/// How many batches are extracted at once, and the CPU threads of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lanes {
    pub(crate) count: usize,
    /// None: every lane on the shared pool.
    pub(crate) threads: Option<usize>,
}

impl Lanes {
    /// `requested` lanes (0: on the CPU one per thread of the shared pool,
    /// where small convolutions scale better across batches than within
    /// one; on a GPU one).
    pub(crate) fn new(backend: BackendKind, requested: usize) -> Self {
        let threads = rayon::current_num_threads();
        let count = match (requested, backend) {
            (0, BackendKind::Cpu) => threads,
            (0, BackendKind::Cuda) => 1,
            (n, _) => n,
        };
        Self {
            count,
            threads: threads_per_lane(backend, threads, count),
        }
    }
}

/// The features of samples `range` of `pipeline` and their width.
fn batch_features<B: Kernels>(
    pipeline: &Pipeline,
    range: std::ops::Range<usize>,
    how: &Extractor<'_, B>,
) -> Result<(Vec<f32>, usize), DataError> {
    let size = pipeline.size;
    let n = range.len();
    let pixels = pipeline.eval_batch(range)?;
    Ok(match how {
        Extractor::Pixels => (pixels, 3 * size * size),
        Extractor::Encoder { plan, params, device } => {
            let x = images::<B>(&pixels, n, size, device);
            let mut fwd = Forward::new(&params.values, BnMode::Eval);
            let r1 = fwd.encode(&plan.encoder, x).r1;
            let dim = r1.dims()[1];
            (to_vec(r1), dim)
        }
    })
}

/// Features of the first `n` samples of `pipeline`, `batch` images at a
/// time, `lanes.count` batches at once.
pub(crate) fn extract<B: Kernels>(
    pipeline: &Pipeline,
    n: usize,
    batch: usize,
    lanes: Lanes,
    how: &Extractor<'_, B>,
    label: &str,
) -> Result<Features, DataError> {
    let batch = batch.max(1);
    let starts: Vec<usize> = (0..n).step_by(batch).collect();
    let next = AtomicUsize::new(0);
    let progress = Progress::new(label, n);
    // Each lane takes the next batch until none is left (or one failed:
    // it then moves the counter past the end so the others stop too).
    let lane = || -> Result<Vec<(usize, Vec<f32>, usize)>, DataError> {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(&start) = starts.get(i) else { return Ok(done) };
            let end = (start + batch).min(n);
            match batch_features(pipeline, start..end, how) {
                Ok((values, dim)) => done.push((i, values, dim)),
                Err(e) => {
                    next.store(starts.len(), Ordering::Relaxed);
                    return Err(e);
                }
            }
            progress.advance(end - start);
        }
    };
    let per_lane: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..lanes.count.max(1))
            .map(|_| scope.spawn(|| on_own_pool(lanes.threads, lane)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    progress.finish();
    let mut batches = Vec::with_capacity(starts.len());
    for lane in per_lane {
        batches.extend(lane?);
    }
    batches.sort_unstable_by_key(|(i, _, _)| *i);
    let dim = match (batches.first(), how) {
        (Some((_, _, dim)), _) => *dim,
        (None, Extractor::Pixels) => 3 * pipeline.size * pipeline.size,
        (None, Extractor::Encoder { .. }) => 0,
    };
    let mut data = Vec::with_capacity(n * dim);
    for (_, values, _) in batches {
        data.extend(values);
    }
    Ok(Features { data, dim })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_default_is_a_lane_per_thread_and_a_gpu_keeps_one() {
        let threads = rayon::current_num_threads();
        assert_eq!(
            Lanes::new(BackendKind::Cpu, 0),
            Lanes {
                count: threads,
                threads: Some(1)
            }
        );
        assert_eq!(
            Lanes::new(BackendKind::Cpu, 1),
            Lanes {
                count: 1,
                threads: Some(threads)
            }
        );
        assert_eq!(Lanes::new(BackendKind::Cuda, 0), Lanes { count: 1, threads: None });
    }
}
