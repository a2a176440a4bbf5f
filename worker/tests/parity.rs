//! Parity with the project's PyTorch reference, `worker/python/amdim_torch.py`
//! (written from amdim-spec.md; its state_dict keys are the authors'):
//! - on perturbed weights, at 32 and 128 px, with and without BN, `amdim-worker
//!   score` gives the three NCE terms and the regulariser, `embed` r1/r5/r7 in
//!   eval mode, and the library's training-mode forward r1/r5/r7, all against
//!   PyTorch in float64;
//! - the complete list of names and shapes of `model::plan` equals the
//!   reference's `state_dict()` (32/64/128 px, with and without use_bn);
//! - round trip: a `model.safetensors` written by `amdim-worker train` gives
//!   the same r1 through `amdim-worker embed` and `amdim_torch.py embed`.
//!
//! Tolerances: loss terms |ours − ref| ≤ 1e-4·|ref| + 1e-6; features, each
//! element, |ours − ref| ≤ 1e-4·|ref| + 1e-4 (they are BatchNorm outputs,
//! O(1)). Needs Debian's python3-torch (installed by .ci/run).

#[path = "parity/common.rs"]
mod common;

use amdim_worker::model::BnMode;
use amdim_worker::model::encoder::{Forward, to_nchw};
use common::{BIN, Case, PYTHON, REFERENCE, fixture, load_model, read_tensors, stdout_of, tensor, values, worst_excess};
use std::path::Path;
use std::process::Command;

/// Compares `got` with `want` element-wise (rel, abs); prints the worst excess.
fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) {
    let (excess, i) = worst_excess(got, want, rel, abs);
    eprintln!("{what}: worst |diff|/tol = {excess:.3e}");
    assert!(excess <= 1.0, "{what}[{i}]: ours {} vs PyTorch {}", got[i], want[i]);
}

fn forward_parity(case: Case) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    case.make(dir);
    let label = format!("{} px, use_bn {}", case.size, case.use_bn);
    let spec = case.job(dir, "");
    let p = |name: &str| dir.join(name);
    let out = Command::new(BIN)
        .args(["score", "--json", "--weights"])
        .arg(p("weights.safetensors"))
        .arg("--config")
        .arg(&spec)
        .arg("--view1")
        .arg(p("v1.npy"))
        .arg("--view2")
        .arg(p("v2.npy"))
        .arg("--r5-locations")
        .arg(p("locs.npy"))
        .output()
        .unwrap();
    let got: serde_json::Value = serde_json::from_str(&stdout_of(out, "score")).unwrap();
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(p("expected.json")).unwrap()).unwrap();
    for (ours, theirs) in [
        ("loss_1t5", "nce_1t5"),
        ("loss_1t7", "nce_1t7"),
        ("loss_5t5", "nce_5t5"),
        ("reg", "reg"),
        ("loss_total", "total"),
    ] {
        let (g, e) = (got[ours].as_f64().unwrap(), expected[theirs].as_f64().unwrap());
        assert_close(&format!("{label}, {ours}"), &[g], &[e], 1e-4, 1e-6);
    }

    let reference = read_tensors(&p("expected.safetensors"));
    let feats = p("features.safetensors");
    let out = Command::new(BIN)
        .args(["embed", "--r5", "--r7", "--weights"])
        .arg(p("weights.safetensors"))
        .arg("--config")
        .arg(&spec)
        .arg("--input")
        .arg(p("v1.npy"))
        .arg("--output")
        .arg(&feats)
        .output()
        .unwrap();
    stdout_of(out, "embed");
    let eval = read_tensors(&feats);
    for key in ["r1", "r5", "r7"] {
        let (shape, want) = &reference[&format!("{key}_eval")];
        let (got_shape, got) = &eval[key];
        assert_eq!(got_shape, shape, "{label}, eval {key} shape");
        assert_close(&format!("{label}, eval-mode {key}"), got, want, 1e-4, 1e-4);
    }

    // Training mode (BatchNorm on the batch's statistics), through the library.
    let (plan, params) = load_model(&case, &p("weights.safetensors"), false);
    let inputs = read_tensors(&p("inputs.safetensors"));
    let (shape, v1) = &inputs["v1"];
    let x = tensor(v1, [shape[0], shape[1], shape[2], shape[3]]);
    let e = Forward::new(&params.values, BnMode::Train).encode(&plan.encoder, x);
    for (key, got) in [("r1", values(e.r1)), ("r5", values(to_nchw(e.r5))), ("r7", values(to_nchw(e.r7)))] {
        let (_, want) = &reference[&format!("{key}_train")];
        assert_close(&format!("{label}, train-mode {key}"), &got, want, 1e-4, 1e-4);
    }
}

#[test]
fn losses_and_features_match_pytorch_at_32_px_with_batch_norm() {
    forward_parity(Case::small(32, true));
}

#[test]
fn losses_and_features_match_pytorch_at_32_px_without_batch_norm() {
    forward_parity(Case::small(32, false));
}

#[test]
fn losses_and_features_match_pytorch_at_128_px_with_batch_norm() {
    forward_parity(Case::small(128, true));
}

