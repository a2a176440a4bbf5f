//! Ending a part within a bound when the coordinator says Stop
//! ([`PartStop`]). A stop first sets the run's stop flag: the training loop
//! ends after its step and rank 0 writes a checkpoint. A rank blocked in a
//! collective (a peer that no longer answers) never gets there, so once the
//! grace period (`--stop-grace-s`) has passed the part's communicators are
//! cancelled: the blocked collective fails at once with an error naming the
//! cause, and the part ends with it. A part that still runs
//! [`CANCEL_WAIT`] after that (stuck outside any collective) is given up:
//! the agent reports it failed and exits, so that no second training ever
//! shares its devices.
//!
//! This file owns the deadlines and the cancel; it must not talk to the
//! coordinator or join threads (the agent polls, its heartbeats go on).

use crate::collective::ops::Comm;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a part may run on after its collectives were cancelled.
pub(crate) const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Where a stop that has not ended the part yet stands.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Overdue {
    /// Not asked to stop, or still within the grace period.
    No,
    /// The part's collectives are cancelled (now or before).
    Cancelled,
    /// Past every bound: give the part up, for this reason.
    Abandon(String),
}

/// The stop of one part: its run's stop flag, its communicators, and when
/// and why it was asked to stop.
pub(crate) struct PartStop {
    flag: Arc<AtomicBool>,
    comms: Mutex<Vec<Arc<Comm>>>,
    requested: Mutex<Option<(Instant, String)>>,
    /// Why the communicators were cancelled, once they were.
    cancelled: Mutex<Option<String>>,
    grace: Duration,
}

impl PartStop {
    pub(crate) fn new(grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            flag: Arc::new(AtomicBool::new(false)),
            comms: Mutex::new(Vec::new()),
            requested: Mutex::new(None),
            cancelled: Mutex::new(None),
            grace,
        })
    }

    /// The flag the run polls between steps.
    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// Adds a local rank's communicator; one that connects after the cancel
    /// is cancelled at once.
    pub(crate) fn register(&self, comm: &Arc<Comm>) {
        let mut comms = self.comms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = self.cancelled.lock().unwrap_or_else(|e| e.into_inner()).as_deref() {
            comm.cancel(reason);
        }
        comms.push(comm.clone());
    }

    /// Asks the part to stop; true the first time.
    pub(crate) fn request(&self, reason: &str) -> bool {
        self.flag.store(true, Ordering::Relaxed);
        let mut requested = self.requested.lock().unwrap_or_else(|e| e.into_inner());
        if requested.is_some() {
            return false;
        }
        *requested = Some((Instant::now(), reason.to_string()));
        true
    }

    /// For a part whose thread still runs at `now`: cancels its
    /// collectives once the grace period after the stop has passed, and
    /// says to give it up [`CANCEL_WAIT`] after that.
    pub(crate) fn check(&self, now: Instant) -> Overdue {
        let Some((asked, reason)) = self.requested.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Overdue::No;
        };
        let waited = now.saturating_duration_since(asked);
        if waited < self.grace {
            return Overdue::No;
        }
        let grace_s = self.grace.as_secs_f64();
        if waited >= self.grace + CANCEL_WAIT {
            return Overdue::Abandon(format!(
                "the part did not end within {:.0} s of the stop ({reason}), even with its collectives cancelled: \
                 its thread is abandoned, and this agent exits so that no other training shares its devices",
                waited.as_secs_f64()
            ));
        }
        let comms = self.comms.lock().unwrap_or_else(|e| e.into_inner());
        let mut cancelled = self.cancelled.lock().unwrap_or_else(|e| e.into_inner());
        if cancelled.is_none() {
            let why = format!("told to stop ({reason}) and still running {grace_s} s later (--stop-grace-s): a peer no longer answers?");
            tracing::warn!(ranks = comms.len(), reason = %why, "cancelling the part's collectives");
            for comm in comms.iter() {
                comm.cancel(&why);
            }
            *cancelled = Some(why);
        }
        Overdue::Cancelled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::ops::Exchange;
    use crate::collective::tcp::connect_loopback;

    #[test]
    fn a_stop_ends_a_rank_blocked_on_a_silent_peer_within_the_grace_period() {
        let grace = Duration::from_millis(400);
        for shared_memory in [false, true] {
            // Collective timeouts far beyond the test: only the stop can end the wait.
            let mut ranks = connect_loopback(2, Duration::from_secs(120), shared_memory).into_iter();
            let (Some(r0), Some(silent)) = (ranks.next(), ranks.next()) else {
                panic!("two ranks")
            };
            let comm = Comm::new(Box::new(r0));
            let stop = PartStop::new(grace);
            stop.register(&comm);
            let flag = stop.flag();
            // The part: trains until told to stop; rank 1 never answers.
            let part = std::thread::spawn(move || -> Result<(), String> {
                while !flag.load(Ordering::Relaxed) {
                    let mut grads = vec![1.0f32; 50_000];
                    comm.run(Exchange::AllReduce, grads.len(), |c| c.all_reduce_sum(&mut grads))
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            });
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(stop.check(Instant::now()), Overdue::No, "not asked to stop yet");
            let asked = Instant::now();
            assert!(stop.request("generation 1 ended: worker-2 lost"));
            assert!(!stop.request("again"));
            // The agent's loop: poll, never join a running thread.
            let mut outcomes = Vec::new();
            while !part.is_finished() {
                outcomes.push(stop.check(Instant::now()));
                assert!(asked.elapsed() < grace + CANCEL_WAIT, "the part never ended");
                std::thread::sleep(Duration::from_millis(20));
            }
            let took = asked.elapsed();
            assert!(took >= grace && took < grace + Duration::from_secs(2), "ended after {took:?}");
            assert!(outcomes.contains(&Overdue::Cancelled), "{outcomes:?}");
            let err = part.join().unwrap().unwrap_err();
            assert!(
                err.contains("cancelled on rank 0") && err.contains("worker-2 lost") && err.contains("--stop-grace-s"),
                "{err}"
            );
            // A communicator that connects after the cancel fails at once.
            let late = connect_loopback(2, Duration::from_secs(120), false).into_iter().next().unwrap();
            let late = Comm::new(Box::new(late));
            stop.register(&late);
            let e = late.run(Exchange::AllReduce, 1, |c| c.barrier()).unwrap_err().to_string();
            assert!(e.contains("cancelled"), "{e}");
            drop(silent);
        }
    }

    #[test]
    fn a_part_that_outlives_its_cancel_is_given_up_after_the_bound() {
        let stop = PartStop::new(Duration::from_millis(100));
        let asked = Instant::now();
        stop.request("job cancelled");
        assert_eq!(stop.check(asked), Overdue::No);
        assert_eq!(stop.check(asked + Duration::from_millis(150)), Overdue::Cancelled);
        assert_eq!(stop.check(asked + Duration::from_millis(150) + CANCEL_WAIT / 2), Overdue::Cancelled);
        match stop.check(asked + Duration::from_millis(200) + CANCEL_WAIT) {
            Overdue::Abandon(why) => assert!(why.contains("job cancelled") && why.contains("abandoned"), "{why}"),
            other => panic!("expected to give up, got {other:?}"),
        }
    }
}
