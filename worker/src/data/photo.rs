//! Photos (JPEG/PNG files) to training and evaluation views, docs/model.md §5.
//!
//! Owns decoding with a decompression-bomb cap, the crop geometry of
//! torchvision's RandomResizedCrop and Resize + CenterCrop (pure functions),
//! bicubic resampling (Pillow's filter, a = −0.5, through SIMD
//! `fast_image_resize`), and the per-family view recipe. Randomness comes only
//! from the sample's keyed stream (seed, epoch, sample index). No file or
//! network access here: callers hand in bytes.

use crate::data::augment::{self, CIFAR_MEAN, CIFAR_STD, colour};
use amdim_shared::rng::{KeyedRng, Stream};
use amdim_shared::spec::AugmentSpec;
use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use std::io::Cursor;

/// Why a file could not become an image.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("empty file")]
    Empty,
    #[error("not a JPEG or PNG image")]
    UnknownFormat,
    #[error("{width}×{height} pixels exceeds data.max_pixels = {max_pixels}")]
    TooLarge { width: u32, height: u32, max_pixels: u64 },
    #[error("cannot decode: {0}")]
    Corrupt(String),
}

/// A decoded RGB image, 8 bits per channel, interleaved (HWC).
#[derive(Clone, Debug)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// Decodes JPEG or PNG bytes of any colour type (grayscale, palette, 16-bit,
/// CMYK, alpha) to 8-bit RGB; refuses images above `max_pixels` before
/// allocating them.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Rgb, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let reader = || {
        image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| DecodeError::Corrupt(e.to_string()))
    };
    let probe = reader()?;
    match probe.format() {
        Some(image::ImageFormat::Jpeg) => {
            // Decoders fill a cut-off scan with gray instead of failing.
            let tail = &bytes[bytes.len().saturating_sub(64 * 1024)..];
            // From the end: the marker is almost always the last two bytes.
            if !tail.windows(2).rev().any(|w| w[0] == 0xFF && w[1] == 0xD9) {
                return Err(DecodeError::Corrupt("truncated JPEG: no end-of-image marker".into()));
            }
        }
        Some(image::ImageFormat::Png) => {}
        _ => return Err(DecodeError::UnknownFormat),
    }
    let (width, height) = probe.into_dimensions().map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt(format!("{width}×{height} image")));
    }
    if width as u64 * height as u64 > max_pixels {
        return Err(DecodeError::TooLarge { width, height, max_pixels });
    }
    let mut decoder = reader()?;
    let mut limits = image::Limits::default();
    // RGBA at 16 bits per channel is the largest buffer a decoder may need.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    decoder.limits(limits);
    let img = decoder.decode().map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let rgb = img.into_rgb8();
    Ok(Rgb {
        width,
        height,
        pixels: rgb.into_raw(),
    })
}

/// A source rectangle, in pixels (left, top, width, height).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at an area
/// fraction in `scale` and a log-uniform aspect ratio in `ratio`, then the
/// central crop clamped to the ratio range.
pub fn random_resized_crop(width: u32, height: u32, scale: (f64, f64), ratio: (f64, f64), rng: &mut KeyedRng) -> CropBox {
    let (w, h) = (width as f64, height as f64);
    let area = w * h;
    for _ in 0..10 {
        let target = area * rng.uniform(scale.0, scale.1);
        let aspect = rng.uniform(ratio.0.ln(), ratio.1.ln()).exp();
        let cw = (target * aspect).sqrt().round();
        let ch = (target / aspect).sqrt().round();
        if cw > 0.0 && cw <= w && ch > 0.0 && ch <= h {
            let top = rng.below((h - ch) as u64 + 1) as f64;
            let left = rng.below((w - cw) as u64 + 1) as f64;
            return CropBox {
                left,
                top,
                width: cw,
                height: ch,
            };
        }
    }
    let in_ratio = w / h;
    let (cw, ch) = if in_ratio < ratio.0 {
        (w, (w / ratio.0).round())
    } else if in_ratio > ratio.1 {
        ((h * ratio.1).round(), h)
    } else {
        (w, h)
    };
    CropBox {
        left: ((w - cw) / 2.0).floor(),
        top: ((h - ch) / 2.0).floor(),
        width: cw,
        height: ch,
    }
}

