//! The 32 px augmentations of docs/model.md §5, and the colour stage every family
//! shares, on f32 CHW pixels in [0, 1] (colour functions take any size).
//!
//! One horizontal flip (p 0.5) per image, shared by both views; then per view:
//! translation by up to ±4 px with reflect padding (p 0.8), colour jitter
//! (p 0.8; brightness, contrast, saturation `jitter_strength` (0.4 by
//! default), hue 0.2, in a random order as torchvision's ColorJitter), random
//! grayscale (p 0.25), normalisation. The colour maths follows torchvision's
//! tensor definitions. All randomness comes from the sample's keyed stream
//! (seed, epoch, sample index).

use amdim_shared::rng::{KeyedRng, Stream};
use amdim_shared::spec::AugmentSpec;

pub const SIZE: usize = 32;
const PLANE: usize = SIZE * SIZE;
pub const CIFAR_MEAN: [f32; 3] = [125.3 / 255.0, 123.0 / 255.0, 113.9 / 255.0];
pub const CIFAR_STD: [f32; 3] = [63.0 / 255.0, 62.1 / 255.0, 66.7 / 255.0];
const MAX_TRANSLATE: i64 = 4;

/// ITU-R 601 luma as torchvision's `rgb_to_grayscale`.
pub fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.2989 * r + 0.587 * g + 0.114 * b
}

/// Index into 0..n with reflect padding (edge not repeated).
fn reflect(i: i64, n: i64) -> usize {
    let r = if i < 0 {
        -i
    } else if i >= n {
        2 * n - 2 - i
    } else {
        i
    };
    r as usize
}

/// out(x, y) = in(x − tx, y − ty), reflected at the borders.
pub fn translate(img: &[f32], tx: i64, ty: i64) -> Vec<f32> {
    let n = SIZE as i64;
    let mut out = vec![0.0; img.len()];
    for c in 0..3 {
        for y in 0..SIZE {
            let sy = reflect(y as i64 - ty, n);
            for x in 0..SIZE {
                let sx = reflect(x as i64 - tx, n);
                out[c * PLANE + y * SIZE + x] = img[c * PLANE + sy * SIZE + sx];
            }
        }
    }
    out
}

#[inline(always)]
pub fn adjust_brightness(img: &mut [f32], factor: f32) {
    img.iter_mut().for_each(|v| *v = (*v * factor).clamp(0.0, 1.0));
}

#[inline(always)]
pub fn adjust_contrast(img: &mut [f32], factor: f32) {
    let plane = img.len() / 3;
    let mean = (0..plane).map(|i| luma(img[i], img[plane + i], img[2 * plane + i])).sum::<f32>() / plane as f32;
    img.iter_mut()
        .for_each(|v| *v = (factor * *v + (1.0 - factor) * mean).clamp(0.0, 1.0));
}

#[inline(always)]
pub fn adjust_saturation(img: &mut [f32], factor: f32) {
    let (r, g, b) = planes(img);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let gray = (1.0 - factor) * luma(*r, *g, *b);
        *r = (factor * *r + gray).clamp(0.0, 1.0);
        *g = (factor * *g + gray).clamp(0.0, 1.0);
        *b = (factor * *b + gray).clamp(0.0, 1.0);
    }
}

/// The R, G and B planes of a [3, H, W] image.
fn planes(img: &mut [f32]) -> (&mut [f32], &mut [f32], &mut [f32]) {
    let plane = img.len() / 3;
    let (r, rest) = img.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    (r, g, b)
}

/// x in [−1, 2) wrapped into [0, 1) (what `rem_euclid(1.0)` gives there,
/// without a libm call).
#[inline(always)]
fn wrap_unit(x: f32) -> f32 {
    if x < 0.0 {
        x + 1.0
    } else if x >= 1.0 {
        x - 1.0
    } else {
        x
    }
}

/// RGB → HSV with h, s, v in [0, 1] (torchvision's `_rgb2hsv`). Written
/// without branches (every `if` is a select) so that `adjust_hue`'s loop
/// runs on SIMD lanes.
#[inline(always)]
pub fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let cr = maxc - minc;
    let s = if maxc > 0.0 { cr / maxc } else { 0.0 };
    // A gray pixel (cr = 0) gets rc = gc = bc = 0, hence hue 0.
    let inv = if cr > 0.0 { 1.0 / cr } else { 0.0 };
    let rc = (maxc - r) * inv;
    let gc = (maxc - g) * inv;
    let bc = (maxc - b) * inv;
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    // h is in [−1, 5]: one sixth of it is in [−1/6, 5/6].
    (wrap_unit(h * (1.0 / 6.0)), s, maxc)
}

