//! `amdimctl logs` against a real coordinator and two worker agents on
//! loopback: a 2-worker job's lines come from both ranks (`[rank R]` in
//! front), `--rank 1` gives rank 1's alone, `-f` started while the job runs
//! prints lines while it runs and exits when it ends, and after the
//! coordinator restarted (its buffers gone) the finished job's lines come
//! from the log objects the workers stored next to the checkpoints.

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, ClusterOptions, state, step};
use support::small_job::SmallJob;

/// A coordinator (heartbeat timeout 5 s) and `agents` registered agents.
fn start_cluster(dir: &Path, agents: usize) -> Cluster {
    let options = ClusterOptions {
        heartbeat_timeout_s: 5,
        ..Default::default()
    };
    let mut cluster = Cluster::start(dir, options);
    cluster.add_registered_agents(agents);
    cluster
}

/// A small synthetic job of `steps` steps on 2 workers, checkpointed every
/// 1000 steps (so, at its end).
fn job_spec(dir: &Path, steps: u64) -> PathBuf {
    SmallJob::new("logs-test", steps, dir.join("ckpt"))
        .every_steps(1000)
        .workers(2, 2)
        .write(&dir.join("job.toml"))
}

/// The lines of `text` that start with `[rank R] `, without that prefix.
fn of_rank(text: &str, rank: u32) -> Vec<&str> {
    let prefix = format!("[rank {rank}] ");
    text.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
}

#[test]
fn logs_of_a_two_worker_job_live_by_rank_and_after_a_coordinator_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(tmp.path(), 2);
    let steps = 400;
    let spec = job_spec(tmp.path(), steps);
    let id = cluster.ctl_ok(&["submit", "-f", spec.to_str().unwrap()]).trim().to_string();
    cluster.wait_for(&id, "train on 2 workers", Duration::from_secs(300), |j| {
        state(j) == "RUNNING" && step(j) >= 3
    });

    // Following while it runs: lines arrive while the job is still running.
    let mut follower = cluster
        .ctl_command(&["logs", &id, "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(60)).expect("a line while the job runs");
    let j = cluster.job(&id);
    assert_eq!(j["state"], "RUNNING", "the first followed line came after the job ended: {j}");
    assert!(j["step"].as_u64().unwrap() < steps, "{j}");
    assert!(first.starts_with("[rank "), "{first}");
    // It exits on its own once the job ended, having printed both ranks' last line.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = follower.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "logs -f did not exit");
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    assert!(status.success());
    assert_eq!(state(&cluster.job(&id)), "SUCCEEDED");
    let followed: Vec<String> = std::iter::once(first).chain(rx.try_iter()).collect();
    let followed = followed.join("\n");
    for rank in [0, 1] {
        let last = of_rank(&followed, rank).last().copied().unwrap_or_default();
        assert!(last.ends_with("part ended: trained to the end"), "rank {rank} followed to: {last}");
    }

    // After the end: both ranks, each line once, every step line there.
    let all = cluster.ctl_ok(&["logs", &id]);
    for rank in [0, 1] {
        let lines = of_rank(&all, rank);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("training logs-test") && l.contains(&format!("rank={rank} world=2"))),
            "rank {rank}:\n{all}"
        );
        let step_lines = lines.iter().filter(|l| l.contains(" step=") && l.contains(" loss=")).count();
        assert!(step_lines >= steps as usize, "rank {rank}: {step_lines} step lines\n{all}");
        let mut unique = lines.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), lines.len(), "rank {rank}: a line twice");
    }
    assert_eq!(all.lines().count(), of_rank(&all, 0).len() + of_rank(&all, 1).len(), "{all}");
    // One rank: its lines alone, without the prefix.
    let one = cluster.ctl_ok(&["logs", &id, "--rank", "1"]);
    assert_eq!(one.lines().collect::<Vec<_>>(), of_rank(&all, 1));

    // The coordinator restarts: its buffers are gone, the stored objects
    // give the same lines.
    cluster.kill_coordinator();
    cluster.start_coordinator();
    let started = Instant::now();
    while state(&cluster.job(&id)) != "SUCCEEDED" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the restarted coordinator does not answer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(tmp.path().join("ckpt/logs/gen-1/rank-1.log").exists());
    assert_eq!(cluster.ctl_ok(&["logs", &id]), all);
    assert_eq!(cluster.ctl_ok(&["logs", &id, "--rank", "1"]), one);
}
