//! Frozen features of a labelled split for the probes: the evaluation view
//! of every image (the dataset's evaluation transform, no augmentation)
//! either as raw pixels or through an encoder in eval mode (BatchNorm with
//! its running statistics), whose r1 vector is the feature. Reads images
//! through the data pipeline; never trains or changes the encoder.

use crate::data::dataset::DataError;
use crate::data::pipeline::Pipeline;
use crate::model::encoder::Forward;
use crate::model::kernels::Kernels;
use crate::model::params::to_vec;
use crate::model::{BnMode, ModelPlan, ParamStore};
use crate::probe::progress::Progress;
use crate::train::step::images;

/// Row-major features `[n, dim]`.
#[derive(Clone, Debug)]
pub(crate) struct Features {
    pub(crate) data: Vec<f32>,
    pub(crate) dim: usize,
}

/// What turns an evaluation view into a feature vector.
pub(crate) enum Extractor<'a, B: Kernels> {
    /// The normalised pixels themselves, `3·size·size` values.
    Pixels,
    /// r1 of this encoder in eval mode.
    Encoder {
        plan: &'a ModelPlan,
        params: &'a ParamStore<B>,
        device: &'a B::Device,
    },
}

/// Features of the first `n` samples of `pipeline`, `batch` images at a time.
pub(crate) fn extract<B: Kernels>(
    pipeline: &Pipeline,
    n: usize,
    batch: usize,
    how: &Extractor<'_, B>,
    label: &str,
) -> Result<Features, DataError> {
    let size = pipeline.size;
    let mut progress = Progress::new(label, n);
    let mut data = Vec::new();
    let mut dim = 3 * size * size;
    for start in (0..n).step_by(batch.max(1)) {
        let end = (start + batch.max(1)).min(n);
        let pixels = pipeline.eval_batch(start..end)?;
        match how {
            Extractor::Pixels => data.extend(pixels),
            Extractor::Encoder { plan, params, device } => {
                let x = images::<B>(&pixels, end - start, size, device);
                let mut fwd = Forward::new(&params.values, BnMode::Eval);
                let r1 = fwd.encode(&plan.encoder, x).r1;
                dim = r1.dims()[1];
                data.extend(to_vec(r1));
            }
        }
        progress.advance(end - start);
    }
    progress.finish();
    Ok(Features { data, dim })
}