/// torchvision's Resize(`resize`) (shorter side to `resize`, the other
/// truncated) followed by CenterCrop(`crop`), as the source box of the crop.
pub fn resize_center_crop(width: u32, height: u32, resize: u32, crop: u32) -> CropBox {
    let (w, h) = (width as f64, height as f64);
    let (ow, oh) = if width <= height {
        (resize as f64, (resize as f64 * h / w).trunc())
    } else {
        ((resize as f64 * w / h).trunc(), resize as f64)
    };
    let c = crop as f64;
    // Python's round(): ties to even.
    let top = ((oh - c) / 2.0).round_ties_even();
    let left = ((ow - c) / 2.0).round_ties_even();
    let (sx, sy) = (w / ow, h / oh);
    CropBox {
        left: left * sx,
        top: top * sy,
        width: c * sx,
        height: c * sy,
    }
}

/// Bicubic resampling of `bx` of the image to size×size, RGB HWC.
///
/// A whole-pixel box is cut out first, so its border pixels are not mixed
/// with pixels outside it (Pillow's crop-then-resize, as torchvision's
/// RandomResizedCrop); a fractional box resamples the image directly
/// (Pillow's resize-then-crop).
pub fn resample(img: &Rgb, bx: CropBox, size: u32) -> Vec<u8> {
    let mut dst = Image::new(size, size, PixelType::U8x3);
    let alg = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    let mut resizer = Resizer::new();
    let whole = bx.left.fract() == 0.0 && bx.top.fract() == 0.0 && bx.width.fract() == 0.0 && bx.height.fract() == 0.0;
    // Dimensions and boxes were checked by `decode` and the box functions;
    // a failure here is a bug, reported as a black image rather than a crash.
    let result = ImageRef::new(img.width, img.height, &img.pixels, PixelType::U8x3)
        .map_err(|e| e.to_string())
        .and_then(|src| {
            if whole {
                let cropped =
                    CroppedImage::new(&src, bx.left as u32, bx.top as u32, bx.width as u32, bx.height as u32).map_err(|e| e.to_string())?;
                resizer.resize(&cropped, &mut dst, &alg).map_err(|e| e.to_string())
            } else {
                let opts = alg.crop(bx.left, bx.top, bx.width, bx.height);
                resizer.resize(&src, &mut dst, &opts).map_err(|e| e.to_string())
            }
        });
    if let Err(e) = result {
        tracing::error!(error = %e, ?bx, width = img.width, height = img.height, "resampling failed");
    }
    dst.into_vec()
}

/// v / 255 for every byte v, as torchvision's ToTensor computes it.
const UNIT: [f32; 256] = {
    let mut table = [0.0; 256];
    let mut v = 0;
    while v < 256 {
        table[v] = v as f32 / 255.0;
        v += 1;
    }
    table
};

/// RGB HWC u8 → f32 CHW in [0, 1], mirrored left–right if asked.
fn to_chw(hwc: &[u8], size: usize, flip: bool) -> Vec<f32> {
    let plane = size * size;
    let mut out = vec![0.0; 3 * plane];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (y, row) in hwc.chunks_exact(3 * size).take(size).enumerate() {
        let (r, g, b) = (&mut r[y * size..][..size], &mut g[y * size..][..size], &mut b[y * size..][..size]);
        for (x, px) in row.chunks_exact(3).enumerate() {
            let dx = if flip { size - 1 - x } else { x };
            r[dx] = UNIT[usize::from(px[0])];
            g[dx] = UNIT[usize::from(px[1])];
            b[dx] = UNIT[usize::from(px[2])];
        }
    }
    out
}

