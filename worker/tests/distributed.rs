//! Data-parallel training as real OS processes over loopback TCP:
//! - W ∈ {2, 3} ranks of B images give the loss and parameter gradients of
//!   one rank of W·B images (synchronised BN), and the twin that gathers
//!   targets without summing their gradients over ranks does not;
//! - the same with both ranks in one process (`--local-ranks 2`, no
//!   rendezvous address given);
//! - `train` on 2 processes ends where the single process ends, with
//!   identical parameters on both ranks after every logged step;
//! - a rank killed mid-training makes the others fail promptly, naming it;
//! - a stop (SIGINT) that only one rank sees ends every rank after the same
//!   step, rank 0 writing the checkpoint, in separate processes and in one.
//!
//! Tolerances (float32, different summation orders), allclose-style per
//! tensor: max|a−b| ≤ 5e-5·max|a_t| + 1e-5·(largest gradient of the step);
//! the absolute part covers gradients that are exactly 0 in real arithmetic
//! (a bias right before a BatchNorm) and rounding noise in float32. Measured
//! here: at most 1.7e-5 relative on any tensor above that floor. The loss
//! within 1e-6 relative.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::free_addr;
use support::ranks::rank_args;

const BIN: &str = env!("CARGO_BIN_EXE_amdim-worker");

