//! Failure handling of the TCP collective: a communicator that fails once
//! is poisoned (every later call returns the same error at once), and it
//! sends an abort frame naming the ranks it blames to every other peer, so
//! that they stop at once with that reason instead of waiting for their own
//! timeouts. Reading a frame header goes through here, so that an abort
//! from any peer ends whatever this rank was waiting for.
//!
//! This file owns poisoning and abort frames; it must not move data.

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
        let out = f();
        if let Err(e) = &out {
            self.poison(e.clone());
        }
        out
    }

    fn poison(&self, e: CollectiveError) {
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
        *self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
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
}
