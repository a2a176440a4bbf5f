//! Helpers shared by the worker's integration tests, so that each test file
//! keeps only what it checks. This module owns:
//! - the photo fixtures ([`testdata`]) and feeding text to a tool
//!   ([`pipe_through`]);
//! - the coordinator crate's binaries ([`coordinator_bin`], [`amdimctl`],
//!   [`run_amdimctl`]; built on demand: `cargo test -p amdim-worker` alone
//!   does not build them);
//! - free loopback addresses ([`free_addr`]);
//! - [`cluster`]: a coordinator and worker agents as real processes, and the
//!   accessors of a job's JSON document;
//! - [`small_job`]: the small synthetic job the cluster tests submit;
//! - [`fashion`]: real Fashion-MNIST and the tiny job trained on it;
//! - [`ranks`]: `amdim-worker train` commands and worlds of ranks on loopback.
//!
//! A test binary uses some of these and not others, hence `dead_code` allowed.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

mod certificates;
pub mod cluster;
pub mod fashion;
pub mod ranks;
pub mod small_job;

/// A loopback address (`127.0.0.1:port`) with a port free a moment ago.
pub fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// The ImageFolder trees of the fixture script, built on first use.
pub fn testdata() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/testdata"));
    if !dir.join(".photos-ready").exists() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/photos.py");
        let out = Command::new("python3").arg(script).arg(&dir).output().expect("python3");
        assert!(
            out.status.success(),
            "fixture script failed (it downloads foolbox==3.3.4 with pip): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// A binary of the coordinator crate (`amdimctl`, `amdim-coordinator`),
/// next to this crate's binary in the same target folder; built when missing
/// or older than its sources (`cargo test -p amdim-worker` alone does not
/// rebuild another crate's binaries).
pub fn coordinator_bin(name: &str) -> PathBuf {
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_amdim-worker"));
    let dir = worker.parent().expect("binary folder").to_path_buf();
    let bin = dir.join(name);
    let built = bin.metadata().and_then(|m| m.modified()).ok();
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let sources = ["coordinator/src", "coordinator/Cargo.toml", "shared/src", "proto"].map(|p| root.join(p));
    let stale = built.is_none_or(|b| sources.iter().any(|p| newest(p).is_some_and(|s| s > b)));
    if stale {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "amdim-coordinator", "--bin", name]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo to build the coordinator crate");
        assert!(status.success() && bin.exists(), "could not build {}", bin.display());
    }
    bin
}

/// The newest modification time of a file or of any file below a folder.
fn newest(path: &std::path::Path) -> Option<std::time::SystemTime> {
    let meta = path.metadata().ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path).ok()?.flatten().filter_map(|e| newest(&e.path())).max()
}

/// `amdimctl`, next to this crate's binary.
pub fn amdimctl() -> PathBuf {
    coordinator_bin("amdimctl")
}

/// Runs `amdimctl args…` with `env`, asserting success; returns stdout.
pub fn run_amdimctl(args: &[&str], env: &[(&'static str, String)]) -> String {
    let out = Command::new(amdimctl()).args(args).envs(env.iter().cloned()).output().unwrap();
    assert!(out.status.success(), "amdimctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` (`what` names it in a failure to start) with `input` on its
/// stdin; returns its exit status and captured stdout and stderr.
pub fn pipe_through(cmd: &mut Command, what: &str, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}