fn job(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("job.toml");
    std::fs::write(
        &path,
        format!(
            "[job]\nname = \"dist\"\nseed = 5\n\
             [data]\nformat = \"synthetic\"\nsynthetic_samples = 96\n\
             [model]\nndf = 8\nn_rkhs = 32\ndepth = 1\n\
             [train]\nbatch_size = 12\nlog_every = 1\n\
             [optim]\nwarmup_steps = 0\nlr = 0.002\n\
             [eval]\nbn_refresh_batches = 1\nmax_test_samples = 24\n\
             [dist]\nsync_bn = true\ntimeout_s = 20\n\
             [checkpoint]\nuri = \"{}\"\nevery_steps = 0\nkeep = 0\n{extra}",
            dir.join("ckpt").display()
        ),
    )
    .unwrap();
    path
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `world` ranks of `args` with `env` (each with its own log file
/// `rank{R}.log` in `logs`).
fn spawn_ranks(world: usize, args: &[&str], env: &[(&str, &str)], logs: &Path) -> Vec<Child> {
    let addr = free_addr();
    (0..world)
        .map(|rank| {
            Command::new(BIN)
                .args(args)
                .args(rank_args(rank, world, &addr))
                .envs(env.iter().copied())
                .env("NO_COLOR", "1")
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(logs.join(format!("rank{rank}.log"))).unwrap())
                .spawn()
                .unwrap()
        })
        .collect()
}

fn wait_all(children: Vec<Child>, logs: &Path) -> Vec<String> {
    children
        .into_iter()
        .enumerate()
        .map(|(rank, c)| {
            let out = c.wait_with_output().unwrap();
            let log = std::fs::read_to_string(logs.join(format!("rank{rank}.log"))).unwrap_or_default();
            assert!(out.status.success(), "rank {rank} failed:\n{log}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect()
}

#[derive(serde::Deserialize, Debug)]
#[allow(dead_code)]
struct Comparison {
    /// ≤ 1: within tolerance.
    worst_excess: f64,
    worst: Vec<(String, f64)>,
    worst_rel: f64,
}

/// allclose(reference, other) per tensor; `skip`: name suffixes left out.
fn compare(reference: &Path, other: &Path, rtol: f64, atol_rel: f64, skip: &[&str]) -> Comparison {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/compare_grads.py"))
        .args([reference, other])
        .args([rtol.to_string(), atol_rel.to_string()])
        .args(skip)
        .output()
        .unwrap();
    serde_json::from_str(&ok(out, "compare_grads.py")).unwrap()
}

fn loss(stdout: &str) -> f64 {
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    v["loss"].as_f64().unwrap()
}

#[test]
fn w_ranks_of_b_images_have_the_gradients_of_one_rank_of_w_times_b_images() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = job(tmp.path(), "");
    let spec_s = spec.to_str().unwrap();
    // Two Adam steps first, so that no layer is still at its zero initialisation.
    ok(
        Command::new(BIN)
            .args(["train", "-c", spec_s])
            .env("AMDIM_TRAIN__MAX_STEPS", "2")
            .output()
            .unwrap(),
        "single-process warm-up",
    );
    let single = tmp.path().join("single.safetensors");
    let single_loss = loss(&ok(
        Command::new(BIN)
            .args(["gradients", "--resume", "-c", spec_s, "--out", single.to_str().unwrap()])
            .output()
            .unwrap(),
        "single-process gradients",
    ));
    for (world, plain) in [(2, false), (3, false), (2, true)] {
        let out = tmp.path().join(format!("w{world}-{plain}.safetensors"));
        let mut args = vec!["gradients", "--resume", "-c", spec_s, "--out", out.to_str().unwrap()];
        if plain {
            args.push("--plain-gather");
        }
        let stdouts = wait_all(spawn_ranks(world, &args, &[], tmp.path()), tmp.path());
        let c = compare(&single, &out, 5e-5, 1e-5, &[]);
        if plain {
            assert!(
                c.worst_excess > 100.0,
                "dropping the gradient exchange of the gathered targets must change the gradients: {c:?}"
            );
            continue;
        }
        for s in &stdouts {
            let l = loss(s);
            assert!(
                (l - single_loss).abs() <= 1e-6 * single_loss.abs(),
                "W={world}: loss {l} vs {single_loss}"
            );
        }
        assert!(c.worst_excess <= 1.0, "W={world}: {c:?}");
    }
    // One process driving both ranks of a world of 2, each on its own share
    // of the threads; with neither --world-size nor --rendezvous, the world
    // is this process's ranks and it picks its own loopback port.
    let out = tmp.path().join("local-ranks.safetensors");
    let stdout = ok(
        Command::new(BIN)
            .args(["gradients", "--resume", "-c", spec_s, "--out", out.to_str().unwrap()])
            .args(["--local-ranks", "2"])
            .output()
            .unwrap(),
        "--local-ranks 2",
    );
    assert_eq!(stdout.lines().count(), 2, "one result per local rank: {stdout}");
    let c = compare(&single, &out, 5e-5, 1e-5, &[]);
    assert!(c.worst_excess <= 1.0, "--local-ranks 2: {c:?}");
}

fn step_losses(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(" step "))
        .filter_map(|l| l.split(" loss=").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect()
}

fn checksums(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" step "))
        .filter_map(|l| l.split("param_checksum=").nth(1))
        .map(|s| s.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn two_processes_train_like_one_and_stay_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let single_dir = tmp.path().join("single");
    let multi_dir = tmp.path().join("multi");
    std::fs::create_dir_all(&single_dir).unwrap();
    std::fs::create_dir_all(&multi_dir).unwrap();
    let steps = "4";
    let single = job(&single_dir, "");
    let single_out = Command::new(BIN)
        .args(["train", "-c", single.to_str().unwrap()])
        .env("AMDIM_TRAIN__MAX_STEPS", steps)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(single_out.status.success(), "{}", String::from_utf8_lossy(&single_out.stderr));
    let multi = job(&multi_dir, "");
    let children = spawn_ranks(
        2,
        &["train", "-c", multi.to_str().unwrap()],
        &[("AMDIM_TRAIN__MAX_STEPS", steps)],
        &multi_dir,
    );
    wait_all(children, &multi_dir);
    let logs: Vec<String> = (0..2)
        .map(|r| std::fs::read_to_string(multi_dir.join(format!("rank{r}.log"))).unwrap())
        .collect();
    let (c0, c1) = (checksums(&logs[0]), checksums(&logs[1]));
    assert_eq!(c0.len(), 4, "one checksum per step: {}", logs[0]);
    assert_eq!(c0, c1, "ranks hold different parameters");
    assert!(logs[0].contains("exposed_comm_share") && logs[0].contains("test accuracy"));
    // Rank 0 wrote the checkpoint; rank 1 wrote nothing.
    // The same losses step by step (rank 0 logs the mean over ranks)...
    let single_log = String::from_utf8_lossy(&single_out.stderr).into_owned();
    let (a, b) = (step_losses(&single_log), step_losses(&logs[0]));
    assert_eq!(a.len(), 4, "{single_log}");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "losses {a:?} vs {b:?}");
    }
    // ...and the same parameters, except biases right before a BatchNorm
    // (and that BatchNorm's running mean, which follows them): their
    // gradient is 0 up to rounding, and Adam turns that noise into ±lr
    // steps that have no effect on the network's output.
    let model = |dir: &Path| dir.join("ckpt/step-0000000004/model.safetensors");
    let c = compare(
        &model(&single_dir),
        &model(&multi_dir),
        1e-4,
        1e-6,
        &["shortcut.bias", "bn_out.bn.running_mean"],
    );
    assert!(c.worst_excess <= 1.0, "parameters after 4 steps: {c:?}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(multi_dir.join("ckpt/step-0000000004/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["world_size"], 2);
}

