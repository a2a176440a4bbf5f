//! The TCP collective backend (CPU ranks): [`TcpCollective`], one rank's
//! connections to all the others, made by the static rendezvous of
//! [`RendezvousSpec`].
//!
//! Algorithms: ring all-reduce (reduce-scatter then all-gather over near-
//! equal segments), ring all-gather and ring reduce-scatter; barrier and
//! broadcast go through rank 0 / the root directly. Ring neighbours that
//! can map the same memory (same host, same IPC namespace, same user: found
//! out by trying at connect time) move ring data through a shared-memory
//! pipe instead of their socket; the socket stays the control channel
//! (abort frames, a closed peer). `RendezvousSpec::shared_memory = false`
//! keeps all data on TCP. Every read and write is bounded by the timeout;
//! on any failure the communicator is poisoned and tells every peer whom
//! it blames.
//!
//! One concern a file, in the order a collective meets them:
//! - `rendezvous.rs`: meeting the other ranks and connecting every pair;
//! - `wire.rs`: the frames on every stream;
//! - `ring.rs`: ring steps over TCP or shared memory;
//! - `star.rs`: broadcast and barrier;
//! - `abort.rs`: poisoning, abort frames and cancelling from another thread.
//!
//! This file holds the communicator's state and maps each [`Collective`]
//! operation onto those pieces. The module knows bytes and ranks only; what
//! the buffers mean is `ops`'.

mod abort;
mod rendezvous;
mod ring;
mod star;
#[cfg(test)]
mod testing;
mod wire;

pub use rendezvous::RendezvousSpec;
#[cfg(test)]
pub(crate) use testing::connect_loopback;
pub use wire::CHUNK_BYTES;

use super::shm::ShmPipe;
use super::{CollResult, Collective, CollectiveError, segments};
use std::net::TcpStream;
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::time::Duration;

struct Peer {
    reader: Mutex<TcpStream>,
    writer: Mutex<TcpStream>,
    /// The socket's descriptor, polled (never read) while a pipe waits.
    fd: RawFd,
}

/// One rank's connections to all the others.
pub struct TcpCollective {
    rank: usize,
    world: usize,
    timeout: Duration,
    /// `peers[p]` for p ≠ rank.
    peers: Vec<Option<Peer>>,
    poisoned: Mutex<Option<CollectiveError>>,
    /// Why [`Collective::cancel`] ended this rank's collectives, once it has.
    cancelled: Mutex<Option<String>>,
    /// Serialises collectives: one at a time per communicator.
    busy: Mutex<()>,
    /// Ring data to the next rank / from the previous one, when shared.
    pipe_to_next: Option<ShmPipe>,
    pipe_from_prev: Option<ShmPipe>,
}

impl TcpCollective {
    /// Whether ring data to the next rank and from the previous one goes
    /// through shared memory.
    pub fn shares_memory(&self) -> (bool, bool) {
        (self.pipe_to_next.is_some(), self.pipe_from_prev.is_some())
    }

    fn peer(&self, p: usize) -> &Peer {
        match &self.peers[p] {
            Some(peer) => peer,
            None => unreachable!("rank {} has no connection to itself", self.rank),
        }
    }

    fn next(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> CollResult<()> {
        if self.world == 1 {
            return Ok(());
        }
        self.guarded(|| {
            let segs = segments(buf.len(), self.world);
            self.ring_reduce_scatter("all_reduce", buf, &segs)?;
            self.ring_all_gather("all_reduce", buf, &segs)
        })
    }

    fn all_gather_into(&self, local: &[f32], out: &mut [f32]) -> CollResult<()> {
        let n = local.len();
        if out.len() != n * self.world {
            return Err(CollectiveError::Invalid {
                op: "all_gather",
                message: format!("output of {} elements for {} ranks of {n}", out.len(), self.world),
            });
        }
        out[self.rank * n..(self.rank + 1) * n].copy_from_slice(local);
        if self.world == 1 {
            return Ok(());
        }
        self.guarded(|| {
            let segs: Vec<_> = (0..self.world).map(|r| r * n..(r + 1) * n).collect();
            self.ring_all_gather("all_gather", out, &segs)
        })
    }

    fn reduce_scatter_sum(&self, full: &[f32]) -> CollResult<Vec<f32>> {
        if !full.len().is_multiple_of(self.world) {
            return Err(CollectiveError::Invalid {
                op: "reduce_scatter",
                message: format!("{} elements do not split into {} ranks", full.len(), self.world),
            });
        }
        let n = full.len() / self.world;
        let mut work = full.to_vec();
        if self.world > 1 {
            self.guarded(|| {
                let segs: Vec<_> = (0..self.world).map(|r| r * n..(r + 1) * n).collect();
                self.ring_reduce_scatter("reduce_scatter", &mut work, &segs)
            })?;
        }
        Ok(work[self.rank * n..(self.rank + 1) * n].to_vec())
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> CollResult<()> {
        if self.world == 1 {
            return Ok(());
        }
        if root >= self.world {
            return Err(CollectiveError::Invalid {
                op: "broadcast",
                message: format!("root {root} is not a rank of a world of {}", self.world),
            });
        }
        self.guarded(|| self.star_broadcast(buf, root))
    }

    fn barrier(&self) -> CollResult<()> {
        if self.world == 1 {
            return Ok(());
        }
        self.guarded(|| self.star_barrier())
    }

    fn cancel(&self, reason: &str) {
        self.cancel_now(reason);
    }
}