/// HSV → RGB (torchvision's `_hsv2rgb`), for h in [0, 1], branch-free like
/// `rgb_to_hsv`. The sector is counted by comparisons, not by a float →
/// int conversion; h = 1 falls in sector 5 with f = 1, which gives the same
/// colour as torchvision's sector 6 ≡ 0 with f = 0.
#[inline(always)]
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let sector = if h6 >= 5.0 {
        5.0
    } else if h6 >= 4.0 {
        4.0
    } else if h6 >= 3.0 {
        3.0
    } else if h6 >= 2.0 {
        2.0
    } else if h6 >= 1.0 {
        1.0
    } else {
        0.0
    };
    let f = h6 - sector;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    // Sectors 0..5 give (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q).
    let r = if sector == 0.0 || sector == 5.0 {
        v
    } else if sector == 1.0 {
        q
    } else if sector == 4.0 {
        t
    } else {
        p
    };
    let g = if sector == 1.0 || sector == 2.0 {
        v
    } else if sector == 0.0 {
        t
    } else if sector == 3.0 {
        q
    } else {
        p
    };
    let b = if sector == 3.0 || sector == 4.0 {
        v
    } else if sector == 2.0 {
        t
    } else if sector == 5.0 {
        q
    } else {
        p
    };
    (r, g, b)
}

#[inline(always)]
pub fn adjust_hue(img: &mut [f32], shift: f32) {
    let (r, g, b) = planes(img);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let (h, s, v) = rgb_to_hsv(*r, *g, *b);
        (*r, *g, *b) = hsv_to_rgb(wrap_unit(h + shift), s, v);
    }
}

#[inline(always)]
pub fn to_grayscale(img: &mut [f32]) {
    let plane = img.len() / 3;
    for i in 0..plane {
        let g = luma(img[i], img[plane + i], img[2 * plane + i]);
        for c in 0..3 {
            img[c * plane + i] = g;
        }
    }
}

/// (x − mean_c) / std_c per channel.
pub fn normalize(img: &mut [f32], mean: [f32; 3], std: [f32; 3]) {
    let plane = img.len() / 3;
    for c in 0..3 {
        for v in &mut img[c * plane..(c + 1) * plane] {
            *v = (*v - mean[c]) / std[c];
        }
    }
}

/// The colour stage of one view (docs/model.md §5): with p 0.8 ColorJitter(s, s, s,
/// `hue`) with s = `jitter_strength` (0.4 by default) in a random order (as
/// torchvision), then grayscale with p 0.25.
pub fn colour(img: &mut [f32], aug: &AugmentSpec, hue: f64, rng: &mut KeyedRng) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2 (checked just above).
        return unsafe { colour_avx2(img, aug, hue, rng) };
    }
    colour_portable(img, aug, hue, rng)
}

/// The same loops compiled for 8-lane AVX2: only the vector width changes
/// (no FMA contraction, sums stay sequential), so the pixels are the same
/// bits as the portable build's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn colour_avx2(img: &mut [f32], aug: &AugmentSpec, hue: f64, rng: &mut KeyedRng) {
    colour_portable(img, aug, hue, rng)
}

#[inline(always)]
fn colour_portable(img: &mut [f32], aug: &AugmentSpec, hue: f64, rng: &mut KeyedRng) {
    if aug.color_jitter && rng.bernoulli(0.8) {
        let order = rng.permutation(4);
        let (low, high) = (1.0 - aug.jitter_strength, 1.0 + aug.jitter_strength);
        let brightness = rng.uniform(low, high) as f32;
        let contrast = rng.uniform(low, high) as f32;
        let saturation = rng.uniform(low, high) as f32;
        let hue = rng.uniform(-hue, hue) as f32;
        for op in order {
            match op {
                0 => adjust_brightness(img, brightness),
                1 => adjust_contrast(img, contrast),
                2 => adjust_saturation(img, saturation),
                _ => adjust_hue(img, hue),
            }
        }
    }
    if aug.grayscale && rng.bernoulli(0.25) {
        to_grayscale(img);
    }
}

/// u8 [3, 32, 32] → f32 in [0, 1], flipped left–right if asked.
fn to_unit(img: &[u8], flip: bool) -> Vec<f32> {
    let mut out = vec![0.0; 3 * PLANE];
    for c in 0..3 {
        for y in 0..SIZE {
            for x in 0..SIZE {
                let sx = if flip { SIZE - 1 - x } else { x };
                out[c * PLANE + y * SIZE + x] = img[c * PLANE + y * SIZE + sx] as f32 / 255.0;
            }
        }
    }
    out
}

