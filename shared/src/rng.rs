//! Counter-based deterministic random streams.
//!
//! Every random decision in training (sample order, augmentation, 5×5 source
//! locations, dropout masks, initialisation) is drawn from a [`KeyedRng`] whose
//! state is a pure function of a key such as (seed, epoch, sample index,
//! stream). Nothing depends on thread, rank or world size, which is what makes
//! resumed and distributed runs reproduce single-process runs exactly.

/// Distinct streams, so that two uses of the same (seed, epoch, index) key do
/// not draw the same numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Epoch permutation of the sample indices.
    Order = 1,
    /// Per-sample augmentation of both views.
    Augment = 2,
    /// Per-sample choice of the 5×5 source location for the 5→5 task.
    SourceLocation = 3,
    /// Per-step dropout masks of the online classifiers.
    Dropout = 4,
    /// Parameter initialisation.
    Init = 5,
    /// Synthetic inputs for benchmarks and tests.
    Synthetic = 6,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A SplitMix64 generator whose starting state hashes a key.
#[derive(Clone, Debug)]
pub struct KeyedRng {
    state: u64,
}

impl KeyedRng {
    /// A generator for `stream` at the given key parts (e.g. seed, epoch, index).
    pub fn new(stream: Stream, key: &[u64]) -> Self {
        let mut state = stream as u64;
        let mut mixed = splitmix64(&mut state);
        for &part in key {
            let mut s = mixed ^ part.wrapping_mul(GOLDEN);
            mixed = splitmix64(&mut s);
        }
        Self { state: mixed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.state)
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in [0, n), unbiased (Lemire's method with rejection).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no values");
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = (self.next_u64() as u128) * (n as u128);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// True with probability p.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A uniformly random permutation of 0..n (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<u32> {
        let mut p: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_numbers_different_key_different_numbers() {
        let a: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(KeyedRng::new(Stream::Augment, &[1, 2, 3]), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(KeyedRng::new(Stream::Augment, &[1, 2, 3]), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(KeyedRng::new(Stream::Augment, &[1, 2, 4]), |r, _| Some(r.next_u64()))
            .collect();
        let d: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(KeyedRng::new(Stream::Order, &[1, 2, 3]), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = KeyedRng::new(Stream::Synthetic, &[7]);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            counts[rng.below(5) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "counts {counts:?}");
        }
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = KeyedRng::new(Stream::Order, &[3, 0]).permutation(1000);
        assert_ne!(p, (0..1000).collect::<Vec<u32>>());
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<u32>>());
    }
}
