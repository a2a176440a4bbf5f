//! The ring movement of the TCP collective: ring reduce-scatter and ring
//! all-gather over near-equal segments (all-reduce is one then the other).
//! In each ring step a sender thread streams one segment to the next rank
//! in frames of [`CHUNK_BYTES`](super::CHUNK_BYTES) while this thread
//! receives the previous rank's segment and reduces it frame by frame, so
//! large buffers are bandwidth-bound. Between neighbours that share memory
//! the step goes through their [`ShmPipe`]s instead, with the socket
//! watched for aborts and closes while a pipe waits.
//!
//! This file owns moving ring data, over either transport; it knows bytes
//! and ranks only, and leaves poisoning to `abort.rs`.

use super::TcpCollective;
use super::wire::{CHUNK_FLOATS, Kind, io_error, write_frame};
use crate::collective::shm::{self, ShmPipe, WaitError};
use crate::collective::{CollResult, CollectiveError};
use std::io::Read;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

impl TcpCollective {
    /// One ring step: streams `send` to the next rank while receiving the
    /// previous rank's segment into `recv` (added when `reduce`).
    fn ring_step(&self, op: &'static str, send: &[f32], recv: &mut [f32], reduce: bool) -> CollResult<()> {
        let (next, prev) = (self.next(), self.prev());
        let stop = AtomicBool::new(false);
        if let (Some(to_next), Some(from_prev)) = (&self.pipe_to_next, &self.pipe_from_prev) {
            // A rank is at most W−1 ring steps ahead of its next neighbour,
            // so a pipe holds at most W messages in flight: when they all fit,
            // writing never waits for the reader, and one thread can write
            // and then read (no sender thread, no hand-off between threads).
            let message = 8 + 4 * send.len().max(recv.len());
            if self.world * message <= to_next.capacity() {
                self.pipe_send(op, to_next, send, &stop)?;
                return self.pipe_receive(op, from_prev, recv, reduce);
            }
        }
        std::thread::scope(|scope| {
            let sender = scope.spawn(|| -> CollResult<()> {
                if let Some(pipe) = &self.pipe_to_next {
                    return self.pipe_send(op, pipe, send, &stop);
                }
                let mut w = self.peer(next).writer.lock().unwrap_or_else(|e| e.into_inner());
                for chunk in send.chunks(CHUNK_FLOATS) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    write_frame(&mut w, Kind::Data, bytemuck::cast_slice(chunk)).map_err(|e| io_error(op, next, self.timeout, e))?;
                }
                Ok(())
            });
            let received = (|| -> CollResult<()> {
                if let Some(pipe) = &self.pipe_from_prev {
                    return self.pipe_receive(op, pipe, recv, reduce);
                }
                let mut r = self.peer(prev).reader.lock().unwrap_or_else(|e| e.into_inner());
                let mut scratch = vec![0f32; if reduce { CHUNK_FLOATS.min(recv.len()) } else { 0 }];
                for chunk in recv.chunks_mut(CHUNK_FLOATS) {
                    let len = self.expect(op, prev, &mut r, Kind::Data)?;
                    same_size(op, prev, len, chunk.len())?;
                    if reduce {
                        let part = &mut scratch[..chunk.len()];
                        r.read_exact(bytemuck::cast_slice_mut(part))
                            .map_err(|e| io_error(op, prev, self.timeout, e))?;
                        chunk.iter_mut().zip(part.iter()).for_each(|(a, b)| *a += *b);
                    } else {
                        r.read_exact(bytemuck::cast_slice_mut(chunk))
                            .map_err(|e| io_error(op, prev, self.timeout, e))?;
                    }
                }
                Ok(())
            })();
            if received.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            let sent = sender.join().unwrap_or_else(|_| {
                Err(CollectiveError::Invalid {
                    op,
                    message: "the sender thread panicked".into(),
                })
            });
            received.and(sent)
        })
    }

    /// The sending half of a ring step through shared memory: a length,
    /// then the floats. Gives up when the receiving half failed (`stop`) or
    /// the next rank's socket closes or carries an abort.
    fn pipe_send(&self, op: &'static str, pipe: &ShmPipe, send: &[f32], stop: &AtomicBool) -> CollResult<()> {
        let next = self.next();
        let fd = self.peer(next).fd;
        let check = || {
            if stop.load(Ordering::Relaxed) || shm::socket_signalled(fd) {
                Err(CollectiveError::PeerLost {
                    op,
                    peer: next,
                    message: "closed its connection or aborted while this rank was sending".into(),
                })
            } else {
                Ok(())
            }
        };
        let bytes: &[u8] = bytemuck::cast_slice(send);
        pipe.write_all(&(bytes.len() as u64).to_le_bytes(), self.timeout, check)
            .and_then(|()| pipe.write_all(bytes, self.timeout, check))
            .map_err(|e| self.pipe_error(op, next, e))
    }

    /// The receiving half through shared memory: checks the length, then
    /// adds (or copies) the floats straight out of the pipe. An abort
    /// frame or a closed socket from the previous rank ends the wait with
    /// that reason.
    fn pipe_receive(&self, op: &'static str, pipe: &ShmPipe, recv: &mut [f32], reduce: bool) -> CollResult<()> {
        let prev = self.prev();
        let fd = self.peer(prev).fd;
        let mut r = self.peer(prev).reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut check = || {
            if !shm::socket_signalled(fd) {
                return Ok(());
            }
            // Only an abort (or the end of the stream) can arrive now.
            self.expect(op, prev, &mut r, Kind::Data).and_then(|_| {
                Err(CollectiveError::PeerLost {
                    op,
                    peer: prev,
                    message: "sent data on its socket during a shared-memory transfer (the ranks are out of step)".into(),
                })
            })
        };
        let mut header = [0u8; 8];
        pipe.read_with(8, self.timeout, &mut check, |at, b| header[at..at + b.len()].copy_from_slice(b))
            .map_err(|e| self.pipe_error(op, prev, e))?;
        same_size(op, prev, u64::from_le_bytes(header), recv.len())?;
        let mut misaligned = false;
        pipe.read_with(recv.len() * 4, self.timeout, &mut check, |at, bytes| {
            let (Ok(src), true) = (bytemuck::try_cast_slice::<u8, f32>(bytes), at % 4 == 0) else {
                misaligned = true;
                return;
            };
            let dst = &mut recv[at / 4..at / 4 + src.len()];
            if reduce {
                dst.iter_mut().zip(src).for_each(|(a, b)| *a += *b);
            } else {
                dst.copy_from_slice(src);
            }
        })
        .map_err(|e| self.pipe_error(op, prev, e))?;
        if misaligned {
            return Err(CollectiveError::PeerLost {
                op,
                peer: prev,
                message: "published a partial float in shared memory".into(),
            });
        }
        Ok(())
    }

    fn pipe_error(&self, op: &'static str, peer: usize, e: WaitError<CollectiveError>) -> CollectiveError {
        match e {
            WaitError::Timeout => CollectiveError::Timeout {
                op,
                peer,
                timeout: self.timeout,
            },
            WaitError::Stopped(e) => e,
        }
    }

    /// Ring reduce-scatter over `segs` of `buf`, in place: afterwards segment
    /// r of rank r holds the sum over ranks.
    pub(super) fn ring_reduce_scatter(&self, op: &'static str, buf: &mut [f32], segs: &[Range<usize>]) -> CollResult<()> {
        let w = self.world;
        for s in 0..w - 1 {
            let send = (self.rank + 2 * w - s - 1) % w;
            let recv = (self.rank + 2 * w - s - 2) % w;
            let (a, b) = split_pair(buf, segs[send].clone(), segs[recv].clone());
            self.ring_step(op, a, b, true)?;
        }
        Ok(())
    }

    /// Ring all-gather over `segs` of `buf`, in place: rank r starts with
    /// segment r filled and ends with all of them.
    pub(super) fn ring_all_gather(&self, op: &'static str, buf: &mut [f32], segs: &[Range<usize>]) -> CollResult<()> {
        let w = self.world;
        for s in 0..w - 1 {
            let send = (self.rank + w - s) % w;
            let recv = (self.rank + 2 * w - s - 1) % w;
            let (a, b) = split_pair(buf, segs[send].clone(), segs[recv].clone());
            self.ring_step(op, a, b, false)?;
        }
        Ok(())
    }
}

