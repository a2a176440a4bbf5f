//! `amdim-worker embed`: a trained encoder used outside training. It writes
//! r1 (and optionally r5, r7) of images, BN in eval mode: a folder of
//! photos or a uint8 NHWC `.npy` through the training pipeline's evaluation
//! transform, or a float32 NCHW `.npy` already normalised (see
//! `crate::data::inputs`). The encoder and its job spec come from the
//! weights file (`crate::cli::encoder`, shared with `score`).

use crate::checkpoint::format::{f32_bytes, serialize};
use crate::cli::encoder::{EncoderArgs, WeightsFile, load_encoder};
use crate::data::inputs::{self, EvalTransform};
use crate::model::BnMode;
use crate::model::encoder::{Forward, to_nchw};
use crate::model::kernels::Kernels;
use crate::model::params::to_vec;
use crate::train::step::images;
use crate::with_backend;
use anyhow::{Context, Result};
use safetensors::tensor::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The flags of `amdim-worker embed`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    encoder: EncoderArgs,
    /// A folder of JPEG/PNG images (searched recursively), a uint8 NHWC
    /// .npy, or a float32 NCHW .npy (already normalised).
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    output: PathBuf,
    #[arg(long)]
    r5: bool,
    #[arg(long)]
    r7: bool,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

/// Runs `amdim-worker embed`.
pub fn run(args: Args) -> Result<()> {
    let weights = args.encoder.open()?;
    let request = EmbedRequest {
        input: &args.input,
        output: &args.output,
        with_r5: args.r5,
        with_r7: args.r7,
        batch: args.batch_size,
    };
    let spec = &weights.spec;
    let n = with_backend!(spec, |B, device| embed::<B>(&weights, &request, device)?);
    eprintln!("wrote features of {n} images to {}", args.output.display());
    Ok(())
}

/// What `embed` reads and writes.
pub struct EmbedRequest<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    pub with_r5: bool,
    pub with_r7: bool,
    pub batch: usize,
}

/// `embed`: features of all images, written as safetensors (r1 [N, D],
/// optional r5, r7; the files' relative paths as `files` metadata).
pub fn embed<B: Kernels>(weights: &WeightsFile, request: &EmbedRequest<'_>, device: B::Device) -> Result<usize> {
    let EmbedRequest {
        input,
        output,
        with_r5,
        with_r7,
        batch,
    } = *request;
    let spec = &weights.spec;
    let (plan, params) = load_encoder::<B>(weights, &device)?;
    let size = spec.model.image_size;
    let inputs::Images { n, pixels, names } = inputs::read(input, &EvalTransform::for_job(spec))?;
    let d = spec.model.n_rkhs;
    let (mut r1, mut r5, mut r7) = (Vec::new(), Vec::new(), Vec::new());
    let per = 3 * size * size;
    for start in (0..n).step_by(batch.max(1)) {
        let end = (start + batch.max(1)).min(n);
        let x = images::<B>(&pixels[start * per..end * per], end - start, size, &device);
        let mut fwd = Forward::new(&params.values, BnMode::Eval);
        let e = fwd.encode(&plan.encoder, x);
        r1.extend(to_vec(e.r1));
        if with_r5 {
            r5.extend(to_vec(to_nchw(e.r5)));
        }
        if with_r7 {
            r7.extend(to_vec(to_nchw(e.r7)));
        }
    }
    let mut tensors = vec![("r1".to_string(), Dtype::F32, vec![n, d], f32_bytes(&r1))];
    if with_r5 {
        tensors.push(("r5".into(), Dtype::F32, vec![n, d, 5, 5], f32_bytes(&r5)));
    }
    if with_r7 {
        tensors.push(("r7".into(), Dtype::F32, vec![n, d, 7, 7], f32_bytes(&r7)));
    }
    let mut meta = HashMap::new();
    if !names.is_empty() {
        meta.insert("files".to_string(), serde_json::to_string(&names)?);
    }
    let bytes = serialize(tensors, Some(meta), "features")?;
    std::fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))?;
    Ok(n)
}
