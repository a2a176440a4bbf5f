//! Fault paths with real processes on loopback (a coordinator, worker
//! agents, amdimctl): a part that ends while the coordinator is down still
//! finishes the job once it is back (its finish is retried); the final
//! checkpoint of a generation lost before it could report is registered by
//! the generation that resumes from it; a SIGTERM'd
//! worker is preempted — a final checkpoint, an event, no restart spent
//! even with `max_restarts = 0` — and the job resumes on a new worker; a
//! coordinator whose store sits on a full tmpfs refuses a submit (naming
//! the file), records nothing, and keeps serving; a heartbeat for a part
//! the coordinator does not know is answered Stop, and a worker that trains
//! nothing while the coordinator counts it in a generation ends that
//! generation instead of leaving the job running for ever.

mod support;

use amdim_shared::proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, ClusterOptions, state, step};
use support::small_job::SmallJob;

/// A coordinator on `store` (restarted on its port and store when a test
/// asks), answering before this returns; agents leave their sample logs in
/// `dir` and stop within 10 s.
fn start_cluster(dir: &Path, store: &Path) -> Cluster {
    let options = ClusterOptions {
        store: Some(store.to_path_buf()),
        heartbeat_timeout_s: 5,
        wait_until_serving: true,
        sample_logs: true,
        stop_grace_s: Some(10),
        ..Default::default()
    };
    Cluster::start(dir, options)
}

/// A small synthetic job of `steps` steps, checkpointed every 10, with
/// `extra` scheduling lines.
fn job_spec(dir: &Path, steps: u64, extra: &str) -> PathBuf {
    SmallJob::new("faults", steps, dir.join("ckpt"))
        .scheduling(extra)
        .write(&dir.join(format!("job-{steps}.toml")))
}

