//! k-nearest-neighbour classification of standardised features by cosine
//! similarity: every test row is compared with every training row (one
//! matrix product per block of test rows), its k = 20 most similar training
//! rows vote, each with weight exp(cos / 0.07) (the similarity-weighted vote
//! of Wu et al. 2018, as DINO reports k-NN accuracy), and the class with the
//! largest total wins (the lowest class index on a tie). Features in memory
//! only.

use crate::probe::matmul::{View, matmul};
use rayon::prelude::*;

/// Neighbours that vote.
pub const K: usize = 20;
/// Temperature of the vote weights.
pub const TEMPERATURE: f32 = 0.07;
/// Test rows compared at once (a block's similarities are `BLOCK × n_train` floats).
const BLOCK: usize = 256;

/// Divides every row of `x` `[n, dim]` by its L2 norm (zero rows stay zero).
pub(crate) fn normalise_rows(x: &mut [f32], dim: usize) {
    x.par_chunks_mut(dim).for_each(|row| {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    });
}

/// Indices of the `k` largest values of `row`, largest first (earlier
/// index first among equal values).
pub(crate) fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for (i, &v) in row.iter().enumerate() {
        if best.len() == k && best.last().is_none_or(|&j| v <= row[j]) {
            continue;
        }
        let at = best.partition_point(|&j| row[j] >= v);
        best.insert(at, i);
        best.truncate(k);
    }
    best
}

/// The winning class of neighbours given as (cosine similarity, label).
pub(crate) fn weighted_vote(neighbours: &[(f32, u32)], classes: usize) -> u32 {
    let mut votes = vec![0.0f64; classes];
    for &(sim, label) in neighbours {
        votes[label as usize] += f64::from(sim / TEMPERATURE).exp();
    }
    let mut best = 0;
    for (c, &v) in votes.iter().enumerate() {
        if v > votes[best] {
            best = c;
        }
    }
    best as u32
}

/// Predicted classes of `test` rows from `train` rows, both `[·, dim]` and
/// already L2-normalised.
pub(crate) fn classify(train: &[f32], train_labels: &[u32], test: &[f32], dim: usize, classes: usize) -> Vec<u32> {
    let n_train = train_labels.len();
    let k = K.min(n_train);
    let mut predicted = Vec::with_capacity(test.len() / dim.max(1));
    for block in test.chunks(BLOCK * dim) {
        let rows = block.len() / dim;
        let sims = matmul(View::rows(block, rows, dim), View::rows(train, n_train, dim).t());
        let votes: Vec<u32> = sims
            .par_chunks(n_train)
            .map(|row| {
                let neighbours: Vec<(f32, u32)> = top_k(row, k).into_iter().map(|j| (row[j], train_labels[j])).collect();
                weighted_vote(&neighbours, classes)
            })
            .collect();
        predicted.extend(votes);
    }
    predicted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_in_order() {
        let row = [0.1, 0.9, -0.5, 0.9, 0.3, 0.7];
        assert_eq!(top_k(&row, 3), vec![1, 3, 5]);
        assert_eq!(top_k(&row, 10), vec![1, 3, 5, 4, 0, 2]);
        assert!(top_k(&row, 0).is_empty());
    }

    #[test]
    fn close_neighbours_outvote_many_distant_ones() {
        // Two neighbours at cos 0.9 beat three at 0.5: exp(0.9/0.07)·2 ≫ exp(0.5/0.07)·3.
        let n = [(0.9, 1), (0.9, 1), (0.5, 0), (0.5, 0), (0.5, 0)];
        assert_eq!(weighted_vote(&n, 2), 1);
        // Equal weight: the lower class index wins.
        assert_eq!(weighted_vote(&[(0.4, 2), (0.4, 1)], 3), 1);
    }

    #[test]
    fn points_take_the_class_of_their_cluster() {
        // Class 0 near (1, 0), class 1 near (0, 1); 40 training points each.
        let mut train = Vec::new();
        let mut labels = Vec::new();
        for i in 0..80 {
            let c = i % 2;
            let e = (i as f32 * 0.13).sin() * 0.2;
            train.extend(if c == 0 { [1.0, e] } else { [e, 1.0] });
            labels.push(c as u32);
        }
        normalise_rows(&mut train, 2);
        let mut test = vec![0.9, 0.1, 0.2, 3.0, 0.0, 0.0];
        normalise_rows(&mut test, 2);
        assert!((test[2..4].iter().map(|v| v * v).sum::<f32>().sqrt() - 1.0).abs() < 1e-6);
        assert_eq!(classify(&train, &labels, &test, 2, 2), vec![0, 1, 0]);
    }
}
