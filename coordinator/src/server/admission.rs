//! Load shedding at the door: registrations are admitted at a bounded rate
//! (a generic cell rate: `per_s` a second, up to `burst` at once), and one
//! over the rate is answered at once with `RESOURCE_EXHAUSTED` and a
//! `retry-after-ms` hint (when the next one would be admitted) instead of
//! queueing behind the state lock and its store write until the caller
//! times out. Agents come back after the hint, spread by their jitter
//! (`amdim_shared::retry`). Heartbeats of registered workers are never
//! shed here: a registration storm (every agent after a coordinator
//! restart) must not starve them. No state, no store: only the clock.

use super::coordinator::Coordinator;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::Status;

/// Registrations admitted a second by default.
pub(crate) const DEFAULT_REGISTRATIONS_PER_S: u32 = 1000;

/// A generic cell rate limiter (the theoretical arrival time of the next
/// call, `tat`, advances by `1 / per_s` per admitted call).
#[derive(Debug)]
pub(crate) struct Admission {
    /// Time per admitted call (None: no limit).
    every: Option<Duration>,
    /// How far `tat` may run ahead of now: `burst` calls.
    tolerance: Duration,
    tat: Mutex<Instant>,
}

impl Admission {
    /// `per_s` calls a second (0: no limit), up to a tenth of a second's
    /// worth (at least one) at once.
    pub(crate) fn new(per_s: u32) -> Self {
        let every = (per_s > 0).then(|| Duration::from_secs(1) / per_s);
        let burst = (per_s / 10).max(1);
        Self {
            every,
            tolerance: every.map_or(Duration::ZERO, |e| e * burst),
            tat: Mutex::new(Instant::now()),
        }
    }

    /// Admits a call now, or says how long to wait.
    fn admit_at(&self, now: Instant) -> Result<(), Duration> {
        let Some(every) = self.every else { return Ok(()) };
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let ahead = tat.saturating_duration_since(now);
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        *tat = (*tat).max(now) + every;
        Ok(())
    }
}

impl Coordinator {
    /// Admits `per_s` registrations a second (0: no limit); the rest are
    /// shed with a retry-after hint.
    pub fn limit_registrations(mut self, per_s: u32) -> Self {
        self.admission = std::sync::Arc::new(Admission::new(per_s));
        self
    }

    /// Admits one registration, or answers `RESOURCE_EXHAUSTED` with the
    /// wait after which the next would be admitted.
    pub(super) fn admit_registration(&self) -> Result<(), Status> {
        self.admission.admit_at(Instant::now()).map_err(|wait| {
            amdim_shared::backoff::shed(
                format!(
                    "the coordinator is admitting registrations at its limit (--max-registrations-per-s); retry in {} ms",
                    wait.as_millis().max(1)
                ),
                wait,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_rest_wait_their_turn() {
        let a = Admission::new(100); // one per 10 ms, 10 at once
        let t0 = Instant::now();
        let admitted = (0..25).filter(|_| a.admit_at(t0).is_ok()).count();
        assert_eq!(admitted, 11, "the burst and the call due now");
        let wait = a.admit_at(t0).unwrap_err();
        assert!(wait > Duration::from_millis(5) && wait <= Duration::from_millis(10), "{wait:?}");
        assert!(a.admit_at(t0 + wait).is_ok(), "admitted once the hinted wait has passed");
        assert!(a.admit_at(t0 + wait).is_err());
        // A quiet second later the burst is available again.
        let later = t0 + Duration::from_secs(1);
        assert_eq!((0..25).filter(|_| a.admit_at(later).is_ok()).count(), 11);
    }

    #[test]
    fn no_limit_admits_everything() {
        let a = Admission::new(0);
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| a.admit_at(t0).is_ok()));
    }
}