/// Waits until `path` contains `text`.
fn wait_for_log(path: &Path, text: &str, timeout: Duration) {
    let started = Instant::now();
    while !std::fs::read_to_string(path).unwrap_or_default().contains(text) {
        assert!(started.elapsed() < timeout, "{text:?} never appeared in {}", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The steps a part trained, from its sample log (one line per step).
fn steps(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().filter_map(|l| l.split(' ').next()?.parse().ok()).collect()
}

fn first_step(path: &Path) -> u64 {
    steps(path)[0]
}

fn last_step(path: &Path) -> u64 {
    *steps(path).last().unwrap()
}

#[test]
fn a_part_that_ends_while_the_coordinator_is_down_still_finishes_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(tmp.path(), &tmp.path().join("coordinator.db"));
    cluster.add_agent("w0");
    let spec = job_spec(tmp.path(), 40, "max_restarts = 0\n");
    let id = cluster.ctl_ok(&["submit", "-f", spec.to_str().unwrap()]).trim().to_string();
    cluster.wait_for(&id, "reach step 3", Duration::from_secs(120), |j| step(j) >= 3);
    cluster.kill_coordinator();
    // The part trains to the end with nobody to tell; its finish is retried.
    wait_for_log(&cluster.agent_log("w0"), "part ended", Duration::from_secs(240));
    std::thread::sleep(Duration::from_secs(1));
    cluster.start_coordinator();
    let j = cluster.wait_for(&id, "finish after the restart", Duration::from_secs(120), |j| {
        matches!(state(j), "SUCCEEDED" | "FAILED")
    });
    assert_eq!(state(&j), "SUCCEEDED", "{j}");
    let generations = j["generations"].as_array().unwrap();
    assert_eq!(generations.len(), 1, "the late finish ends the job; nothing trains it again: {j}");
    assert_eq!(j["restarts"], 0);
    let events = cluster.events(&id);
    assert!(events.contains("reported after the coordinator restarted"), "{events}");
}

#[test]
fn the_final_checkpoint_of_a_lost_generation_is_registered_by_the_generation_that_resumes_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(tmp.path(), &tmp.path().join("coordinator.db"));
    let first = cluster.add_agent("w0");
    let spec = job_spec(tmp.path(), 40, "max_restarts = 1\n");
    let id = cluster.ctl_ok(&["submit", "-f", spec.to_str().unwrap()]).trim().to_string();
    cluster.wait_for(&id, "reach step 3", Duration::from_secs(120), |j| step(j) >= 3);
    cluster.kill_coordinator();
    // The part writes every checkpoint up to the final one with nobody to
    // commit them to, then its worker dies before it can report.
    wait_for_log(&cluster.agent_log("w0"), "part ended", Duration::from_secs(240));
    cluster.agents[first].kill().unwrap();
    cluster.agents[first].wait().unwrap();
    cluster.start_coordinator();
    cluster.wait_for(&id, "lose the first generation", Duration::from_secs(60), |j| {
        state(j) == "RESTARTING"
    });
    let unregistered = cluster.job(&id)["checkpoints"].as_array().map_or(0, |c| c.len());
    // A second worker resumes from the final checkpoint and has nothing to
    // train; the job ends with that checkpoint registered all the same.
    cluster.add_agent("w1");
    let j = cluster.wait_for(&id, "finish on the new worker", Duration::from_secs(120), |j| {
        matches!(state(j), "SUCCEEDED" | "FAILED")
    });
    assert_eq!(state(&j), "SUCCEEDED", "{j}");
    let registered: Vec<u64> = j["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["step"].as_u64())
        .collect();
    assert_eq!(registered.last(), Some(&40), "the final checkpoint is registered: {j}");
    assert!(registered.len() > unregistered, "{j}");
}

#[test]
fn a_sigterm_preempts_the_worker_after_a_final_checkpoint_without_spending_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(tmp.path(), &tmp.path().join("coordinator.db"));
    let first = cluster.add_agent("w0");
    let spec = job_spec(tmp.path(), 60, "max_restarts = 0\n");
    let id = cluster.ctl_ok(&["submit", "-f", spec.to_str().unwrap()]).trim().to_string();
    cluster.wait_for(&id, "reach step 13", Duration::from_secs(120), |j| step(j) >= 13);
    let pid = cluster.agents[first].id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = cluster.agents[first].try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the agent did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(cluster.agent_log("w0")).unwrap();
    assert!(exit.success(), "{exit:?}\n{log}");
    let j = cluster.wait_for(&id, "preempted", Duration::from_secs(30), |j| state(j) == "RESTARTING");
    assert_eq!((j["restarts"].as_u64(), j["preemptions"].as_u64()), (Some(0), Some(1)), "{j}");
    let events = cluster.events(&id);
    assert!(events.contains("preempted"), "{events}");
    // The final checkpoint is of the step the part stopped after, and registered.
    let checkpoints = j["checkpoints"].as_array().unwrap();
    let last = checkpoints.last().and_then(|c| c["step"].as_u64()).unwrap();
    let trained = last_step(&tmp.path().join(format!("{id}-g1-r0.log")));
    assert_eq!(last, trained + 1, "{j}");
    let shown = cluster.ctl_ok(&["get", &id]);
    assert!(shown.contains("restarts 0/0, preemptions 1"), "{shown}");

    // A new worker: the job resumes from the final checkpoint and ends succeeded.
    cluster.add_agent("w1");
    let j = cluster.wait_for(&id, "finish on the new worker", Duration::from_secs(600), |j| {
        matches!(state(j), "SUCCEEDED" | "FAILED")
    });
    assert_eq!(state(&j), "SUCCEEDED", "{j}");
    assert_eq!((j["restarts"].as_u64(), j["preemptions"].as_u64()), (Some(0), Some(1)));
    assert_eq!(
        first_step(&tmp.path().join(format!("{id}-g2-r0.log"))),
        last,
        "resumed from the final checkpoint"
    );
}

/// A tmpfs of `size` mounted on a new folder in `parent` (unmounted on drop).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(parent: &Path, size: &str) -> Option<Self> {
        let dir = parent.join("tmpfs");
        std::fs::create_dir(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        out.status.success().then_some(Self(dir)).or_else(|| {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here (needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            None
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `path` (a new file there) until it is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0xa5u8; 4096];
    while f.write_all(&block).and_then(|_| f.flush()).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_full_store_refuses_a_submit_records_nothing_and_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(tmp.path(), "1m") else { return };
    let store = fs.0.join("coordinator.db");
    let mut cluster = start_cluster(tmp.path(), &store);
    let spec = job_spec(tmp.path(), 40, "");
    let spec = spec.to_str().unwrap();
    fill(&fs.0.join("filler"));

    let out = cluster.ctl_output(&["submit", "-f", spec]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a submit the store could not record answered success");
    assert!(
        stderr.contains(&store.display().to_string()) && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(
        cluster.ctl_ok(&["list", "-o", "json"]).matches("\"id\"").count(),
        0,
        "nothing is reported as submitted"
    );
    // It keeps serving, and once there is room again the same submit works.
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    let id = cluster.ctl_ok(&["submit", "-f", spec]).trim().to_string();
    assert_eq!(id, "job-000001", "the refused submit took no id");
    cluster.kill_coordinator();
    cluster.start_coordinator();
    assert_eq!(state(&cluster.job(&id)), "PENDING");
    let events = cluster.events(&id);
    assert_eq!(events.matches("submitted").count(), 1, "{events}");
    drop(cluster);
    drop(fs);
}

#[test]
fn heartbeats_about_parts_the_coordinator_does_not_know_never_leave_a_job_running() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = start_cluster(tmp.path(), &tmp.path().join("coordinator.db"));
    let spec = job_spec(tmp.path(), 40, "max_restarts = 0\n");
    let id = cluster.ctl_ok(&["submit", "-f", spec.to_str().unwrap()]).trim().to_string();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let commands = runtime.block_on(async {
        let mut c = pb::worker_service_client::WorkerServiceClient::connect(cluster.server().to_string())
            .await
            .unwrap();
        let w = c
            .register(pb::RegisterRequest {
                name: "raw".into(),
                devices: 1,
                rendezvous_addr: "127.0.0.1:9".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        let beat = |job_id: &str, generation: u32| {
            let request = pb::HeartbeatRequest {
                worker_id: w.clone(),
                job_id: job_id.into(),
                generation,
                ..Default::default()
            };
            let mut c = c.clone();
            async move { c.heartbeat(request).await.unwrap().into_inner().command.unwrap() }
        };
        use pb::heartbeat_response::Command as C;
        let mut got = None;
        for _ in 0..50 {
            if let C::Assign(a) = beat("", 0).await {
                got = Some(a);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let a = got.expect("an assignment");
        vec![
            beat(&a.job_id, a.generation).await,
            beat("job-424242", 1).await,
            beat(&a.job_id, a.generation + 3).await,
            // Its assignment was lost: it trains nothing.
            beat("", 0).await,
        ]
    });
    use pb::heartbeat_response::Command as C;
    assert!(matches!(commands[0], C::Continue(_)), "{commands:?}");
    for c in &commands[1..3] {
        assert!(
            matches!(c, C::Stop(s) if s.reason.contains("drop")),
            "a part it does not know: {c:?}"
        );
    }
    assert!(matches!(commands[3], C::Idle(_)), "{commands:?}");
    let j = cluster.job(&id);
    assert_eq!(state(&j), "FAILED", "max_restarts = 0, and the part nobody trains ended it: {j}");
    assert!(j["message"].as_str().unwrap().contains("not training its part"), "{j}");
}
