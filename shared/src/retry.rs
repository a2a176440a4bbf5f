//! Retrying object-store requests (docs/architecture.md §7): which errors
//! mean "not there", which are worth another try (connection refused or
//! reset, timeouts, 5xx, throttling) and which are final (permissions, bad
//! requests); and one loop that retries the transient ones with capped
//! exponential backoff and jitter until a time budget is spent.
//!
//! The budget comes from `AMDIM_STORAGE_RETRY_S` (seconds, default 120).
//! `object_store` retries each HTTP request a little on its own; this
//! layer retries whole operations (a GET and its body, a listing, an upload)
//! and reports how many tries it took. Callers decide what a final error
//! means; this module never treats an error as absence.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Seconds a storage operation is retried before it fails.
pub const RETRY_ENV: &str = "AMDIM_STORAGE_RETRY_S";
/// The budget when [`RETRY_ENV`] is not set.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(120);

/// What an error says about the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object does not exist.
    Absent,
    /// The store could not answer now; another try may succeed.
    Transient,
    /// Trying again will not help (permissions, a bad request, local I/O).
    Permanent,
}

/// How long and how often to retry.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// The first wait.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
    /// No new try starts once this much time has passed since the first.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(200),
            max: Duration::from_secs(10),
            budget: DEFAULT_BUDGET,
        }
    }
}

impl RetryPolicy {
    /// The default policy with the budget of [`RETRY_ENV`] when it holds a
    /// number of seconds (a bad value is logged and ignored).
    pub fn from_env() -> Self {
        let mut policy = Self::default();
        if let Ok(text) = std::env::var(RETRY_ENV) {
            match text.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => policy.budget = Duration::from_secs_f64(s),
                _ => tracing::warn!(value = %text, "{RETRY_ENV} is not a number of seconds; using the default"),
            }
        }
        policy
    }

    /// The wait before try `attempt + 1`: doubling from `first`, capped at
    /// `max`, drawn in [half, full] so that many clients do not retry in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let full = self.first.saturating_mul(1u32 << attempt.min(16)).min(self.max);
        full.mul_f64(0.5 + 0.5 * jitter())
    }
}

/// A number in [0, 1) that differs between calls and processes.
fn jitter() -> f64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let mut x = nanos ^ CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(std::process::id());
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// What `e` says about the object it was about.
pub fn classify(e: &object_store::Error) -> ErrorKind {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => ErrorKind::Absent,
        E::Generic { store, source } => classify_generic(store, source.as_ref()),
        _ => ErrorKind::Permanent,
    }
}

fn classify_generic(store: &str, source: &(dyn std::error::Error + Send + Sync + 'static)) -> ErrorKind {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(source);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::NotFound => ErrorKind::Absent,
                K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::TimedOut
                | K::Interrupted
                | K::UnexpectedEof
                | K::BrokenPipe
                | K::WouldBlock => ErrorKind::Transient,
                _ => ErrorKind::Permanent,
            };
        }
        if let Some(http) = err.downcast_ref::<object_store::client::HttpError>() {
            use object_store::client::HttpErrorKind as H;
            return match http.kind() {
                H::Connect | H::Request | H::Timeout | H::Interrupted | H::Decode => ErrorKind::Transient,
                _ => ErrorKind::Permanent,
            };
        }
        next = err.source();
    }
    // object_store's HTTP status errors are private types; their text is
    // "… status code: 503 Service Unavailable …".
    let text = source.to_string();
    if let Some(code) = text.split("status code: ").nth(1).and_then(|rest| rest.get(..3)) {
        return match code {
            "408" | "429" => ErrorKind::Transient,
            c if c.starts_with('5') => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        };
    }
    if text.contains("error response") {
        // An S3 200 whose body is an error (InternalError, SlowDown).
        return ErrorKind::Transient;
    }
    // A remote store's error we do not recognise: retried, within the budget.
    if store == "LocalFileSystem" {
        ErrorKind::Permanent
    } else {
        ErrorKind::Transient
    }
}

