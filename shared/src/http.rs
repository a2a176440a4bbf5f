//! The plain-HTTP endpoints of the coordinator and the workers (docs/architecture.md §1,
//! §9): `GET /healthz` (the process answers), `GET /readyz` (ready to serve;
//! 503 otherwise) and `GET /metrics` (Prometheus text format, produced by
//! the caller's closure at scrape time). HEAD is answered like GET without
//! a body; anything else is 404.
//!
//! Routing is axum's, the connections are hyper's HTTP/1 (keep-alive on):
//! a request head, or an idle keep-alive connection's next one, must
//! arrive within [`Limits::header_read`]; producing `/metrics` may take
//! [`Limits::handler`] (503 after that); at most [`Limits::connections`]
//! connections are served at once. A failed `accept()` that is about the
//! process (out of file descriptors, memory) backs off instead of spinning.
//!
//! Owns nothing but the HTTP serving: what is measured belongs to the
//! process serving it.

use crate::metrics::CONTENT_TYPE;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Produces the `/metrics` body at scrape time.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// How long and how much the server waits for and serves its clients.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// A request head must be complete within this, and an idle keep-alive
    /// connection is closed when no next request starts within it.
    header_read: Duration,
    /// The longest `/metrics` may take to produce (Prometheus' default
    /// scrape timeout is 10 s).
    handler: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    connections: usize,
}

/// The limits `serve` uses. 30 s keeps Prometheus' connections (15 s
/// ServiceMonitor interval) alive between scrapes.
const LIMITS: Limits = Limits {
    header_read: Duration::from_secs(30),
    handler: Duration::from_secs(10),
    connections: 256,
};

/// What the handlers read.
#[derive(Clone)]
struct Endpoints {
    ready: Arc<AtomicBool>,
    metrics: MetricsFn,
    handler_timeout: Duration,
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

async fn readyz(State(e): State<Endpoints>) -> Response {
    if e.ready.load(Ordering::Relaxed) {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(e): State<Endpoints>) -> Response {
    // The closure may take a lock (the coordinator's state): off the
    // runtime's threads, and bounded in time.
    let produce = e.metrics.clone();
    match tokio::time::timeout(e.handler_timeout, tokio::task::spawn_blocking(move || produce())).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Ok(Err(_)) => text(StatusCode::INTERNAL_SERVER_ERROR, "metrics failed\n"),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "metrics timed out\n"),
    }
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(not_found)
        .fallback(not_found)
        .with_state(endpoints)
}

/// Whether a failed `accept()` concerns only the connection being accepted
/// (accept the next one at once) rather than the process (back off).
fn about_one_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted)
}

/// Waits between failed `accept()` calls: 10 ms doubling to 1 s, from the
/// start again after a success.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        let wait = Self::FIRST.saturating_mul(1 << self.failures.min(16)).min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Serves the endpoints on `listener` for as long as the task lives;
/// `/readyz` answers 200 while `ready` holds.
pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>, metrics: MetricsFn) {
    serve_with(listener, ready, metrics, LIMITS).await
}

async fn serve_with(listener: TcpListener, ready: Arc<AtomicBool>, metrics: MetricsFn, limits: Limits) {
    let service = TowerToHyperService::new(router(Endpoints {
        ready,
        metrics,
        handler_timeout: limits.handler,
    }));
    let slots = Arc::new(Semaphore::new(limits.connections));
    let mut backoff = Backoff::default();
    loop {
        // The semaphore is never closed.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.reset();
                stream
            }
            Err(e) if about_one_connection(&e) => continue,
            Err(e) => {
                let wait = backoff.next();
                tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "http: accept failed; backing off");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let mut conn = http1::Builder::new();
            conn.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .keep_alive(true);
            // A client that goes away or times out ends only its connection.
            let _ = conn.serve_connection(TokioIo::new(stream), service).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
