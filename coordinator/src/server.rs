//! The coordinator process: the gRPC job and worker services over
//! [`State`], a ticker that applies heartbeat deadlines and schedules, and
//! persistence: after every change the changed rows go to the [`Store`]
//! before the call answers. On start it loads the store and recovers
//! (design §8). Watchers of a job wake on every change that reaches the
//! store. The rules themselves are `state`'s, the file format `store`'s.

use crate::state::{Command, Event, EventKind, Generation, Job, JobState, Report, State, StateError, Worker};
use crate::store::Store;
use amdim_shared::auth::RequireToken;
use amdim_shared::proto::v1 as pb;
use pb::job_service_server::{JobService, JobServiceServer};
use pb::worker_service_server::{WorkerService, WorkerServiceServer};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How the coordinator runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The store file (SQLite) that keeps the state (None: in memory only).
    pub store: Option<PathBuf>,
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

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The state and the store it is written to, under one lock.
struct Inner {
    state: State,
    store: Option<Store>,
}

/// The shared state, where it is persisted, and who waits for changes.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Mutex<Inner>>,
    /// Bumped after every change that reached the store.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Numbers the workers' heartbeat streams.
    sessions: Arc<std::sync::atomic::AtomicU64>,
    settings: Settings,
}

fn status(e: StateError) -> Status {
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
        };
        c.change(|_| ());
        Ok(c)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, writes what it changed and wakes watchers.
    /// A store that cannot be written is logged and retried with the next
    /// change (the changes are kept); the call itself still answers.
    fn change<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let out = f(&mut inner.state);
        if inner.state.changes.is_empty() {
            return out;
        }
        let saved = match &mut inner.store {
            Some(store) => store.save(&inner.state, &inner.state.changes).map_err(|e| {
                tracing::error!(store = %store.path().display(), reason = %e, "cannot write the coordinator store; retrying with the next change");
            }),
            None => Ok(()),
        };
        if saved.is_ok() {
            inner.state.take_changes();
        }
        drop(guard);
        self.changed.send_modify(|v| *v += 1);
        out
    }

    /// A heartbeat's answer: the worker's next command.
    fn answer(&self, r: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse, Status> {
        let report = (!r.job_id.is_empty()).then_some(Report {
            step: r.step,
            total: r.total_steps,
            stats: r.stats,
        });
        let command = self.change(|s| s.heartbeat(&r.worker_id, report, now_unix())).map_err(status)?;
        use pb::heartbeat_response::Command as C;
        let command = match command {
            Command::Idle => C::Idle(pb::Idle {}),
            Command::Continue => C::Continue(pb::Continue {}),
            Command::Stop(reason) => C::Stop(pb::Stop { reason }),
            Command::Assign(a) => {
                tracing::info!(worker = %r.worker_id, job = %a.job_id, generation = a.generation, rank = a.rank, world = a.world_size, "assigned");
                C::Assign(pb::Assignment {
                    job_id: a.job_id,
                    generation: a.generation,
                    spec_toml: a.spec_toml,
                    rank: a.rank,
                    world_size: a.world_size,
                    rendezvous: a.rendezvous,
                    resume: a.resume,
                    local_ranks: a.local_ranks,
                })
            }
        };
        Ok(pb::HeartbeatResponse { command: Some(command) })
    }

    /// The job `id` and its events after `after_seq`.
    /// The job comes without its event list (not cloned: watchers call this
    /// on every change).
    fn job_since(&self, id: &str, after_seq: u64) -> Result<(Job, Vec<Event>), Status> {
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
        crate::metrics::encode(&self.lock().state, now_unix())
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
                me.change(|s| {
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

fn job_state(s: JobState) -> pb::JobState {
    match s {
        JobState::Pending => pb::JobState::Pending,
        JobState::Running => pb::JobState::Running,
        JobState::Restarting => pb::JobState::Restarting,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

fn generation(g: &Generation) -> pb::Generation {
    pb::Generation {
        number: g.number,
        workers: g.workers.clone(),
        rendezvous: g.rendezvous.clone(),
        started_unix: g.started_unix,
        end_reason: g.end_reason.clone().unwrap_or_default(),
    }
}

pub fn job_message(j: &Job) -> pb::Job {
    pb::Job {
        id: j.id.clone(),
        name: j.name.clone(),
        state: job_state(j.state) as i32,
        spec_toml: j.spec_toml.clone(),
        min_workers: j.min_workers,
        max_workers: j.max_workers,
        priority: j.priority,
        max_restarts: j.max_restarts,
        restarts: j.restarts,
        generations: j.generations.iter().map(generation).collect(),
        step: j.step,
        total_steps: j.total_steps,
        message: j.message.clone(),
        created_unix: j.created_unix,
        updated_unix: j.updated_unix,
        checkpoints: j
            .checkpoints
            .iter()
            .map(|c| pb::Checkpoint {
                step: c.step,
                bytes: c.bytes,
                generation: c.generation,
                created_unix: c.created_unix,
            })
            .collect(),
        stats: j.stats,
        devices_per_worker: j.devices_per_worker,
    }
}

pub(crate) fn event_kind(k: EventKind) -> pb::EventKind {
    match k {
        EventKind::Submitted => pb::EventKind::Submitted,
        EventKind::GenerationStarted => pb::EventKind::GenerationStarted,
        EventKind::CheckpointCommitted => pb::EventKind::CheckpointCommitted,
        EventKind::WorkerLost => pb::EventKind::WorkerLost,
        EventKind::GenerationEnded => pb::EventKind::GenerationEnded,
        EventKind::Restarting => pb::EventKind::Restarting,
        EventKind::Succeeded => pb::EventKind::Succeeded,
        EventKind::Failed => pb::EventKind::Failed,
        EventKind::Cancelled => pb::EventKind::Cancelled,
    }
}

fn event_message(e: &Event) -> pb::Event {
    pb::Event {
        seq: e.seq,
        job_id: e.job_id.clone(),
        unix: e.unix,
        kind: event_kind(e.kind) as i32,
        generation: e.generation,
        message: e.message.clone(),
    }
}

fn worker_message(w: &Worker) -> pb::Worker {
    pb::Worker {
        id: w.id.clone(),
        name: w.name.clone(),
        devices: w.devices,
        rendezvous_addr: w.rendezvous_addr.clone(),
        job_id: w.job.as_ref().map(|(j, _)| j.clone()).unwrap_or_default(),
        last_seen_unix: w.last_seen_unix,
        lost: w.lost,
    }
}

#[tonic::async_trait]
impl JobService for Coordinator {
    async fn submit(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::Job>, Status> {
        let r = request.into_inner();
        let job = self
            .change(|s| s.submit(&r.spec_toml, r.min_workers, r.max_workers, now_unix()))
            .map_err(status)?;
        tracing::info!(job = %job.id, name = %job.name, "job submitted");
        Ok(Response::new(job_message(&job)))
    }

    async fn get(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().id;
        let g = self.lock();
        let job = g.state.jobs.get(&id).ok_or_else(|| status(StateError::NoJob(id.clone())))?;
        Ok(Response::new(job_message(job)))
    }

    async fn list(&self, _request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let g = self.lock();
        Ok(Response::new(pb::ListJobsResponse {
            jobs: g.state.jobs.values().map(job_message).collect(),
        }))
    }

    async fn cancel(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().id;
        let job = self.change(|s| s.cancel(&id, now_unix())).map_err(status)?;
        tracing::info!(job = %id, "job cancelled");
        Ok(Response::new(job_message(&job)))
    }

    async fn workers(&self, _request: Request<pb::ListWorkersRequest>) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let g = self.lock();
        Ok(Response::new(pb::ListWorkersResponse {
            workers: g.state.workers.values().map(worker_message).collect(),
        }))
    }

    async fn events(&self, request: Request<pb::EventsRequest>) -> Result<Response<pb::EventsResponse>, Status> {
        let (_, events) = self.job_since(&request.into_inner().id, 0)?;
        Ok(Response::new(pb::EventsResponse {
            events: events.iter().map(event_message).collect(),
        }))
    }

    type WatchStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchUpdate, Status>> + Send>>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        let every = Duration::from_millis(if r.min_interval_ms == 0 {
            250
        } else {
            r.min_interval_ms.max(10) as u64
        });
        // Fails here, not in the stream, when there is no such job.
        self.job_since(&r.id, r.after_seq)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            let mut changed = me.changed.subscribe();
            let mut after = r.after_seq;
            let mut last_sent: Option<Job> = None;
            loop {
                changed.borrow_and_update();
                let Ok((job, events)) = me.job_since(&r.id, after) else { return };
                for e in &events {
                    let update = pb::watch_update::Update::Event(event_message(e));
                    if tx.send(Ok(pb::WatchUpdate { update: Some(update) })).await.is_err() {
                        return; // the client went away
                    }
                    after = e.seq;
                }
                if last_sent.as_ref() != Some(&job) {
                    let update = pb::watch_update::Update::Job(job_message(&job));
                    if tx.send(Ok(pb::WatchUpdate { update: Some(update) })).await.is_err() {
                        return;
                    }
                    if job.state.is_final() {
                        return;
                    }
                    last_sent = Some(job);
                }
                tokio::time::sleep(every).await;
                if changed.changed().await.is_err() {
                    return; // the coordinator is shutting down
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl WorkerService for Coordinator {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = request.into_inner();
        if r.rendezvous_addr.is_empty() {
            return Err(Status::invalid_argument("rendezvous_addr is empty"));
        }
        let w = self.change(|s| s.register(&r.name, r.devices.max(1), &r.rendezvous_addr, now_unix()));
        tracing::info!(worker = %w.id, name = %w.name, rendezvous = %w.rendezvous_addr, "worker registered");
        Ok(Response::new(pb::RegisterResponse {
            worker_id: w.id,
            heartbeat_interval_ms: self.settings.heartbeat_interval.as_millis() as u32,
        }))
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Ok(Response::new(self.answer(request.into_inner())?))
    }

    type SessionStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::HeartbeatResponse, Status>> + Send>>;

    async fn session(&self, request: Request<tonic::Streaming<pb::HeartbeatRequest>>) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let me = self.clone();
        let session = self.sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        tokio::spawn(async move {
            let mut worker: Option<String> = None;
            loop {
                let beat = match inbound.message().await {
                    Ok(Some(beat)) => beat,
                    Ok(None) | Err(_) => break, // closed, or the connection broke
                };
                if worker.as_deref() != Some(beat.worker_id.as_str()) {
                    let id = beat.worker_id.clone();
                    if let Err(e) = me.change(|s| s.connected(&id, session)) {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                    worker = Some(id);
                }
                let reply = me.answer(beat);
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
            if let Some(id) = worker {
                me.change(|s| s.disconnected(&id, session, now_unix()));
                tracing::info!(worker = %id, "heartbeat stream closed");
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn finish(&self, request: Request<pb::FinishRequest>) -> Result<Response<pb::FinishResponse>, Status> {
        let r = request.into_inner();
        self.change(|s| s.finish(&r.worker_id, &r.job_id, r.generation, r.ok, &r.message, now_unix()))
            .map_err(status)?;
        tracing::info!(worker = %r.worker_id, job = %r.job_id, generation = r.generation, ok = r.ok, message = %r.message, "part finished");
        Ok(Response::new(pb::FinishResponse {}))
    }

    async fn commit_checkpoint(
        &self,
        request: Request<pb::CommitCheckpointRequest>,
    ) -> Result<Response<pb::CommitCheckpointResponse>, Status> {
        let r = request.into_inner();
        let recorded = self
            .change(|s| s.commit_checkpoint(&r.worker_id, &r.job_id, r.generation, r.step, r.bytes, now_unix()))
            .map_err(status)?;
        if recorded {
            tracing::info!(job = %r.job_id, step = r.step, bytes = r.bytes, "checkpoint registered");
        }
        Ok(Response::new(pb::CommitCheckpointResponse {}))
    }
}