/// One view from an already flipped image.
fn view(base: &[f32], aug: &AugmentSpec, rng: &mut KeyedRng) -> Vec<f32> {
    let mut img = if aug.translate && rng.bernoulli(0.8) {
        let tx = rng.below(2 * MAX_TRANSLATE as u64 + 1) as i64 - MAX_TRANSLATE;
        let ty = rng.below(2 * MAX_TRANSLATE as u64 + 1) as i64 - MAX_TRANSLATE;
        translate(base, tx, ty)
    } else {
        base.to_vec()
    };
    colour(&mut img, aug, 0.2, rng);
    if aug.normalize {
        normalize(&mut img, CIFAR_MEAN, CIFAR_STD);
    }
    img
}

/// The two training views of one sample, keyed by (seed, epoch, sample index).
pub fn two_views(img: &[u8], aug: &AugmentSpec, seed: u64, epoch: u64, sample: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = KeyedRng::new(Stream::Augment, &[seed, epoch, sample]);
    let flip = aug.flip && rng.bernoulli(0.5);
    let base = to_unit(img, flip);
    let v1 = view(&base, aug, &mut rng);
    let v2 = view(&base, aug, &mut rng);
    (v1, v2)
}

/// The evaluation transform for 32 px: normalisation only.
pub fn eval_view(img: &[u8], aug: &AugmentSpec) -> Vec<f32> {
    let mut v = to_unit(img, false);
    if aug.normalize {
        normalize(&mut v, CIFAR_MEAN, CIFAR_STD);
    }
    v
}

