//! Runs the real `amdimctl` binary on spec files.

use std::process::Command;

#[test]
fn validate_accepts_the_example_and_names_bad_fields() {
    let ok = Command::new(env!("CARGO_BIN_EXE_amdimctl"))
        .args([
            "validate",
            "-o",
            "json",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/fashion-mnist.toml"),
        ])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let spec: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(spec["model"]["image_size"], 32);
    assert_eq!(spec["loss"]["reg_lambda"], 0.04);

    let dir = std::env::temp_dir().join(format!("amdimctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[optim]\nlr = -1.0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_amdimctl"))
        .args(["validate", "-f"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("optim.lr") && err.contains("bad.toml"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_amdimctl"))
        .args(["validate", "-f"])
        .arg(&bad)
        .env("AMDIM_OPTIM__LR", "0.001")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "env override fixes the field: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
}
