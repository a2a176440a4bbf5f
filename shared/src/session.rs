//! A worker's heartbeat stream (`WorkerService.Session`) from the client
//! side: each heartbeat sent on it is answered on it with the worker's next
//! command. Dropping a [`HeartbeatSession`] closes the stream, which the
//! coordinator takes as the worker going away. Used by the worker agent and
//! by the coordinator's scale benchmark; no retry policy here.

use crate::auth::BearerToken;
use crate::proto::v1 as pb;
use pb::worker_service_client::WorkerServiceClient;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A worker-service client presenting the join token.
pub type WorkerClient = WorkerServiceClient<InterceptedService<Channel, BearerToken>>;

/// An open heartbeat stream: send a heartbeat, read the reply.
pub struct HeartbeatSession {
    beats: tokio::sync::mpsc::Sender<pb::HeartbeatRequest>,
    replies: tonic::Streaming<pb::HeartbeatResponse>,
}

impl HeartbeatSession {
    /// Opens the stream on `client`.
    pub async fn open(client: &mut WorkerClient) -> Result<Self, Status> {
        let (beats, outbound) = tokio::sync::mpsc::channel(2);
        let replies = client
            .session(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await?
            .into_inner();
        Ok(Self { beats, replies })
    }

    /// Sends `beat` and waits for its answer.
    pub async fn beat(&mut self, beat: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse, Status> {
        self.beats
            .send(beat)
            .await
            .map_err(|_| Status::unavailable("the heartbeat stream is closed"))?;
        match self.replies.message().await? {
            Some(reply) => Ok(reply),
            None => Err(Status::unavailable("the coordinator closed the heartbeat stream")),
        }
    }

    /// A heartbeat on `session`, opening it first when there is none; after
    /// a failure the stream is dropped, so the next call opens a new one.
    pub async fn beat_on(
        client: &mut WorkerClient,
        session: &mut Option<Self>,
        beat: pb::HeartbeatRequest,
    ) -> Result<pb::HeartbeatResponse, Status> {
        let s = match session {
            Some(s) => s,
            None => session.insert(Self::open(client).await?),
        };
        let reply = s.beat(beat).await;
        if reply.is_err() {
            *session = None;
        }
        reply
    }
}