/// A data message of `bytes` from `peer` where `floats` floats were expected
/// is an error: the ranks' buffer sizes differ.
fn same_size(op: &'static str, peer: usize, bytes: u64, floats: usize) -> CollResult<()> {
    if bytes == (floats * 4) as u64 {
        return Ok(());
    }
    Err(CollectiveError::PeerLost {
        op,
        peer,
        message: format!(
            "sent {bytes} bytes where {} were expected (buffer sizes differ across ranks)",
            floats * 4
        ),
    })
}

/// Disjoint `send` (shared) and `recv` (mutable) ranges of one buffer.
fn split_pair(buf: &mut [f32], send: Range<usize>, recv: Range<usize>) -> (&[f32], &mut [f32]) {
    if send.start < recv.start {
        let (lo, hi) = buf.split_at_mut(recv.start);
        (&lo[send], &mut hi[..recv.len()])
    } else {
        let (lo, hi) = buf.split_at_mut(send.start);
        (&hi[..send.len()], &mut lo[recv])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{data, with_world};
    use super::*;
    use crate::collective::Collective;
    use std::time::{Duration, Instant};

    #[test]
    fn ring_collectives_match_their_definitions() {
        for (world, shared_memory) in [(2, true), (3, true), (4, true), (2, false), (3, false)] {
            // Sizes that do and do not divide, below and above one frame
            // and one shared-memory ring.
            for n in [1, 5, 1000, CHUNK_FLOATS * 2 + 3, shm::PIPE_BYTES / 2 + 7] {
                let out = with_world(world, Duration::from_secs(20), shared_memory, |rank, c| {
                    assert_eq!(c.shares_memory(), (shared_memory, shared_memory), "rank {rank}");
                    let mut sum = data(rank, n);
                    c.all_reduce_sum(&mut sum).unwrap();
                    let gathered = c.all_gather(&data(rank, n)).unwrap();
                    let full: Vec<f32> = (0..world * n).map(|i| (i % 11) as f32 + rank as f32).collect();
                    let scattered = c.reduce_scatter_sum(&full).unwrap();
                    let mut b = if rank == 1 { data(9, n) } else { vec![0.0; n] };
                    c.broadcast(&mut b, 1).unwrap();
                    c.barrier().unwrap();
                    (sum, gathered, scattered, b)
                });
                let inputs: Vec<Vec<f32>> = (0..world).map(|r| data(r, n)).collect();
                let expect_sum: Vec<f32> = (0..n).map(|i| inputs.iter().map(|d| d[i]).sum()).collect();
                let expect_gather: Vec<f32> = (0..world).flat_map(|r| data(r, n)).collect();
                for (rank, (sum, gathered, scattered, b)) in out.into_iter().enumerate() {
                    assert_eq!(sum, expect_sum, "all_reduce w={world} n={n}");
                    assert_eq!(gathered, expect_gather, "all_gather w={world} n={n}");
                    let expect: Vec<f32> = (rank * n..(rank + 1) * n)
                        .map(|i| (0..world).map(|r| (i % 11) as f32 + r as f32).sum())
                        .collect();
                    assert_eq!(scattered, expect, "reduce_scatter w={world} n={n}");
                    assert_eq!(b, data(9, n), "broadcast");
                }
            }
        }
    }

    #[test]
    fn a_rank_silent_in_a_shared_memory_ring_times_out_by_name() {
        let started = Instant::now();
        let out = with_world(3, Duration::from_millis(600), true, |rank, c| {
            if rank == 2 {
                std::thread::sleep(Duration::from_millis(2500));
                return String::new();
            }
            let mut buf = vec![1.0f32; 1000];
            c.all_reduce_sum(&mut buf).unwrap_err().to_string()
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        // Rank 0 waits for rank 2's data and names it. Rank 1 waits for
        // rank 0: usually rank 0's abort tells it whom rank 0 blames, but
        // its own timeout (as long) may fire first on a loaded machine.
        assert!(out[0].contains("rank 2"), "{}", out[0]);
        assert!(["[2]", "rank 2", "rank 0"].iter().any(|r| out[1].contains(r)), "{}", out[1]);
    }
}
