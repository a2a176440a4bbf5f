//! `[data]`: the dataset's format and location and how the input pipeline
//! reads it, with its validation. Opening the dataset is the worker's.

use super::{ModelSpec, SpecError, field_err};
use crate::order::LastBatch;
use serde::{Deserialize, Serialize};

/// On-disk format of a dataset.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// MNIST/Fashion-MNIST IDX files (optionally gzipped).
    Idx,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// CIFAR-100 binary (fine labels).
    Cifar100,
    /// Random images, for benchmarks and smoke tests.
    Synthetic,
    /// JPEG/PNG files in the ImageNet layout: `<path>/train/<class>/*`, and
    /// optionally `<path>/val/<class>/*`; classes sorted by name. `path` may
    /// be a folder or a `file://` / `s3://` URI.
    ImageFolder,
    /// A packed dataset (`amdimctl dataset pack`): tar shards with index and
    /// manifest under `<path>/train/` and optionally `<path>/val/`; `path` is
    /// a folder or a `file://` / `s3://` URI.
    Shards,
}

/// `[data]`: where the training images come from and how they are read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataSpec {
    /// How the dataset is stored.
    pub format: DataFormat,
    /// Folder (or, for image_folder and shards, `file://` / `s3://` URI)
    /// holding the dataset.
    pub path: String,
    /// Use at most this many training samples (0 = all).
    pub max_train_samples: usize,
    /// Samples in a synthetic dataset.
    pub synthetic_samples: usize,
    /// What happens to the last, incomplete batch of an epoch.
    pub last_batch: LastBatch,
    /// Largest image (width × height) decoded; bigger files are skipped as
    /// decompression bombs.
    pub max_pixels: u64,
    /// Threads decoding and augmenting images (0 = one per core).
    pub workers: usize,
    /// Batches prepared ahead of the training step (bounds memory).
    pub prefetch_batches: usize,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            format: DataFormat::Idx,
            path: "/usr/share/datasets/fashion-mnist".into(),
            max_train_samples: 0,
            synthetic_samples: 1024,
            last_batch: LastBatch::Drop,
            max_pixels: 64 * 1024 * 1024,
            workers: 0,
            prefetch_batches: 2,
        }
    }
}

impl DataSpec {
    /// Checks `[data]`; `model` is consulted for the image size that
    /// fixed-size formats require.
    pub(super) fn validate(&self, model: &ModelSpec) -> Result<(), SpecError> {
        if self.format != DataFormat::Synthetic && self.path.trim().is_empty() {
            return Err(field_err("data.path", "must name the dataset folder"));
        }
        if self.format == DataFormat::Synthetic && self.synthetic_samples == 0 {
            return Err(field_err("data.synthetic_samples", "must be at least 1"));
        }
        if matches!(self.format, DataFormat::Idx | DataFormat::Cifar10 | DataFormat::Cifar100) && model.image_size != 32 {
            return Err(field_err(
                "model.image_size",
                format!("{:?} images are 32×32 after padding; set image_size = 32", self.format),
            ));
        }
        if self.max_pixels == 0 {
            return Err(field_err("data.max_pixels", "must be at least 1"));
        }
        if self.prefetch_batches == 0 {
            return Err(field_err("data.prefetch_batches", "must be at least 1"));
        }
        Ok(())
    }
}
