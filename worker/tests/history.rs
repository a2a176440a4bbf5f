//! The run history and the output for people, end to end with real
//! processes and files: `amdim-worker train` on Fashion-MNIST writes
//! `history.jsonl` beside its checkpoints, a resume from an earlier
//! checkpoint continues it without repeating steps, `amdimctl history`
//! prints it (table and JSON), `amdimctl plot` draws two runs into a PNG of
//! the asked size, and on an 80-column terminal (tmux) the progress bar and
//! the summary never draw past the right edge nor leave copies of the bar.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::fashion::{TinyFashionJob, require_dataset};

const BIN: &str = env!("CARGO_BIN_EXE_amdim-worker");

/// A tiny job on real Fashion-MNIST samples: 8 steps per epoch,
/// checkpoints every 3 steps, every step logged.
fn write_spec(dir: &Path, name: &str, folder: &str) -> (PathBuf, PathBuf) {
    require_dataset();
    let ckpt = dir.join(folder).join("checkpoints");
    let spec = TinyFashionJob::new(name, ckpt.clone()).write(&dir.join(format!("{name}.toml")));
    (spec, ckpt)
}

fn train(spec: &Path, max_steps: u32, resume: bool) -> String {
    let mut c = Command::new(BIN);
    c.arg("train").arg("--config").arg(spec);
    if resume {
        c.arg("--resume");
    }
    let out = c.env("AMDIM_TRAIN__MAX_STEPS", max_steps.to_string()).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "train failed: {log}");
    log
}

/// (steps of the step records, steps of the eval records) in file order.
fn history(ckpt: &Path) -> (Vec<u64>, Vec<u64>, Vec<Value>) {
    let text = std::fs::read_to_string(ckpt.join("history.jsonl")).unwrap();
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |kind: &str| -> Vec<u64> {
        records
            .iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| r["step"].as_u64().unwrap())
            .collect()
    };
    (of("step"), of("eval"), records)
}

