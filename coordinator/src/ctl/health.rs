//! `amdimctl health`: one call to the coordinator's standard gRPC health
//! service (`grpc.health.v1.Health/Check`), as the chart's `helm test` Pod
//! and scripts use it. It needs no token (the service answers without one)
//! and goes over TLS like every amdimctl call. Owns the call and its
//! answer's name only; the service itself is `server`'s.

use super::exit::{self, Exit, ExitExt, tagged};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The serving status of `service` ("" for the whole server) as the
/// coordinator at `server` reports it, e.g. `SERVING`; an error when it
/// cannot be reached or answers nothing within `timeout` (exit 3), or
/// does not know the service (exit 2).
pub async fn check(server: &str, tls_ca_file: Option<&Path>, service: &str, timeout: Duration) -> Result<String> {
    let endpoint = amdim_shared::tls::endpoint("--server", server, tls_ca_file)?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {server} (--server or AMDIM_SERVER)"))
        .exit(Exit::Unreachable)?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.into() })
        .await
        .map_err(|s| {
            let kind = exit::of_status(s.code());
            tagged(
                kind,
                anyhow::anyhow!("health check of {:?} at {server}: {:?}: {}", service, s.code(), s.message()),
            )
        })?;
    let status = ServingStatus::try_from(answer.into_inner().status).unwrap_or(ServingStatus::Unknown);
    Ok(status.as_str_name().to_string())
}
