//! The run's history file (`history.jsonl` beside the checkpoints, the
//! records of `amdim_shared::history`): the records of this run, kept in
//! memory and rewritten whole — object stores cannot append — after each
//! committed checkpoint and at the end. Only rank 0 writes; other ranks
//! keep nothing. On resume the records up to the resumed step are kept
//! and the elapsed time continues from the last of them.
//!
//! It records and uploads; what a record holds is measured by the loop
//! (`train::run`, `train::log_window`), and when to write is the loop's.

use amdim_shared::checkpoint::HISTORY_FILE;
use amdim_shared::history::{self, HistoryRecord};
use amdim_shared::storage::{self, Location};
use anyhow::{Context, Result};
use std::sync::Mutex;
use std::time::Instant;

/// The history of one rank's run.
pub(crate) struct RunHistory {
    /// None: this rank does not write a history.
    location: Option<Location>,
    uri: String,
    records: Mutex<Vec<HistoryRecord>>,
    started: Instant,
    /// Elapsed seconds of the run this one resumes.
    offset_s: f64,
    runtime: tokio::runtime::Handle,
}

impl RunHistory {
    /// The history under checkpoint URI `uri`; `resumed_at`: the step this
    /// run resumed from (records after it are dropped), None for a fresh
    /// run (any older history is replaced). `writer`: whether this rank
    /// writes it.
    pub(crate) fn open(uri: &str, writer: bool, resumed_at: Option<u64>, runtime: tokio::runtime::Handle) -> Result<Self> {
        let mut out = Self {
            location: None,
            uri: format!("{}/{HISTORY_FILE}", uri.trim_end_matches('/')),
            records: Mutex::new(Vec::new()),
            started: Instant::now(),
            offset_s: 0.0,
            runtime,
        };
        if !writer {
            return Ok(out);
        }
        let location = storage::open(uri, "checkpoint.uri", true)?;
        if let Some(step) = resumed_at {
            let mut kept = out
                .runtime
                .block_on(history::read(&location))
                .with_context(|| format!("reading {} to continue it", out.uri))?
                .unwrap_or_default();
            kept.retain(|r| r.step() <= step);
            out.offset_s = kept.iter().map(HistoryRecord::elapsed_s).fold(0.0, f64::max);
            out.records = Mutex::new(kept);
        }
        out.location = Some(location);
        Ok(out)
    }

    /// Where the history is written (`<checkpoint.uri>/history.jsonl`).
    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    /// Seconds of training since the first start of the run.
    pub(crate) fn elapsed_s(&self) -> f64 {
        self.offset_s + self.started.elapsed().as_secs_f64()
    }

    /// Adds a record (kept only by the rank that writes).
    pub(crate) fn push(&self, record: HistoryRecord) {
        if self.location.is_some()
            && let Ok(mut records) = self.records.lock()
        {
            records.push(record);
        }
    }

    /// Rewrites the history object with every record so far.
    pub(crate) fn write(&self) -> Result<()> {
        let Some(location) = &self.location else { return Ok(()) };
        let records = match self.records.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        self.runtime
            .block_on(history::write(location, &records))
            .with_context(|| format!("writing {}", self.uri))
    }

    /// [`write`](Self::write), logging instead of failing: a history that
    /// cannot be written must not stop training.
    pub(crate) fn write_or_warn(&self) {
        if let Err(e) = self.write() {
            tracing::warn!(error = %format!("{e:#}"), "the run history could not be written");
        }
    }
}
