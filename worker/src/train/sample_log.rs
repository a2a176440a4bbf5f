//! The test-only sample log: a run observer that appends `step epoch
//! index…` for every step this rank starts to one file. The line is written
//! before the step trains, so every step that reached a checkpoint is in the
//! file even if the process is killed later. Tests read it to check that no
//! sample is trained twice or skipped across failures; training never reads
//! it.

use crate::train::observer::RunObserver;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

/// Appends the samples of each step to a file (created at the run's start).
pub(crate) struct SampleLog {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl SampleLog {
    /// A log to `path`; nothing is opened before the run starts.
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: Mutex::new(None),
        }
    }

    fn open(&self) -> Result<File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("sample log {}", self.path.display()))
    }
}

impl RunObserver for SampleLog {
    fn on_start(&self, _step: u64, _total: u64) -> Result<()> {
        let file = self.open()?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
        Ok(())
    }

    fn on_batch(&self, step: u64, epoch: u64, indices: &[u32]) -> Result<()> {
        use std::fmt::Write as _;
        let mut line = format!("{step} {epoch}");
        for i in indices {
            let _ = write!(line, " {i}");
        }
        line.push('\n');
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let file = match guard.take() {
            Some(file) => guard.insert(file),
            None => guard.insert(self.open()?),
        };
        file.write_all(line.as_bytes())
            .with_context(|| format!("sample log {}", self.path.display()))
    }
}
