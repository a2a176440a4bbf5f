//! A coordinator and worker agents as real processes on loopback, driven
//! with amdimctl: the [`Cluster`] the scheduling and fault tests start
//! (`coordinator.rs`, `faults.rs`, `logs.rs`), the [`ClusterOptions`] in
//! which those tests differ (store, heartbeat timeout, tokens, TLS, what
//! the agents are told), and the accessors of a job's `amdimctl get -o
//! json` document. Every process is killed when the cluster is dropped.

use super::{certificates::make_certificates, coordinator_bin, free_addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How a [`Cluster`] starts its coordinator and its agents.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The coordinator's store; `coordinator.db` in the cluster's folder
    /// when `None`.
    pub store: Option<PathBuf>,
    /// The coordinator's `--heartbeat-timeout-s` (its `--heartbeat-ms` is
    /// always 200).
    pub heartbeat_timeout_s: u32,
    /// Whether starting the coordinator waits (up to 30 s) until `amdimctl
    /// list` answers; without it the first calls may find nobody there.
    pub wait_until_serving: bool,
    /// (client token, join token) the coordinator requires, if any; the
    /// cluster's amdimctl and agents are given theirs.
    pub tokens: Option<(String, String)>,
    /// gRPC over TLS: a CA and a certificate for 127.0.0.1 signed by it are
    /// made with openssl in the folder, and every process is given the CA.
    pub tls: bool,
    /// Every agent's `--devices` (ranks); the agent's default when `None`.
    pub agent_devices: Option<u32>,
    /// Whether agents write each part's per-step sample log into the
    /// cluster's folder (`AMDIM_SAMPLE_LOG_DIR`), as `{job}-g{G}-r{R}.log`.
    pub sample_logs: bool,
    /// Every agent's `AMDIM_STOP_GRACE_S`, if set: a part told to stop ends
    /// within it (its collectives are cancelled after that).
    pub stop_grace_s: Option<u32>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            store: None,
            heartbeat_timeout_s: 5,
            wait_until_serving: false,
            tokens: None,
            tls: false,
            agent_devices: None,
            sample_logs: false,
            stop_grace_s: None,
        }
    }
}

/// A coordinator (on ports and a store fixed at the start, so that it can
/// be killed and started again on them) and the agents started against it.
/// The coordinator's stderr is appended to `coordinator.log` in the folder,
/// agent `name`'s written to `agent-{name}.log`.
pub struct Cluster {
    dir: PathBuf,
    options: ClusterOptions,
    store: PathBuf,
    listen: String,
    http: String,
    server: String,
    /// The CA of the coordinator's TLS certificate, with `tls`.
    ca: Option<PathBuf>,
    amdimctl: PathBuf,
    coordinator: Option<Child>,
    /// The agents, in the order they were added.
    pub agents: Vec<Child>,
}

impl Cluster {
    /// Starts a coordinator in `dir` (no agents yet).
    pub fn start(dir: &Path, options: ClusterOptions) -> Self {
        let listen = free_addr();
        let ca = options.tls.then(|| make_certificates(dir));
        let mut cluster = Self {
            dir: dir.to_path_buf(),
            store: options.store.clone().unwrap_or_else(|| dir.join("coordinator.db")),
            server: format!("{}://{listen}", if options.tls { "https" } else { "http" }),
            listen,
            http: free_addr(),
            ca,
            amdimctl: coordinator_bin("amdimctl"),
            coordinator: None,
            agents: Vec::new(),
            options,
        };
        cluster.start_coordinator();
        cluster
    }

