//! Launching one process's ranks: where they sit in the world
//! ([`WorldLayout`]), and [`WorldLayout::launch`], which runs a body for
//! each of them, one thread and one device each (CPU ranks: each on its own
//! equal share of the process's compute threads), after connecting it to
//! every other rank of the world with the backend its spec asks for (TCP
//! for CPU ranks, NCCL with feature `cuda` for GPU ranks).
//!
//! This is the one place that turns a layout into communicators, shared by
//! `train` and `gradients` (whose flags fill the layout) and the agent (whose
//! assignment does). It must not parse flags or know what the body does.

use super::Collective;
use super::ops::Comm;
use super::tcp::{RendezvousSpec, TcpCollective};
use crate::backend::{on_own_pool, threads_per_lane};
use amdim_shared::spec::{BackendKind, DistBackend, JobSpec};
use anyhow::{Context, Result, bail};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Where one process's ranks are in the world. The world counts every rank
/// of every process; this process drives `first_rank … first_rank +
/// local_ranks − 1`, on devices `runtime.device`, `runtime.device + 1`, …
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldLayout {
    /// Ranks in the whole job (1: a single-rank run, no rendezvous).
    pub world_size: usize,
    /// The first rank this process drives (0-based).
    pub first_rank: usize,
    /// How many consecutive ranks this process drives.
    pub local_ranks: usize,
    /// host:port where rank 0 listens for the other ranks (needed when the
    /// world has more than one rank).
    pub rendezvous: Option<String>,
    /// Host or IP at which the other ranks reach this process (its data
    /// ports are picked freely).
    pub advertise_host: String,
}

/// One local rank, connected and ready to run.
pub struct LocalRank {
    pub rank: usize,
    /// The job's spec with this rank's own device.
    pub spec: JobSpec,
    /// Its communicator; None when the world is one rank.
    pub comm: Option<Arc<Comm>>,
}

impl WorldLayout {
    /// The ranks of this process, checked against the world.
    pub fn local(&self) -> Result<Range<usize>> {
        if self.world_size == 0 {
            bail!("--world-size must be at least 1");
        }
        if self.local_ranks == 0 || self.first_rank + self.local_ranks > self.world_size {
            bail!(
                "--rank {} with --local-ranks {} does not fit in --world-size {}",
                self.first_rank,
                self.local_ranks,
                self.world_size
            );
        }
        if self.world_size > 1 && self.rendezvous.is_none() && !self.is_whole_world() {
            bail!(
                "--world-size {} needs --rendezvous host:port (rank 0 listens there)",
                self.world_size
            );
        }
        Ok(self.first_rank..self.first_rank + self.local_ranks)
    }

    /// Runs `f` for every local rank, one thread each (none for a single
    /// rank), each given its own spec and communicator; the first error
    /// wins. The results are in rank order.
    pub fn launch<T: Send>(&self, spec: &JobSpec, f: impl Fn(LocalRank) -> Result<T> + Sync) -> Result<Vec<T>> {
        let ranks = self.local()?;
        let rendezvous = if self.world_size > 1 {
            self.rendezvous_address()?
        } else {
            String::new()
        };
        let start = |rank: usize| -> Result<T> {
            let spec = self.spec_for(spec, rank);
            let comm = self.connect(&spec, rank, &rendezvous)?;
            f(LocalRank { rank, spec, comm })
        };
        if ranks.len() == 1 {
            return Ok(vec![start(ranks.start)?]);
        }
        let start = &start;
        let threads = threads_per_lane(spec.runtime.backend, rayon::current_num_threads(), ranks.len());
        std::thread::scope(|scope| {
            let handles: Vec<_> = ranks.map(|r| (r, scope.spawn(move || on_own_pool(threads, || start(r))))).collect();
            handles
                .into_iter()
                .map(|(r, h)| {
                    h.join()
                        .unwrap_or_else(|p| bail!("rank {r}'s thread panicked: {}", panic_message(p.as_ref())))
                })
                .collect()
        })
    }

    /// Whether this process drives every rank of the world.
    fn is_whole_world(&self) -> bool {
        self.first_rank == 0 && self.local_ranks == self.world_size
    }

    /// Where rank 0 listens: the given address, or, for a world that is all
    /// in this process and was given none, a free loopback port.
    fn rendezvous_address(&self) -> Result<String> {
        if let Some(addr) = &self.rendezvous {
            return Ok(addr.clone());
        }
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("picking a free loopback port for the in-process rendezvous")?;
        Ok(free.to_string())
    }

    /// The spec of local rank `rank`: its own device.
    fn spec_for(&self, spec: &JobSpec, rank: usize) -> JobSpec {
        let mut spec = spec.clone();
        spec.runtime.device += rank - self.first_rank;
        spec
    }

