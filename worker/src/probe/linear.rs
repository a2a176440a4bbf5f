//! The linear probe: multinomial logistic regression on standardised
//! features, trained on the training split only with one fixed recipe
//! ([`Recipe`]), then scored on the test split. Works on features already
//! in memory; knows nothing of images, models or files.
//!
//! Recipe (the same for every row of a probe table): weights and biases
//! start at zero; 30 epochs of mini-batches of 256 in the order
//! `amdim_shared::order::epoch_permutation(n, seed, epoch)`; Adam (β 0.9,
//! 0.999, eps 1e-8) at 1e-3 with a cosine decay to 0 over all updates;
//! L2 penalty ½·1e-4·‖W‖² on the weights (not the biases).

use crate::probe::matmul::{View, matmul};
use crate::probe::softmax::{Adam, accuracy, argmax_rows, softmax_cross_entropy};
use amdim_shared::order::epoch_permutation;

/// The fixed training recipe of the linear probe.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Recipe {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub l2: f64,
    pub seed: u64,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 256,
            lr: 1e-3,
            l2: 1e-4,
            seed: 0,
        }
    }
}

/// The learning rate of update `t` of `total`: lr · ½(1 + cos(π t / total)).
pub(crate) fn cosine_lr(lr: f64, t: usize, total: usize) -> f64 {
    lr * 0.5 * (1.0 + (std::f64::consts::PI * t as f64 / total.max(1) as f64).cos())
}

/// A trained multinomial logistic regression: W `[dim, classes]`, b `[classes]`.
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    pub(crate) w: Vec<f32>,
    pub(crate) b: Vec<f32>,
    pub(crate) dim: usize,
    pub(crate) classes: usize,
    /// Mean training loss of the last epoch.
    pub(crate) last_loss: f64,
}

impl Linear {
    /// Trains on `x` `[n, dim]` (standardised) with `labels` in 0..classes.
    pub(crate) fn train(x: &[f32], dim: usize, labels: &[u32], classes: usize, recipe: &Recipe) -> Self {
        let n = labels.len();
        assert_eq!(x.len(), n * dim, "features are [n, dim]");
        let mut model = Self {
            w: vec![0.0; dim * classes],
            b: vec![0.0; classes],
            dim,
            classes,
            last_loss: f64::NAN,
        };
        let bs = recipe.batch_size.max(1);
        let total = recipe.epochs * n.div_ceil(bs);
        let (mut adam_w, mut adam_b) = (Adam::new(model.w.len()), Adam::new(classes));
        let mut batch_x = Vec::with_capacity(bs * dim);
        let mut batch_y = Vec::with_capacity(bs);
        let mut t = 0;
        for epoch in 0..recipe.epochs {
            let order = epoch_permutation(n, recipe.seed, epoch as u64);
            let mut epoch_loss = 0.0;
            for rows in order.chunks(bs) {
                batch_x.clear();
                batch_y.clear();
                for &i in rows {
                    let i = i as usize;
                    batch_x.extend_from_slice(&x[i * dim..(i + 1) * dim]);
                    batch_y.push(labels[i]);
                }
                let logits = model.scores(&batch_x);
                let mut grad_logits = vec![0.0f32; logits.len()];
                let loss = softmax_cross_entropy(&logits, &batch_y, classes, &mut grad_logits);
                epoch_loss += loss * rows.len() as f64;
                let mut grad_w = matmul(
                    View::rows(&batch_x, rows.len(), dim).t(),
                    View::rows(&grad_logits, rows.len(), classes),
                );
                for (g, &w) in grad_w.iter_mut().zip(&model.w) {
                    *g += (recipe.l2 as f32) * w;
                }
                let mut grad_b = vec![0.0f32; classes];
                for row in grad_logits.chunks_exact(classes) {
                    grad_b.iter_mut().zip(row).for_each(|(a, g)| *a += g);
                }
                let lr = cosine_lr(recipe.lr, t, total);
                adam_w.step(&mut model.w, &grad_w, lr);
                adam_b.step(&mut model.b, &grad_b, lr);
                t += 1;
            }
            model.last_loss = epoch_loss / n.max(1) as f64;
        }
        model
    }

    /// Logits `[n, classes]` of rows `x` `[n, dim]`.
    pub(crate) fn scores(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len() / self.dim;
        let mut z = matmul(View::rows(x, n, self.dim), View::rows(&self.w, self.dim, self.classes));
        for row in z.chunks_exact_mut(self.classes) {
            row.iter_mut().zip(&self.b).for_each(|(z, b)| *z += b);
        }
        z
    }

    /// Top-1 accuracy on `x` `[n, dim]` against `labels`.
    pub(crate) fn accuracy(&self, x: &[f32], labels: &[u32]) -> f64 {
        accuracy(&argmax_rows(&self.scores(x), self.classes), labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_decays_from_lr_to_zero() {
        assert_eq!(cosine_lr(1e-3, 0, 100), 1e-3);
        assert!((cosine_lr(1e-3, 50, 100) - 5e-4).abs() < 1e-12);
        assert!(cosine_lr(1e-3, 100, 100).abs() < 1e-12);
    }

    #[test]
    fn separable_classes_are_learned_and_unseen_points_classified() {
        // Three classes along three axes, with a little overlap-free jitter.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..300 {
            let c = i % 3;
            let jitter = (i as f32 * 0.37).sin() * 0.3;
            let mut row = [jitter, -jitter, 0.5 * jitter];
            row[c] += 2.0;
            x.extend(row);
            y.push(c as u32);
        }
        let recipe = Recipe {
            epochs: 20,
            batch_size: 32,
            lr: 0.05,
            ..Recipe::default()
        };
        let model = Linear::train(&x, 3, &y, 3, &recipe);
        assert_eq!(model.accuracy(&x, &y), 1.0);
        assert!(model.last_loss < 0.1, "loss {}", model.last_loss);
        let unseen = [0.1, 0.2, 2.3, 2.1, 0.0, -0.2];
        assert_eq!(argmax_rows(&model.scores(&unseen), 3), vec![2, 0]);
    }

    #[test]
    fn the_same_recipe_gives_the_same_model() {
        let x: Vec<f32> = (0..200).map(|i| ((i * 7919) % 13) as f32 / 13.0).collect();
        let y: Vec<u32> = (0..100).map(|i| (i % 2) as u32).collect();
        let recipe = Recipe {
            epochs: 2,
            batch_size: 16,
            ..Recipe::default()
        };
        let (a, b) = (Linear::train(&x, 2, &y, 2, &recipe), Linear::train(&x, 2, &y, 2, &recipe));
        assert_eq!((a.w, a.b), (b.w, b.b));
    }
}
