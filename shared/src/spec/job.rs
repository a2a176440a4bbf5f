//! `[job]`: the job's name and seed. Nothing to validate.

use serde::{Deserialize, Serialize};

/// `[job]`: what the job is called and the seed of everything random.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobSection {
    /// Job name, used in logs and as the default run folder.
    pub name: String,
    /// Seed of every random stream (order, augmentation, locations, init).
    pub seed: u64,
}

impl Default for JobSection {
    fn default() -> Self {
        Self {
            name: "amdim".into(),
            seed: 1,
        }
    }
}
