//! The rendezvous flags of the multi-rank commands, and turning them into a
//! communicator: TCP for CPU ranks, NCCL (feature `cuda`) for GPU ranks.
//! A process may drive several ranks (`--local-ranks`), one thread and one
//! device each; the world counts every rank of every process.

use crate::dist::ops::Comm;
use crate::dist::tcp::{RendezvousSpec, TcpCollective};
use amdim_shared::spec::{BackendKind, DistBackend, JobSpec};
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::time::Duration;

/// Where this process's ranks are in the world (flags or `AMDIM_…` variables).
#[derive(clap::Args, Clone, Debug)]
pub struct DistArgs {
    /// The first rank this process drives (0-based).
    #[arg(long, env = "AMDIM_RANK", default_value_t = 0)]
    pub rank: usize,
    /// Ranks in the whole job (1: a single-rank run, no rendezvous).
    #[arg(long, env = "AMDIM_WORLD_SIZE", default_value_t = 1)]
    pub world_size: usize,
    /// host:port where rank 0 listens for the other ranks.
    #[arg(long, env = "AMDIM_RENDEZVOUS")]
    pub rendezvous: Option<String>,
    /// Host or IP at which the other ranks reach this process (its data
    /// ports are picked freely).
    #[arg(long, env = "AMDIM_ADVERTISE_HOST", default_value = "127.0.0.1")]
    pub advertise_host: String,
    /// Ranks this process drives: rank … rank + local_ranks − 1, one thread
    /// each, on devices runtime.device, runtime.device + 1, …
    #[arg(long, env = "AMDIM_LOCAL_RANKS", default_value_t = 1)]
    pub local_ranks: usize,
}

impl DistArgs {
    /// The ranks of this process, checked against the world.
    pub fn local(&self) -> Result<std::ops::Range<usize>> {
        if self.world_size == 0 {
            bail!("--world-size must be at least 1");
        }
        if self.local_ranks == 0 || self.rank + self.local_ranks > self.world_size {
            bail!(
                "--rank {} with --local-ranks {} does not fit in --world-size {}",
                self.rank,
                self.local_ranks,
                self.world_size
            );
        }
        if self.world_size > 1 && self.rendezvous.is_none() {
            bail!(
                "--world-size {} needs --rendezvous host:port (rank 0 listens there)",
                self.world_size
            );
        }
        Ok(self.rank..self.rank + self.local_ranks)
    }

    /// The spec of local rank `rank`: its own device.
    pub fn spec_for(&self, spec: &JobSpec, rank: usize) -> JobSpec {
        let mut spec = spec.clone();
        spec.runtime.device += rank - self.rank;
        spec
    }

    /// Connects `rank` to the others; None when the world is one rank.
    pub fn connect(&self, spec: &JobSpec, rank: usize) -> Result<Option<Arc<Comm>>> {
        if self.world_size == 1 {
            return Ok(None);
        }
        let rendezvous = RendezvousSpec {
            rank,
            world: self.world_size,
            rendezvous: self.rendezvous.clone().unwrap_or_default(),
            advertise_host: self.advertise_host.clone(),
            timeout: Duration::from_secs_f64(spec.dist.timeout_s),
            shared_memory: spec.dist.shared_memory,
        };
        let collective: Box<dyn crate::dist::Collective> = match spec.runtime.backend {
            _ if spec.dist.backend == DistBackend::Tcp => {
                Box::new(TcpCollective::connect(&rendezvous).with_context(|| format!("rank {rank}"))?)
            }
            BackendKind::Cpu => Box::new(TcpCollective::connect(&rendezvous).with_context(|| format!("rank {rank}"))?),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => Box::new(
                crate::dist::nccl::NcclCollective::connect(&rendezvous, spec.runtime.device).with_context(|| format!("rank {rank}"))?,
            ),
            #[cfg(not(feature = "cuda"))]
            BackendKind::Cuda => return Err(crate::backend::BackendError::NotBuilt.into()),
        };
        tracing::info!(rank, world = self.world_size, "connected to every rank");
        Ok(Some(Comm::new(collective)))
    }

    /// Runs `f(rank)` for every local rank, one thread each; the first error wins.
    pub fn run_local<T: Send>(&self, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
        let ranks = self.local()?;
        if ranks.len() == 1 {
            return Ok(vec![f(ranks.start)?]);
        }
        let f = &f;
        std::thread::scope(|scope| {
            let handles: Vec<_> = ranks.map(|r| (r, scope.spawn(move || f(r)))).collect();
            handles
                .into_iter()
                .map(|(r, h)| h.join().unwrap_or_else(|_| bail!("rank {r}'s thread panicked")))
                .collect()
        })
    }
}
