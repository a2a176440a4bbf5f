//! The agent's registration with the coordinator: tried until it succeeds,
//! the join token is refused, or the agent is stopped. A coordinator that
//! sheds load (`RESOURCE_EXHAUSTED` with a retry-after hint, e.g. when
//! thousands of agents register at once after it restarted) is asked
//! again on the same connection after its hint plus jitter; any other
//! failure waits with capped exponential backoff and full jitter
//! (`amdim_shared::retry`) and reconnects. Nothing else of the agent here.

use super::{AgentSettings, connect};
use amdim_shared::auth::BearerToken;
use amdim_shared::backoff::{self, Backoff};
use amdim_shared::proto::v1 as pb;
use amdim_shared::session::WorkerClient;
use anyhow::Result;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Registers this agent; None when it was stopped first.
pub(super) async fn register(
    client: &mut WorkerClient,
    settings: &AgentSettings,
    token: &BearerToken,
    rendezvous_addr: &str,
) -> Result<Option<pb::RegisterResponse>> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        if settings.shutdown.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let registered = client
            .register(pb::RegisterRequest {
                name: settings.name.clone(),
                devices: settings.devices,
                rendezvous_addr: rendezvous_addr.to_string(),
            })
            .await;
        let e = match registered {
            Ok(r) => return Ok(Some(r.into_inner())),
            Err(e) => e,
        };
        if e.code() == tonic::Code::Unauthenticated {
            anyhow::bail!(
                "the coordinator refused to register this worker: {} (--join-token-file or AMDIM_JOIN_TOKEN)",
                e.message()
            );
        }
        let shed = backoff::is_shed(&e);
        let wait = backoff.wait(backoff::retry_after(&e));
        tracing::warn!(code = ?e.code(), reason = %e.message(), retry_ms = wait.as_millis() as u64, attempt = backoff.failures(), "register failed; retrying");
        tokio::time::sleep(wait).await;
        if !shed {
            *client = connect(settings, token).await?;
        }
    }
}