#[test]
fn losses_and_features_match_pytorch_at_128_px_without_batch_norm() {
    forward_parity(Case::small(128, false));
}

/// The reference's state_dict as (name, shape), sorted.
fn reference_names(size: usize, depth: usize, use_bn: bool) -> Vec<(String, Vec<usize>)> {
    let args = [
        "names".to_string(),
        size.to_string(),
        "8".into(),
        "64".into(),
        depth.to_string(),
        u8::from(use_bn).to_string(),
        "10".into(),
    ];
    let text = fixture(&args);
    let mut list: Vec<(String, Vec<usize>)> = serde_json::from_str(&text).unwrap();
    list.sort();
    list
}

#[test]
fn plan_names_and_shapes_are_the_reference_state_dict() {
    for size in [32, 64, 128] {
        for use_bn in [false, true] {
            let case = Case {
                size,
                ndf: 8,
                n_rkhs: 64,
                depth: 2,
                use_bn,
                reg_lambda: 0.04,
            };
            let plan = amdim_worker::model::plan(&common::model_spec(&case), &Default::default(), Some(10));
            let mut ours: Vec<(String, Vec<usize>)> = plan.entries.iter().map(|e| (e.name.clone(), e.shape.clone())).collect();
            ours.sort();
            let mut theirs = reference_names(size, 2, use_bn);
            // The 5×5 one-hot masks of the authors' loss module are a constant
            // the worker does not keep (it reads the location index instead).
            let masks = theirs
                .iter()
                .position(|(n, _)| n == "g2l_loss.masks_r5")
                .expect("masks_r5 in the reference");
            assert_eq!(theirs.remove(masks).1, vec![25, 1, 5, 5]);
            let first_difference = ours.iter().zip(&theirs).find(|(a, b)| a != b);
            assert_eq!(
                first_difference, None,
                "{size} px, use_bn {use_bn}: first differing entry (ours, reference)"
            );
            assert_eq!(ours.len(), theirs.len(), "{size} px, use_bn {use_bn}: entry count");
            let expected = match size {
                32 => Some(120),
                128 => Some(129),
                _ => None,
            };
            if let Some(n) = expected {
                assert_eq!(ours.len(), n, "spec appendix: {} entries with masks_r5", n + 1);
            }
        }
    }
}

/// r1 [N, D] of a `.npy` file written by numpy (float32, little-endian).
fn read_npy_f32(path: &Path) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + header_len]);
    assert!(header.contains("'<f4'"), "{header}");
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect()
}

fn find_file(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

#[test]
fn a_trained_checkpoint_embeds_the_same_in_pytorch() {
    common::check_torch();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let case = Case {
        size: 32,
        ndf: 8,
        n_rkhs: 32,
        depth: 1,
        use_bn: true,
        reg_lambda: 0.04,
    };
    let ckpt = dir.join("ckpt");
    let extra = format!(
        "[job]\nname = \"roundtrip\"\nseed = 3\n[train]\nbatch_size = 8\nlog_every = 1\n\
         [optim]\nwarmup_steps = 0\nlr = 0.002\n[eval]\nbn_refresh_batches = 1\nmax_test_samples = 16\n\
         [checkpoint]\nuri = \"{}\"\nevery_steps = 3\nkeep = 1\n",
        ckpt.display()
    );
    let spec = case.job(dir, &extra);
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("format = \"synthetic\"\n", "format = \"synthetic\"\nsynthetic_samples = 64\n");
    std::fs::write(&spec, text).unwrap();
    let out = Command::new(BIN)
        .args(["train", "-c"])
        .arg(&spec)
        .env("AMDIM_TRAIN__MAX_STEPS", "3")
        .output()
        .unwrap();
    stdout_of(out, "train");
    let weights = find_file(&ckpt, "model.safetensors").expect("a checkpoint with model.safetensors");
    // Images: random normalised pixels, float32 NCHW.
    let x = dir.join("x.npy");
    let make = "import numpy as np, sys; np.save(sys.argv[1], np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32))";
    stdout_of(Command::new(PYTHON).args(["-c", make]).arg(&x).output().unwrap(), "numpy");
    let feats = dir.join("r1.safetensors");
    let out = Command::new(BIN)
        .args(["embed", "--weights"])
        .arg(&weights)
        .arg("--config")
        .arg(&spec)
        .arg("--input")
        .arg(&x)
        .arg("--output")
        .arg(&feats)
        .output()
        .unwrap();
    stdout_of(out, "amdim-worker embed");
    let ours = &read_tensors(&feats)["r1"].1;
    let r1_npy = dir.join("r1.npy");
    let out = Command::new(PYTHON)
        .arg(REFERENCE)
        .args(["embed", "--weights"])
        .arg(&weights)
        .arg("--npy")
        .arg(&x)
        .arg("--out")
        .arg(&r1_npy)
        .output()
        .unwrap();
    stdout_of(out, "amdim_torch.py embed");
    let theirs = read_npy_f32(&r1_npy);
    assert_eq!(ours.len(), 5 * 32);
    assert_close("round trip r1", ours, &theirs, 1e-4, 1e-4);
}
