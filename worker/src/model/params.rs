//! Storage of the model's tensors: one flat 1-D tensor per plan entry.
//!
//! Owns allocation with the spec's initialisation (from the keyed RNG, so the
//! same seed gives the same weights on every backend), the BN counters, and
//! conversion to and from host vectors. It knows nothing of layers or files.

use crate::model::plan::{Entry, EntryKind, Init, ModelPlan};
use amdim_shared::rng::{KeyedRng, Stream};
use burn::tensor::{Tensor, TensorData, backend::Backend};

/// All tensors of a model on one device; index = plan entry index.
#[derive(Clone, Debug)]
pub struct ParamStore<B: Backend> {
    /// Flat float values (params and buffers); counters hold an empty tensor.
    pub values: Vec<Tensor<B, 1>>,
    /// `num_batches_tracked` values; 0 for entries that are not counters.
    pub counters: Vec<i64>,
}

/// Host values of one entry drawn from its init rule.
pub fn init_values(entry: &Entry, seed: u64, index: usize) -> Vec<f32> {
    let n = entry.numel();
    let mut rng = KeyedRng::new(Stream::Init, &[seed, index as u64]);
    match entry.init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::FanInUniform { fan_in, scale } => {
            let bound = scale / (fan_in as f64).sqrt();
            (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect()
        }
        Init::ShortcutIdentity { cin, cout } => {
            let mut v: Vec<f32> = (0..n).map(|_| rng.uniform(-0.01, 0.01) as f32).collect();
            for i in 0..cin.min(cout) {
                v[i * cin + i] = 1.0;
            }
            v
        }
    }
}

/// Reads a tensor back as f32 values. Empty tensors (the BN counters'
/// placeholders) are never read: a zero-size device buffer has no valid
/// pointer on CUDA.
pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    if t.shape().num_elements() == 0 {
        return Vec::new();
    }
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap_or_default()
}

/// One f32 scalar of a one-element tensor.
pub fn scalar<B: Backend, const D: usize>(t: Tensor<B, D>) -> f32 {
    to_vec(t).first().copied().unwrap_or(f32::NAN)
}

pub fn from_vec<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

impl<B: Backend> ParamStore<B> {
    /// Allocates and initialises every entry of `plan`.
    pub fn init(plan: &ModelPlan, seed: u64, device: &B::Device) -> Self {
        let values = plan
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| match e.kind {
                EntryKind::Counter => from_vec(Vec::new(), device),
                _ => from_vec(init_values(e, seed, i), device),
            })
            .collect();
        Self {
            values,
            counters: vec![0; plan.entries.len()],
        }
    }

    /// Host copy of every float entry (empty for counters).
    pub fn to_host(&self) -> Vec<Vec<f32>> {
        self.values.iter().map(|t| to_vec(t.clone())).collect()
    }

    /// Replaces the values from host vectors (same order and sizes as the plan).
    pub fn from_host(host: Vec<Vec<f32>>, counters: Vec<i64>, device: &B::Device) -> Self {
        Self {
            values: host.into_iter().map(|v| from_vec(v, device)).collect(),
            counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_in_uniform_matches_pytorch_bound_and_identity_shortcut() {
        let e = Entry {
            name: "w".into(),
            shape: vec![16, 4, 3, 3],
            kind: EntryKind::Param,
            init: Init::FanInUniform { fan_in: 36, scale: 1.0 },
        };
        let v = init_values(&e, 1, 0);
        let bound = 1.0 / 6.0;
        assert!(v.iter().all(|x| x.abs() <= bound));
        assert!(v.iter().any(|x| x.abs() > 0.9 * bound));
        let s = Entry {
            name: "s".into(),
            shape: vec![6, 4, 1, 1],
            kind: EntryKind::Param,
            init: Init::ShortcutIdentity { cin: 4, cout: 6 },
        };
        let v = init_values(&s, 1, 1);
        for o in 0..6 {
            for i in 0..4 {
                let x = v[o * 4 + i];
                if o == i {
                    assert_eq!(x, 1.0);
                } else {
                    assert!(x.abs() <= 0.01);
                }
            }
        }
    }
}
