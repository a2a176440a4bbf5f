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
            concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/fashion-mnist-smoke.toml"),
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

#[test]
fn the_config_file_names_the_server_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    // A port nobody listens on: the error names the address the file gave.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(&config, format!("server = \"http://127.0.0.1:{port}\"\n")).unwrap();
    let ctl = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_amdimctl"))
            .args(extra)
            .arg("list")
            .env("AMDIM_CONFIG", &config)
            .env_remove("AMDIM_SERVER")
            .output()
            .unwrap()
    };
    let out = ctl(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("127.0.0.1:{port}")), "{err}");
    let out = ctl(&["--server", "http://127.0.0.1:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:1") && !err.contains(&format!(":{port}")), "{err}");
    // A token in the file is refused (files are for paths, not secrets).
    std::fs::write(&config, "token = \"s3cret\"\n").unwrap();
    let err = String::from_utf8_lossy(&ctl(&[]).stderr).into_owned();
    assert!(
        err.contains("config.toml") && err.contains("unknown field") && !err.contains("s3cret"),
        "{err}"
    );
}

#[test]
fn completions_are_printed_for_bash_and_zsh() {
    for shell in ["bash", "zsh"] {
        let out = Command::new(env!("CARGO_BIN_EXE_amdimctl"))
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && script.contains("amdimctl") && script.contains("submit"),
            "{shell}"
        );
    }
}