    /// The coordinator's gRPC address, with its scheme.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Starts the coordinator (again) on the cluster's ports and store.
    pub fn start_coordinator(&mut self) {
        let tokens = self
            .options
            .tokens
            .iter()
            .flat_map(|(client, join)| [("AMDIM_CLIENT_TOKEN", client.clone()), ("AMDIM_JOIN_TOKEN", join.clone())]);
        let tls = self.ca.iter().flat_map(|_| {
            [
                "--tls-cert-file".into(),
                self.dir.join("cert.pem"),
                "--tls-key-file".into(),
                self.dir.join("key.pem"),
            ]
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.coordinator_log())
            .unwrap();
        let child = Command::new(coordinator_bin("amdim-coordinator"))
            .args(["--listen", &self.listen, "--http-listen", &self.http])
            .args(["--heartbeat-ms", "200", "--heartbeat-timeout-s"])
            .arg(self.options.heartbeat_timeout_s.to_string())
            .args(tls)
            .envs(tokens)
            .arg("--store")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.coordinator = Some(child);
        if self.options.wait_until_serving {
            let started = Instant::now();
            while !self.ctl_output(&["list"]).status.success() {
                assert!(started.elapsed() < Duration::from_secs(30), "the coordinator did not come up");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Kills the coordinator (SIGKILL) and waits for it to exit.
    pub fn kill_coordinator(&mut self) {
        let mut coordinator = self.coordinator.take().expect("a running coordinator");
        coordinator.kill().unwrap();
        coordinator.wait().unwrap();
    }

    /// Starts agent `name`; returns its index in `agents`.
    pub fn add_agent(&mut self, name: &str) -> usize {
        let devices = self.options.agent_devices.map(|d| ["--devices".to_string(), d.to_string()]);
        let agent = Command::new(env!("CARGO_BIN_EXE_amdim-worker"))
            .args(["agent", "--coordinator", &self.server, "--name", name])
            .args(devices.iter().flatten())
            .envs(self.options.sample_logs.then_some(("AMDIM_SAMPLE_LOG_DIR", &self.dir)))
            .envs(self.options.stop_grace_s.map(|s| ("AMDIM_STOP_GRACE_S", s.to_string())))
            .envs(self.options.tokens.iter().map(|(_, join)| ("AMDIM_JOIN_TOKEN", join.clone())))
            .envs(self.ca.iter().map(|ca| ("AMDIM_TLS_CA_FILE", ca.clone())))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.agent_log(name)).unwrap())
            .spawn()
            .unwrap();
        self.agents.push(agent);
        self.agents.len() - 1
    }

    /// Starts `n` more agents, named `w{index}`, and waits (up to 60 s)
    /// until the coordinator counts every agent as a live worker.
    pub fn add_registered_agents(&mut self, n: usize) {
        for _ in 0..n {
            let name = format!("w{}", self.agents.len());
            self.add_agent(&name);
        }
        let started = Instant::now();
        while self.ctl_stdout(&["workers", "-o", "json"]).matches("\"lost\":false").count() < self.agents.len() {
            assert!(started.elapsed() < Duration::from_secs(60), "agents did not register");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where agent `name` writes its stderr.
    pub fn agent_log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("agent-{name}.log"))
    }

    /// Where the coordinator appends its stderr (across restarts).
    pub fn coordinator_log(&self) -> PathBuf {
        self.dir.join("coordinator.log")
    }

    /// `amdimctl --server … args`, with the cluster's client token and CA.
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.amdimctl);
        c.args(["--server", &self.server])
            .envs(self.options.tokens.iter().map(|(client, _)| ("AMDIM_TOKEN", client.clone())))
            .envs(self.ca.iter().map(|ca| ("AMDIM_TLS_CA_FILE", ca.clone())))
            .args(args);
        c
    }

    /// Runs `amdimctl args`; whatever its exit status.
    pub fn ctl_output(&self, args: &[&str]) -> Output {
        self.ctl_command(args).output().unwrap()
    }

    /// Runs `amdimctl args`; its stdout, whatever its exit status.
    pub fn ctl_stdout(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.ctl_output(args).stdout).into_owned()
    }

    /// Runs `amdimctl args`, asserting success; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl_output(args);
        assert!(out.status.success(), "amdimctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Job `id` as `amdimctl get -o json` shows it; `Null` when that fails.
    pub fn job(&self, id: &str) -> serde_json::Value {
        serde_json::from_slice(&self.ctl_output(&["get", id, "-o", "json"]).stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Job `id`'s events as `amdimctl events` prints them.
    pub fn events(&self, id: &str) -> String {
        self.ctl_stdout(&["events", id])
    }

    /// Polls job `id` until `done` holds of it and returns it; fails after
    /// `timeout`, saying `what` was awaited, with the coordinator's log.
    pub fn wait_for(&self, id: &str, what: &str, timeout: Duration, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let j = self.job(id);
            if done(&j) {
                return j;
            }
            assert!(
                started.elapsed() < timeout,
                "{what}: job is {j}\n{}",
                std::fs::read_to_string(self.coordinator_log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET path` on the coordinator's probe port: the status line.
    pub fn probe(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.http).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines().next().unwrap_or_default().to_string()
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

/// A job document's `state` (`""` when missing, as for `Null`).
pub fn state(j: &serde_json::Value) -> &str {
    j["state"].as_str().unwrap_or("")
}

/// A job document's `step` (0 when missing, as for `Null`).
pub fn step(j: &serde_json::Value) -> u64 {
    j["step"].as_u64().unwrap_or(0)
}