/// The 5→5 source locations (0..25) of one sample in view 1 and view 2.
pub fn source_locations(seed: u64, epoch: u64, sample: u64) -> (usize, usize) {
    let mut rng = KeyedRng::new(Stream::SourceLocation, &[seed, epoch, sample]);
    (rng.below(25) as usize, rng.below(25) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(r: f32, g: f32, b: f32) -> Vec<f32> {
        let mut v = vec![r; PLANE];
        v.extend(vec![g; PLANE]);
        v.extend(vec![b; PLANE]);
        v
    }

    #[test]
    fn the_avx2_colour_stage_gives_the_portable_bits() {
        let aug = AugmentSpec::default();
        for sample in 0..200u64 {
            let mut pixels = KeyedRng::new(Stream::Synthetic, &[9, sample]);
            // 130×128: a length that leaves a remainder after the vector lanes.
            let img: Vec<f32> = (0..3 * 130 * 128).map(|_| pixels.uniform(0.0, 1.0) as f32).collect();
            let (mut fast, mut portable) = (img.clone(), img);
            colour(&mut fast, &aug, 0.1, &mut KeyedRng::new(Stream::Augment, &[1, sample]));
            colour_portable(&mut portable, &aug, 0.1, &mut KeyedRng::new(Stream::Augment, &[1, sample]));
            let same = fast.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "sample {sample}: the two builds of the colour stage differ");
        }
    }

    #[test]
    fn jitter_strength_bounds_the_brightness_factor() {
        // On a solid gray image only brightness acts (contrast blends towards
        // the image's own mean, saturation and hue leave gray alone), so each
        // jittered pixel is 0.5 times the drawn brightness factor.
        let factors = |strength: f64| -> Vec<f32> {
            let aug = AugmentSpec {
                jitter_strength: strength,
                grayscale: false,
                ..AugmentSpec::default()
            };
            (0..400u64)
                .map(|sample| {
                    let mut img = solid(0.5, 0.5, 0.5);
                    colour(&mut img, &aug, 0.2, &mut KeyedRng::new(Stream::Augment, &[3, sample]));
                    img[7] / 0.5
                })
                .collect()
        };
        let within = |f: &[f32], low: f32, high: f32| f.iter().all(|&x| (low - 1e-3..=high + 1e-3).contains(&x));
        let default = factors(0.4);
        assert!(within(&default, 0.6, 1.4));
        assert!(default.iter().any(|&x| x < 0.7) && default.iter().any(|&x| x > 1.3));
        let strong = factors(0.8);
        assert!(within(&strong, 0.2, 1.8));
        assert!(strong.iter().any(|&x| x < 0.5) && strong.iter().any(|&x| x > 1.5));
        assert!(factors(0.0).iter().all(|&x| (x - 1.0).abs() < 1e-6));
    }

    #[test]
    fn colour_ops_match_hand_computed_torchvision_pixels() {
        // brightness 1.5 on (0.2, 0.5, 0.8) → (0.3, 0.75, 1.0 clamped)
        let mut img = solid(0.2, 0.5, 0.8);
        adjust_brightness(&mut img, 1.5);
        assert!((img[0] - 0.3).abs() < 1e-6 && (img[PLANE] - 0.75).abs() < 1e-6 && img[2 * PLANE] == 1.0);
        // saturation 0 → luma 0.2989·0.2 + 0.587·0.5 + 0.114·0.8 = 0.44448
        let mut img = solid(0.2, 0.5, 0.8);
        adjust_saturation(&mut img, 0.0);
        for c in 0..3 {
            assert!((img[c * PLANE] - 0.44448).abs() < 1e-5);
        }
        // contrast 0.5 on a two-colour image: blend with the mean luma
        let mut img = solid(0.0, 0.0, 0.0);
        for c in 0..3 {
            for i in 0..PLANE / 2 {
                img[c * PLANE + i] = 1.0;
            }
        }
        adjust_contrast(&mut img, 0.5);
        assert!(
            (img[0] - 0.75).abs() < 1e-4 && (img[PLANE - 1] - 0.25).abs() < 1e-4,
            "{} {}",
            img[0],
            img[PLANE - 1]
        );
        // hue: pure red shifted by 1/3 turn is pure green
        let mut img = solid(1.0, 0.0, 0.0);
        adjust_hue(&mut img, 1.0 / 3.0);
        assert!(img[0].abs() < 1e-5 && (img[PLANE] - 1.0).abs() < 1e-5 && img[2 * PLANE].abs() < 1e-5);
        // Hue shifts that wrap around in both directions.
        for (shift, expected) in [
            (-0.5f32, (0.0f32, 1.0f32, 1.0f32)),
            (0.5, (0.0, 1.0, 1.0)),
            (-1.0 / 3.0, (0.0, 0.0, 1.0)),
        ] {
            let mut img = solid(1.0, 0.0, 0.0);
            adjust_hue(&mut img, shift);
            let got = (img[0], img[PLANE], img[2 * PLANE]);
            assert!(
                (got.0 - expected.0).abs() < 1e-5 && (got.1 - expected.1).abs() < 1e-5 && (got.2 - expected.2).abs() < 1e-5,
                "shift {shift}: {got:?}"
            );
        }
        // HSV round trip
        for (r, g, b) in [(0.1, 0.7, 0.3), (0.9, 0.2, 0.6), (0.5, 0.5, 0.5)] {
            let (h, s, v) = rgb_to_hsv(r, g, b);
            let (r2, g2, b2) = hsv_to_rgb(h, s, v);
            assert!((r - r2).abs() < 1e-5 && (g - g2).abs() < 1e-5 && (b - b2).abs() < 1e-5);
        }
    }

    #[test]
    fn translate_reflects_without_repeating_the_edge() {
        let mut img = vec![0.0; 3 * PLANE];
        for (x, v) in img.iter_mut().take(SIZE).enumerate() {
            *v = x as f32;
        }
        let t = translate(&img, 2, 0);
        assert_eq!(&t[..4], &[2.0, 1.0, 0.0, 1.0]);
        let t = translate(&img, -3, 0);
        assert_eq!(&t[SIZE - 3..SIZE], &[30.0, 29.0, 28.0]);
    }

    #[test]
    fn views_depend_only_on_seed_epoch_and_sample() {
        let img: Vec<u8> = (0..3 * PLANE).map(|i| (i * 7 % 256) as u8).collect();
        let aug = AugmentSpec::default();
        let a = two_views(&img, &aug, 1, 2, 3);
        assert_eq!(a, two_views(&img, &aug, 1, 2, 3));
        assert_ne!(a, two_views(&img, &aug, 1, 2, 4));
        assert_ne!(a, two_views(&img, &aug, 1, 3, 3));
        assert_ne!(a.0, a.1, "the two views differ");
        let off = AugmentSpec {
            crop: false,
            flip: false,
            translate: false,
            color_jitter: false,
            jitter_strength: 0.4,
            grayscale: false,
            normalize: false,
        };
        let (v1, v2) = two_views(&img, &off, 1, 2, 3);
        assert_eq!(v1, v2);
        assert_eq!(v1[5], img[5] as f32 / 255.0);
    }
}
