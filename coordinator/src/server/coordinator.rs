//! The coordinator process around the pure [`State`]: one lock over the
//! state and its [`Store`], the one path by which anything changes (rule,
//! then the changed rows to the store before the call answers — or, when
//! the store cannot be written, the change taken back and the call
//! refused — then the watchers wake), recovery on start (docs/architecture.md §8), the ticker that applies
//! heartbeat deadlines and schedules, the HTTP endpoints, and serving both
//! gRPC services, each behind its token interceptor. The RPCs themselves
//! are `job_service`'s and `worker_service`'s.

use super::state::{Event, Job, State, StateError};
use super::store::Store;
use amdim_shared::auth::RequireToken;
use amdim_shared::proto::v1 as pb;
use pb::job_service_server::JobServiceServer;
use pb::worker_service_server::WorkerServiceServer;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Status;

/// How the coordinator runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The store file (SQLite) that keeps the state (None: in memory only).
    pub store: Option<PathBuf>,
    /// How often workers report.
    pub heartbeat_interval: Duration,
    /// A worker silent for longer is lost.
    pub heartbeat_timeout: Duration,
    /// Jobs that ended longer ago are forgotten, with their events.
    pub keep_finished_jobs: Duration,
    /// Required from amdimctl (None: no check).
    pub client_token: Option<String>,
    /// Required from worker agents (None: no check).
    pub join_token: Option<String>,
    /// Serve gRPC over TLS with this certificate and key (None: plain).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

pub(super) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The state and the store it is written to, under one lock.
pub(super) struct Inner {
    pub(super) state: State,
    store: Option<Store>,
}

/// The shared state, where it is persisted, and who waits for changes.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Mutex<Inner>>,
    /// Bumped after every change that reached the store.
    pub(super) changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Numbers the workers' heartbeat streams.
    pub(super) sessions: Arc<std::sync::atomic::AtomicU64>,
    pub(super) settings: Settings,
    /// The workers' log lines, per (job, rank); in memory only.
    pub(super) logs: Arc<super::log_buffer::LogBuffers>,
    /// The registration rate limit (`admission`).
    pub(super) admission: Arc<super::admission::Admission>,
}

pub(super) fn status(e: StateError) -> Status {
    match e {
        StateError::InvalidSpec(m) => Status::invalid_argument(m),
        StateError::NoJob(_) | StateError::NoWorker(_) => Status::not_found(e.to_string()),
        StateError::Final { .. } => Status::failed_precondition(e.to_string()),
    }
}

impl Coordinator {
    /// Opens the store if there is one and recovers what was running.
    pub fn open(settings: Settings) -> anyhow::Result<Self> {
        let (state, store) = match &settings.store {
            Some(path) => {
                let store = Store::open(path)?;
                let mut state = store.load()?;
                if !state.jobs.is_empty() || !state.workers.is_empty() {
                    state.recover(now_unix());
                    tracing::info!(jobs = state.jobs.len(), store = %path.display(), "state recovered");
                }
                (state, Some(store))
            }
            None => (State::default(), None),
        };
        let c = Self {
            inner: Arc::new(Mutex::new(Inner { state, store })),
            changed: Arc::new(tokio::sync::watch::channel(0).0),
            sessions: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            settings,
            logs: Arc::new(super::log_buffer::LogBuffers::new(super::log_buffer::LINES_PER_RANK)),
            admission: Arc::new(super::admission::Admission::new(super::admission::DEFAULT_REGISTRATIONS_PER_S)),
        };
        c.change(|_| ()).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        Ok(c)
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, writes what it changed and wakes watchers.
    /// A store that cannot be written (a full disk) takes the change back —
    /// the rows it touched are read back from the file — and the call
    /// answers UNAVAILABLE naming the file: nothing is answered as done
    /// that is not on disk, and memory never runs ahead of the file.
    pub(super) fn change<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, Status> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let out = f(&mut inner.state);
        if inner.state.changes.is_empty() {
            return Ok(out);
        }
        let changes = inner.state.take_changes();
        if let Some(store) = &mut inner.store
            && let Err(e) = store.save(&inner.state, &changes)
        {
            let path = store.path().display().to_string();
            tracing::error!(store = %path, reason = %e, "cannot write the coordinator store: the change is taken back");
            if let Err(back) = store.roll_back(&mut inner.state, &changes) {
                // Memory may now be ahead of the file: a restart reads the file.
                tracing::error!(store = %path, reason = %back, "cannot read the coordinator store back either");
            }
            return Err(Status::unavailable(format!(
                "the coordinator could not write its state ({e}); nothing was changed, try again"
            )));
        }
        drop(guard);
        self.changed.send_modify(|v| *v += 1);
        Ok(out)
    }

    /// The job `id` and its events after `after_seq`.
    /// The job comes without its event list (not cloned: watchers call this
    /// on every change).
    pub(super) fn job_since(&self, id: &str, after_seq: u64) -> Result<(Job, Vec<Event>), Status> {
        let mut g = self.lock();
        let job = g.state.jobs.get_mut(id).ok_or_else(|| status(StateError::NoJob(id.into())))?;
        let all = std::mem::take(&mut job.events);
        let copy = job.clone();
        // Events are in seq order: the new ones are a tail.
        let events = all[all.partition_point(|e| e.seq <= after_seq)..].to_vec();
        job.events = all;
        Ok((copy, events))
    }

    /// The coordinator's metrics now, in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        super::metrics::encode(&self.lock().state, now_unix())
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until the
    /// task is aborted; `/readyz` answers 200 while `ready` holds.
    pub fn spawn_http(&self, listener: tokio::net::TcpListener, ready: Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let metrics: amdim_shared::http::MetricsFn = Arc::new(move || me.metrics_text());
        tokio::spawn(amdim_shared::http::serve(listener, ready, metrics))
    }

    /// Heartbeat deadlines and scheduling, every quarter interval.
    pub fn spawn_ticker(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(me.settings.heartbeat_interval / 4);
            loop {
                every.tick().await;
                let deadline = me.settings.heartbeat_timeout.as_secs().max(1) as i64;
                let keep = me.settings.keep_finished_jobs.as_secs() as i64;
                // A failed write is logged by `change` and tried again next tick.
                let _ = me.change(|s| {
                    s.tick(now_unix(), deadline);
                    s.forget_finished_jobs(now_unix(), keep);
                });
            }
        })
    }

    /// Serves both services on `listener` until `shutdown` resolves.
    pub async fn serve(self, listener: tokio::net::TcpListener, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let ticker = self.spawn_ticker();
        // No Nagle: a reply larger than one segment would otherwise wait for
        // the client's delayed ACK (~40 ms per List measured here).
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        if self.settings.client_token.is_none() || self.settings.join_token.is_none() {
            tracing::warn!("no client or join token configured: anyone who reaches this port may submit jobs or join as a worker");
        }
        let clients = RequireToken::new(self.settings.client_token.clone(), "client token");
        let workers = RequireToken::new(self.settings.join_token.clone(), "join token");
        // grpc.health.v1 for load balancers and probes: no token needed.
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<JobServiceServer<Coordinator>>().await;
        health.set_serving::<WorkerServiceServer<Coordinator>>().await;
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.settings.tls.clone() {
            builder = builder.tls_config(tls)?;
        }
        let served = builder
            .add_service(health_service)
            .add_service(JobServiceServer::with_interceptor(self.clone(), clients))
            .add_service(WorkerServiceServer::with_interceptor(self, workers))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        ticker.abort();
        Ok(served?)
    }
}
