//! In-memory image datasets: Fashion-MNIST/MNIST IDX (replicated to 3
//! channels, zero-padded 28→32) and CIFAR-10/100 binary batches.
//!
//! Every error names the file and what is wrong with it.

use amdim_shared::rng::{KeyedRng, Stream};
use amdim_shared::spec::{DataFormat, DataSpec};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("dataset file {path}: {message}")]
    File { path: PathBuf, message: String },
    /// The store holding the dataset did not answer within the retry
    /// budget, or refused access: the run cannot go on.
    #[error("dataset object {object}: {message}")]
    Unreadable { object: String, message: String },
}

fn file_err(path: &Path, message: impl Into<String>) -> DataError {
    DataError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Images as u8 [N, 3, size, size] with optional labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub size: usize,
    pub pixels: Vec<u8>,
    pub labels: Option<Vec<u32>>,
    pub n_classes: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.pixels.len() / (3 * self.size * self.size)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pixels of sample `i`, [3, size, size].
    pub fn image(&self, i: usize) -> &[u8] {
        let n = 3 * self.size * self.size;
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Keeps only the first `n` samples (0 keeps all).
    pub fn truncate(mut self, n: usize) -> Self {
        if n > 0 && n < self.len() {
            self.pixels.truncate(n * 3 * self.size * self.size);
            if let Some(l) = self.labels.as_mut() {
                l.truncate(n);
            }
        }
        self
    }

    /// Loads one split of the dataset named by the job spec.
    pub fn load(spec: &DataSpec, split: Split) -> Result<Self, DataError> {
        let dir = Path::new(&spec.path);
        match spec.format {
            DataFormat::Idx => {
                let (img, lbl) = match split {
                    Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                    Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
                };
                let images = read_maybe_gz(&find_file(dir, img)?)?;
                let labels = read_maybe_gz(&find_file(dir, lbl)?)?;
                from_idx(&images, &labels, &find_file(dir, img)?)
            }
            DataFormat::Cifar10 | DataFormat::Cifar100 => {
                let hundred = spec.format == DataFormat::Cifar100;
                let names: Vec<String> = match (hundred, split) {
                    (false, Split::Train) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
                    (false, Split::Test) => vec!["test_batch.bin".into()],
                    (true, Split::Train) => vec!["train.bin".into()],
                    (true, Split::Test) => vec!["test.bin".into()],
                };
                let mut out = Dataset {
                    size: 32,
                    pixels: Vec::new(),
                    labels: Some(Vec::new()),
                    n_classes: if hundred { 100 } else { 10 },
                };
                for name in names {
                    let path = dir.join(&name);
                    let bytes = std::fs::read(&path).map_err(|e| file_err(&path, e.to_string()))?;
                    append_cifar(&mut out, &bytes, hundred, &path)?;
                }
                Ok(out)
            }
            DataFormat::Synthetic => Ok(synthetic(spec.synthetic_samples, 32, 10, split)),
            DataFormat::ImageFolder | DataFormat::Shards => {
                Err(file_err(dir, "photo datasets are read on demand (data::encoded), not loaded"))
            }
        }
    }
}

fn find_file(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    for candidate in [dir.join(format!("{stem}.gz")), dir.join(stem)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(file_err(
        &dir.join(format!("{stem}[.gz]")),
        "not found: on Debian/Ubuntu `apt-get install dataset-fashion-mnist` (or run scripts/get-fashion-mnist.sh); elsewhere `DEST=DIR scripts/get-fashion-mnist.sh` downloads the official files (http://fashion-mnist.s3-website.eu-central-1.amazonaws.com); then point data.path at that folder",
    ))
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| file_err(path, e.to_string()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| file_err(path, format!("gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses IDX images (magic 0x803) and labels (0x801) into 3×32×32 images.
pub fn from_idx(images: &[u8], labels: &[u8], path: &Path) -> Result<Dataset, DataError> {
    if images.len() < 16 || be_u32(images, 0) != 0x0000_0803 {
        return Err(file_err(path, "not an IDX image file (magic 0x00000803)"));
    }
    let (n, h, w) = (be_u32(images, 4) as usize, be_u32(images, 8) as usize, be_u32(images, 12) as usize);
    if h > 32 || w > 32 {
        return Err(file_err(path, format!("images are {h}×{w}; at most 32×32 supported")));
    }
    if images.len() != 16 + n * h * w {
        return Err(file_err(
            path,
            format!(
                "truncated: header says {n} images of {h}×{w} but the file has {} bytes",
                images.len()
            ),
        ));
    }
    if labels.len() < 8 || be_u32(labels, 0) != 0x0000_0801 || be_u32(labels, 4) as usize != n || labels.len() != 8 + n {
        return Err(file_err(
            path,
            "label file does not match the image file (magic 0x00000801, same count)",
        ));
    }
    let (top, left) = ((32 - h) / 2, (32 - w) / 2);
    let mut pixels = vec![0u8; n * 3 * 32 * 32];
    for i in 0..n {
        let src = &images[16 + i * h * w..16 + (i + 1) * h * w];
        for c in 0..3 {
            for y in 0..h {
                let dst = ((i * 3 + c) * 32 + top + y) * 32 + left;
                pixels[dst..dst + w].copy_from_slice(&src[y * w..(y + 1) * w]);
            }
        }
    }
    let labels: Vec<u32> = labels[8..].iter().map(|&l| l as u32).collect();
    let n_classes = labels.iter().max().map_or(0, |&m| m as usize + 1).max(10);
    Ok(Dataset {
        size: 32,
        pixels,
        labels: Some(labels),
        n_classes,
    })
}

fn append_cifar(out: &mut Dataset, bytes: &[u8], hundred: bool, path: &Path) -> Result<(), DataError> {
    let label_bytes = if hundred { 2 } else { 1 };
    let record = label_bytes + 3072;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(file_err(
            path,
            format!("size {} is not a multiple of the {record}-byte CIFAR record", bytes.len()),
        ));
    }
    let labels = out.labels.get_or_insert_with(Vec::new);
    for rec in bytes.chunks_exact(record) {
        let label = rec[label_bytes - 1] as u32;
        if label as usize >= out.n_classes {
            return Err(file_err(path, format!("label {label} out of range for {} classes", out.n_classes)));
        }
        labels.push(label);
        out.pixels.extend_from_slice(&rec[label_bytes..]);
    }
    Ok(())
}

/// Random images with random labels: for benchmarks and smoke tests.
pub fn synthetic(n: usize, size: usize, n_classes: usize, split: Split) -> Dataset {
    let mut rng = KeyedRng::new(Stream::Synthetic, &[split as u64, n as u64]);
    let pixels = (0..n * 3 * size * size).map(|_| rng.below(256) as u8).collect();
    let labels = (0..n).map(|_| rng.below(n_classes as u64) as u32).collect();
    Dataset {
        size,
        pixels,
        labels: Some(labels),
        n_classes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx_images(n: usize, h: usize, w: usize) -> Vec<u8> {
        let mut v = vec![0, 0, 8, 3];
        for x in [n, h, w] {
            v.extend_from_slice(&(x as u32).to_be_bytes());
        }
        v.extend((0..n * h * w).map(|i| (i % 251) as u8));
        v
    }

    #[test]
    fn idx_is_padded_to_32_and_replicated() {
        let imgs = idx_images(2, 28, 28);
        let mut lbl = vec![0, 0, 8, 1, 0, 0, 0, 2];
        lbl.extend([3, 7]);
        let d = from_idx(&imgs, &lbl, Path::new("x")).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.labels, Some(vec![3, 7]));
        let im = d.image(1);
        assert_eq!(im[0], 0, "corner is padding");
        let first_pixel_of_second = imgs[16 + 784];
        for c in 0..3 {
            assert_eq!(im[(c * 32 + 2) * 32 + 2], first_pixel_of_second);
        }
    }

    #[test]
    fn truncated_idx_names_the_problem() {
        let mut imgs = idx_images(2, 28, 28);
        imgs.pop();
        let lbl = vec![0, 0, 8, 1, 0, 0, 0, 2, 1, 1];
        let e = from_idx(&imgs, &lbl, Path::new("/data/train.idx")).unwrap_err().to_string();
        assert!(e.contains("/data/train.idx") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn cifar_records_parse() {
        let mut bytes = vec![4u8];
        bytes.extend((0..3072).map(|i| (i % 256) as u8));
        let mut d = Dataset {
            size: 32,
            pixels: Vec::new(),
            labels: None,
            n_classes: 10,
        };
        append_cifar(&mut d, &bytes, false, Path::new("b")).unwrap();
        assert_eq!(d.labels, Some(vec![4]));
        assert_eq!(d.image(0)[1024], 0);
        assert_eq!(d.image(0)[5], 5);
        assert!(append_cifar(&mut d, &bytes[..100], false, Path::new("b")).is_err());
    }
}
