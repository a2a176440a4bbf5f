//! `amdim-worker score`: every loss term of one training-mode forward pass
//! of a trained encoder on two views (image folders or `.npy`, read as
//! `embed` reads them), with optional fixed 5→5 locations. The encoder and
//! its job spec (loss constants included) come from the weights file. Prints
//! one line (or JSON); computes only.

use crate::cli::encoder::{EncoderArgs, WeightsFile, load_encoder};
use crate::data::inputs::{self, EvalTransform};
use crate::data::npy::{self, NpyArray};
use crate::loss::nce::multiscale_nce;
use crate::model::BnMode;
use crate::model::encoder::Forward;
use crate::model::kernels::Kernels;
use crate::model::params::scalar;
use crate::train::step::{images, nce_inputs};
use crate::with_backend;
use amdim_shared::rng::{KeyedRng, Stream};
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// The flags of `amdim-worker score`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    encoder: EncoderArgs,
    #[arg(long)]
    view1: PathBuf,
    #[arg(long)]
    view2: PathBuf,
    /// int64 [2, B]: each image's 5→5 source location (row·5 + col) in view 1 and view 2.
    #[arg(long)]
    r5_locations: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// Runs `amdim-worker score`.
pub fn run(args: Args) -> Result<()> {
    let weights = args.encoder.open()?;
    let spec = &weights.spec;
    let r = with_backend!(spec, |B, device| score::<B>(
        &weights,
        &args.view1,
        &args.view2,
        args.r5_locations.as_deref(),
        device
    )?);
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "1t5 {:.6}  1t7 {:.6}  5t5 {:.6}  reg {:.6}  total {:.6}",
            r.loss_1t5, r.loss_1t7, r.loss_5t5, r.reg, r.loss_total
        );
    }
    Ok(())
}

/// Every loss term of one training-mode forward pass.
#[derive(Debug, serde::Serialize)]
pub struct ScoreResult {
    pub loss_1t5: f32,
    pub loss_1t7: f32,
    pub loss_5t5: f32,
    pub reg: f32,
    pub loss_total: f32,
    pub batch: usize,
    pub r5_locations: [Vec<usize>; 2],
}

/// `score`: the loss of two views under the given weights.
pub fn score<B: Kernels>(
    weights: &WeightsFile,
    view1: &Path,
    view2: &Path,
    locations: Option<&Path>,
    device: B::Device,
) -> Result<ScoreResult> {
    let spec = &weights.spec;
    let (plan, params) = load_encoder::<B>(weights, &device)?;
    let size = spec.model.image_size;
    let transform = EvalTransform::for_job(spec);
    let inputs::Images { n: n1, pixels: p1, .. } = inputs::read(view1, &transform)?;
    let inputs::Images { n: n2, pixels: p2, .. } = inputs::read(view2, &transform)?;
    if n1 != n2 {
        bail!("--view1 has {n1} images but --view2 has {n2}");
    }
    if n1 < 2 {
        bail!("--view1: NCE needs at least 2 images, got {n1}");
    }
    let locs: [Vec<usize>; 2] = match locations {
        Some(path) => match npy::read(path)? {
            NpyArray::I64 { shape, data } if shape == [2, n1] => {
                if let Some(bad) = data.iter().find(|&&v| !(0..25).contains(&v)) {
                    bail!("{}: location {bad} outside 0..25 (index = row·5 + column)", path.display());
                }
                [
                    data[..n1].iter().map(|&v| v as usize).collect(),
                    data[n1..].iter().map(|&v| v as usize).collect(),
                ]
            }
            NpyArray::I64 { shape, .. } => bail!("{}: shape {shape:?}, expected [2, {n1}]", path.display()),
            other => bail!("{}: {} array, expected int64 [2, {n1}]", path.display(), other.dtype_name()),
        },
        None => {
            let mut rng = KeyedRng::new(Stream::SourceLocation, &[spec.job.seed]);
            [
                (0..n1).map(|_| rng.below(25) as usize).collect(),
                (0..n1).map(|_| rng.below(25) as usize).collect(),
            ]
        }
    };
    let mut fwd = Forward::new(&params.values, BnMode::Train);
    let e1 = fwd.encode(&plan.encoder, images::<B>(&p1, n1, size, &device));
    let e2 = fwd.encode(&plan.encoder, images::<B>(&p2, n1, size, &device));
    let (src, trg) = nce_inputs(&fwd, &plan, [&e1, &e2], [&locs[0], &locs[1]]);
    let loss = multiscale_nce([&src[0], &src[1]], [&trg[0], &trg[1]], 0, &spec.loss);
    Ok(ScoreResult {
        loss_1t5: scalar(loss.l1t5),
        loss_1t7: scalar(loss.l1t7),
        loss_5t5: scalar(loss.l5t5),
        reg: scalar(loss.reg),
        loss_total: scalar(loss.total),
        batch: n1,
        r5_locations: locs,
    })
}
