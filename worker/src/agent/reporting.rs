//! Telling the coordinator what became of a part, so that nothing it must
//! know is lost: rank 0's checkpoint commits (kept until the coordinator
//! has them) and the end of the part (finished, stopped, preempted, failed
//! or panicked, with the message). A call that fails for a reason that may
//! pass (the coordinator restarting, unreachable, or unable to write its
//! store) is retried with backoff within a bound — the coordinator keeps
//! its state across a restart, so a late report still lands; one it
//! refuses for good (it no longer knows the job or this worker) is not.
//! Every call has a deadline, so a coordinator that stops answering cannot
//! hang the agent.
//!
//! This file owns the calls and their retries; when to report and what the
//! heartbeat loop does meanwhile is the agent's (`agent/mod.rs`).

use super::Training;
use super::stopping::Overdue;
use crate::collective::launch::panic_message;
use amdim_shared::proto::v1 as pb;
use amdim_shared::session::WorkerClient;
use anyhow::Result;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tonic::{Code, Status};

/// How long the end of a part and its commits are retried.
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(300);
/// The same on the way out after SIGTERM (within the pod's grace period).
pub(crate) const RETRY_FOR_SHUTDOWN: Duration = Duration::from_secs(30);
/// A call the coordinator has not answered by then has failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a refusal may go away by itself (worth retrying).
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

/// One call, failed with DEADLINE_EXCEEDED after [`CALL_TIMEOUT`].
async fn within_deadline<T>(call: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded(format!("no answer within {} s", CALL_TIMEOUT.as_secs()))))
}

