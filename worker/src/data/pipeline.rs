//! From sample indices to batches: reads and decodes samples, builds their
//! views on a dedicated thread pool (separate from the one running the
//! model's matrix products), and survives bad files.
//!
//! A sample whose bytes cannot be decoded (or are missing from the dataset)
//! is skipped, counted, logged once with its path, and replaced by the next
//! good sample (i+1, i+2, … mod N); its views keep the original index's
//! random stream, so the replacement is the same on every run, rank and
//! thread. A store that does not answer is not a bad sample: its reads are
//! retried (counted), and once the retry budget is spent the batch fails
//! with an error naming the object. The order of samples comes from
//! `amdim_shared::order`; this module never picks indices.

use crate::data::augment;
use crate::data::dataset::{DataError, Dataset, Split};
use crate::data::encoded::{EncodedSource, Fetched, ReadError};
use crate::data::photo::{self, Rgb};
use amdim_shared::spec::{AugmentSpec, DataFormat, DataSpec};
use rayon::prelude::*;
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::runtime::Handle;

/// Consecutive undecodable samples after which the dataset is taken to be broken.
const MAX_REPLACEMENTS: usize = 64;

/// Where samples come from.
pub enum Source {
    /// Decoded 32×32 images held in memory (IDX, CIFAR, synthetic).
    Memory(Dataset),
    /// Encoded photos read on demand (ImageFolder or packed shards, local
    /// or on object storage).
    Encoded(EncodedSource),
}

impl Source {
    /// Opens one split of the spec's dataset; errors name the file, folder
    /// or URI. Object-store reads run on `runtime`.
    pub fn open(spec: &DataSpec, split: Split, runtime: &Handle) -> Result<Self, DataError> {
        match spec.format {
            DataFormat::ImageFolder => Ok(Source::Encoded(EncodedSource::open_folder(&spec.path, split, runtime)?)),
            DataFormat::Shards => Ok(Source::Encoded(EncodedSource::open_shards(&spec.path, split, runtime)?)),
            _ => Ok(Source::Memory(Dataset::load(spec, split)?)),
        }
    }

