//! ImageFolder trees in the ImageNet layout: `<root>/<split>/<class>/<file>`
//! with `.jpg`, `.jpeg` or `.png` files; classes sorted by name and numbered
//! from 0, samples ordered by (class, file name), so sample indices are the
//! same on every machine. Owns listing and reading bytes; decoding is
//! `photo`'s.

use crate::data::dataset::{DataError, Split};
use std::path::{Path, PathBuf};

/// The files of one split and their class indices.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub files: Vec<PathBuf>,
    pub labels: Vec<u32>,
}

fn err(path: &Path, message: impl Into<String>) -> DataError {
    DataError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

impl ImageFolder {
    /// Lists `<root>/train` or `<root>/val`. A missing split folder, a split
    /// without class folders or without a single image is an error naming it.
    pub fn open(root: &Path, split: Split) -> Result<Self, DataError> {
        let dir = root.join(match split {
            Split::Train => "train",
            Split::Test => "val",
        });
        if !dir.is_dir() {
            return Err(err(
                &dir,
                "not a folder (data.path must hold train/<class>/… in the ImageNet layout)",
            ));
        }
        let class_dirs: Vec<PathBuf> = sorted_entries(&dir)?.into_iter().filter(|p| p.is_dir()).collect();
        if class_dirs.is_empty() {
            return Err(err(&dir, "no class folders"));
        }
        let mut out = ImageFolder {
            root: dir.clone(),
            classes: Vec::with_capacity(class_dirs.len()),
            files: Vec::new(),
            labels: Vec::new(),
        };
        for (label, class_dir) in class_dirs.iter().enumerate() {
            out.classes
                .push(class_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            for file in sorted_entries(class_dir)?.into_iter().filter(|p| p.is_file() && is_image(p)) {
                out.files.push(file);
                out.labels.push(label as u32);
            }
        }
        if out.files.is_empty() {
            return Err(err(&dir, "no .jpg, .jpeg or .png files in any class folder"));
        }
        Ok(out)
    }

    /// Whether `<root>/val` exists (the test split is optional).
    pub fn has_split(root: &Path, split: Split) -> bool {
        root.join(match split {
            Split::Train => "train",
            Split::Test => "val",
        })
        .is_dir()
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
