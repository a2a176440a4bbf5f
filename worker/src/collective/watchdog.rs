//! The deadline of an operation that can only be polled: NCCL's
//! non-blocking communicators (init and every collective) report progress
//! through `ncclCommGetAsyncError` and a CUDA event, never by returning
//! late. [`wait_until_done`] polls until the operation is done, has failed,
//! or its timeout passes, and calls the abort action in both failure cases,
//! so nothing waits forever on a peer that died or never came.
//!
//! Pure and generic (closures in, a result out): no CUDA here, so the logic
//! is unit-tested on any machine. It must not know what it polls or which
//! rank is to blame; the caller names the rank (collective/nccl.rs asks the TCP
//! control channel).

use std::time::{Duration, Instant};

/// What one poll of the operation saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Done,
    Pending,
    /// It failed (the reason as the library reported it).
    Failed(String),
}

/// How a wait ended when the operation did not finish.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("failed after {after:?}: {reason}")]
    Failed { reason: String, after: Duration },
    #[error("not done within {0:?}")]
    TimedOut(Duration),
}

/// Polls `poll` until it reports done or failed, or `timeout` has passed.
/// On failure or timeout `abort` runs once before the error returns; it is
/// never called on success. The first polls follow each other at once
/// (collectives of small buffers finish in microseconds), then the pause
/// between polls grows to at most 2 ms, so a long wait costs little CPU.
pub fn wait_until_done(mut poll: impl FnMut() -> Status, abort: impl FnOnce(), timeout: Duration) -> Result<(), WaitError> {
    let started = Instant::now();
    let mut pause = Duration::from_micros(5);
    let mut spins = 0u32;
    loop {
        match poll() {
            Status::Done => return Ok(()),
            Status::Failed(reason) => {
                abort();
                return Err(WaitError::Failed {
                    reason,
                    after: started.elapsed(),
                });
            }
            Status::Pending => {}
        }
        let waited = started.elapsed();
        if waited >= timeout {
            abort();
            return Err(WaitError::TimedOut(waited));
        }
        if spins < 64 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::sleep(pause.min(timeout - waited));
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn done_after_some_polls_never_aborts() {
        let polls = Cell::new(0);
        let aborted = Cell::new(false);
        let r = wait_until_done(
            || {
                polls.set(polls.get() + 1);
                if polls.get() < 100 { Status::Pending } else { Status::Done }
            },
            || aborted.set(true),
            Duration::from_secs(10),
        );
        assert_eq!(r, Ok(()));
        assert_eq!(polls.get(), 100);
        assert!(!aborted.get());
    }

    #[test]
    fn a_reported_failure_aborts_at_once_with_its_reason() {
        let aborts = Cell::new(0);
        let started = Instant::now();
        let r = wait_until_done(
            || Status::Failed("remote process exited".into()),
            || aborts.set(aborts.get() + 1),
            Duration::from_secs(30),
        );
        match r {
            Err(WaitError::Failed { reason, .. }) => assert_eq!(reason, "remote process exited"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(aborts.get(), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn an_operation_that_never_finishes_is_aborted_at_the_deadline() {
        let aborts = Cell::new(0);
        let polls = Cell::new(0u64);
        let started = Instant::now();
        let r = wait_until_done(
            || {
                polls.set(polls.get() + 1);
                Status::Pending
            },
            || aborts.set(aborts.get() + 1),
            Duration::from_millis(300),
        );
        let took = started.elapsed();
        assert!(matches!(r, Err(WaitError::TimedOut(d)) if d >= Duration::from_millis(300)), "{r:?}");
        assert_eq!(aborts.get(), 1);
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "took {took:?}");
        // Backed off: far fewer polls than a busy loop would make in 300 ms.
        assert!(polls.get() < 2_000, "{} polls", polls.get());
    }

    #[test]
    fn the_abort_unblocks_work_that_is_stuck_in_another_thread() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        // A stand-in for a collective stuck on a dead peer: a thread that
        // only ends once the abort flag is set.
        let aborted = Arc::new(AtomicBool::new(false));
        let flag = aborted.clone();
        let stuck = std::thread::spawn(move || {
            while !flag.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let r = wait_until_done(
            || if stuck.is_finished() { Status::Done } else { Status::Pending },
            || aborted.store(true, Ordering::Release),
            Duration::from_millis(100),
        );
        assert!(matches!(r, Err(WaitError::TimedOut(_))));
        stuck.join().unwrap();
    }
}