/// An operation that failed for good: its last error, what kind it is, and
/// how many tries over how long it took.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(self))]
pub struct RetryError {
    /// What the last error says about the object.
    pub kind: ErrorKind,
    /// Tries made.
    pub attempts: u32,
    /// From the first try to giving up.
    pub elapsed: Duration,
    /// The last error.
    pub error: object_store::Error,
}

fn describe(e: &RetryError) -> String {
    match (e.kind, e.attempts) {
        (ErrorKind::Transient, n) if n > 1 => format!(
            "unreachable after {n} tries over {:.1} s (budget {RETRY_ENV}): {}",
            e.elapsed.as_secs_f64(),
            e.error
        ),
        _ => e.error.to_string(),
    }
}

impl RetryError {
    /// Whether the object is simply not there.
    pub fn is_absent(&self) -> bool {
        self.kind == ErrorKind::Absent
    }
}

/// Runs `op` until it succeeds, fails with an error that is not
/// transient, or `policy.budget` is spent; waits [`RetryPolicy::backoff`]
/// between tries and calls `on_retry` before each new one. `what` names
/// the object in the log.
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, what: &dyn Display, on_retry: &(dyn Fn() + Sync), mut op: F) -> Result<T, RetryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, object_store::Error>>,
{
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let error = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let kind = classify(&error);
        let wait = policy.backoff(attempts - 1);
        if kind != ErrorKind::Transient || started.elapsed() + wait > policy.budget {
            return Err(RetryError {
                kind,
                attempts,
                elapsed: started.elapsed(),
                error,
            });
        }
        if attempts.is_power_of_two() {
            tracing::warn!(object = %what, attempt = attempts, wait_s = wait.as_secs_f64(), reason = %error, "storage request failed; retrying");
        }
        on_retry();
        tokio::time::sleep(wait).await;
    }
}

/// The `on_retry` of callers that do not count retries.
pub fn no_count() {}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStore;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let p = RetryPolicy {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
            budget: Duration::from_secs(5),
        };
        for attempt in 0..8 {
            let full = Duration::from_millis(100 << attempt).min(Duration::from_secs(1));
            let d = p.backoff(attempt);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} vs {full:?}");
        }
    }

    #[test]
    fn local_errors_are_absent_or_permanent_and_a_closed_port_is_retried_within_the_budget() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let missing = rt.block_on(fs.get(&"nope".into())).unwrap_err();
        assert_eq!(classify(&missing), ErrorKind::Absent);
        // A directory where an object is expected: a local I/O error, final.
        std::fs::create_dir(dir.path().join("folder")).unwrap();
        std::fs::write(dir.path().join("folder/x"), b"x").unwrap();
        let not_file = rt.block_on(async { fs.get(&"folder".into()).await?.bytes().await }).unwrap_err();
        assert_ne!(classify(&not_file), ErrorKind::Transient, "{not_file}");

        // A real S3 client against a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("b")
            .with_region("us-east-1")
            .with_access_key_id("k")
            .with_secret_access_key("s")
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_allow_http(true)
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .build()
            .unwrap();
        let policy = RetryPolicy {
            first: Duration::from_millis(20),
            max: Duration::from_millis(100),
            budget: Duration::from_millis(600),
        };
        let retries = AtomicU32::new(0);
        let count = || {
            retries.fetch_add(1, Ordering::Relaxed);
        };
        let path = object_store::path::Path::from("data/x.jpg");
        let started = Instant::now();
        let e = rt
            .block_on(retry(&policy, &path, &count, || async { s3.get(&path).await?.bytes().await }))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient, "{e}");
        assert!(e.attempts >= 3 && retries.load(Ordering::Relaxed) == e.attempts - 1, "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(e.to_string().starts_with("unreachable after"), "{e}");
        // Something that is not transient is not retried.
        let e = rt
            .block_on(retry(&policy, &"nope", &count, || async {
                fs.get(&"nope".into()).await?.bytes().await
            }))
            .unwrap_err();
        assert_eq!((e.kind, e.attempts), (ErrorKind::Absent, 1));
    }
}
