//! Failure handling of the TCP collective: a communicator that fails once
//! is poisoned (every later call returns the same error at once), and it
//! sends an abort frame naming the ranks it blames to every other peer, so
//! that they stop at once with that reason instead of waiting for their own
//! timeouts. Reading a frame header goes through here, so that an abort
//! from any peer ends whatever this rank was waiting for. Cancelling
//! ([`TcpCollective::cancel_now`], from another thread) poisons the
//! communicator with [`CollectiveError::Cancelled`] and shuts its sockets
//! down, which wakes a read, write or poll blocked on them at once.
//!
//! This file owns poisoning, abort frames and cancelling; it must not move
//! data.

use super::TcpCollective;
use super::wire::{Kind, io_error, read_header, write_frame};
use crate::collective::{CollResult, CollectiveError};
use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

/// The payload of an abort frame: who reports, whom it blames, and why.
#[derive(serde::Serialize, serde::Deserialize)]
struct AbortNote {
    reporter: usize,
    ranks: Vec<usize>,
    message: String,
}

impl TcpCollective {
    /// Runs `f` unless poisoned; a failure poisons and tells every peer.
    pub(super) fn guarded<T>(&self, f: impl FnOnce() -> CollResult<T>) -> CollResult<T> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = self.poisoned.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(e);
        }
        if let Some(e) = self.cancellation() {
            return Err(e);
        }
        // A failure after a cancel is the cancel's doing (closed sockets).
        let out = f().map_err(|e| self.cancellation().unwrap_or(e));
        if let Err(e) = &out {
            self.poison(e.clone());
        }
        out
    }

    fn cancellation(&self) -> Option<CollectiveError> {
        let reason = self.cancelled.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(CollectiveError::Cancelled { rank: self.rank, reason })
    }

    /// Ends this rank's collectives: the peers are told why (where their
    /// stream is free), then every socket is shut down, so that a
    /// collective blocked on one returns now; it and every later call fail
    /// with [`CollectiveError::Cancelled`]. Safe from any thread; only the
    /// first call counts.
    pub(super) fn cancel_now(&self, reason: &str) {
        {
            let mut cancelled = self.cancelled.lock().unwrap_or_else(|e| e.into_inner());
            if cancelled.is_some() {
                return;
            }
            *cancelled = Some(reason.to_string());
        }
        if let Some(e) = self.cancellation() {
            self.tell_peers(&e);
        }
        for peer in self.peers.iter().flatten() {
            // SAFETY: `fd` is the socket of this peer's streams, open as
            // long as `self`; shutting it down wakes its blocked users and
            // closes nothing.
            unsafe { libc::shutdown(peer.fd, libc::SHUT_RDWR) };
        }
        tracing::warn!(rank = self.rank, reason, "collectives cancelled");
    }

    fn poison(&self, e: CollectiveError) {
        self.tell_peers(&e);
        *self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    /// Sends an abort frame naming `e` to every peer it does not blame
    /// whose stream no other thread is writing to (best effort).
    fn tell_peers(&self, e: &CollectiveError) {
        let note = AbortNote {
            reporter: self.rank,
            ranks: e.blamed(),
            message: e.to_string(),
        };
        let payload = serde_json::to_vec(&note).unwrap_or_default();
        for (p, peer) in self.peers.iter().enumerate() {
            let Some(peer) = peer else { continue };
            if note.ranks.contains(&p) {
                continue;
            }
            if let Ok(mut w) = peer.writer.try_lock() {
                let _ = w.set_write_timeout(Some(Duration::from_millis(200)));
                let _ = write_frame(&mut w, Kind::Abort, &payload);
            }
        }
    }

    /// Reads a frame header from `peer`; abort frames become errors.
    pub(super) fn expect(&self, op: &'static str, peer: usize, stream: &mut TcpStream, want: Kind) -> CollResult<u64> {
        let (kind, len) = read_header(stream).map_err(|e| io_error(op, peer, self.timeout, e))?;
        match kind {
            Some(k) if k == want => Ok(len),
            Some(Kind::Abort) => {
                let mut payload = vec![0u8; len.min(1 << 20) as usize];
                stream.read_exact(&mut payload).map_err(|e| io_error(op, peer, self.timeout, e))?;
                let note: AbortNote = serde_json::from_slice(&payload).map_err(|e| CollectiveError::PeerLost {
                    op,
                    peer,
                    message: format!("malformed abort: {e}"),
                })?;
                Err(CollectiveError::Aborted {
                    op,
                    reporter: note.reporter,
                    ranks: note.ranks,
                    message: note.message,
                })
            }
            other => Err(CollectiveError::PeerLost {
                op,
                peer,
                message: format!("protocol error: expected {want:?}, got {other:?} (the ranks are out of step)"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::with_world;
    use crate::collective::Collective;
    use std::time::{Duration, Instant};

    #[test]
    fn a_rank_that_leaves_fails_the_others_promptly_naming_it() {
        for shared_memory in [false, true] {
            let started = Instant::now();
            let out = with_world(3, Duration::from_secs(30), shared_memory, |rank, c| {
                if rank == 1 {
                    return None; // leaves without calling: its connections close on drop
                }
                let mut buf = vec![1.0f32; 1000];
                let first = c.all_reduce_sum(&mut buf).err();
                // Poisoned: the next call fails at once with the same error.
                let again = c.barrier().err();
                Some((first.map(|e| e.to_string()), again.map(|e| e.to_string())))
            });
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "failed by closed connections, not timeouts (shared memory: {shared_memory})"
            );
            for (rank, o) in out.into_iter().enumerate() {
                let Some((first, again)) = o else { continue };
                let first = first.unwrap_or_else(|| panic!("rank {rank} did not fail"));
                assert!(first.contains("rank 1") || first.contains("[1]"), "rank {rank}: {first}");
                assert_eq!(again.as_deref(), Some(first.as_str()));
            }
        }
    }

    #[test]
    fn a_cancel_ends_a_collective_blocked_on_a_silent_peer_at_once() {
        for shared_memory in [false, true] {
            let ranks = super::super::testing::connect_loopback(2, Duration::from_secs(60), shared_memory);
            let (silent, waiting) = (&ranks[1], &ranks[0]);
            let started = Instant::now();
            let err = std::thread::scope(|scope| {
                let blocked = scope.spawn(|| {
                    let mut buf = vec![1.0f32; 100_000];
                    waiting.all_reduce_sum(&mut buf).unwrap_err()
                });
                // Rank 1 never calls: rank 0 waits on it (60 s timeout).
                std::thread::sleep(Duration::from_millis(300));
                assert!(!blocked.is_finished(), "rank 0 should be waiting for rank 1");
                waiting.cancel("stopped by the coordinator");
                blocked.join().unwrap()
            });
            assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
            let text = err.to_string();
            assert!(text.contains("cancelled on rank 0: stopped by the coordinator"), "{text}");
            // Poisoned: later calls fail at once with the same error.
            assert_eq!(waiting.barrier().unwrap_err().to_string(), text);
            // The silent rank, when it comes back, learns rank 0 is gone.
            let late = silent.barrier().unwrap_err().to_string();
            assert!(late.contains("rank 0") || late.contains("cancelled"), "{late}");
        }
    }
}
