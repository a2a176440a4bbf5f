//! `amdim.v1.WorkerService`, what worker agents call: register, the
//! heartbeat (single calls or the session stream, whose closing makes the
//! worker lost at once; one that says the worker got SIGTERM ends its
//! generation as preempted), the end of a rank's part (a preempted one is
//! no failure), checkpoint commits and log lines (`log_service`).
//! The join token is checked before any of it, by the interceptor
//! `Coordinator::serve` installs.

use super::coordinator::{Coordinator, now_unix, status};
use super::state::{Command, Report};
use amdim_shared::proto::v1 as pb;
use pb::worker_service_server::WorkerService;
use tonic::{Request, Response, Status};

impl Coordinator {
    /// A heartbeat's answer: the worker's next command.
    fn answer(&self, r: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse, Status> {
        let report = (!r.job_id.is_empty()).then(|| Report {
            job_id: r.job_id.clone(),
            generation: r.generation,
            step: r.step,
            total: r.total_steps,
            stats: r.stats,
        });
        let preempting = r.preempting && !r.job_id.is_empty();
        let command = self
            .change(|s| {
                if preempting {
                    // An unknown job changes nothing here: the heartbeat answers for it.
                    let _ = s.preempt(&r.worker_id, &r.job_id, r.generation, now_unix());
                }
                s.heartbeat(&r.worker_id, report, now_unix())
            })?
            .map_err(status)?;
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
}

#[tonic::async_trait]
impl WorkerService for Coordinator {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = request.into_inner();
        if r.rendezvous_addr.is_empty() {
            return Err(Status::invalid_argument("rendezvous_addr is empty"));
        }
        self.admit_registration()?;
        let w = self.change(|s| s.register(&r.name, r.devices.max(1), &r.rendezvous_addr, now_unix()))?;
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
                    if let Err(e) = me.change(|s| s.connected(&id, session)).and_then(|r| r.map_err(status)) {
                        let _ = tx.send(Err(e)).await;
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
                // A failed write is logged by `change`; the heartbeat deadline loses it later.
                let _ = me.change(|s| s.disconnected(&id, session, now_unix()));
                tracing::info!(worker = %id, "heartbeat stream closed");
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn finish(&self, request: Request<pb::FinishRequest>) -> Result<Response<pb::FinishResponse>, Status> {
        let r = request.into_inner();
        self.change(|s| {
            if r.preempted && !r.ok {
                s.preempt(&r.worker_id, &r.job_id, r.generation, now_unix())?;
            }
            s.finish(&r.worker_id, &r.job_id, r.generation, (r.ok, r.step), &r.message, now_unix())
        })?
        .map_err(status)?;
        tracing::info!(worker = %r.worker_id, job = %r.job_id, generation = r.generation, ok = r.ok, preempted = r.preempted, message = %r.message, "part finished");
        Ok(Response::new(pb::FinishResponse {}))
    }

    async fn commit_checkpoint(
        &self,
        request: Request<pb::CommitCheckpointRequest>,
    ) -> Result<Response<pb::CommitCheckpointResponse>, Status> {
        let r = request.into_inner();
        let recorded = self
            .change(|s| s.commit_checkpoint(&r.worker_id, &r.job_id, r.generation, r.step, r.bytes, now_unix()))?
            .map_err(status)?;
        if recorded {
            tracing::info!(job = %r.job_id, step = r.step, bytes = r.bytes, "checkpoint registered");
        }
        Ok(Response::new(pb::CommitCheckpointResponse {}))
    }

    async fn push_logs(&self, request: Request<pb::PushLogsRequest>) -> Result<Response<pb::PushLogsResponse>, Status> {
        Ok(Response::new(self.accept_logs(request.into_inner())?))
    }
}
