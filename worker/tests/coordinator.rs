//! A coordinator, worker agents and amdimctl as real processes on loopback:
//! a job on two workers succeeds; a worker killed with SIGKILL mid-job makes
//! the job restart from its checkpoint on the survivor and finish; a
//! coordinator killed with SIGKILL and started again on its store
//! carries the job to the end; a worker frozen with SIGSTOP does not hang
//! its peer (the peer's stop is bounded); bad specs and cancels behave;
//! without the right tokens neither clients nor workers get in.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::cluster::{Cluster, ClusterOptions, state, step};
use support::coordinator_bin;
use support::small_job::SmallJob;

/// A coordinator (heartbeat timeout 2 s) and `agents` registered agents
/// leaving their sample logs in `dir`, stopping within 10 s.
fn start(dir: &Path, agents: usize) -> Cluster {
    start_with(dir, agents, None, false, 1)
}

/// As [`start`], requiring `tokens` (client, join) if any; with `tls`, a
/// CA and a certificate for 127.0.0.1 signed by it are made with openssl,
/// and every process talks gRPC over TLS. Each agent offers `devices`
/// devices (ranks).
fn start_with(dir: &Path, agents: usize, tokens: Option<(&str, &str)>, tls: bool, devices: u32) -> Cluster {
    let options = ClusterOptions {
        heartbeat_timeout_s: 2,
        tokens: tokens.map(|(client, join)| (client.to_string(), join.to_string())),
        tls,
        agent_devices: Some(devices),
        sample_logs: true,
        // A part told to stop ends within 10 s (its collectives are cancelled after that).
        stop_grace_s: Some(10),
        ..Default::default()
    };
    let mut cluster = Cluster::start(dir, options);
    cluster.add_registered_agents(agents);
    cluster
}

/// A small synthetic job of `steps` steps on `min`..=`max` workers,
/// checkpointed every 10 steps into `ckpt-{steps}`.
fn job_spec(dir: &Path, steps: u64, min: u32, max: u32) -> PathBuf {
    SmallJob::new("coord-test", steps, dir.join(format!("ckpt-{steps}")))
        .workers(min, max)
        .write(&dir.join(format!("job-{steps}.toml")))
}