    /// Whether the dataset has this split (a photo dataset's `val` is
    /// optional); Err when the store cannot tell.
    pub fn has_split(spec: &DataSpec, split: Split, runtime: &Handle) -> Result<bool, DataError> {
        match spec.format {
            DataFormat::ImageFolder => EncodedSource::has_split(&spec.path, false, split, runtime),
            DataFormat::Shards => EncodedSource::has_split(&spec.path, true, split, runtime),
            _ => Ok(true),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Source::Memory(d) => d.len(),
            Source::Encoded(f) => f.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn truncate(self, n: usize) -> Self {
        match self {
            Source::Memory(d) => Source::Memory(d.truncate(n)),
            Source::Encoded(f) => Source::Encoded(f.truncate(n)),
        }
    }

    pub fn labels(&self) -> Option<&[u32]> {
        match self {
            Source::Memory(d) => d.labels.as_deref(),
            Source::Encoded(f) => Some(&f.labels),
        }
    }

    pub fn n_classes(&self) -> usize {
        match self {
            Source::Memory(d) => d.n_classes,
            Source::Encoded(f) => f.classes.len(),
        }
    }
}

/// Undecodable samples requested so far (`amdim_decode_errors_total`);
/// each bad file is logged once.
#[derive(Default)]
pub struct Health {
    skipped: AtomicU64,
    logged: Mutex<HashSet<usize>>,
}

impl Health {
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Notes that sample `index` is unreadable; `requested` counts it as a
    /// skipped sample (false while trying replacements).
    fn record(&self, index: usize, name: &str, reason: &str, requested: bool) {
        if requested {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        let first_time = self.logged.lock().map(|mut seen| seen.insert(index)).unwrap_or(false);
        if first_time {
            tracing::warn!(sample = index, path = name, reason, "skipping unreadable sample");
        }
    }
}

/// Two augmented views, labels and 5→5 locations of a list of samples.
pub struct TrainBatch {
    pub n: usize,
    /// [n, 3, size, size] each, normalised.
    pub view1: Vec<f32>,
    pub view2: Vec<f32>,
    pub labels: Option<Vec<u32>>,
    pub loc1: Vec<usize>,
    pub loc2: Vec<usize>,
    pub indices: Vec<u32>,
}

/// A source with its augmentation recipe and worker threads.
pub struct Pipeline {
    pub source: Source,
    pub size: usize,
    pub augment: AugmentSpec,
    pub seed: u64,
    pub max_pixels: u64,
    pub health: Health,
    pool: rayon::ThreadPool,
}

impl Pipeline {
    /// A pipeline over `source` with the job's image size, augmentations,
    /// seed, pixel cap and worker threads.
    pub fn for_job(source: Source, spec: &amdim_shared::spec::JobSpec) -> Result<Self, DataError> {
        let d = &spec.data;
        Self::new(
            source,
            spec.model.image_size,
            spec.augment.clone(),
            spec.job.seed,
            d.max_pixels,
            d.workers,
        )
    }

    /// `workers` = 0 uses one thread per core.
    pub fn new(source: Source, size: usize, augment: AugmentSpec, seed: u64, max_pixels: u64, workers: usize) -> Result<Self, DataError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("amdim-data-{i}"))
            .build()
            .map_err(|e| DataError::File {
                path: "data.workers".into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            source,
            size,
            augment,
            seed,
            max_pixels,
            health: Health::default(),
            pool,
        })
    }

    /// Decoded photo of sample `i` of an encoded source, or its
    /// deterministic replacement; `fetched` is sample i's bytes when a
    /// batched read already got them. Err when the store cannot be read, or
    /// when no sample near `i` decodes.
    fn photo(&self, source: &EncodedSource, i: usize, fetched: Option<&Fetched>) -> Result<Rgb, DataError> {
        let n = source.len();
        for k in 0..MAX_REPLACEMENTS.min(n) {
            let j = (i + k) % n;
            let bytes = match fetched {
                Some(got) if k == 0 => got.clone(),
                _ => source.read(j),
            };
            let reason = match bytes {
                Ok(b) => match photo::decode(&b, self.max_pixels) {
                    Ok(img) => return Ok(img),
                    Err(e) => e.to_string(),
                },
                Err(ReadError::Bad(reason)) => reason,
                Err(ReadError::Unavailable(message)) => {
                    return Err(DataError::Unreadable {
                        object: source.name(j),
                        message,
                    });
                }
            };
            self.health.record(j, &source.name(j), &reason, k == 0);
        }
        Err(DataError::File {
            path: source.name(i).into(),
            message: format!(
                "this sample and the {} after it cannot be decoded: the dataset looks broken",
                MAX_REPLACEMENTS.min(n) - 1
            ),
        })
    }

    /// Reads of this source retried so far because the store did not answer.
    pub fn read_retries(&self) -> u64 {
        match &self.source {
            Source::Encoded(e) => e.read_retries(),
            Source::Memory(_) => 0,
        }
    }

    /// Object-store bytes of `indices`, fetched together before the pool
    /// decodes them (None: the source is read sample by sample).
    fn fetch(&self, indices: impl Iterator<Item = usize>) -> Option<Vec<Fetched>> {
        match &self.source {
            Source::Encoded(e) if e.is_remote() => Some(e.read_many(&indices.collect::<Vec<_>>())),
            _ => None,
        }
    }

    /// The two training views of sample `i` in `epoch`.
    pub fn views(&self, i: usize, epoch: u64) -> Result<(Vec<f32>, Vec<f32>), DataError> {
        self.views_fetched(i, epoch, None)
    }

    fn views_fetched(&self, i: usize, epoch: u64, fetched: Option<&Fetched>) -> Result<(Vec<f32>, Vec<f32>), DataError> {
        Ok(match &self.source {
            Source::Memory(d) => augment::two_views(d.image(i), &self.augment, self.seed, epoch, i as u64),
            Source::Encoded(e) => photo::two_views(&self.photo(e, i, fetched)?, self.size, &self.augment, self.seed, epoch, i as u64),
        })
    }

    /// The evaluation view of sample `i`.
    pub fn eval_view(&self, i: usize) -> Result<Vec<f32>, DataError> {
        self.eval_view_fetched(i, None)
    }

    fn eval_view_fetched(&self, i: usize, fetched: Option<&Fetched>) -> Result<Vec<f32>, DataError> {
        Ok(match &self.source {
            Source::Memory(d) => augment::eval_view(d.image(i), &self.augment),
            Source::Encoded(e) => photo::eval_view(&self.photo(e, i, fetched)?, self.size, self.augment.normalize),
        })
    }

    /// Builds the batch of `indices` for `epoch`, samples in parallel.
    pub fn train_batch(&self, indices: &[u32], epoch: u64) -> Result<TrainBatch, DataError> {
        let fetched = self.fetch(indices.iter().map(|&i| i as usize));
        let views: Vec<(Vec<f32>, Vec<f32>)> = self.pool.install(|| {
            indices
                .par_iter()
                .enumerate()
                .map(|(k, &i)| self.views_fetched(i as usize, epoch, fetched.as_ref().map(|f| &f[k])))
                .collect::<Result<_, _>>()
        })?;
        let per = 3 * self.size * self.size;
        let n = indices.len();
        let mut b = TrainBatch {
            n,
            view1: Vec::with_capacity(n * per),
            view2: Vec::with_capacity(n * per),
            labels: self.source.labels().map(|l| indices.iter().map(|&i| l[i as usize]).collect()),
            loc1: Vec::with_capacity(n),
            loc2: Vec::with_capacity(n),
            indices: indices.to_vec(),
        };
        for (&i, (v1, v2)) in indices.iter().zip(views) {
            b.view1.extend_from_slice(&v1);
            b.view2.extend_from_slice(&v2);
            let (l1, l2) = augment::source_locations(self.seed, epoch, i as u64);
            b.loc1.push(l1);
            b.loc2.push(l2);
        }
        Ok(b)
    }

    /// Evaluation views of samples `range`, [n, 3, size, size].
    pub fn eval_batch(&self, range: std::ops::Range<usize>) -> Result<Vec<f32>, DataError> {
        let fetched = self.fetch(range.clone());
        let start = range.start;
        let views: Vec<Vec<f32>> = self.pool.install(|| {
            range
                .into_par_iter()
                .map(|i| self.eval_view_fetched(i, fetched.as_ref().map(|f| &f[i - start])))
                .collect::<Result<_, _>>()
        })?;
        Ok(views.concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_do_not_depend_on_the_number_of_threads() {
        let data = crate::data::dataset::synthetic(16, 32, 10, Split::Train);
        let one = Pipeline::new(Source::Memory(data.clone()), 32, AugmentSpec::default(), 5, 1 << 20, 1).unwrap();
        let three = Pipeline::new(Source::Memory(data), 32, AugmentSpec::default(), 5, 1 << 20, 3).unwrap();
        let idx = [3u32, 9, 0, 15, 7];
        let (a, b) = (one.train_batch(&idx, 2).unwrap(), three.train_batch(&idx, 2).unwrap());
        assert_eq!((a.view1, a.view2, a.loc1, a.loc2), (b.view1, b.view2, b.loc1, b.loc2));
    }
}
