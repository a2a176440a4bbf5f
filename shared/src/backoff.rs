//! How an RPC client waits before trying a call again: capped exponential
//! backoff with full jitter (so that many clients refused at the same
//! moment do not come back together), and the coordinator's load-shedding
//! hint, the `retry-after-ms` metadata of a `RESOURCE_EXHAUSTED` or
//! `UNAVAILABLE` answer, which sets the least wait. Used by the worker
//! agent's registration and the scale benchmark's simulated agents. No
//! I/O and no sleeping here: callers sleep for what [`Backoff::wait`] says.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;
use tonic::{Code, Status};

/// The metadata key of the coordinator's hint: milliseconds to wait.
pub const RETRY_AFTER_KEY: &str = "retry-after-ms";

/// A `RESOURCE_EXHAUSTED` status asking the caller to come back after
/// `after` (the hint travels as [`RETRY_AFTER_KEY`]).
pub fn shed(message: String, after: Duration) -> Status {
    let mut status = Status::resource_exhausted(message);
    let millis = after.as_millis().max(1).to_string();
    if let Ok(value) = millis.parse() {
        status.metadata_mut().insert(RETRY_AFTER_KEY, value);
    }
    status
}

/// The wait the server asked for, when `status` carries one.
pub fn retry_after(status: &Status) -> Option<Duration> {
    let value = status.metadata().get(RETRY_AFTER_KEY)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_millis)
}

/// Whether `status` is the server shedding load (it asks to be tried
/// again later), as opposed to a call that failed.
pub fn is_shed(status: &Status) -> bool {
    matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) && retry_after(status).is_some()
}

/// Capped exponential backoff with full jitter: the n-th wait is uniform
/// in [0, min(cap, first × 2ⁿ)], and never shorter than a server's hint
/// (the hint itself is spread over [hint, 2 × hint]).
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    failures: u32,
    random: std::collections::hash_map::RandomState,
    draws: u64,
}

impl Backoff {
    /// Waits start at up to `first` and double up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            first,
            cap: cap.max(first),
            failures: 0,
            random: std::collections::hash_map::RandomState::new(),
            draws: 0,
        }
    }

    /// Failures since the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets the failures (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// A uniform number in [0, 1), from keys random per process and backoff.
    fn uniform(&mut self) -> f64 {
        self.draws += 1;
        let mut h = self.random.build_hasher();
        h.write_u64(self.draws);
        (h.finish() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The wait before the next try after a failure; `hint` is the
    /// server's `retry-after`, if it gave one.
    pub fn wait(&mut self, hint: Option<Duration>) -> Duration {
        let ceiling = self.first.saturating_mul(1 << self.failures.min(20)).min(self.cap);
        self.failures = self.failures.saturating_add(1);
        let jittered = ceiling.mul_f64(self.uniform());
        match hint {
            Some(h) => jittered.max(h + h.min(self.cap).mul_f64(self.uniform())),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_up_to_the_cap_are_spread_and_honour_the_hint() {
        let (first, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(first, cap);
        let waits: Vec<Duration> = (0..40).map(|_| b.wait(None)).collect();
        for (n, w) in waits.iter().enumerate() {
            assert!(*w <= first * (1 << n.min(5)) && *w <= cap, "wait {n}: {w:?}");
        }
        assert_eq!(b.failures(), 40);
        let late = &waits[10..];
        assert!(late.iter().any(|w| *w > Duration::from_millis(1000)), "{late:?}");
        assert!(late.windows(2).any(|p| p[0] != p[1]), "jittered: {late:?}");
        b.reset();
        assert!(b.wait(None) <= first);
        let hint = Duration::from_millis(700);
        for _ in 0..20 {
            let w = b.wait(Some(hint));
            assert!(w >= hint && w <= hint * 2 + cap, "{w:?}");
        }
    }

    #[test]
    fn a_shed_status_carries_its_hint_and_other_failures_do_not() {
        let s = shed("busy".into(), Duration::from_millis(250));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(retry_after(&s), Some(Duration::from_millis(250)));
        assert!(is_shed(&s));
        assert!(!is_shed(&Status::unavailable("connection refused")));
        assert!(!is_shed(&Status::not_found("no worker")));
    }
}
