//! `amdim.v1.JobService`, what `amdimctl` calls: submit, get, list,
//! cancel, the worker list, a job's events, and the Watch stream that
//! sends a job's new events and its changed record after every change
//! that reached the store; the Logs stream is `log_service`'s. The client
//! token is checked before any of it, by the interceptor
//! `Coordinator::serve` installs.

use super::convert::{event_message, job_message, worker_message};
use super::coordinator::{Coordinator, now_unix, status};
use super::state::{Job, StateError};
use amdim_shared::proto::v1 as pb;
use pb::job_service_server::JobService;
use std::time::Duration;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl JobService for Coordinator {
    async fn submit(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::Job>, Status> {
        let r = request.into_inner();
        let job = self
            .change(|s| s.submit(&r.spec_toml, r.min_workers, r.max_workers, now_unix()))?
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
        let job = self.change(|s| s.cancel(&id, now_unix()))?.map_err(status)?;
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

    type LogsStream = super::log_service::LogsStream;

    async fn logs(&self, request: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        Ok(Response::new(self.logs_stream(request.into_inner())?))
    }
}
