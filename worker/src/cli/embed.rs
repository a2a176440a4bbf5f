//! `amdim-worker embed`: a trained encoder used outside training. It writes
//! r1 (and optionally r5, r7) of images given as a float32 NCHW `.npy`
//! (already normalised) or an image folder, BN in eval mode. Loading the
//! encoder and reading the images are shared with `score`.

use crate::checkpoint::format::{HostState, f32_bytes, read_model, serialize};
use crate::cli::load_spec;
use crate::data::images::{eval_image, list_images};
use crate::data::npy::{self, NpyArray};
use crate::model::encoder::{Forward, to_nchw};
use crate::model::kernels::Kernels;
use crate::model::params::to_vec;
use crate::model::{BnMode, ParamStore};
use crate::train::step::images;
use crate::with_backend;
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result, anyhow, bail};
use safetensors::tensor::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A trained encoder: its weights and the job spec it was trained with
/// (flags shared by `embed` and `score`).
#[derive(clap::Args)]
pub struct EncoderArgs {
    #[arg(long)]
    pub weights: PathBuf,
    #[arg(long, short = 'c')]
    pub config: PathBuf,
}

/// The flags of `amdim-worker embed`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    encoder: EncoderArgs,
    /// A float32 NCHW .npy (already normalised) or a folder of JPEG/PNG images.
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
    let spec = load_spec(&args.encoder.config)?;
    let request = EmbedRequest {
        weights: &args.encoder.weights,
        input: &args.input,
        output: &args.output,
        with_r5: args.r5,
        with_r7: args.r7,
        batch: args.batch_size,
    };
    let n = with_backend!(spec, |B, device| embed::<B>(&spec, &request, device)?);
    eprintln!("wrote features of {n} images to {}", args.output.display());
    Ok(())
}

/// Encoder-only model loaded from a safetensors file with the authors' names.
pub fn load_encoder<B: Kernels>(spec: &JobSpec, weights: &Path, device: &B::Device) -> Result<(crate::model::ModelPlan, ParamStore<B>)> {
    let plan = crate::model::plan(&spec.model, &spec.loss, None);
    let bytes = std::fs::read(weights).with_context(|| format!("reading weights {}", weights.display()))?;
    let init = ParamStore::<B>::init(&plan, spec.job.seed, device);
    let fallback = HostState {
        values: init.to_host(),
        counters: init.counters.clone(),
    };
    let state = read_model(&plan, &bytes, &weights.display().to_string(), &fallback, false)?;
    Ok((plan.clone(), ParamStore::from_host(state.values, state.counters, device)))
}

/// Images [N, 3, S, S] from a `.npy` file or an image folder.
pub fn read_images(input: &Path, size: usize) -> Result<(usize, Vec<f32>, Vec<String>)> {
    if input.is_dir() {
        let files = list_images(input).map_err(|e| anyhow!(e))?;
        let mut pixels = Vec::with_capacity(files.len() * 3 * size * size);
        let mut names = Vec::new();
        for f in &files {
            pixels.extend(eval_image(f, size).map_err(|e| anyhow!(e))?);
            names.push(f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
        return Ok((files.len(), pixels, names));
    }
    match npy::read(input)? {
        NpyArray::F32 { shape, data } => {
            if shape.len() != 4 || shape[1] != 3 || shape[2] != size || shape[3] != size {
                bail!(
                    "{}: shape {shape:?}, expected [N, 3, {size}, {size}] float32 (model.image_size = {size})",
                    input.display()
                );
            }
            Ok((shape[0], data, Vec::new()))
        }
        NpyArray::I64 { .. } => bail!("{}: int64 array, expected float32 images [N, 3, {size}, {size}]", input.display()),
    }
}

/// What `embed` reads and writes.
pub struct EmbedRequest<'a> {
    pub weights: &'a Path,
    pub input: &'a Path,
    pub output: &'a Path,
    pub with_r5: bool,
    pub with_r7: bool,
    pub batch: usize,
}

/// `embed`: features of all images, written as safetensors (r1 [N, D], optional r5, r7).
pub fn embed<B: Kernels>(spec: &JobSpec, request: &EmbedRequest<'_>, device: B::Device) -> Result<usize> {
    let EmbedRequest {
        weights,
        input,
        output,
        with_r5,
        with_r7,
        batch,
    } = *request;
    let (plan, params) = load_encoder::<B>(spec, weights, &device)?;
    let size = spec.model.image_size;
    let (n, pixels, names) = read_images(input, size)?;
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