#[test]
fn a_killed_rank_fails_the_others_promptly_and_they_name_it() {
    // Ring data through shared memory (the default on one host) and over TCP.
    for shared_memory in ["true", "false"] {
        a_killed_rank_fails_the_others(shared_memory);
    }
}

fn a_killed_rank_fails_the_others(shared_memory: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let spec = job(tmp.path(), "");
    let mut children = {
        let addr = free_addr();
        (0..3)
            .map(|rank| {
                Command::new(BIN)
                    .args(["train", "-c", spec.to_str().unwrap()])
                    .args(rank_args(rank, 3, &addr))
                    .env("AMDIM_TRAIN__MAX_STEPS", "100000")
                    .env("AMDIM_TRAIN__EPOCHS", "100000")
                    .env("AMDIM_DIST__SHARED_MEMORY", shared_memory)
                    .env("NO_COLOR", "1")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(tmp.path().join(format!("rank{rank}.log"))).unwrap())
                    .spawn()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    wait_for_log(&tmp.path().join("rank1.log"), "step=3");
    children[1].kill().unwrap();
    let killed = Instant::now();
    for rank in [0, 2] {
        let status = children[rank].wait().unwrap();
        let log = std::fs::read_to_string(tmp.path().join(format!("rank{rank}.log"))).unwrap();
        assert!(!status.success(), "shared memory {shared_memory}: rank {rank} kept going:\n{log}");
        let error = log.split("Error:").nth(1).unwrap_or_default();
        let error = error.split("Stack backtrace").next().unwrap_or_default();
        assert!(
            error.contains("lost rank 1") || error.contains("[1] lost"),
            "shared memory {shared_memory}: rank {rank} does not name rank 1:\n{log}"
        );
    }
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "shared memory {shared_memory}: the survivors took {:?}: longer than the collective timeout",
        killed.elapsed()
    );
    let _ = children[1].wait();
}

/// The step at which a rank's log says it stopped on request.
fn stopped_at(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("stopped on request"))?;
    line.split("step=").nth(1)?.split_whitespace().next()?.parse().ok()
}

/// Waits until `log` holds `needle` (two minutes at most).
fn wait_for_log(log: &Path, needle: &str) {
    let started = Instant::now();
    while !std::fs::read_to_string(log).unwrap_or_default().contains(needle) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} never showed {needle:?}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stop_seen_by_one_rank_stops_every_rank_after_the_same_step() {
    let interrupt = |pid: u32| {
        let status = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
        assert!(status.success());
    };
    let long = [("AMDIM_TRAIN__MAX_STEPS", "100000"), ("AMDIM_TRAIN__EPOCHS", "100000")];
    // Three processes; only rank 1 is interrupted. The others must not
    // begin a step rank 1 never joins (they would wait in it until the
    // collective timeout and fail): all three stop after the same step,
    // and rank 0 writes its checkpoint.
    let tmp = tempfile::tempdir().unwrap();
    let spec = job(tmp.path(), "");
    let children = spawn_ranks(3, &["train", "-c", spec.to_str().unwrap()], &long, tmp.path());
    wait_for_log(&tmp.path().join("rank1.log"), "step=3");
    interrupt(children[1].id());
    let started = Instant::now();
    wait_all(children, tmp.path());
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?} to stop", started.elapsed());
    let logs: Vec<String> = (0..3)
        .map(|r| std::fs::read_to_string(tmp.path().join(format!("rank{r}.log"))).unwrap())
        .collect();
    let steps: Vec<Option<u64>> = logs.iter().map(|l| stopped_at(l)).collect();
    assert!(
        steps[0].is_some() && steps.iter().all(|s| *s == steps[0]),
        "stopped at {steps:?}:\n{}",
        logs[0]
    );
    let step = steps[0].unwrap_or_default();
    assert!(
        tmp.path().join(format!("ckpt/step-{step:010}/manifest.json")).exists(),
        "{}",
        logs[0]
    );

    // Both ranks in one process (Ctrl-C on the README's example): the same.
    let tmp = tempfile::tempdir().unwrap();
    let spec = job(tmp.path(), "");
    let log = tmp.path().join("local.log");
    let child = Command::new(BIN)
        .args(["train", "-c", spec.to_str().unwrap(), "--local-ranks", "2"])
        .envs(long)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_log(&log, "step=3");
    interrupt(child.id());
    let status = child.wait_with_output().unwrap().status;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    let ranks_stopped: Vec<&str> = text.lines().filter(|l| l.contains("stopped on request")).collect();
    assert_eq!(ranks_stopped.len(), 2, "{text}");
    assert_eq!(stopped_at(ranks_stopped[0]), stopped_at(ranks_stopped[1]), "{text}");
}
