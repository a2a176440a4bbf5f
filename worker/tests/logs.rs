//! `amdimctl logs` against a real coordinator and two worker agents on
//! loopback: a 2-worker job's lines come from both ranks (`[rank R]` in
//! front), `--rank 1` gives rank 1's alone, `-f` started while the job runs
//! prints lines while it runs and exits when it ends, and after the
//! coordinator restarted (its buffers gone) the finished job's lines come
//! from the log objects the workers stored next to the checkpoints.

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::coordinator_bin;

struct Cluster {
    dir: PathBuf,
    server: String,
    listen: String,
    coordinator: Option<Child>,
    agents: Vec<Child>,
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

impl Cluster {
    fn start(dir: &Path, agents: usize) -> Self {
        let listen = free_addr();
        let mut c = Self {
            dir: dir.to_path_buf(),
            server: format!("http://{listen}"),
            listen,
            coordinator: None,
            agents: Vec::new(),
        };
        c.start_coordinator();
        for i in 0..agents {
            let agent = Command::new(env!("CARGO_BIN_EXE_amdim-worker"))
                .args(["agent", "--coordinator", &c.server, "--name", &format!("w{i}")])
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("agent{i}.log"))).unwrap())
                .spawn()
                .unwrap();
            c.agents.push(agent);
        }
        let started = Instant::now();
        while c.ctl(&["workers", "-o", "json"]).matches("\"lost\":false").count() < agents {
            assert!(started.elapsed() < Duration::from_secs(60), "agents did not register");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn start_coordinator(&mut self) {
        let child = Command::new(coordinator_bin("amdim-coordinator"))
            .args(["--listen", &self.listen, "--http-listen", &free_addr()])
            .args(["--heartbeat-ms", "200", "--heartbeat-timeout-s", "5"])
            .arg("--store")
            .arg(self.dir.join("coordinator.db"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("coordinator.log"))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.coordinator = Some(child);
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(coordinator_bin("amdimctl"));
        c.args(["--server", &self.server]).args(args);
        c
    }

    fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_command(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `amdimctl args`, asserting success; its stdout.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl_command(args).output().unwrap();
        assert!(out.status.success(), "amdimctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn job(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ctl(&["get", id, "-o", "json"])).unwrap_or(serde_json::Value::Null)
    }

    fn state(&self, id: &str) -> String {
        self.job(id)["state"].as_str().unwrap_or("").to_string()
    }

    fn wait_for(&self, id: &str, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let j = self.job(id);
            if done(&j) {
                return j;
            }
            assert!(started.elapsed() < Duration::from_secs(300), "{what}: job is {j}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.agents.iter_mut().chain(self.coordinator.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn job_spec(dir: &Path, steps: u64) -> PathBuf {
    let path = dir.join("job.toml");
    std::fs::write(
        &path,
        format!(
            "[job]\nname = \"logs-test\"\n[data]\nformat = \"synthetic\"\nsynthetic_samples = 64\n\
             [model]\nndf = 8\nn_rkhs = 32\ndepth = 1\n[train]\nbatch_size = 8\nmax_steps = {steps}\nlog_every = 1\n\
             [dist]\ntimeout_s = 20\n[checkpoint]\nuri = \"{}\"\nevery_steps = 1000\nkeep = 0\n\
             [scheduling]\nmin_workers = 2\nmax_workers = 2\n",
            dir.join("ckpt").display()
        ),
    )
    .unwrap();
    path
}

/// The lines of `text` that start with `[rank R] `, without that prefix.
fn of_rank(text: &str, rank: u32) -> Vec<&str> {
    let prefix = format!("[rank {rank}] ");
    text.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
}

#[test]
fn logs_of_a_two_worker_job_live_by_rank_and_after_a_coordinator_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(tmp.path(), 2);
    let steps = 400;
    let spec = job_spec(tmp.path(), steps);
    let id = cluster.ctl_ok(&["submit", "-f", spec.to_str().unwrap()]).trim().to_string();
    cluster.wait_for(&id, "train on 2 workers", |j| {
        j["state"] == "RUNNING" && j["step"].as_u64().unwrap_or(0) >= 3
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
    assert_eq!(cluster.state(&id), "SUCCEEDED");
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
    let mut coordinator = cluster.coordinator.take().unwrap();
    coordinator.kill().unwrap();
    let _ = coordinator.wait();
    cluster.start_coordinator();
    let started = Instant::now();
    while cluster.state(&id) != "SUCCEEDED" {
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