/// Per-family constants of docs/model.md §5.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Family {
    pub size: u32,
    /// Resize before the evaluation centre crop.
    pub eval_resize: u32,
    pub hue: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Family {
    pub fn for_size(size: usize) -> Family {
        match size {
            32 => Family {
                size: 32,
                eval_resize: 32,
                hue: 0.2,
                mean: CIFAR_MEAN,
                std: CIFAR_STD,
            },
            64 => Family {
                size: 64,
                eval_resize: 70,
                hue: 0.2,
                mean: [0.43, 0.42, 0.39],
                std: [0.27, 0.26, 0.27],
            },
            _ => Family {
                size: 128,
                eval_resize: 146,
                hue: 0.1,
                mean: [0.485, 0.456, 0.406],
                std: [0.229, 0.224, 0.225],
            },
        }
    }
}

pub const CROP_SCALE: (f64, f64) = (0.3, 1.0);
pub const CROP_RATIO: (f64, f64) = (0.7, 1.4);

/// The two training views of one decoded photo for `size` 64 or 128, keyed
/// by (seed, epoch, sample index). A 32 px family resizes the photo to 32×32
/// and applies the CIFAR recipe.
pub fn two_views(img: &Rgb, size: usize, aug: &AugmentSpec, seed: u64, epoch: u64, sample: u64) -> (Vec<f32>, Vec<f32>) {
    let family = Family::for_size(size);
    if family.size == 32 {
        let small = to_chw(&resample(img, full_box(img), 32), 32, false);
        let bytes: Vec<u8> = small.iter().map(|v| (v * 255.0).round() as u8).collect();
        return augment::two_views(&bytes, aug, seed, epoch, sample);
    }
    let mut rng = KeyedRng::new(Stream::Augment, &[seed, epoch, sample]);
    // The shared flip mirrors the photo; cropping box b of the mirror equals
    // mirroring the crop of b reflected about the vertical axis.
    let flip = aug.flip && rng.bernoulli(0.5);
    let mut view = || {
        let bx = if aug.crop {
            random_resized_crop(img.width, img.height, CROP_SCALE, CROP_RATIO, &mut rng)
        } else {
            resize_center_crop(img.width, img.height, family.eval_resize, family.size)
        };
        let bx = if flip {
            CropBox {
                left: img.width as f64 - bx.left - bx.width,
                ..bx
            }
        } else {
            bx
        };
        let mut v = to_chw(&resample(img, bx, family.size), family.size as usize, flip);
        colour(&mut v, aug, family.hue, &mut rng);
        if aug.normalize {
            augment::normalize(&mut v, family.mean, family.std);
        }
        v
    };
    let v1 = view();
    let v2 = view();
    (v1, v2)
}

fn full_box(img: &Rgb) -> CropBox {
    CropBox {
        left: 0.0,
        top: 0.0,
        width: img.width as f64,
        height: img.height as f64,
    }
}

