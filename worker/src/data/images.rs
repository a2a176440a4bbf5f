//! Image folders for `embed`: decode every JPEG/PNG of a folder (sorted by
//! name), apply the evaluation transform of docs/model.md §5 (32: resize to 32×32;
//! 64: resize 70, centre crop 64; 128: resize 146, centre crop 128; bicubic)
//! and normalise. Errors name the file.

use crate::data::augment::{CIFAR_MEAN, CIFAR_STD};
use image::imageops::FilterType;
use std::path::{Path, PathBuf};

/// Mean/std of the normalisation of each family (docs/model.md §5).
pub fn normalisation(size: usize) -> ([f32; 3], [f32; 3]) {
    match size {
        32 => (CIFAR_MEAN, CIFAR_STD),
        64 => ([0.43, 0.42, 0.39], [0.27, 0.26, 0.27]),
        _ => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    }
}

/// Files of a folder with an image extension, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no .jpg, .jpeg or .png files", dir.display()));
    }
    Ok(files)
}

/// Decodes and transforms one image to normalised f32 [3, size, size].
pub fn eval_image(path: &Path, size: usize) -> Result<Vec<f32>, String> {
    let img = image::open(path).map_err(|e| format!("{}: {e}", path.display()))?.to_rgb8();
    let img = if size == 32 {
        image::imageops::resize(&img, 32, 32, FilterType::CatmullRom)
    } else {
        let resize_to = if size == 64 { 70 } else { 146 };
        let (w, h) = img.dimensions();
        let (nw, nh) = if w < h {
            (resize_to, (h as u64 * resize_to as u64 / w as u64) as u32)
        } else {
            ((w as u64 * resize_to as u64 / h as u64) as u32, resize_to)
        };
        let resized = image::imageops::resize(&img, nw, nh, FilterType::CatmullRom);
        let (left, top) = ((nw - size as u32) / 2, (nh - size as u32) / 2);
        image::imageops::crop_imm(&resized, left, top, size as u32, size as u32).to_image()
    };
    let (mean, std) = normalisation(size);
    let plane = size * size;
    let mut out = vec![0.0; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    Ok(out)
}
