//! ImageFolder trees in the ImageNet layout on a local disk:
//! `<root>/train/<class>/<file>` and optionally `<root>/val/…` (listing rules
//! in `amdim_shared::imagefolder`). Owns reading a sample's bytes; decoding
//! is `photo`'s.

use crate::data::dataset::{DataError, Split};
use amdim_shared::imagefolder;
use std::path::{Path, PathBuf};

/// The files of one split and their class indices.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    pub classes: Vec<String>,
    pub files: Vec<PathBuf>,
    pub labels: Vec<u32>,
}

pub fn split_dir(root: &Path, split: Split) -> PathBuf {
    root.join(match split {
        Split::Train => "train",
        Split::Test => "val",
    })
}

impl ImageFolder {
    /// Lists `<root>/train` or `<root>/val`; errors name the folder.
    pub fn open(root: &Path, split: Split) -> Result<Self, DataError> {
        let listing = imagefolder::list(&split_dir(root, split)).map_err(|e| DataError::File {
            path: e.path,
            message: e.message,
        })?;
        Ok(ImageFolder {
            classes: listing.classes,
            files: listing.files,
            labels: listing.labels,
        })
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Keeps only the first `n` samples (0 keeps all).
    pub fn truncate(mut self, n: usize) -> Self {
        if n > 0 {
            self.files.truncate(n);
            self.labels.truncate(n);
        }
        self
    }

    /// The bytes of sample `i`.
    pub fn read(&self, i: usize) -> std::io::Result<Vec<u8>> {
        std::fs::read(&self.files[i])
    }
}
