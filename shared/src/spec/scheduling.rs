//! `[scheduling]`: how many workers a job takes, its priority and its
//! restart budget, with their validation. Scheduling itself is the
//! coordinator's.

use super::{SpecError, field_err};
use serde::{Deserialize, Serialize};

/// How the coordinator runs the job: a generation starts when at least
/// `min_workers` are free and takes up to `max_workers`, so that the ranks
/// (workers × `devices_per_worker`) divide the global batch; higher
/// priority first, then first come.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingSpec {
    /// Workers a generation needs to start.
    pub min_workers: u32,
    /// Workers a generation takes at the most.
    pub max_workers: u32,
    /// Ranks each worker drives, one per device (runtime.device, +1, …); only
    /// workers that registered at least this many devices are chosen.
    pub devices_per_worker: u32,
    /// Higher runs first.
    pub priority: i32,
    /// Generations that may end early (lost worker, failed collective)
    /// before the job fails.
    pub max_restarts: u32,
}

impl Default for SchedulingSpec {
    fn default() -> Self {
        Self {
            min_workers: 1,
            max_workers: 1,
            devices_per_worker: 1,
            priority: 0,
            max_restarts: 3,
        }
    }
}

impl SchedulingSpec {
    /// Checks `[scheduling]`.
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if self.min_workers == 0 {
            return Err(field_err("scheduling.min_workers", "must be at least 1"));
        }
        if self.devices_per_worker == 0 {
            return Err(field_err("scheduling.devices_per_worker", "must be at least 1"));
        }
        if self.max_workers < self.min_workers {
            return Err(field_err(
                "scheduling.max_workers",
                format!("must be at least scheduling.min_workers = {}", self.min_workers),
            ));
        }
        Ok(())
    }
}
