//! Gradients of one full training step (encoder, multiscale NCE, both online
//! classifiers) against PyTorch autograd on the project's reference
//! (`worker/python/amdim_torch.py`, float64), on perturbed weights, at 32 and
//! 128 px, with and without BN; and the classifiers' detach, through the
//! production step (`Trainer::gradients`, what `amdim-worker gradients` and
//! `train` run).
//!
//! Tolerances, per parameter tensor g (PyTorch) and ĝ (ours, float32):
//! | ‖ĝ‖ − ‖g‖ | ≤ 1e-4·‖g‖ (the gradient norm) and ‖ĝ − g‖ ≤ 1e-4·‖g‖
//! (whole tensor); element-wise max|ĝ − g| ≤ 3e-4·max|g|. Tensors whose exact
//! gradient is 0 (a bias right before a BatchNorm; ‖g‖ ≤ 1e-9 of the largest
//! gradient norm of the step) must have ‖ĝ‖ ≤ 1e-5 of that largest norm.
//! Measured (the four configurations): norm 4.8e-6, whole tensor 2.1e-5,
//! element-wise 3.1e-5, exact zeros 3.0e-7; the step's NCE and classifier
//! losses within 5e-7 relative (asserted at 1e-4).

#[path = "parity/common.rs"]
mod common;

use amdim_shared::rng::{KeyedRng, Stream};
use amdim_shared::spec::{JobSpec, LossSpec};
use amdim_worker::checkpoint::format::{HostState, f32_bytes, model_bytes, serialize};
use amdim_worker::data::pipeline::TrainBatch;
use amdim_worker::model::params::to_vec;
use amdim_worker::model::plan::EntryKind;
use amdim_worker::train::step::{StepMetrics, Trainer};
use burn::backend::Flex;
use common::{Case, fixture, load_model, model_spec, read_tensors};
use safetensors::tensor::Dtype;
use std::path::Path;

/// The online classifiers' dropout rate and hidden width (docs/model.md §4).
const DROPOUT: f64 = 0.2;
const HIDDEN: usize = 1024;

/// A trainer of `case` holding the weights of `dir/weights.safetensors`, and
/// the batch of `dir/inputs.safetensors` (labels when `labels`).
fn trainer_and_batch(case: &Case, dir: &Path, labels: bool) -> (Trainer<Flex>, TrainBatch) {
    let spec = JobSpec {
        model: model_spec(case),
        loss: LossSpec {
            reg_lambda: case.reg_lambda,
            ..LossSpec::default()
        },
        ..JobSpec::default()
    };
    let mut t = Trainer::<Flex>::new(spec, Some(10), Default::default());
    let (_, params) = load_model(case, &dir.join("weights.safetensors"), true);
    t.params = params;
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let floats = |k: &str| inputs[k].1.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let ints = |k: &str| inputs[k].1.iter().map(|&v| v as usize).collect::<Vec<usize>>();
    let n = inputs["labels"].1.len();
    let locs = ints("locs");
    let batch = TrainBatch {
        n,
        view1: floats("v1"),
        view2: floats("v2"),
        labels: labels.then(|| ints("labels").into_iter().map(|v| v as u32).collect()),
        loc1: locs[..n].to_vec(),
        loc2: locs[n..].to_vec(),
        indices: (0..n as u32).collect(),
    };
    (t, batch)
}

/// The step's metrics, and its gradients by state_dict name (buffers as
/// zeros) as safetensors bytes, as `amdim-worker gradients` writes them.
fn gradient_file(t: &Trainer<Flex>, batch: &TrainBatch) -> (StepMetrics, Vec<u8>) {
    let out = t.gradients(batch, 0).unwrap();
    assert!(!out.metrics.skipped, "{:?}", out.metrics);
    let values = out
        .grads
        .into_iter()
        .zip(&t.plan.entries)
        .map(|(g, e)| g.map_or_else(|| vec![0.0; e.numel()], to_vec))
        .collect();
    let state = HostState {
        values,
        counters: vec![0; t.plan.entries.len()],
    };
    (out.metrics, model_bytes(&t.plan, &state).unwrap())
}

/// The MLP's dropout multipliers the step draws for rows [view 1, view 2]:
/// one keyed stream per (seed, step, sample, view), the input mask's draws
/// first, then the hidden layer's (the step's documented randomness).
fn dropout_file(t: &Trainer<Flex>, batch: &TrainBatch) -> Vec<u8> {
    let d = t.spec.model.n_rkhs;
    let scale = (1.0 / (1.0 - DROPOUT)) as f32;
    let (mut keep1, mut keep2) = (Vec::new(), Vec::new());
    for view in 0..2u64 {
        for &sample in &batch.indices {
            let mut rng = KeyedRng::new(Stream::Dropout, &[t.spec.job.seed, t.step, u64::from(sample), view]);
            for (width, out) in [(d, &mut keep1), (HIDDEN, &mut keep2)] {
                out.extend((0..width).map(|_| if rng.bernoulli(DROPOUT) { 0.0 } else { scale }));
            }
        }
    }
    let rows = 2 * batch.n;
    let tensors = vec![
        ("keep1".to_string(), Dtype::F32, vec![rows, d], f32_bytes(&keep1)),
        ("keep2".to_string(), Dtype::F32, vec![rows, HIDDEN], f32_bytes(&keep2)),
    ];
    serialize(tensors, None, "dropout").unwrap()
}

