//! The chaos soak (`amdim-coordinator chaos`): a real coordinator (this
//! binary), real worker agents (`amdim-worker agent`) and a real S3 server
//! (SeaweedFS) holding the checkpoints, all on this machine. For a few
//! minutes it keeps tiny jobs submitted and injects faults at moments drawn
//! from a seeded RNG: SIGKILL and SIGTERM of random agents, SIGKILL of the
//! coordinator (started again on the same store), SIGKILL of the S3 server
//! (started again on the same data); it adds agents back. Then it waits for
//! every job to end and checks that each succeeded, that every epoch's
//! samples were trained exactly once counting from the checkpoints
//! restored, that every registered checkpoint verifies and that no process
//! was left behind. It prints a report and one JSON line; the exit code is
//! non-zero when a check fails. A benchmark-style harness, not a test: it
//! measures and judges one run of the whole system. Lives in `ctl`: it
//! drives the coordinator from outside, over gRPC, like any client.

mod checks;
mod cluster;
mod procs;
mod report;
mod s3;
mod samples;
mod soak;

pub use soak::run;

use std::path::PathBuf;

/// What the soak does.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// Length of the fault phase.
    pub minutes: f64,
    /// Seed of every random choice (fault times and kinds, job lengths).
    pub seed: u64,
    /// Jobs kept submitted at once during the fault phase.
    pub jobs: usize,
    /// Agents kept running (killed ones are replaced).
    pub workers: usize,
    /// Mean seconds between faults (each gap is drawn from 0.5×–1.5× of it).
    pub fault_every_s: f64,
    /// Steps of each job, drawn from this range.
    pub steps: (u64, u64),
    /// Seconds allowed, after the fault phase, for every job to end.
    pub drain_timeout_s: u64,
    /// The coordinator binary (this one).
    pub coordinator_bin: PathBuf,
    /// `amdim-worker`.
    pub worker_bin: PathBuf,
    /// Where logs, the store, the S3 data and the sample logs go (kept);
    /// default a temporary folder, kept only when a check fails.
    pub dir: Option<PathBuf>,
}

/// SplitMix64: a small, fast, seeded generator; the schedule only needs
/// to be reproducible, not strong.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub(crate) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    /// Uniform in [0, n); 0 when n is 0.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn the_same_seed_draws_the_same_schedule_and_draws_stay_in_range() {
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..100).map(|_| r.uniform(2.0, 3.0)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(9).iter().all(|x| (2.0..3.0).contains(x)));
        let mut r = Rng::new(1);
        let mut seen = [0; 4];
        for _ in 0..400 {
            seen[r.below(4)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 50), "{seen:?}");
    }
}