/// The evaluation view (docs/model.md §5): 32 — resize to 32×32; 64 — resize 70,
/// centre crop 64; 128 — resize 146, centre crop 128; then normalisation.
pub fn eval_view(img: &Rgb, size: usize, normalize: bool) -> Vec<f32> {
    let family = Family::for_size(size);
    let bx = if family.size == 32 {
        full_box(img)
    } else {
        resize_center_crop(img.width, img.height, family.eval_resize, family.size)
    };
    let mut v = to_chw(&resample(img, bx, family.size), family.size as usize, false);
    if normalize {
        augment::normalize(&mut v, family.mean, family.std);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: image::DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn every_colour_type_decodes_to_rgb_and_bad_files_are_named_errors() {
        let gray = image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(5, 4, image::Luma([200])));
        let rgb16 = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(3, 2, image::Rgb([65535u16, 0, 32768])));
        let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(2, 2, image::Rgba([10, 20, 30, 0])));
        let g = decode(&png(gray), 1 << 20).unwrap();
        assert_eq!((g.width, g.height, &g.pixels[..3]), (5, 4, &[200u8, 200, 200][..]));
        let c = decode(&png(rgb16), 1 << 20).unwrap();
        assert_eq!(&c.pixels[..3], &[255, 0, 128]);
        let a = decode(&png(rgba), 1 << 20).unwrap();
        assert_eq!(&a.pixels[..3], &[10, 20, 30]);
        assert_eq!(decode(&[], 1 << 20).unwrap_err(), DecodeError::Empty);
        assert_eq!(decode(b"hello, not an image", 1 << 20).unwrap_err(), DecodeError::UnknownFormat);
        let big = png(image::DynamicImage::ImageLuma8(image::GrayImage::new(100, 100)));
        assert!(matches!(
            decode(&big, 9_999).unwrap_err(),
            DecodeError::TooLarge {
                width: 100,
                height: 100,
                ..
            }
        ));
        let mut truncated = png(image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([x as u8 * 3, y as u8 * 3, 7])
        })));
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(decode(&truncated, 1 << 20).unwrap_err(), DecodeError::Corrupt(_)));
    }

    #[test]
    fn random_resized_crop_stays_inside_and_respects_scale_and_ratio() {
        let mut rng = KeyedRng::new(Stream::Synthetic, &[3]);
        for (w, h) in [(500, 375), (375, 500), (64, 64), (1000, 100)] {
            for _ in 0..200 {
                let b = random_resized_crop(w, h, CROP_SCALE, CROP_RATIO, &mut rng);
                assert!(
                    b.left >= 0.0 && b.top >= 0.0 && b.left + b.width <= w as f64 && b.top + b.height <= h as f64,
                    "{b:?} in {w}×{h}"
                );
                assert!(b.width >= 1.0 && b.height >= 1.0);
                let frac = b.width * b.height / (w as f64 * h as f64);
                let ratio = b.width / b.height;
                let fallback = b.width == w as f64 || b.height == h as f64;
                assert!(
                    fallback || (frac > 0.28 && frac < 1.02 && ratio > 0.68 && ratio < 1.44),
                    "{b:?} frac {frac} ratio {ratio}"
                );
            }
        }
        // A 10:1 strip can never fit the ratio range: the central crop at ratio 1.4.
        let mut rng = KeyedRng::new(Stream::Synthetic, &[4]);
        let b = random_resized_crop(1000, 10, (0.9, 1.0), CROP_RATIO, &mut rng);
        assert_eq!(
            b,
            CropBox {
                left: 493.0,
                top: 0.0,
                width: 14.0,
                height: 10.0
            }
        );
    }

    #[test]
    fn resize_center_crop_follows_torchvision_rounding() {
        // 500×375 → Resize(146): 194×146 (194.67 truncated); CenterCrop(128): left round(33) = 33, top 9.
        let b = resize_center_crop(500, 375, 146, 128);
        let sx = 500.0 / 194.0;
        let sy = 375.0 / 146.0;
        assert!((b.left - 33.0 * sx).abs() < 1e-9 && (b.top - 9.0 * sy).abs() < 1e-9);
        assert!((b.width - 128.0 * sx).abs() < 1e-9 && (b.height - 128.0 * sy).abs() < 1e-9);
        // Odd margin: 70 → crop 64 of 71 wide → round(3.5) = 4 (ties to even).
        let b = resize_center_crop(71, 70, 70, 64);
        assert!((b.left - 4.0 * 71.0 / 71.0).abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn views_depend_only_on_seed_epoch_and_sample() {
        let img = Rgb {
            width: 90,
            height: 70,
            pixels: (0..90 * 70 * 3).map(|i| (i * 7 % 251) as u8).collect(),
        };
        let aug = AugmentSpec::default();
        let a = two_views(&img, 64, &aug, 1, 2, 3);
        let b = two_views(&img, 64, &aug, 1, 2, 3);
        assert_eq!(a, b);
        assert_eq!(a.0.len(), 3 * 64 * 64);
        assert_ne!(a, two_views(&img, 64, &aug, 1, 2, 4));
        assert_ne!(a.0, a.1, "the two views are drawn independently");
    }
}
