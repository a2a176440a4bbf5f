//! Learning-rate schedule as a pure function of the update index and epoch.

use amdim_shared::spec::OptimSpec;

/// Learning rate for update `update` (0-based) taken during `epoch`:
/// lr · min(1, (update+1)/warmup) · gamma^(milestones passed).
pub fn learning_rate(o: &OptimSpec, update: u64, epoch: u64) -> f64 {
    let warm = if o.warmup_steps == 0 {
        1.0
    } else {
        ((update + 1) as f64 / o.warmup_steps as f64).min(1.0)
    };
    let passed = o.milestones.iter().filter(|&&m| epoch >= m).count() as i32;
    o.lr * warm * o.gamma.powi(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_milestones() {
        let o = OptimSpec::default();
        assert!((learning_rate(&o, 0, 0) - 2e-4 / 500.0).abs() < 1e-15);
        assert!((learning_rate(&o, 249, 0) - 1e-4).abs() < 1e-15);
        assert_eq!(learning_rate(&o, 499, 0), 2e-4);
        assert_eq!(learning_rate(&o, 10_000, 249), 2e-4);
        assert!((learning_rate(&o, 10_000, 250) - 2e-4 * 0.2).abs() < 1e-15);
        assert!((learning_rate(&o, 10_000, 299) - 2e-4 * 0.04).abs() < 1e-15);
    }
}
