//! The images that `embed` and `score` read, as normalised f32
//! [N, 3, size, size]:
//! - a folder of JPEG/PNG photos (searched recursively, sorted by path),
//!   decoded and transformed exactly as the training pipeline's evaluation
//!   view of a photo dataset (`photo::decode` with `data.max_pixels`, then
//!   `photo::eval_view`: torchvision's Resize + CenterCrop rounding,
//!   Pillow's bicubic filter, the family's normalisation);
//! - a `.npy` of float32 NCHW images, already normalised (used as is);
//! - a `.npy` of uint8 NHWC images (the usual dump of a dataset), each
//!   given the same evaluation view; a 32 px model's 32×32 images are only
//!   scaled and normalised, as the in-memory datasets' evaluation view.
//!
//! Reading only; errors name the file. Which model they are fed to is the
//! caller's.

use crate::data::augment;
use crate::data::npy::{self, NpyArray};
use crate::data::photo::{self, Rgb};
use amdim_shared::spec::{AugmentSpec, JobSpec};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Input that cannot become images of the model's size.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InputError {
    pub path: String,
    pub message: String,
}

fn err(path: &Path, message: impl Into<String>) -> InputError {
    InputError {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The evaluation transform of a job: its image size, pixel cap and
/// augmentation settings (only `normalize` matters here).
#[derive(Clone, Debug)]
pub struct EvalTransform {
    pub size: usize,
    pub max_pixels: u64,
    pub augment: AugmentSpec,
}

impl EvalTransform {
    pub fn for_job(spec: &JobSpec) -> Self {
        Self {
            size: spec.model.image_size,
            max_pixels: spec.data.max_pixels,
            augment: spec.augment.clone(),
        }
    }

    /// The evaluation view of one decoded image, [3, size, size].
    pub fn view(&self, img: &Rgb) -> Vec<f32> {
        let (w, h) = (img.width as usize, img.height as usize);
        if self.size == 32 && (w, h) == (32, 32) {
            let plane = w * h;
            let mut chw = vec![0u8; 3 * plane];
            for (i, px) in img.pixels.chunks_exact(3).enumerate() {
                for (c, &v) in px.iter().enumerate() {
                    chw[c * plane + i] = v;
                }
            }
            return augment::eval_view(&chw, &self.augment);
        }
        photo::eval_view(img, self.size, self.augment.normalize)
    }
}

/// Images read from a folder or `.npy` file.
#[derive(Debug)]
pub struct Images {
    pub n: usize,
    /// [n, 3, size, size].
    pub pixels: Vec<f32>,
    /// The files' paths relative to the folder (empty for `.npy` input).
    pub names: Vec<String>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// Every image file below `dir`, sorted by path.
fn list_images(dir: &Path) -> Result<Vec<PathBuf>, InputError> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).map_err(|e| err(&folder, e.to_string()))? {
            let path = entry.map_err(|e| err(&folder, e.to_string()))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if is_image(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(err(dir, "no .jpg, .jpeg or .png files"));
    }
    Ok(found)
}

/// The evaluation views of every photo below `dir`.
fn read_folder(dir: &Path, t: &EvalTransform) -> Result<Images, InputError> {
    let files = list_images(dir)?;
    let views: Vec<Vec<f32>> = files
        .par_iter()
        .map(|f| {
            let bytes = std::fs::read(f).map_err(|e| err(f, e.to_string()))?;
            let img = photo::decode(&bytes, t.max_pixels).map_err(|e| err(f, e.to_string()))?;
            Ok(t.view(&img))
        })
        .collect::<Result<_, InputError>>()?;
    let names = files
        .iter()
        .map(|f| f.strip_prefix(dir).unwrap_or(f).to_string_lossy().replace('\\', "/"))
        .collect();
    Ok(Images {
        n: files.len(),
        pixels: views.concat(),
        names,
    })
}

/// The evaluation views of uint8 NHWC images.
fn from_nhwc(path: &Path, shape: &[usize], data: &[u8], t: &EvalTransform) -> Result<Images, InputError> {
    let [n, h, w, 3] = *shape else {
        return Err(err(
            path,
            format!("uint8 array of shape {shape:?}, expected images [N, H, W, 3] (NHWC, RGB)"),
        ));
    };
    if h == 0 || w == 0 {
        return Err(err(path, format!("uint8 images of {w}×{h} pixels")));
    }
    let per = h * w * 3;
    let views: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .map(|i| {
            t.view(&Rgb {
                width: w as u32,
                height: h as u32,
                pixels: data[i * per..(i + 1) * per].to_vec(),
            })
        })
        .collect();
    Ok(Images {
        n,
        pixels: views.concat(),
        names: Vec::new(),
    })
}

/// Images [N, 3, size, size] from an image folder or a `.npy` file.
pub fn read(input: &Path, t: &EvalTransform) -> Result<Images, InputError> {
    if input.is_dir() {
        return read_folder(input, t);
    }
    let size = t.size;
    let array = npy::read(input).map_err(|e| err(input, e.message))?;
    match array {
        NpyArray::F32 { shape, data } => {
            if shape.len() != 4 || shape[1] != 3 || shape[2] != size || shape[3] != size {
                return Err(err(
                    input,
                    format!("shape {shape:?}, expected [N, 3, {size}, {size}] float32 (model.image_size = {size})"),
                ));
            }
            Ok(Images {
                n: shape[0],
                pixels: data,
                names: Vec::new(),
            })
        }
        NpyArray::U8 { shape, data } => from_nhwc(input, &shape, &data, t),
        other => Err(err(
            input,
            format!(
                "{} array, expected float32 NCHW [N, 3, {size}, {size}] (normalised) or uint8 NHWC [N, H, W, 3] images",
                other.dtype_name()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transform(size: usize) -> EvalTransform {
        EvalTransform {
            size,
            max_pixels: 1 << 20,
            augment: AugmentSpec::default(),
        }
    }

    fn pattern(w: u32, h: u32) -> Rgb {
        Rgb {
            width: w,
            height: h,
            pixels: (0..w * h * 3).map(|i| (i * 37 % 253) as u8).collect(),
        }
    }

    #[test]
    fn a_32px_image_at_32px_is_the_in_memory_datasets_view_and_others_are_photos() {
        let t = transform(32);
        let img = pattern(32, 32);
        let v = t.view(&img);
        // Pixel (x 5, y 2), green channel, scaled and normalised as the CIFAR recipe.
        let g = img.pixels[(2 * 32 + 5) * 3 + 1] as f32 / 255.0;
        let want = (g - augment::CIFAR_MEAN[1]) / augment::CIFAR_STD[1];
        assert!((v[32 * 32 + 2 * 32 + 5] - want).abs() < 1e-6);
        // The photo path gives the same at this size (a 1:1 resample).
        assert_eq!(photo::eval_view(&img, 32, true), v);
        let big = pattern(90, 70);
        assert_eq!(transform(64).view(&big), photo::eval_view(&big, 64, true));
    }

    #[test]
    fn uint8_arrays_must_be_nhwc() {
        let t = transform(32);
        let data = vec![7u8; 2 * 3 * 32 * 32];
        let e = from_nhwc(Path::new("x.npy"), &[2, 3, 32, 32], &data, &t).unwrap_err().to_string();
        assert!(
            e.starts_with("x.npy: uint8 array of shape [2, 3, 32, 32], expected images [N, H, W, 3]"),
            "{e}"
        );
        let ok = from_nhwc(Path::new("x.npy"), &[2, 32, 32, 3], &data, &t).unwrap();
        assert_eq!((ok.n, ok.pixels.len()), (2, 2 * 3 * 32 * 32));
    }
}
