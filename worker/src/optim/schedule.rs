//! Learning-rate schedule as a pure function of the update index, the epoch
//! and the run's length. Owns no state; the optimizer applies the rate.

use amdim_shared::spec::{LrSchedule, OptimSpec};
use std::f64::consts::PI;

/// Learning rate for update `update` (0-based) taken during `epoch` of a run
/// whose last update is number `last_update` − 1 (`last_update` updates in
/// all; `u64::MAX` when unknown). Warm-up first: lr · min(1, (update+1)/warmup);
/// then either gamma^(milestones passed) or half a cosine from the peak at
/// the end of the warm-up down to 0 after the last update.
pub fn learning_rate(o: &OptimSpec, update: u64, epoch: u64, last_update: u64) -> f64 {
    let warm = if o.warmup_steps == 0 {
        1.0
    } else {
        ((update + 1) as f64 / o.warmup_steps as f64).min(1.0)
    };
    let after_warmup = match o.schedule {
        LrSchedule::Milestones => o.gamma.powi(o.milestones.iter().filter(|&&m| epoch >= m).count() as i32),
        LrSchedule::Cosine => cosine_factor(update, o.warmup_steps, last_update),
    };
    o.lr * warm * after_warmup
}

/// ½(1 + cos(π·p)), p the share of the post-warm-up updates done before
/// `update`: 1 until the warm-up ends, falling to just above 0 at the last update.
fn cosine_factor(update: u64, warmup: u64, last_update: u64) -> f64 {
    let span = last_update.saturating_sub(warmup);
    if update < warmup || span == 0 {
        return 1.0;
    }
    let progress = ((update - warmup) as f64 / span as f64).min(1.0);
    0.5 * (1.0 + (PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_milestones() {
        let o = OptimSpec::default();
        let end = u64::MAX;
        assert!((learning_rate(&o, 0, 0, end) - 2e-4 / 500.0).abs() < 1e-15);
        assert!((learning_rate(&o, 249, 0, end) - 1e-4).abs() < 1e-15);
        assert_eq!(learning_rate(&o, 499, 0, end), 2e-4);
        assert_eq!(learning_rate(&o, 10_000, 249, end), 2e-4);
        assert!((learning_rate(&o, 10_000, 250, end) - 2e-4 * 0.2).abs() < 1e-15);
        assert!((learning_rate(&o, 10_000, 299, end) - 2e-4 * 0.04).abs() < 1e-15);
    }

    #[test]
    fn cosine_peaks_after_warmup_halves_midway_and_ends_near_zero() {
        let o = OptimSpec {
            lr: 1e-3,
            warmup_steps: 100,
            schedule: LrSchedule::Cosine,
            milestones: vec![0],
            ..OptimSpec::default()
        };
        let last = 1100;
        assert!((learning_rate(&o, 49, 0, last) - 0.5e-3).abs() < 1e-15);
        assert_eq!(learning_rate(&o, 100, 0, last), 1e-3);
        assert!((learning_rate(&o, 600, 7, last) - 0.5e-3).abs() < 1e-12);
        let final_lr = learning_rate(&o, last - 1, 9, last);
        assert!(final_lr > 0.0 && final_lr < 1e-8, "{final_lr}");
        // Monotone after the warm-up; milestones play no part.
        let lrs: Vec<f64> = (100..last).map(|u| learning_rate(&o, u, 0, last)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn cosine_without_a_known_end_stays_at_the_peak() {
        let o = OptimSpec {
            warmup_steps: 0,
            schedule: LrSchedule::Cosine,
            ..OptimSpec::default()
        };
        assert_eq!(learning_rate(&o, 1_000_000, 0, u64::MAX), o.lr);
        assert_eq!(learning_rate(&o, 5, 0, 0), o.lr);
    }
}