/// `text` (YAML) read by PyYAML, as JSON.
fn yaml_as_json(text: &str) -> serde_json::Value {
    let out = support::pipe_through(
        Command::new("python3").args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"]),
        "python3 with PyYAML",
        text,
    );
    assert!(
        out.status.success(),
        "PyYAML could not read:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Checks the sample logs of a job that ran two generations (2 ranks, then
/// 1 after a kill): steps before the checkpoint generation 2 restored come
/// from generation 1's ranks, the rest from generation 2; every step was
/// trained with a full global batch, every full epoch holds every sample
/// exactly once, and the last partial one none twice. Returns the restored step.
fn trained_exactly_once(dir: &Path, job: &str, total: u64, samples: usize, batch: usize) -> u64 {
    let read = |name: String| -> Vec<(u64, u64, Vec<u32>)> {
        std::fs::read_to_string(dir.join(&name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .lines()
            .map(|l| {
                let mut f = l.split(' ').map(|x| x.parse::<u64>().unwrap());
                let (step, epoch) = (f.next().unwrap(), f.next().unwrap());
                (step, epoch, f.map(|i| i as u32).collect())
            })
            .collect()
    };
    let second = read(format!("{job}-g2-r0.log"));
    let restored = second[0].0;
    let manifest = dir.join(format!("ckpt-{total}/step-{restored:010}/manifest.json"));
    assert!(
        manifest.exists(),
        "generation 2 starts at step {restored}, not at a complete checkpoint"
    );
    let mut steps: std::collections::BTreeMap<u64, (u64, Vec<u32>)> = Default::default();
    let first: Vec<_> = (0..2).flat_map(|r| read(format!("{job}-g1-r{r}.log"))).collect();
    for (step, epoch, indices) in first.into_iter().filter(|s| s.0 < restored).chain(second) {
        let entry = steps.entry(step).or_insert((epoch, Vec::new()));
        assert_eq!(entry.0, epoch, "step {step}: epochs differ between ranks");
        entry.1.extend(indices);
    }
    assert_eq!(
        steps.keys().copied().collect::<Vec<_>>(),
        (0..total).collect::<Vec<_>>(),
        "every step once"
    );
    let mut epochs: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
    for (step, (epoch, indices)) in &steps {
        assert_eq!(indices.len(), batch, "step {step}: a full global batch");
        epochs.entry(*epoch).or_default().extend(indices);
    }
    let per_epoch = (samples / batch) as u64;
    for (epoch, mut seen) in epochs {
        seen.sort_unstable();
        let full = (epoch + 1) * per_epoch <= total;
        if full {
            assert_eq!(
                seen,
                (0..samples as u32).collect::<Vec<_>>(),
                "epoch {epoch}: every sample exactly once"
            );
        } else {
            let n = seen.len();
            seen.dedup();
            assert_eq!(seen.len(), n, "epoch {epoch} (partial): a sample twice");
        }
    }
    restored
}

#[test]
fn a_job_on_two_workers_succeeds_and_survives_a_killed_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = start(tmp.path(), 2);

    // Two workers from start to end.
    let spec = job_spec(tmp.path(), 12, 2, 2);
    let out = cluster.ctl_output(&["submit", "-f", spec.to_str().unwrap(), "--watch"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let j = cluster.job(&id);
    assert_eq!(state(&j), "SUCCEEDED");
    assert_eq!(j["generations"].as_array().unwrap().len(), 1);
    // Rank 0 registered its complete checkpoints with the coordinator.
    let steps: Vec<u64> = j["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![10, 12], "{j}");
    // Rank 0's numbers reached the coordinator with its heartbeats.
    let stats = &j["stats"];
    assert!(stats["samples_per_second"].as_f64().unwrap() > 0.0, "{j}");
    assert!(
        stats["loss"].as_f64().unwrap().is_finite() && stats["step_seconds"].as_f64().unwrap() > 0.0,
        "{j}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("ckpt-12/step-0000000012/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["world_size"], 2);
    // Its checkpoints by job id: the coordinator knows where they are.
    let listed: serde_json::Value = serde_json::from_str(&cluster.ctl_stdout(&["checkpoints", &id, "-o", "json"])).unwrap();
    let listed: Vec<u64> = listed.as_array().unwrap().iter().map(|c| c["step"].as_u64().unwrap()).collect();
    assert_eq!(listed, vec![10, 12]);
    let export = tmp.path().join("export");
    let out = cluster.ctl_output(&["export", &id, "--out", export.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(export.join("model.safetensors").metadata().unwrap().len() > 1000);

    // A worker killed at a random step: the job restarts on the survivor
    // from its checkpoint, and every sample is trained exactly once per
    // epoch counting from the restored checkpoint.
    let spec = job_spec(tmp.path(), 300, 1, 2);
    let id = cluster.ctl_stdout(&["submit", "-f", spec.to_str().unwrap()]).trim().to_string();
    let kill_at = 15
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
            % 30;
    cluster.wait_for(&id, "reach the kill step on 2 workers", Duration::from_secs(120), |j| {
        state(j) == "RUNNING" && step(j) >= kill_at
    });
    cluster.agents[1].kill().unwrap();
    let j = cluster.wait_for(&id, "restart and finish", Duration::from_secs(300), |j| {
        matches!(state(j), "SUCCEEDED" | "FAILED")
    });
    assert_eq!(state(&j), "SUCCEEDED", "killed at step {kill_at}: {j}");
    assert_eq!(j["restarts"], 1);
    let generations = j["generations"].as_array().unwrap();
    assert_eq!(generations.len(), 2, "{j}");
    assert_eq!(generations[1]["workers"].as_array().unwrap().len(), 1);
    let reason = generations[0]["end_reason"].as_str().unwrap();
    assert!(reason.contains("lost"), "{reason}");
    let restored = trained_exactly_once(tmp.path(), &id, 300, 64, 8);
    let log = std::fs::read_to_string(cluster.agent_log("w0")).unwrap();
    assert!(log.contains(&format!("resumed from checkpoint step={restored}")), "{log}");
    assert!(tmp.path().join("ckpt-300/step-0000000300/manifest.json").exists());

    // Its events tell the story, in order; YAML says what JSON says.
    let events: serde_json::Value = serde_json::from_str(&cluster.ctl_stdout(&["events", &id, "-o", "json"])).unwrap();
    let kinds: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let at = |k: &str| kinds.iter().position(|x| *x == k).unwrap_or_else(|| panic!("no {k} in {kinds:?}"));
    assert_eq!(kinds[0], "submitted");
    assert!(at("generation_started") < at("generation_ended"), "{kinds:?}");
    assert!(at("generation_ended") < at("restarting"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"succeeded"), "{kinds:?}");
    assert!(kinds.contains(&"checkpoint_committed"), "{kinds:?}");
    let yaml = cluster.ctl_stdout(&["events", &id, "-o", "yaml"]);
    assert_eq!(yaml_as_json(&yaml), events, "{yaml}");
    let table = cluster.ctl_stdout(&["events", &id]);
    assert!(
        table.lines().any(|l| l.contains(" g2 ") && l.contains("generation_started")),
        "{table}"
    );

    // A bad spec is refused before it reaches the coordinator; cancel works.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[optim]\nlr = -1.0\n").unwrap();
    let out = cluster.ctl_output(&["submit", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("optim.lr"));
    let id = cluster
        .ctl_stdout(&["submit", "-f", job_spec(tmp.path(), 100_000, 1, 1).to_str().unwrap()])
        .trim()
        .to_string();
    cluster.wait_for(&id, "start", Duration::from_secs(60), |j| state(j) == "RUNNING");
    assert!(cluster.ctl_output(&["cancel", &id]).status.success());
    assert_eq!(state(&cluster.job(&id)), "CANCELLED");
    let out = cluster.ctl_output(&["cancel", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is Cancelled"), "{err}");
}

#[test]
fn a_frozen_worker_does_not_hang_its_peer_past_the_stop_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = start(tmp.path(), 2);
    let spec = job_spec(tmp.path(), 100_000, 1, 2);
    // Collectives alone would wait 600 s for the frozen peer.
    let text = std::fs::read_to_string(&spec).unwrap().replace("timeout_s = 20", "timeout_s = 600");
    std::fs::write(&spec, text).unwrap();
    let id = cluster.ctl_stdout(&["submit", "-f", spec.to_str().unwrap()]).trim().to_string();
    cluster.wait_for(&id, "train on 2 workers", Duration::from_secs(120), |j| {
        state(j) == "RUNNING" && step(j) >= 5
    });
    let frozen = cluster.agents[1].id().to_string();
    let signal = |s: &str| assert!(Command::new("kill").args([s, &frozen]).status().unwrap().success());
    signal("-STOP");
    let froze = Instant::now();
    // Lost after the heartbeat timeout (2 s); the survivor, blocked in a
    // collective on it, is told to stop, cancelled after --stop-grace-s
    // (10 s), reports, and the job restarts on it alone.
    let j = cluster.wait_for(&id, "restart on the survivor", Duration::from_secs(60), |j| {
        j["generations"].as_array().is_some_and(|g| g.len() == 2) && state(j) == "RUNNING"
    });
    let took = froze.elapsed();
    signal("-CONT");
    assert!(took < Duration::from_secs(60), "restarted {took:?} after the freeze");
    let generations = j["generations"].as_array().unwrap();
    assert_eq!(generations[1]["workers"].as_array().unwrap().len(), 1, "{j}");
    assert!(generations[0]["end_reason"].as_str().unwrap().contains("lost"), "{j}");
    let log = std::fs::read_to_string(cluster.agent_log("w0")).unwrap();
    assert!(log.contains("collectives cancelled") && log.contains("--stop-grace-s"), "{log}");
    assert!(cluster.ctl_output(&["cancel", &id]).status.success());
}

#[test]
fn a_restarted_coordinator_carries_the_job_to_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = start(tmp.path(), 1);
    assert_eq!(cluster.probe("/healthz"), "HTTP/1.1 200 OK");
    assert_eq!(cluster.probe("/readyz"), "HTTP/1.1 200 OK");
    let spec = job_spec(tmp.path(), 200, 1, 1);
    let id = cluster.ctl_stdout(&["submit", "-f", spec.to_str().unwrap()]).trim().to_string();
    cluster.wait_for(&id, "reach step 20", Duration::from_secs(120), |j| step(j) >= 20);
    // A watcher follows the job's stream through the coordinator's restart.
    let watcher = cluster
        .ctl_command(&["watch", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    cluster.kill_coordinator();
    std::thread::sleep(Duration::from_millis(500));
    cluster.start_coordinator();
    let j = cluster.wait_for(&id, "finish after the coordinator restart", Duration::from_secs(300), |j| {
        matches!(state(j), "SUCCEEDED" | "FAILED")
    });
    assert_eq!(state(&j), "SUCCEEDED", "{j}");
    let generations = j["generations"].as_array().unwrap();
    assert!(generations.len() >= 2, "{j}");
    assert_eq!(generations[0]["end_reason"], "coordinator restarted");
    let watched = watcher.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{text}");
    assert!(text.contains("lost the coordinator"), "{text}");
    for expected in [
        " g1  generation_started",
        " g1  generation_ended",
        " g2  generation_started",
        "succeeded",
        "SUCCEEDED",
    ] {
        assert!(text.contains(expected), "{expected:?} not in\n{text}");
    }
    assert_eq!(text.matches("submitted").count(), 1, "no event twice after the reconnect:\n{text}");
}

#[test]
fn agents_with_two_devices_each_run_a_job_on_four_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = start_with(tmp.path(), 2, None, false, 2);
    let spec = job_spec(tmp.path(), 12, 2, 2);
    let text = std::fs::read_to_string(&spec).unwrap() + "devices_per_worker = 2\n";
    std::fs::write(&spec, text).unwrap();
    let out = cluster.ctl_output(&["submit", "-f", spec.to_str().unwrap(), "--watch"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let j = cluster.job(&id);
    assert_eq!(state(&j), "SUCCEEDED", "{j}");
    assert_eq!(j["devices_per_worker"], 2);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("ckpt-12/step-0000000012/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["world_size"], 4, "2 workers × 2 ranks");
    // Every rank trained its own quarter of each global batch.
    let mut step0: Vec<u32> = Vec::new();
    for rank in 0..4 {
        let log = std::fs::read_to_string(tmp.path().join(format!("{id}-g1-r{rank}.log"))).unwrap();
        let first = log.lines().next().unwrap();
        let indices: Vec<u32> = first.split(' ').skip(2).map(|i| i.parse().unwrap()).collect();
        assert_eq!(indices.len(), 2, "rank {rank}: {first}");
        assert_eq!(log.lines().count(), 12, "rank {rank}");
        step0.extend(indices);
    }
    step0.sort_unstable();
    step0.dedup();
    assert_eq!(step0.len(), 8, "step 0's global batch split over 4 ranks");
    let workers = cluster.ctl_stdout(&["workers", "-o", "json"]);
    assert_eq!(workers.matches("\"devices\":2").count(), 2, "{workers}");
}

#[test]
fn amdimctl_local_runs_a_job_on_local_worker_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = job_spec(tmp.path(), 12, 1, 2);
    // `amdimctl local` on `workers` worker processes, with `more` flags.
    let local = |workers: &str, more: &[&str]| {
        let mut c = Command::new(coordinator_bin("amdimctl"));
        c.args(["local", "-f", spec.to_str().unwrap(), "--workers", workers])
            .args(more)
            .args(["--worker-bin", env!("CARGO_BIN_EXE_amdim-worker")]);
        c
    };
    let out = local("2", &[]).env("NO_COLOR", "1").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // The progress and the summary here; the workers' output in the run's logs/.
    assert!(err.contains("SUCCEEDED") && !err.contains("test accuracy"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCEEDED"));
    let logs: String = (0..2)
        .map(|i| std::fs::read_to_string(tmp.path().join(format!("logs/worker-{i}.log"))).unwrap())
        .collect();
    assert!(logs.contains("test accuracy"), "{logs}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("ckpt-12/step-0000000012/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["world_size"], 2);
    // A job that fails (no dataset there) exits 1.
    let out = local("1", &["--set", "data.format=idx", "--set", "data.path=/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tokens_keep_out_clients_and_workers_without_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = start_with(tmp.path(), 1, Some(("client-s3cret", "join-s3cret")), false, 1);
    let plain = |token: Option<&str>, args: &[&str]| {
        let mut c = Command::new(coordinator_bin("amdimctl"));
        c.args(["--server", cluster.server()]).env_remove("AMDIM_TOKEN");
        if let Some(t) = token {
            c.args(["--token", t]);
        }
        c.args(args).output().unwrap()
    };
    let out = plain(None, &["list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("missing client token") && err.contains("--token"),
        "{err}"
    );
    let out = plain(Some("guess"), &["list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("wrong client token") && !err.contains("client-s3cret"),
        "{err}"
    );
    // A worker with the wrong join token is refused and exits.
    let out = Command::new(env!("CARGO_BIN_EXE_amdim-worker"))
        .args(["agent", "--coordinator", cluster.server()])
        .env("AMDIM_JOIN_TOKEN", "guess")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("wrong join token"), "{err}");
    // With the tokens, the job runs on the worker that had the right one.
    let spec = job_spec(tmp.path(), 6, 1, 1);
    let out = cluster.ctl_output(&["submit", "-f", spec.to_str().unwrap(), "--watch"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn grpc_over_tls_trains_a_job_and_refuses_clients_without_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = start_with(tmp.path(), 1, None, true, 1);
    assert!(cluster.server().starts_with("https://"));
    // Agents and amdimctl verify the coordinator against the CA.
    let spec = job_spec(tmp.path(), 4, 1, 1);
    let out = cluster.ctl_output(&["submit", "-f", spec.to_str().unwrap(), "--watch"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Without the CA the certificate is not trusted; plain HTTP/2 gets nowhere.
    let untrusted = Command::new(coordinator_bin("amdimctl"))
        .args(["--server", cluster.server(), "list"])
        .env_remove("AMDIM_TLS_CA_FILE")
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
    let plain = Command::new(coordinator_bin("amdimctl"))
        .args(["--server", &cluster.server().replace("https://", "http://"), "list"])
        .env_remove("AMDIM_TLS_CA_FILE")
        .output()
        .unwrap();
    assert!(!plain.status.success());
    // A bad key file is named at start.
    let bad = Command::new(coordinator_bin("amdim-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--tls-cert-file")
        .arg(tmp.path().join("cert.pem"))
        .arg("--tls-key-file")
        .arg(tmp.path().join("cert.csr"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("--tls-key-file") && err.contains("cert.csr"),
        "{err}"
    );
}
