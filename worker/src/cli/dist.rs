//! The rendezvous flags of the multi-rank commands (`train`, `gradients`),
//! and nothing else: they become a [`WorldLayout`], which launches the
//! ranks. A process may drive several ranks (`--local-ranks`), one thread
//! and one device each; the world counts every rank of every process.

use crate::collective::launch::WorldLayout;

/// Where this process's ranks are in the world (flags or `AMDIM_…` variables).
#[derive(clap::Args, Clone, Debug)]
pub struct DistArgs {
    /// The first rank this process drives (0-based).
    #[arg(long, env = "AMDIM_RANK", default_value_t = 0)]
    pub rank: usize,
    /// Ranks in the whole job (default: the ranks of this process, i.e.
    /// rank + local-ranks; 1 is a single-rank run).
    #[arg(long, env = "AMDIM_WORLD_SIZE")]
    pub world_size: Option<usize>,
    /// host:port where rank 0 listens for the other ranks (not needed when
    /// this process drives the whole world: it then picks a free loopback
    /// port).
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
    /// The world's size: the flag, or every rank up to this process's last.
    pub fn world_size(&self) -> usize {
        self.world_size.unwrap_or(self.rank + self.local_ranks)
    }

    /// The world layout these flags describe (checked when launched).
    pub fn layout(&self) -> WorldLayout {
        WorldLayout {
            world_size: self.world_size(),
            first_rank: self.rank,
            local_ranks: self.local_ranks,
            rendezvous: self.rendezvous.clone(),
            advertise_host: self.advertise_host.clone(),
        }
    }
}
