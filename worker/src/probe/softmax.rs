//! The maths of the linear probe as pure functions on slices: the
//! softmax cross-entropy loss and its gradient with respect to the logits,
//! the arg-max prediction, and one Adam update of a parameter vector
//! (PyTorch's definition: bias-corrected moments, eps after the square root).

/// Mean softmax cross-entropy of `logits` `[n, classes]` against `labels`,
/// and its gradient with respect to the logits (softmax − one-hot, divided
/// by n), written into `grad`. Stable: each row is shifted by its maximum.
pub(crate) fn softmax_cross_entropy(logits: &[f32], labels: &[u32], classes: usize, grad: &mut [f32]) -> f64 {
    let n = labels.len();
    assert_eq!(logits.len(), n * classes, "logits are [n, classes]");
    assert_eq!(grad.len(), logits.len(), "the gradient has the logits' shape");
    let mut loss = 0.0f64;
    for ((row, g), &label) in logits.chunks_exact(classes).zip(grad.chunks_exact_mut(classes)).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f64;
        for (g, &z) in g.iter_mut().zip(row) {
            let e = f64::from(z - max).exp();
            *g = e as f32;
            total += e;
        }
        let label = label as usize;
        loss += total.ln() - f64::from(row[label] - max);
        for (c, g) in g.iter_mut().enumerate() {
            let p = f64::from(*g) / total;
            let target = if c == label { 1.0 } else { 0.0 };
            *g = ((p - target) / n as f64) as f32;
        }
    }
    loss / n.max(1) as f64
}

/// The class of each row of `scores` `[n, classes]` with the highest score
/// (the lowest class index on a tie).
pub(crate) fn argmax_rows(scores: &[f32], classes: usize) -> Vec<u32> {
    scores
        .chunks_exact(classes)
        .map(|row| {
            let mut best = 0;
            for (c, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = c;
                }
            }
            best as u32
        })
        .collect()
}

/// Fraction of `predicted` equal to `labels`.
pub(crate) fn accuracy(predicted: &[u32], labels: &[u32]) -> f64 {
    let hits = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    hits as f64 / labels.len().max(1) as f64
}

/// Adam moments of one parameter vector.
#[derive(Clone, Debug)]
pub(crate) struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

pub(crate) const BETA1: f64 = 0.9;
pub(crate) const BETA2: f64 = 0.999;
pub(crate) const EPS: f64 = 1e-8;

impl Adam {
    pub(crate) fn new(len: usize) -> Self {
        Self {
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    /// One update of `param` with gradient `grad` at learning rate `lr`.
    pub(crate) fn step(&mut self, param: &mut [f32], grad: &[f32], lr: f64) {
        self.t += 1;
        let c1 = 1.0 - BETA1.powi(self.t);
        let c2 = (1.0 - BETA2.powi(self.t)).sqrt();
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(&mut self.m).zip(&mut self.v) {
            let g = f64::from(g);
            let m1 = BETA1 * f64::from(*m) + (1.0 - BETA1) * g;
            let v1 = BETA2 * f64::from(*v) + (1.0 - BETA2) * g * g;
            (*m, *v) = (m1 as f32, v1 as f32);
            *p -= (lr / c1 * m1 / (v1.sqrt() / c2 + EPS)) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let logits = vec![0.3f32, -1.2, 2.0, 0.5, 0.5, -0.7];
        let labels = [2u32, 0];
        let mut grad = vec![0.0; 6];
        let loss = softmax_cross_entropy(&logits, &labels, 3, &mut grad);
        let mut scratch = vec![0.0; 6];
        for i in 0..6 {
            let h = 1e-3f32;
            let (mut up, mut down) = (logits.clone(), logits.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (softmax_cross_entropy(&up, &labels, 3, &mut scratch) - softmax_cross_entropy(&down, &labels, 3, &mut scratch))
                / (2.0 * f64::from(h));
            assert!((numeric - f64::from(grad[i])).abs() < 1e-4, "logit {i}: {numeric} vs {}", grad[i]);
        }
        // Row 1: uniform over the two tied logits and one lower one.
        let (a, b) = ((0.5f64).exp(), (-0.7f64).exp());
        let row1 = -(a / (2.0 * a + b)).ln();
        let row0 = -(2.0f64.exp() / (0.3f64.exp() + (-1.2f64).exp() + 2.0f64.exp())).ln();
        assert!((loss - (row0 + row1) / 2.0).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn huge_logits_stay_finite() {
        let mut grad = vec![0.0; 2];
        let loss = softmax_cross_entropy(&[1000.0, -1000.0], &[1], 2, &mut grad);
        assert!((loss - 2000.0).abs() < 1e-3, "{loss}");
        assert_eq!(grad, vec![1.0, -1.0]);
    }

    #[test]
    fn predictions_take_the_first_of_equal_scores() {
        assert_eq!(argmax_rows(&[0.1, 0.9, 0.9, 3.0, -1.0, 2.0], 3), vec![1, 0]);
        assert_eq!(accuracy(&[1, 0, 2, 2], &[1, 1, 2, 0]), 0.5);
    }

    #[test]
    fn adam_first_step_moves_each_weight_by_the_learning_rate() {
        // After one step m̂ = g and v̂ = g², so the update is lr · g / (|g| + eps).
        let mut p = vec![1.0f32, 1.0, 1.0];
        let mut adam = Adam::new(3);
        adam.step(&mut p, &[0.5, -4.0, 0.0], 0.01);
        assert!((p[0] - 0.99).abs() < 1e-6 && (p[1] - 1.01).abs() < 1e-6, "{p:?}");
        assert_eq!(p[2], 1.0, "no gradient, no move");
        // Second step, hand-computed with PyTorch's formulas.
        adam.step(&mut p, &[0.25, -4.0, 0.0], 0.01);
        let m = 0.9 * 0.05 + 0.1 * 0.25;
        let v = 0.999 * 0.00025 + 0.001 * 0.0625;
        let expected = 0.99 - 0.01 / (1.0 - 0.81) * m / ((v / (1.0 - 0.999f64.powi(2))).sqrt() + 1e-8);
        assert!((f64::from(p[0]) - expected).abs() < 1e-6, "{} vs {expected}", p[0]);
    }
}
