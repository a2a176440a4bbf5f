//! The connection of `amdimctl` to the coordinator's job service: the
//! client type, connecting (an unreachable coordinator is exit 3), the
//! words and exit kinds of refused calls, and small lookups every job
//! command shares (job ids, state names, a job's checkpoint URI). No
//! printing and no command logic: `jobs` and `watch` own those.

use super::exit::{self, Exit, ExitExt};
use amdim_shared::auth::BearerToken;
use amdim_shared::proto::v1 as pb;
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result};
use pb::job_service_client::JobServiceClient;
use std::path::Path;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A job-service client presenting the client token.
pub type Client = JobServiceClient<InterceptedService<Channel, BearerToken>>;

/// A client of the coordinator at `server` (https:// verified against
/// `tls_ca_file`, or the system's roots) presenting `token`, or an error
/// naming the server (exit 3 when it cannot be reached, 2 for a bad
/// address or token).
pub async fn connect(server: &str, token: Option<&str>, tls_ca_file: Option<&Path>) -> Result<Client> {
    let endpoint = amdim_shared::tls::endpoint("--server", server, tls_ca_file).exit(Exit::Invalid)?;
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {server} (--server or AMDIM_SERVER)"))
        .exit(Exit::Unreachable)?;
    let token = BearerToken::new(token)
        .map_err(|e| anyhow::anyhow!("--token: {e}"))
        .exit(Exit::Invalid)?;
    Ok(JobServiceClient::with_interceptor(channel, token))
}

/// The error of a refused call, tagged with its exit kind (`exit::of_status`);
/// a refused token says how to pass one.
pub fn refused(s: tonic::Status) -> anyhow::Error {
    let message = match s.code() {
        tonic::Code::Unauthenticated => format!(
            "the coordinator refused the request: {} (--token, --token-file or AMDIM_TOKEN)",
            s.message()
        ),
        tonic::Code::Unavailable => format!("the coordinator is unavailable: {}", s.message()),
        _ => s.message().to_string(),
    };
    exit::tagged(exit::of_status(s.code()), anyhow::anyhow!(message))
}

/// The state's name as `amdimctl` prints it (`RUNNING`).
pub(crate) fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Unspecified => "UNKNOWN",
        pb::JobState::Pending => "PENDING",
        pb::JobState::Running => "RUNNING",
        pb::JobState::Restarting => "RESTARTING",
        pb::JobState::Succeeded => "SUCCEEDED",
        pb::JobState::Failed => "FAILED",
        pb::JobState::Cancelled => "CANCELLED",
    }
}

/// Whether a job in `state` has ended.
pub(crate) fn is_final(state: i32) -> bool {
    matches!(state_name(state), "SUCCEEDED" | "FAILED" | "CANCELLED")
}

/// Whether `s` is a job id as the coordinator makes them (`job-000042`).
pub fn is_job_id(s: &str) -> bool {
    s.strip_prefix("job-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The checkpoint URI of job `id`, from the spec the coordinator holds.
pub async fn checkpoint_uri(mut c: Client, id: &str) -> Result<String> {
    let j = c.get(pb::GetJobRequest { id: id.into() }).await.map_err(refused)?.into_inner();
    let spec = JobSpec::from_toml_with_env(&j.spec_toml, &[]).map_err(|e| anyhow::anyhow!("job {id}: its spec: {e}"))?;
    Ok(spec.checkpoint.uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_told_apart_from_checkpoint_uris() {
        assert!(is_job_id("job-000042"));
        for not_an_id in ["job-", "job-12a", "s3://b/job-000001", "runs/job-000001", "job"] {
            assert!(!is_job_id(not_an_id), "{not_an_id}");
        }
    }
}