fn gradient_parity(case: Case) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    case.make(dir);
    let (t, batch) = trainer_and_batch(&case, dir, true);
    let (out, grads) = gradient_file(&t, &batch);
    std::fs::write(dir.join("grads_rust.safetensors"), grads).unwrap();
    std::fs::write(dir.join("dropout.safetensors"), dropout_file(&t, &batch)).unwrap();
    let report: serde_json::Value = serde_json::from_str(&fixture(&["grads".into(), dir.display().to_string()])).unwrap();
    let label = format!("{} px, use_bn {}", case.size, case.use_bn);
    eprintln!("{label}: {}", report["worst"]);
    let trainable = t.plan.entries.iter().filter(|e| e.kind == EntryKind::Param).count();
    assert_eq!(
        report["tensors"].as_u64(),
        Some(trainable as u64),
        "{label}: every parameter compared"
    );
    let worst = |key: &str| (report["worst"][key][0].to_string(), report["worst"][key][1].as_f64().unwrap());
    for (key, tol) in [("norm_rel", 1e-4), ("diff_rel", 1e-4), ("elem_rel", 3e-4), ("zero_abs", 1e-5)] {
        let (name, value) = worst(key);
        assert!(value <= tol, "{label}: {key} = {value:.3e} > {tol:e} at {name}");
    }
    let losses = &report["losses"];
    for (ours, theirs) in [(out.loss, "total_nce"), (out.class_lin, "class_lin"), (out.class_mlp, "class_mlp")] {
        let want = match theirs {
            "total_nce" => {
                losses["total"].as_f64().unwrap() - losses["class_lin"].as_f64().unwrap() - losses["class_mlp"].as_f64().unwrap()
            }
            key => losses[key].as_f64().unwrap(),
        };
        let rel = (f64::from(ours) - want).abs() / want.abs();
        eprintln!("{label}: {theirs} ours {ours} vs {want} (rel {rel:.2e})");
        assert!(rel <= 1e-4, "{label}: {theirs} ours {ours} vs PyTorch {want}");
    }
}

#[test]
fn step_gradients_match_pytorch_at_32_px_with_batch_norm() {
    gradient_parity(Case::small(32, true));
}

#[test]
fn step_gradients_match_pytorch_at_32_px_without_batch_norm() {
    gradient_parity(Case::small(32, false));
}

#[test]
fn step_gradients_match_pytorch_at_128_px_with_batch_norm() {
    gradient_parity(Case::small(128, true));
}

#[test]
fn step_gradients_match_pytorch_at_128_px_without_batch_norm() {
    gradient_parity(Case::small(128, false));
}

#[test]
fn the_classifiers_leave_the_encoder_gradients_unchanged() {
    // The production step with labels (NCE + classifiers) and without (NCE
    // only) must give the encoder the same gradients: r1 reaches the
    // classifiers detached. Fails when that `.detach()` is removed.
    let case = Case {
        size: 32,
        ndf: 8,
        n_rkhs: 64,
        depth: 1,
        use_bn: true,
        reg_lambda: 0.04,
    };
    let tmp = tempfile::tempdir().unwrap();
    case.make(tmp.path());
    let (t, with_labels) = trainer_and_batch(&case, tmp.path(), true);
    let (_, without) = trainer_and_batch(&case, tmp.path(), false);
    let a = t.gradients(&with_labels, 0).unwrap();
    let b = t.gradients(&without, 0).unwrap();
    assert!(
        a.metrics.class_mlp > 0.0 && b.metrics.class_mlp == 0.0,
        "{:?} {:?}",
        a.metrics,
        b.metrics
    );
    let mut compared = 0;
    for (i, e) in t.plan.entries.iter().enumerate() {
        match (&a.grads[i], &b.grads[i]) {
            (Some(ga), Some(gb)) if e.name.starts_with("encoder.") => {
                assert_eq!(
                    to_vec(ga.clone()),
                    to_vec(gb.clone()),
                    "{}: the classifiers' loss reached the encoder",
                    e.name
                );
                compared += 1;
            }
            (Some(_), None) => assert!(e.name.starts_with("evaluator."), "{} has a gradient only with labels", e.name),
            _ => {}
        }
    }
    assert!(compared > 30, "compared {compared} encoder gradients");
}