#[test]
fn runs_write_their_history_and_a_resume_continues_it_without_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let (spec, ckpt) = write_spec(tmp.path(), "hist", "hist");
    let log = train(&spec, 5, false);
    assert!(!log.contains("param_checksum="), "one rank has no fingerprint to compare: {log}");
    let step_line = log.lines().find(|l| l.contains(" step ")).unwrap_or_default();
    assert!(step_line.len() < 200, "the step line stays short: {step_line}");
    let (steps, evals, records) = history(&ckpt);
    assert_eq!(steps, vec![1, 2, 3, 4, 5]);
    assert_eq!(evals, vec![5], "the run's end evaluates");
    let first = &records[0];
    for field in [
        "epoch",
        "elapsed_s",
        "loss",
        "nce_1t5",
        "nce_1t7",
        "nce_5t5",
        "reg",
        "class_lin",
        "class_mlp",
        "lr",
    ] {
        assert!(first[field].is_number(), "{field} missing: {first}");
    }
    for field in [
        "images_per_s",
        "data_wait_s",
        "compute_s",
        "gather_s",
        "bn_sync_s",
        "all_reduce_s",
        "rank_sync_s",
    ] {
        assert!(first[field].is_number(), "{field} missing: {first}");
    }
    let eval = records.iter().find(|r| r["kind"] == "eval").unwrap();
    assert!(eval["linear_accuracy"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{eval}");

    // The newest checkpoint is lost: the resume starts again at step 3, so
    // the records of steps 4 and 5 (and the eval at 5) must not stay twice.
    std::fs::remove_dir_all(ckpt.join("step-0000000005")).unwrap();
    let log = train(&spec, 10, true);
    assert!(log.contains("resumed from checkpoint step=3"), "{log}");
    let (steps, evals, records) = history(&ckpt);
    assert_eq!(steps, (1..=10).collect::<Vec<_>>(), "each step once, in order");
    assert_eq!(evals, vec![8, 10], "the epoch end and the run's end, the lost run's eval dropped");
    let elapsed: Vec<f64> = records.iter().map(|r| r["elapsed_s"].as_f64().unwrap()).collect();
    assert!(
        elapsed.windows(2).all(|w| w[0] <= w[1]),
        "elapsed time continues across the resume: {elapsed:?}"
    );

    // amdimctl history: a table row per step, and the records as JSON.
    let table = support::run_amdimctl(&["history", ckpt.to_str().unwrap()], &[]);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("STEP") && header.contains("LOSS") && header.contains("ONLINE-LIN"),
        "{table}"
    );
    let rows: Vec<u64> = lines.filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    assert_eq!(rows, (1..=10).collect::<Vec<_>>(), "{table}");
    assert!(table.lines().all(|l| l.chars().count() <= 80), "{table}");
    let json: Value = serde_json::from_str(&support::run_amdimctl(&["history", ckpt.to_str().unwrap(), "-o", "json"], &[])).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(12), "10 steps and 2 evaluations: {json}");
    assert_eq!(json[0]["kind"], "step");

    // amdimctl plot: this run and a second one, on shared axes, in a PNG.
    let (spec_b, ckpt_b) = write_spec(tmp.path(), "other", "other");
    train(&spec_b, 4, false);
    let png = tmp.path().join("curves.png");
    let targets = [ckpt.to_str().unwrap(), ckpt_b.to_str().unwrap()];
    for x in ["step", "time"] {
        let mut args = vec!["plot"];
        args.extend(targets);
        args.extend(["--out", png.to_str().unwrap(), "--width", "900", "--height", "640", "--x", x]);
        support::run_amdimctl(&args, &[]);
        let decoded = image::open(&png).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (900, 640));
        let colours: std::collections::HashSet<[u8; 3]> = decoded.to_rgb8().pixels().map(|p| p.0).collect();
        assert!(colours.len() > 20, "curves, text and legend were drawn ({} colours)", colours.len());
    }
    let out = Command::new(support::amdimctl())
        .args(["plot", targets[0], "--out"])
        .arg(&png)
        .args(["--font", "/nonexistent/font.ttf"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/font.ttf"));
}

#[test]
fn on_an_80_column_terminal_the_bar_and_summary_fit_and_leave_no_debris() {
    let tmp = tempfile::tempdir().unwrap();
    let (spec, ckpt) = write_spec(tmp.path(), "a-job-with-a-rather-long-name-for-a-terminal", "j");
    let socket = format!("amdim-test-{}", std::process::id());
    let done = tmp.path().join("done");
    let script = format!(
        "AMDIM_TRAIN__MAX_STEPS=12 {BIN} train --config {} >/dev/null; touch {}; sleep 60",
        spec.display(),
        done.display()
    );
    let tmux = |args: &[&str]| Command::new("tmux").arg("-L").arg(&socket).args(args).output().unwrap();
    let started = tmux(&["new-session", "-d", "-x", "80", "-y", "40", &script]);
    assert!(started.status.success(), "tmux: {}", String::from_utf8_lossy(&started.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while !done.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-J"]).stdout).into_owned();
    tmux(&["kill-server"]);
    assert!(done.exists(), "the run did not finish: {screen}");
    assert!(ckpt.join("history.jsonl").exists());
    for line in screen.lines() {
        assert!(line.chars().count() <= 80, "a line wider than the terminal: {line:?}\n{screen}");
    }
    let bars: Vec<&str> = screen.lines().filter(|l| l.contains("ETA")).collect();
    assert_eq!(bars.len(), 1, "one bar, no copies left by redraws:\n{screen}");
    assert!(bars[0].contains("12/12") && bars[0].contains("loss"), "{screen}");
    assert!(!screen.contains(" step "), "no per-step log lines under the bar:\n{screen}");
    assert!(screen.contains("online head") && screen.contains("amdim-worker probe"), "{screen}");
    assert!(screen.contains("history.jsonl"), "{screen}");
}
