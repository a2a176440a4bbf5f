//! The global sample order (docs/architecture.md §4), as pure functions.
//!
//! Epoch e's order is a permutation of all N sample indices seeded by
//! (seed, e). Global step k takes positions [k·G, (k+1)·G) of its epoch's
//! permutation; rank r of W takes the r-th of W equal slices. The data a step
//! sees therefore does not depend on W, and resuming at step k continues the
//! sequence exactly.

use crate::rng::{KeyedRng, Stream};
use serde::{Deserialize, Serialize};

/// What to do with the last N mod G samples of an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LastBatch {
    /// Skip them: every step has G distinct samples.
    #[default]
    Drop,
    /// Fill the last batch with samples from the start of the same epoch's order.
    Pad,
}

/// Where a global step falls: its epoch and its index inside that epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepPosition {
    /// The epoch (from 0).
    pub epoch: u64,
    /// The step inside the epoch (from 0).
    pub step_in_epoch: u64,
}

/// Number of optimizer steps in one epoch of `n` samples at global batch `g`.
pub fn steps_per_epoch(n: usize, g: usize, last: LastBatch) -> u64 {
    assert!(g > 0, "global batch must be positive");
    match last {
        LastBatch::Drop => (n / g) as u64,
        LastBatch::Pad => n.div_ceil(g) as u64,
    }
}

/// Epoch and in-epoch index of global step `k`.
pub fn step_position(k: u64, steps_per_epoch: u64) -> StepPosition {
    assert!(steps_per_epoch > 0, "an epoch must have at least one step");
    StepPosition {
        epoch: k / steps_per_epoch,
        step_in_epoch: k % steps_per_epoch,
    }
}

/// The permutation of 0..n for `epoch`.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    KeyedRng::new(Stream::Order, &[seed, epoch]).permutation(n)
}

/// Sample indices of one global batch: positions [s·G, (s+1)·G) of the
/// epoch's permutation, wrapping to its start when `Pad` runs past the end.
pub fn global_batch(permutation: &[u32], step_in_epoch: u64, g: usize) -> Vec<u32> {
    let n = permutation.len();
    let start = step_in_epoch as usize * g;
    (start..start + g).map(|pos| permutation[pos % n]).collect()
}

/// Rank `rank`'s slice of a global batch split into `world` equal parts.
pub fn rank_slice(batch: &[u32], rank: usize, world: usize) -> &[u32] {
    assert!(world > 0 && rank < world, "rank {rank} outside world {world}");
    assert!(
        batch.len().is_multiple_of(world),
        "world size {world} must divide the global batch {}",
        batch.len()
    );
    let per = batch.len() / world;
    &batch[rank * per..(rank + 1) * per]
}

/// The samples rank `rank` of `world` trains at global step `k`.
pub fn samples_for_step(n: usize, g: usize, last: LastBatch, seed: u64, k: u64, rank: usize, world: usize) -> (StepPosition, Vec<u32>) {
    let pos = step_position(k, steps_per_epoch(n, g, last));
    let perm = epoch_permutation(n, seed, pos.epoch);
    let batch = global_batch(&perm, pos.step_in_epoch, g);
    (pos, rank_slice(&batch, rank, world).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_of_rank_slices_is_the_global_batch_for_every_world_size() {
        let (n, g, seed) = (1000, 24, 11);
        for k in [0u64, 5, 41, 42, 83] {
            let (_, global) = samples_for_step(n, g, LastBatch::Drop, seed, k, 0, 1);
            for world in [1, 2, 3, 4, 6] {
                let joined: Vec<u32> = (0..world)
                    .flat_map(|r| samples_for_step(n, g, LastBatch::Drop, seed, k, r, world).1)
                    .collect();
                assert_eq!(joined, global, "step {k}, world {world}");
            }
        }
    }

    #[test]
    fn every_sample_once_per_epoch_when_dropping() {
        let (n, g) = (97, 8);
        let spe = steps_per_epoch(n, g, LastBatch::Drop);
        assert_eq!(spe, 12);
        let mut seen: Vec<u32> = (0..spe)
            .flat_map(|k| samples_for_step(n, g, LastBatch::Drop, 3, k, 0, 1).1)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 96, "no sample twice, only the remainder missing");
    }

    #[test]
    fn pad_covers_every_sample_and_wraps() {
        let (n, g) = (10, 4);
        let spe = steps_per_epoch(n, g, LastBatch::Pad);
        assert_eq!(spe, 3);
        let mut seen: Vec<u32> = (0..spe)
            .flat_map(|k| samples_for_step(n, g, LastBatch::Pad, 5, k, 0, 1).1)
            .collect();
        assert_eq!(seen.len(), 12);
        let perm = epoch_permutation(n, 5, 0);
        assert_eq!(&seen[10..], &perm[..2]);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10);
    }

    #[test]
    fn epochs_differ_and_steps_continue_across_epochs() {
        let (n, g) = (50, 10);
        let spe = steps_per_epoch(n, g, LastBatch::Drop);
        let (p0, _) = samples_for_step(n, g, LastBatch::Drop, 1, spe - 1, 0, 1);
        let (p1, b1) = samples_for_step(n, g, LastBatch::Drop, 1, spe, 0, 1);
        assert_eq!((p0.epoch, p0.step_in_epoch), (0, spe - 1));
        assert_eq!((p1.epoch, p1.step_in_epoch), (1, 0));
        assert_eq!(b1, epoch_permutation(n, 1, 1)[..10].to_vec());
        assert_ne!(epoch_permutation(n, 1, 0), epoch_permutation(n, 1, 1));
    }
}
