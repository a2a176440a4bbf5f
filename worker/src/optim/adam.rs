//! Adam exactly as `torch.optim.Adam` (weight decay added to the gradient,
//! bias corrections, eps added after the square root), one state per
//! parameter that has received a gradient.

use amdim_shared::spec::OptimSpec;
use burn::tensor::{Tensor, backend::Backend};

/// Moments and step count of one parameter.
#[derive(Clone, Debug)]
pub struct AdamState<B: Backend> {
    pub exp_avg: Tensor<B, 1>,
    pub exp_avg_sq: Tensor<B, 1>,
    pub step: u64,
}

/// Per-parameter Adam state (None until the parameter first gets a gradient).
#[derive(Clone, Debug)]
pub struct Adam<B: Backend> {
    pub states: Vec<Option<AdamState<B>>>,
}

impl<B: Backend> Adam<B> {
    pub fn new(n_entries: usize) -> Self {
        Self {
            states: vec![None; n_entries],
        }
    }

    /// Updates `param` in place with gradient `grad` at learning rate `lr`.
    pub fn update(&mut self, index: usize, param: &mut Tensor<B, 1>, grad: Tensor<B, 1>, lr: f64, o: &OptimSpec) {
        let grad = if o.weight_decay > 0.0 {
            grad + param.clone().mul_scalar(o.weight_decay)
        } else {
            grad
        };
        let state = self.states[index].get_or_insert_with(|| AdamState {
            exp_avg: param.zeros_like(),
            exp_avg_sq: param.zeros_like(),
            step: 0,
        });
        state.step += 1;
        state.exp_avg = state.exp_avg.clone().mul_scalar(o.beta1) + grad.clone().mul_scalar(1.0 - o.beta1);
        state.exp_avg_sq = state.exp_avg_sq.clone().mul_scalar(o.beta2) + grad.square().mul_scalar(1.0 - o.beta2);
        let t = state.step as i32;
        let bias1 = 1.0 - o.beta1.powi(t);
        let bias2 = 1.0 - o.beta2.powi(t);
        let denom = state.exp_avg_sq.clone().sqrt().div_scalar(bias2.sqrt()).add_scalar(o.eps);
        let step = state.exp_avg.clone().div(denom).mul_scalar(lr / bias1);
        *param = param.clone() - step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::{from_vec, to_vec};
    use burn::backend::Flex;

    #[test]
    fn two_steps_match_hand_computed_pytorch_adam() {
        let o = OptimSpec {
            weight_decay: 0.1,
            ..OptimSpec::default()
        };
        let dev = Default::default();
        let mut p = from_vec::<Flex>(vec![1.0], &dev);
        let mut adam = Adam::new(1);
        let (b1, b2, eps, lr) = (0.8f64, 0.999f64, 1e-8f64, 0.01f64);
        let (mut x, mut m, mut v) = (1.0f64, 0.0f64, 0.0f64);
        for (t, g) in [(1, 0.5f64), (2, -0.25f64)] {
            adam.update(0, &mut p, from_vec(vec![g as f32], &dev), lr, &o);
            let g = g + 0.1 * x;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let denom = (v.sqrt() / (1.0 - b2.powi(t)).sqrt()) + eps;
            x -= lr / (1.0 - b1.powi(t)) * m / denom;
        }
        let got = to_vec(p)[0] as f64;
        assert!((got - x).abs() < 1e-6, "{got} vs {x}");
        assert_eq!(adam.states[0].as_ref().map(|s| s.step), Some(2));
    }
}
