//! The signals that stop a process cleanly: SIGINT (Ctrl-C) and SIGTERM
//! (what `docker stop` and Kubernetes send). Owns only the waiting; what a
//! clean stop means (checkpoint first, tell the coordinator, …) belongs to
//! each process.

/// Resolves at the first SIGINT or SIGTERM; returns the signal's name.
pub async fn signalled() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}