    /// Connects `rank` to the others; None when the world is one rank.
    fn connect(&self, spec: &JobSpec, rank: usize, rendezvous: &str) -> Result<Option<Arc<Comm>>> {
        if self.world_size == 1 {
            return Ok(None);
        }
        let rendezvous = RendezvousSpec {
            rank,
            world: self.world_size,
            rendezvous: rendezvous.to_string(),
            advertise_host: self.advertise_host.clone(),
            timeout: Duration::from_secs_f64(spec.dist.timeout_s),
            shared_memory: spec.dist.shared_memory,
        };
        let collective: Box<dyn Collective> = match spec.runtime.backend {
            // Host collectives on any backend (e.g. several CUDA ranks on one
            // GPU, which NCCL refuses).
            _ if spec.dist.backend == DistBackend::Tcp => {
                Box::new(TcpCollective::connect(&rendezvous).with_context(|| format!("rank {rank}"))?)
            }
            BackendKind::Cpu => Box::new(TcpCollective::connect(&rendezvous).with_context(|| format!("rank {rank}"))?),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => {
                Box::new(super::nccl::NcclCollective::connect(&rendezvous, spec.runtime.device).with_context(|| format!("rank {rank}"))?)
            }
            #[cfg(not(feature = "cuda"))]
            BackendKind::Cuda => return Err(crate::backend::BackendError::NotBuilt.into()),
        };
        tracing::info!(rank, world = self.world_size, "connected to every rank");
        Ok(Some(Comm::new(collective)))
    }
}

/// What a thread that panicked said (its payload, when it is text).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "(no message)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::ops::Exchange;

    fn layout(world_size: usize, first_rank: usize, local_ranks: usize, rendezvous: Option<String>) -> WorldLayout {
        WorldLayout {
            world_size,
            first_rank,
            local_ranks,
            rendezvous,
            advertise_host: "127.0.0.1".into(),
        }
    }

    #[test]
    fn a_layout_outside_its_world_is_refused_by_name() {
        let err = |l: WorldLayout| l.local().unwrap_err().to_string();
        assert!(err(layout(0, 0, 1, None)).contains("at least 1"));
        assert!(err(layout(4, 3, 2, Some("h:1".into()))).contains("--rank 3 with --local-ranks 2"));
        assert!(err(layout(4, 0, 0, Some("h:1".into()))).contains("does not fit"));
        assert!(err(layout(2, 0, 1, None)).contains("needs --rendezvous"));
        assert!(err(layout(2, 1, 1, None)).contains("needs --rendezvous"));
        assert_eq!(
            layout(2, 0, 2, None).local().unwrap(),
            0..2,
            "a world all in this process needs none"
        );
        assert_eq!(layout(4, 2, 2, Some("h:1".into())).local().unwrap(), 2..4);
        assert_eq!(layout(1, 0, 1, None).local().unwrap(), 0..1);
    }

    #[test]
    fn a_process_of_several_ranks_connects_each_on_its_own_device() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let mut spec = JobSpec::default();
        spec.runtime.device = 3;
        spec.dist.timeout_s = 20.0;
        let out = layout(2, 0, 2, Some(addr))
            .launch(&spec, |r| {
                let comm = r.comm.context("a two-rank world has a communicator")?;
                let mut sum = vec![r.rank as f32 + 1.0];
                comm.run(Exchange::AllReduce, 1, |c| c.all_reduce_sum(&mut sum))?;
                Ok((r.rank, r.spec.runtime.device, comm.rank(), comm.world(), sum[0]))
            })
            .unwrap();
        assert_eq!(out, vec![(0, 3, 0, 2, 3.0), (1, 4, 1, 2, 3.0)]);
    }

    #[test]
    fn each_cpu_rank_of_a_process_runs_on_its_own_share_of_the_threads() {
        let mut spec = JobSpec::default();
        spec.dist.timeout_s = 20.0;
        let share = (rayon::current_num_threads() / 2).max(1);
        // No rendezvous given: the whole world is here, so it picks a port.
        let seen = layout(2, 0, 2, None)
            .launch(&spec, |r| {
                r.comm.context("a two-rank world has a communicator")?;
                // A parallel loop of the rank runs on its own pool's threads only.
                let workers: std::collections::HashSet<_> = rayon::broadcast(|_| std::thread::current().id()).into_iter().collect();
                Ok((rayon::current_num_threads(), workers.len()))
            })
            .unwrap();
        assert_eq!(seen, vec![(share, share), (share, share)]);
    }

    #[test]
    fn a_single_rank_runs_without_a_communicator() {
        let out = layout(1, 0, 1, None)
            .launch(&JobSpec::default(), |r| Ok((r.rank, r.comm.is_none())))
            .unwrap();
        assert_eq!(out, vec![(0, true)]);
    }
}
