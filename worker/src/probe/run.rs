//! One probe from start to end: open the labelled training and test splits
//! of the job's dataset, extract each row's frozen features, standardise
//! them with the training split's statistics, and score the linear probe and
//! k-NN on the test split. The test split is never used for fitting.

use crate::data::Split;
use crate::data::pipeline::{Pipeline, Source};
use crate::model::kernels::Kernels;
use crate::probe::features::{Extractor, Features, Lanes, extract};
use crate::probe::knn;
use crate::probe::linear::{Linear, Recipe};
use crate::probe::report::{Report, Row, RowKind};
use crate::probe::standardise::Standardiser;
use crate::probe::weights;
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result, bail};
use std::time::Instant;

/// What to probe, beyond the job spec.
#[derive(Clone, Debug)]
pub struct ProbeRequest {
    pub rows: Vec<RowKind>,
    /// Checkpoint folder/URI or model.safetensors (default: checkpoint.uri).
    pub weights: Option<String>,
    pub step: Option<u64>,
    pub knn: bool,
    /// First N training / test samples only (0: all).
    pub max_train: usize,
    pub max_test: usize,
    /// Images per encoder forward pass.
    pub batch: usize,
    /// Batches extracted at once (0: the backend's default, see [`Lanes::new`]).
    pub lanes: usize,
}

/// The labelled training and test splits of the job's dataset, read with
/// its evaluation transform.
fn open_splits(spec: &JobSpec, request: &ProbeRequest, runtime: &tokio::runtime::Handle) -> Result<(Pipeline, Pipeline)> {
    let d = &spec.data;
    if !Source::has_split(d, Split::Test, runtime)? {
        bail!(
            "data.path = {}: the probe needs a labelled test split (idx t10k-*, cifar test batch, or val/ for image_folder and shards)",
            d.path
        );
    }
    let open = |split, limit| -> Result<Pipeline> {
        let source = Source::open(d, split, runtime)?.truncate(limit);
        if source.labels().is_none() {
            bail!("data.path = {}: the {split:?} split has no labels", d.path);
        }
        Ok(Pipeline::for_job(source, spec)?)
    };
    Ok((open(Split::Train, request.max_train)?, open(Split::Test, request.max_test)?))
}

/// Linear probe (and k-NN) of one feature set.
fn score(
    mut train: Features,
    mut test: Features,
    train_labels: &[u32],
    test_labels: &[u32],
    classes: usize,
    knn: bool,
) -> (f64, f64, Option<f64>) {
    let dim = train.dim;
    let standardiser = Standardiser::fit(&train.data, dim);
    standardiser.apply(&mut train.data);
    standardiser.apply(&mut test.data);
    let model = Linear::train(&train.data, dim, train_labels, classes, &Recipe::default());
    let (linear_test, linear_train) = (model.accuracy(&test.data, test_labels), model.accuracy(&train.data, train_labels));
    let knn_test = knn.then(|| {
        knn::normalise_rows(&mut train.data, dim);
        knn::normalise_rows(&mut test.data, dim);
        let predicted = knn::classify(&train.data, train_labels, &test.data, dim, classes);
        crate::probe::softmax::accuracy(&predicted, test_labels)
    });
    (linear_test, linear_train, knn_test)
}

/// Runs the probe of every requested row on backend `B`.
pub fn probe<B: Kernels>(spec: &JobSpec, request: &ProbeRequest, device: B::Device, runtime: &tokio::runtime::Handle) -> Result<Report> {
    let (train, test) = open_splits(spec, request, runtime)?;
    let (n_train, n_test) = (train.source.len(), test.source.len());
    let train_labels = train.source.labels().context("training labels")?.to_vec();
    let test_labels = test.source.labels().context("test labels")?.to_vec();
    let classes = train.source.n_classes().max(test.source.n_classes());
    let plan = weights::encoder_plan(spec);
    let lanes = Lanes::new(spec.runtime.backend, request.lanes);
    let mut rows = Vec::new();
    for &kind in &request.rows {
        let started = Instant::now();
        let (params, origin) = match kind {
            RowKind::Pixels => (None, None),
            RowKind::Random => (Some(weights::random_encoder::<B>(spec, &plan, &device)), None),
            RowKind::Checkpoint => {
                let w = weights::read(spec, request.weights.as_deref(), request.step, runtime)?;
                (Some(weights::trained_encoder::<B>(spec, &plan, &w, &device)?), Some(w.origin))
            }
        };
        let how = match &params {
            None => Extractor::Pixels,
            Some(params) => Extractor::Encoder {
                plan: &plan,
                params,
                device: &device,
            },
        };
        let name = format!("{kind:?}").to_lowercase();
        let f_train = extract(&train, n_train, request.batch, lanes, &how, &format!("{name}: training split"))?;
        let f_test = extract(&test, n_test, request.batch, lanes, &how, &format!("{name}: test split"))?;
        let dim = f_train.dim;
        tracing::info!(features = name, dim, "fitting the linear probe (and k-NN)");
        let (linear_test, linear_train, knn_test) = score(f_train, f_test, &train_labels, &test_labels, classes, request.knn);
        rows.push(Row {
            features: kind,
            weights: origin,
            dim,
            linear_test,
            linear_train,
            knn_test,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(Report {
        dataset: format!("{:?} {}", spec.data.format, spec.data.path).to_lowercase(),
        train_samples: n_train,
        test_samples: n_test,
        classes,
        linear_recipe: Recipe::default(),
        knn_k: knn::K,
        knn_vote: "similarity-weighted, exp(cos / 0.07)",
        rows,
    })
}