/// Calls `call` until it succeeds, is refused for good, or `bound` has
/// passed (backoff from 200 ms, doubling up to 5 s); `what` names it in logs.
pub(crate) async fn retried<T, F, Fut>(what: &str, bound: Duration, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    let mut wait = Duration::from_millis(200);
    loop {
        match within_deadline(call()).await {
            Ok(v) => return Ok(v),
            Err(s) if !transient(s.code()) || started.elapsed() + wait > bound => return Err(s),
            Err(s) => {
                tracing::warn!(what, code = ?s.code(), reason = %s.message(), retry_s = wait.as_secs_f64(), "coordinator call failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A part's checkpoints (step, bytes) not yet registered with the coordinator.
pub(crate) struct Commits {
    pub(crate) worker_id: String,
    pub(crate) job_id: String,
    pub(crate) generation: u32,
    pub(crate) written: std::sync::mpsc::Receiver<(u64, u64)>,
    pub(crate) pending: Vec<(u64, u64)>,
}

impl Commits {
    fn request(&self, (step, bytes): (u64, u64)) -> pb::CommitCheckpointRequest {
        pb::CommitCheckpointRequest {
            worker_id: self.worker_id.clone(),
            job_id: self.job_id.clone(),
            generation: self.generation,
            step,
            bytes,
        }
    }

    /// Registers the checkpoints completed so far, in order; with `bound`
    /// each is retried that long, without one a failed call leaves it (and
    /// the later ones) for the next try. A commit refused for good is
    /// dropped with a warning (the coordinator no longer knows the job).
    pub(crate) async fn send(&mut self, client: &WorkerClient, bound: Option<Duration>) {
        self.pending.extend(self.written.try_iter());
        while let Some(&next) = self.pending.first() {
            let request = self.request(next);
            let call = || {
                let (mut c, r) = (client.clone(), request.clone());
                async move { c.commit_checkpoint(r).await }
            };
            let result = match bound {
                Some(bound) => retried("register a checkpoint", bound, call).await,
                None => within_deadline(call()).await,
            };
            match result {
                Ok(_) => {}
                Err(s) if bound.is_none() && transient(s.code()) => {
                    tracing::warn!(step = next.0, reason = %s.message(), "could not register a checkpoint yet; retrying");
                    return;
                }
                Err(s) => {
                    tracing::error!(job = %self.job_id, step = next.0, code = ?s.code(), reason = %s.message(), "a checkpoint was not registered with the coordinator");
                }
            }
            self.pending.remove(0);
        }
    }
}

/// How a part whose thread has ended went: trained to the end, stopped,
/// failed with its error, or panicked with its message.
pub(crate) fn outcome(handle: JoinHandle<Result<bool>>) -> (bool, String) {
    match handle.join() {
        Ok(Ok(true)) => (true, String::new()),
        Ok(Ok(false)) => (false, "stopped".to_string()),
        Ok(Err(e)) => (false, format!("{e:#}")),
        Err(payload) => (false, format!("the training thread panicked: {}", panic_message(payload.as_ref()))),
    }
}

/// Reports the end of a part, retried within `bound`.
pub(crate) async fn finish(client: &WorkerClient, request: pb::FinishRequest, bound: Duration) {
    let (job, generation) = (request.job_id.clone(), request.generation);
    let sent = retried("report the end of a part", bound, || {
        let (mut c, r) = (client.clone(), request.clone());
        async move { c.finish(r).await }
    })
    .await;
    if let Err(s) = sent {
        tracing::error!(job = %job, generation, code = ?s.code(), reason = %s.message(),
            "the end of a part never reached the coordinator (it ends the generation when it next hears from this worker)");
    }
}

/// Reports the end of `t`'s part, its checkpoints first, each retried
/// within `bound`. A thread still running is given up, never joined: the
/// error returned says why, and the agent must exit (the thread may hold
/// its devices).
pub(super) async fn report(client: &WorkerClient, worker_id: &str, t: Training, bound: Duration) -> Result<()> {
    let Training {
        job_id,
        generation,
        stop,
        progress,
        mut commits,
        handle,
        preempted,
    } = t;
    let abandoned = (!handle.is_finished()).then(|| match stop.check(Instant::now()) {
        Overdue::Abandon(why) => why,
        _ => "the part's thread still runs after its stop".to_string(),
    });
    let (ok, message) = match &abandoned {
        Some(why) => (false, why.clone()),
        None => outcome(handle),
    };
    let step = progress.step.load(Ordering::Relaxed);
    let preempted = preempted && !ok;
    tracing::info!(job = %job_id, generation, ok, preempted, message = %message, "part ended");
    // The run has ended: every checkpoint it completed is in the channel.
    commits.send(client, Some(bound)).await;
    // The part's last log lines reach the coordinator and its stored log
    // before the coordinator hears that it ended.
    super::log_ship::end_part(client, &job_id, generation, ok, &message).await;
    let request = pb::FinishRequest {
        worker_id: worker_id.to_string(),
        job_id,
        generation,
        ok,
        message,
        step,
        preempted,
    };
    finish(client, request, bound).await;
    match abandoned {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// Reports a part that never started (it could not, or the agent exits).
pub(super) async fn refuse(client: &WorkerClient, worker_id: &str, job_id: String, generation: u32, message: String, preempted: bool) {
    tracing::warn!(job = %job_id, generation, reason = %message, "part not started");
    let request = pb::FinishRequest {
        worker_id: worker_id.to_string(),
        job_id,
        generation,
        ok: false,
        message,
        step: 0,
        preempted,
    };
    let bound = if preempted { RETRY_FOR_SHUTDOWN } else { RETRY_FOR };
    finish(client, request, bound).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn transient_failures_are_retried_within_the_bound_and_refusals_are_not() {
        let calls = AtomicU32::new(0);
        let got = retried("t", Duration::from_secs(60), || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move { if n < 3 { Err(Status::unavailable("down")) } else { Ok(n) } }
        })
        .await;
        assert_eq!(got.unwrap(), 3);

        calls.store(0, Ordering::Relaxed);
        let got: Result<(), Status> = retried("t", Duration::from_secs(60), || {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err(Status::not_found("no job")) }
        })
        .await;
        assert_eq!((got.unwrap_err().code(), calls.load(Ordering::Relaxed)), (Code::NotFound, 1));

        // Backoff 0.2 s, then 0.4 s; the next wait (0.8 s) would pass the bound.
        let started = Instant::now();
        let got: Result<(), Status> = retried("t", Duration::from_secs(1), || async { Err(Status::unavailable("down")) }).await;
        assert_eq!(got.unwrap_err().code(), Code::Unavailable);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(550) && took < Duration::from_secs(1),
            "gave up after {took:?}"
        );
    }

    #[test]
    fn a_panicked_part_is_a_failure_with_its_message() {
        let handle = std::thread::spawn(|| -> Result<bool> { panic!("index 7 out of range") });
        while !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (ok, message) = outcome(handle);
        assert!(!ok);
        assert!(
            message.contains("panicked") && message.contains("index 7 out of range"),
            "{message}"
        );
        let failed = std::thread::spawn(|| -> Result<bool> { anyhow::bail!("lost rank 1") });
        assert_eq!(outcome(failed), (false, "lost rank 1".to_string()));
    }
}
