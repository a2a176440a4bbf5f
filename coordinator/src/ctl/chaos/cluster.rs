//! The soak's coordinator and worker agents as real processes on loopback:
//! the coordinator (this binary) on fixed ports with its SQLite store in
//! the soak's folder, so that a killed one is started again on the same
//! state; agents (`amdim-worker agent`) that write sample logs, each with
//! a log file of its own. Killing, terminating and reaping them is here;
//! choosing whom and when is `run`'s.

use super::procs::{Spawned, spawn_marked};
use amdim_shared::auth::BearerToken;
use amdim_shared::proto::v1 as pb;
use anyhow::{Context, Result, bail};
use pb::job_service_client::JobServiceClient;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A client of the soak's coordinator that reconnects by itself.
pub(crate) type Client = super::super::jobs::Client;

/// An agent and what happened to it.
pub(crate) struct Agent {
    /// Its `--name`.
    pub(crate) name: String,
    pub(crate) process: Spawned,
    /// When it was sent SIGTERM, if it was.
    pub(crate) terminated_at: Option<Instant>,
}

/// The processes of the soak other than the S3 server.
pub(crate) struct Cluster {
    dir: PathBuf,
    coordinator_bin: PathBuf,
    worker_bin: PathBuf,
    marker: String,
    listen: String,
    http_listen: String,
    /// The S3 variables every agent gets.
    s3_env: Vec<(String, String)>,
    coordinator: Option<Spawned>,
    /// Agents not yet reaped.
    pub(crate) agents: Vec<Agent>,
    started_agents: usize,
    /// The folder of the sample logs.
    pub(crate) samples_dir: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub(crate) server: String,
}

fn free_addr() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.to_string())
}

impl Cluster {
    /// Starts the coordinator and waits until it answers.
    pub(crate) async fn start(
        dir: &Path,
        coordinator_bin: PathBuf,
        worker_bin: PathBuf,
        marker: &str,
        s3_env: Vec<(String, String)>,
    ) -> Result<(Self, Client)> {
        let samples_dir = dir.join("samples");
        std::fs::create_dir_all(&samples_dir).with_context(|| samples_dir.display().to_string())?;
        std::fs::create_dir_all(dir.join("agents"))?;
        let listen = free_addr()?;
        let mut cluster = Self {
            dir: dir.to_path_buf(),
            coordinator_bin,
            worker_bin,
            marker: marker.to_string(),
            server: format!("http://{listen}"),
            listen,
            http_listen: free_addr()?,
            s3_env,
            coordinator: None,
            agents: Vec::new(),
            started_agents: 0,
            samples_dir,
        };
        let channel = amdim_shared::tls::endpoint("--server", &cluster.server, None)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(20))
            .connect_lazy();
        let token = BearerToken::new(None).map_err(|e| anyhow::anyhow!("{e}"))?;
        let client = JobServiceClient::with_interceptor(channel, token);
        cluster.start_coordinator(&client).await?;
        Ok((cluster, client))
    }

    /// Starts the coordinator on its ports and store; waits until it lists jobs.
    pub(crate) async fn start_coordinator(&mut self, client: &Client) -> Result<()> {
        let args: Vec<String> = [
            "--listen",
            &self.listen,
            "--http-listen",
            &self.http_listen,
            "--heartbeat-ms",
            "200",
            "--heartbeat-timeout-s",
            "2",
            "--store",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([self.dir.join("coordinator.db").display().to_string()])
        .collect();
        let process = spawn_marked(&self.coordinator_bin, &args, &[], &self.dir.join("coordinator.log"), &self.marker)?;
        self.coordinator = Some(process);
        let started = Instant::now();
        loop {
            if client.clone().list(pb::ListJobsRequest {}).await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the coordinator did not answer within 60 s; see {}",
                    self.dir.join("coordinator.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL of the coordinator.
    pub(crate) async fn kill_coordinator(&mut self) {
        if let Some(p) = self.coordinator.take() {
            p.kill_and_reap().await;
        }
    }

    /// SIGTERM of the coordinator (the end of the soak); true if it exited on it.
    pub(crate) async fn stop_coordinator(&mut self) -> bool {
        match self.coordinator.take() {
            Some(p) => p.terminate_and_reap(Duration::from_secs(20)).await,
            None => true,
        }
    }

    /// Starts one more agent, named `w<N>`.
    pub(crate) fn add_agent(&mut self) -> Result<&Agent> {
        let name = format!("w{}", self.started_agents);
        self.started_agents += 1;
        let args: Vec<String> = ["agent", "--coordinator", &self.server, "--name", &name, "--devices", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut env = self.s3_env.clone();
        env.extend(
            [
                ("AMDIM_SAMPLE_LOG_DIR", self.samples_dir.display().to_string()),
                // A part told to stop ends within 10 s (then its collectives are cancelled).
                ("AMDIM_STOP_GRACE_S", "10".to_string()),
                // Tiny models: one thread per rank keeps the agents from fighting over the cores.
                ("RAYON_NUM_THREADS", "1".to_string()),
                ("NO_COLOR", "1".to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        let log = self.dir.join("agents").join(format!("{name}.log"));
        let process = spawn_marked(&self.worker_bin, &args, &env, &log, &self.marker)?;
        self.agents.push(Agent {
            name,
            process,
            terminated_at: None,
        });
        self.agents.last().context("an agent just added")
    }

    /// Agents neither terminated nor exited.
    pub(crate) fn live_agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.iter().filter(|a| a.terminated_at.is_none())
    }

    /// Removes and returns the agent named `name`.
    pub(crate) fn take_agent(&mut self, name: &str) -> Option<Agent> {
        let i = self.agents.iter().position(|a| a.name == name)?;
        Some(self.agents.remove(i))
    }

    /// Reaps agents that have exited: (name, seconds since their SIGTERM if
    /// they had one) of each.
    pub(crate) fn reap_exited(&mut self) -> Vec<(String, Option<f64>)> {
        let mut gone = Vec::new();
        self.agents.retain_mut(|a| {
            if a.process.exited() {
                gone.push((a.name.clone(), a.terminated_at.map(|t| t.elapsed().as_secs_f64())));
                false
            } else {
                true
            }
        });
        gone
    }

    /// The log file of agent `name`.
    pub(crate) fn agent_log(&self, name: &str) -> PathBuf {
        self.dir.join("agents").join(format!("{name}.log"))
    }
}

/// Worker name → the job it trains, for the workers busy now (empty when
/// the coordinator does not answer).
pub(crate) async fn busy_workers(client: &Client) -> BTreeMap<String, String> {
    match client.clone().workers(pb::ListWorkersRequest {}).await {
        Ok(r) => r
            .into_inner()
            .workers
            .into_iter()
            .filter(|w| !w.lost && !w.job_id.is_empty())
            .map(|w| (w.name, w.job_id))
            .collect(),
        Err(_) => BTreeMap::new(),
    }
}
