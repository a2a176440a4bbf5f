//! Collectives: what the ranks of a data-parallel job do together (docs/architecture.md §5–6).
//!
//! - [`Collective`] (this file): the operations ranks do together on host
//!   f32 buffers, each bounded by a timeout; failures name the peer ranks
//!   involved.
//! - [`launch`]: where a process's ranks sit in the world
//!   ([`launch::WorldLayout`]), connecting each to the others with the
//!   backend its spec asks for, and running them one thread each.
//! - [`tcp`]: the CPU backend (ring algorithms over TCP), with the static
//!   rendezvous that connects the ranks; [`shm`]: the shared-memory pipes
//!   its ring neighbours on one host move data through.
//! - [`nccl`] (feature `cuda`): the GPU backend, on NCCL loaded by
//!   `nccl_lib`, every wait bounded by [`watchdog`]; [`netif`] picks NCCL's
//!   socket interface from the advertised host.
//! - [`device`]: collectives on device memory ([`device::DeviceCollective`])
//!   and the glue that hands burn's CUDA tensors to them.
//! - [`ops`]: what training does with a collective: differentiable
//!   all-gather and all-reduce of burn tensors (the gathered negatives and
//!   synchronised BatchNorm), and bucketed gradient averaging.
//!
//! Bytes move in `tcp/` (or NCCL); nothing here knows what a model is
//! except `ops`, and nothing here parses flags (the CLI turns its flags
//! into a [`launch::WorldLayout`]). Users set the collectives' timeout and
//! options in the job spec's `[dist]` section.

pub mod device;
#[cfg(feature = "cuda")]
pub mod device_bench;
pub mod launch;
#[cfg(feature = "cuda")]
pub mod nccl;
#[cfg(feature = "cuda")]
mod nccl_lib;
pub mod netif;
pub mod ops;
pub mod shm;
pub mod tcp;
pub mod watchdog;

use std::time::Duration;

/// Why a collective failed. Once one fails, a communicator is poisoned:
/// every later call returns the same error at once.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("{op}: rank {peer} did not answer within {timeout:?} (is it alive and in the same step?)")]
    Timeout { op: &'static str, peer: usize, timeout: Duration },
    #[error("{op}: lost rank {peer}: {message}")]
    PeerLost { op: &'static str, peer: usize, message: String },
    #[error("{op}: rank {reporter} reports rank(s) {ranks:?} lost: {message}")]
    Aborted {
        op: &'static str,
        reporter: usize,
        ranks: Vec<usize>,
        message: String,
    },
    #[error("{op}: ranks {missing:?} did not arrive within {timeout:?}")]
    NotArrived {
        op: &'static str,
        missing: Vec<usize>,
        timeout: Duration,
    },
    #[error("rendezvous: {0}")]
    Rendezvous(String),
    #[error("{op}: {message}")]
    Invalid { op: &'static str, message: String },
    /// Ended on this rank from another thread ([`Collective::cancel`]).
    #[error("collectives cancelled on rank {rank}: {reason}")]
    Cancelled { rank: usize, reason: String },
}

impl CollectiveError {
    /// The ranks this error blames (for abort messages to the others).
    pub fn blamed(&self) -> Vec<usize> {
        match self {
            Self::Timeout { peer, .. } | Self::PeerLost { peer, .. } => vec![*peer],
            Self::Aborted { ranks, .. } => ranks.clone(),
            Self::NotArrived { missing, .. } => missing.clone(),
            Self::Rendezvous(_) | Self::Invalid { .. } | Self::Cancelled { .. } => Vec::new(),
        }
    }
}

pub type CollResult<T> = Result<T, CollectiveError>;

/// The operations all ranks of a world call together, in the same order.
/// Buffers are host f32; sizes must agree across ranks.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Element-wise sum over ranks, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> CollResult<()>;
    /// Every rank's `local` (all the same length), concatenated in rank
    /// order into `out` (world × local.len() elements).
    fn all_gather_into(&self, local: &[f32], out: &mut [f32]) -> CollResult<()>;
    /// [`Collective::all_gather_into`] a new buffer.
    fn all_gather(&self, local: &[f32]) -> CollResult<Vec<f32>> {
        let mut out = vec![0.0; local.len() * self.world()];
        self.all_gather_into(local, &mut out)?;
        Ok(out)
    }
    /// The sum over ranks of `full` (world × n elements), keeping this rank's
    /// n-element slice.
    fn reduce_scatter_sum(&self, full: &[f32]) -> CollResult<Vec<f32>>;
    /// `buf` of rank `root`, copied to every rank.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> CollResult<()>;
    /// Returns when every rank has called it; names the ranks that did not.
    fn barrier(&self) -> CollResult<()>;
    /// The same operations on device memory, where this backend has them.
    fn device(&self) -> Option<&dyn device::DeviceCollective> {
        None
    }
    /// Called from another thread: a collective blocked now, and every
    /// later one, fails at once with [`CollectiveError::Cancelled`] naming
    /// `reason` (a rank told to stop while a peer no longer answers).
    /// Nothing to do where nothing can block.
    fn cancel(&self, _reason: &str) {}
}

/// Element ranges of `n` elements split in `parts` near-equal consecutive pieces.
pub fn segments(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let base = n / parts;
    let extra = n % parts;
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// A single rank: every collective is the identity.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> CollResult<()> {
        Ok(())
    }
    fn all_gather_into(&self, local: &[f32], out: &mut [f32]) -> CollResult<()> {
        out.copy_from_slice(local);
        Ok(())
    }
    fn reduce_scatter_sum(&self, full: &[f32]) -> CollResult<Vec<f32>> {
        Ok(full.to_vec())
    }
    fn broadcast(&self, _buf: &mut [f32], _root: usize) -> CollResult<()> {
        Ok(())
    }
    fn barrier(&self) -> CollResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_the_buffer_in_order() {
        for (n, parts) in [(10, 3), (2, 4), (0, 2), (1 << 20, 6)] {
            let s = segments(n, parts);
            assert_eq!(s.len(), parts);
            assert_eq!(s[0].start, 0);
            assert_eq!(s[parts - 1].end, n);
            for w in s.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert!(w[0].len() >= w[1].len() && w[0].len() - w[1].len() <= 1);
            }
        }
    }
}
