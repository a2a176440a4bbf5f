//! Parity with the authors' PyTorch model: `tests/parity/authors_model.py`
//! (their modules and NCE code, transcribed) saves a randomly perturbed
//! state_dict as safetensors plus two views and 5×5 locations; `amdim-worker
//! score` and `embed` must reproduce PyTorch's loss terms and eval-mode r1.
//! Needs Debian's python3-torch (installed by .ci/run).

use std::process::Command;

const PYTHON: &str = "/usr/bin/python3";

fn check_torch() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import torch, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "PyTorch is missing: `apt-get install python3-torch python3-numpy` (.ci/run installs them)"
    );
}

fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= abs + rel * b.abs()
}

fn parity(size: usize, ndf: usize, n_rkhs: usize, depth: usize, use_bn: bool) {
    check_torch();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/parity/authors_model.py");
    let args = [
        size.to_string(),
        ndf.to_string(),
        n_rkhs.to_string(),
        depth.to_string(),
        (use_bn as u8).to_string(),
        "0.05".into(),
    ];
    let out = Command::new(PYTHON).arg(script).arg(dir).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "reference script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let spec = dir.join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "[data]\nformat = \"synthetic\"\n[model]\nimage_size = {size}\nndf = {ndf}\nn_rkhs = {n_rkhs}\ndepth = {depth}\nuse_bn = {use_bn}\n[loss]\nreg_lambda = 0.05\n"
        ),
    )
    .unwrap();
    let p = |name: &str| dir.join(name);
    let bin = env!("CARGO_BIN_EXE_amdim-worker");
    let out = Command::new(bin)
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
    assert!(out.status.success(), "score failed: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for term in ["loss_1t5", "loss_1t7", "loss_5t5", "reg", "loss_total"] {
        let (g, e) = (got[term].as_f64().unwrap(), expected["score"][term].as_f64().unwrap());
        assert!(close(g, e, 1e-4, 1e-5), "{size} px, {term}: ours {g} vs PyTorch {e}");
    }
    let feats = p("features.safetensors");
    let out = Command::new(bin)
        .args(["embed", "--r5", "--weights"])
        .arg(p("weights.safetensors"))
        .arg("--config")
        .arg(&spec)
        .arg("--input")
        .arg(p("v1.npy"))
        .arg("--output")
        .arg(&feats)
        .output()
        .unwrap();
    assert!(out.status.success(), "embed failed: {}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&feats).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let floats = |name: &str| -> Vec<f64> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect()
    };
    let r1 = floats("r1");
    let want: Vec<f64> = expected["r1_eval"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    assert_eq!(r1.len(), want.len());
    for (i, (a, b)) in r1.iter().zip(&want).enumerate() {
        assert!(close(*a, *b, 1e-4, 1e-4), "{size} px, r1[{i}]: ours {a} vs PyTorch {b}");
    }
    let r5 = floats("r5");
    for (i, b) in expected["r5_eval_first"].as_array().unwrap().iter().enumerate() {
        let b = b.as_f64().unwrap();
        assert!(close(r5[i], b, 1e-4, 1e-4), "{size} px, r5[{i}]: ours {} vs PyTorch {b}", r5[i]);
    }
}

#[test]
fn matches_the_authors_pytorch_model_at_32_px_with_batch_norm() {
    parity(32, 8, 64, 2, true);
}

#[test]
fn matches_the_authors_pytorch_model_at_128_px() {
    parity(128, 4, 32, 1, false);
}
