//! The online classifiers' loss (docs/model.md §4): cross-entropy on 10·tanh(z/10)
//! plus 1e-3·mean(z²), and top-1 accuracy.

use crate::model::layers::tanh_clip;
use burn::tensor::{Tensor, TensorData, activation::log_softmax, backend::Backend};

/// Mean cross-entropy of clipped logits [N, C] against labels, plus the logit penalty.
pub fn classifier_loss<B: Backend>(logits: Tensor<B, 2>, labels: &[u32]) -> Tensor<B, 1> {
    let [n, c] = logits.dims();
    let mut one_hot = vec![0f32; n * c];
    for (i, &y) in labels.iter().enumerate() {
        one_hot[i * c + y as usize] = 1.0;
    }
    let one_hot = Tensor::<B, 2>::from_data(TensorData::new(one_hot, [n, c]), &logits.device());
    let penalty = logits.clone().square().mean().mul_scalar(1e-3);
    let xent = (log_softmax(tanh_clip(logits, 10.0), 1) * one_hot).sum().div_scalar(n as f64).neg();
    xent + penalty
}

/// Number of rows whose arg-max equals the label.
pub fn correct(logits: &[f32], n_classes: usize, labels: &[u32]) -> usize {
    labels
        .iter()
        .enumerate()
        .filter(|&(i, &y)| {
            let row = &logits[i * n_classes..(i + 1) * n_classes];
            let best = row.iter().enumerate().fold(0, |b, (j, &v)| if v > row[b] { j } else { b });
            best == y as usize
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::scalar;
    use burn::backend::Flex;

    #[test]
    fn loss_matches_hand_computation() {
        let logits = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![2.0f32, 0.0, -1.0, 30.0, 0.0, 0.0], [2, 3]),
            &Default::default(),
        );
        let got = scalar(classifier_loss(logits, &[0, 2])) as f64;
        let clip = |z: f64| 10.0 * (z / 10.0).tanh();
        let lse = |r: [f64; 3]| r.iter().map(|z| clip(*z).exp()).sum::<f64>().ln();
        let xent = 0.5 * ((lse([2.0, 0.0, -1.0]) - clip(2.0)) + (lse([30.0, 0.0, 0.0]) - clip(0.0)));
        let pen = 1e-3 * (4.0 + 1.0 + 900.0) / 6.0;
        assert!((got - (xent + pen)).abs() < 1e-5, "{got} vs {}", xent + pen);
    }

    #[test]
    fn correct_counts_argmax_hits() {
        assert_eq!(correct(&[0.1, 0.9, 0.8, 0.2, 0.3, 0.3], 2, &[1, 0, 1]), 2);
    }
}
