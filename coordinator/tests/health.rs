//! The coordinator's standard gRPC health service (`grpc.health.v1`): it
//! answers SERVING for the server and both amdim services without a token,
//! while the amdim services themselves still demand theirs; `amdimctl
//! health` (the chart's `helm test`) reports it.

use amdim_coordinator::server::{Coordinator, Settings};
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn health_answers_without_a_token_for_every_service() {
    let coordinator = Coordinator::open(Settings {
        store: None,
        heartbeat_interval: Duration::from_millis(500),
        heartbeat_timeout: Duration::from_secs(5),
        keep_finished_jobs: Duration::from_secs(86_400),
        client_token: Some("client".into()),
        join_token: Some("join".into()),
        tls: None,
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(coordinator.serve(listener, async {
        let _ = stopped.await;
    }));
    let mut health = loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(addr.clone()).unwrap().connect().await {
            break HealthClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for service in ["", "amdim.v1.JobService", "amdim.v1.WorkerService"] {
        let status = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "nope".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    // The job service still wants the client token.
    let mut jobs = amdim_coordinator::ctl::jobs::connect(&addr, None, None).await.unwrap();
    let refused = jobs.list(amdim_shared::proto::v1::ListJobsRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // `amdimctl health`, as the chart's test Pod runs it.
    let home = tempfile::tempdir().unwrap();
    let ctl = |server: String, args: &'static [&'static str]| {
        let home = home.path().to_path_buf();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_amdimctl"))
                .args(["--server", &server, "health", "--timeout-s", "3"])
                .args(args)
                .env("HOME", home)
                .env_remove("AMDIM_CONFIG")
                .env_remove("XDG_CONFIG_HOME")
                .env_remove("AMDIM_SERVER")
                .output()
                .await
                .unwrap()
        }
    };
    let out = ctl(addr.clone(), &[]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SERVING\n");
    let out = ctl(addr.clone(), &["--service", "amdim.v1.WorkerService"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ctl(addr.clone(), &["--service", "nope"]).await;
    assert_eq!(out.status.code(), Some(2), "an unknown service is invalid input");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    // Nothing listening: unreachable (exit 3), within the timeout.
    let started = std::time::Instant::now();
    let out = ctl(addr, &[]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the coordinator"));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}
