//! The two log RPCs behind `job_service` and `worker_service`: a worker's
//! batch of a rank's lines goes into that rank's ring (`log_buffer`), and
//! `Logs` streams a job's lines (all kept, then with `follow` new ones as
//! they arrive until the job reached a final state). Rings of jobs the
//! coordinator has forgotten are dropped here too. No job rules, no store.

use super::coordinator::{Coordinator, status};
use super::state::StateError;
use amdim_shared::proto::v1 as pb;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Status;

/// The stream `Logs` answers with.
pub(super) type LogsStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LogLines, Status>> + Send>>;

/// One message carries at most about this many bytes of lines.
const MESSAGE_BYTES: usize = 1 << 20;
/// Rings of forgotten jobs are looked for at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Splits `lines` into messages of at most [`MESSAGE_BYTES`] (at least one line each).
fn messages(rank: u32, lines: Vec<String>) -> Vec<pb::LogLines> {
    let mut out = Vec::new();
    let mut current = pb::LogLines { rank, lines: Vec::new() };
    let mut bytes = 0;
    for line in lines {
        if bytes + line.len() > MESSAGE_BYTES && !current.lines.is_empty() {
            out.push(std::mem::replace(&mut current, pb::LogLines { rank, lines: Vec::new() }));
            bytes = 0;
        }
        bytes += line.len();
        current.lines.push(line);
    }
    if !current.lines.is_empty() {
        out.push(current);
    }
    out
}

impl Coordinator {
    /// `PushLogs`: the batch into its ring; the job must be known.
    pub(super) fn accept_logs(&self, r: pb::PushLogsRequest) -> Result<pb::PushLogsResponse, Status> {
        if !self.lock().state.jobs.contains_key(&r.job_id) {
            return Err(status(StateError::NoJob(r.job_id)));
        }
        self.prune_logs();
        let next_seq = self.logs.push(&r.job_id, r.rank, r.generation, r.first_seq, r.lines);
        Ok(pb::PushLogsResponse { next_seq })
    }

    /// Drops the rings of jobs no longer in the state (at most every [`PRUNE_EVERY`]).
    fn prune_logs(&self) {
        if !self.logs.prune_due(PRUNE_EVERY) {
            return;
        }
        let known: std::collections::HashSet<String> = self.lock().state.jobs.keys().cloned().collect();
        self.logs.retain(|job| known.contains(job));
    }

    /// Whether job `id` is final (or gone); NotFound when never known.
    fn job_ended(&self, id: &str) -> bool {
        self.lock().state.jobs.get(id).is_none_or(|j| j.state.is_final())
    }

    /// `Logs`: the stream of job `r.id`'s lines.
    pub(super) fn logs_stream(&self, r: pb::LogsRequest) -> Result<LogsStream, Status> {
        if !self.lock().state.jobs.contains_key(&r.id) {
            return Err(status(StateError::NoJob(r.id)));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let me = self.clone();
        tokio::spawn(async move {
            let mut added = me.logs.added.subscribe();
            let mut changed = me.changed.subscribe();
            let mut cursors = BTreeMap::new();
            loop {
                added.borrow_and_update();
                changed.borrow_and_update();
                // Checked before reading: lines sent before the job ended are read.
                let done = !r.follow || me.job_ended(&r.id);
                for (rank, lines) in me.logs.read_new(&r.id, r.rank, &mut cursors) {
                    for m in messages(rank, lines) {
                        if tx.send(Ok(m)).await.is_err() {
                            return; // the client went away
                        }
                    }
                }
                if done {
                    return;
                }
                tokio::select! {
                    _ = added.changed() => {}
                    _ = changed.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_reads_are_split_into_messages_that_fit() {
        let line = "x".repeat(300 << 10);
        let got = messages(3, vec![line.clone(); 7]);
        assert_eq!(got.iter().map(|m| m.lines.len()).collect::<Vec<_>>(), [3, 3, 1]);
        assert!(got.iter().all(|m| m.rank == 3));
        assert!(messages(0, Vec::new()).is_empty());
    }
}
