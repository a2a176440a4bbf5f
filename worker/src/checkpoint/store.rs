//! Writing, listing, verifying, loading and pruning checkpoint folders on an
//! `object_store` location (a bare path, `file://` or `s3://` URL), blocking
//! on the given runtime; the folder I/O itself (and its retries while the
//! store is unreachable) is `amdim_shared::checkpoint`'s.
//!
//! A checkpoint counts only once its manifest exists; the manifest is written
//! after every data file. Loading verifies sizes and SHA-256 against the
//! manifest; [`CheckpointStore::load_latest`] passes over a checkpoint only
//! when a file is absent or does not verify (logged with the object and the
//! reason), never because the store could not be read. Pruning never touches
//! the newest complete checkpoint, nor a folder without a manifest (one being
//! written); a pruning failure does not fail the save: it is logged, counted,
//! and retried after the next checkpoint.

use amdim_shared::checkpoint as io;
use amdim_shared::checkpoint::{CheckpointError, MANIFEST_FILE, Manifest, step_folder};
use amdim_shared::storage::Location;
use anyhow::{Context, Result};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::Mutex;

/// Which complete checkpoints survive pruning.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// The newest K (0 = all). The newest one always survives.
    pub newest: usize,
    /// Also every checkpoint whose step is a multiple of this (0 = none).
    pub every_steps: u64,
}

impl Retention {
    /// The steps of `complete` (ascending) to delete.
    pub fn to_delete(&self, complete: &[u64]) -> Vec<u64> {
        if self.newest == 0 {
            return Vec::new();
        }
        let cut = complete.len().saturating_sub(self.newest.max(1));
        complete[..cut]
            .iter()
            .copied()
            .filter(|&s| self.every_steps == 0 || !s.is_multiple_of(self.every_steps))
            .collect()
    }
}

/// A checkpoint location plus the runtime that drives its async I/O.
pub struct CheckpointStore {
    location: Location,
    uri: String,
    runtime: tokio::runtime::Handle,
    /// Steps whose deletion failed, tried again at the next prune.
    unpruned: Mutex<BTreeSet<u64>>,
}

/// The files of one verified checkpoint.
pub struct LoadedCheckpoint {
    pub manifest: Manifest,
    pub files: Vec<(String, Bytes)>,
}

impl LoadedCheckpoint {
    pub fn file(&self, name: &str) -> Option<&Bytes> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, b)| b)
    }
}

impl CheckpointStore {
    /// Opens `uri` (config field `checkpoint.uri`): a folder path or
    /// `file://` URL (created if missing), or `s3://bucket/prefix`.
    pub fn open(uri: &str, runtime: tokio::runtime::Handle) -> Result<Self> {
        Ok(Self {
            location: amdim_shared::storage::open(uri, "checkpoint.uri", true)?,
            uri: uri.to_string(),
            runtime,
            unpruned: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Writes the files of step `manifest.step`, then the manifest, then
    /// prunes (see [`Retention`]). Returns the number of pruning failures:
    /// once the manifest is written the checkpoint is complete, whatever
    /// pruning does.
    pub fn save(&self, manifest: &Manifest, files: &[(String, Bytes)], keep: Retention) -> Result<usize> {
        let folder = step_folder(manifest.step);
        let manifest_json = serde_json::to_vec_pretty(manifest)?;
        self.runtime.block_on(async {
            for (name, bytes) in files {
                io::put_file(&self.location, &folder, name, bytes.clone()).await?;
            }
            io::put_file(&self.location, &folder, MANIFEST_FILE, Bytes::from(manifest_json)).await
        })?;
        Ok(self.prune(keep))
    }

    /// Steps of all folders that hold a manifest, ascending.
    pub fn complete_steps(&self) -> Result<Vec<u64>> {
        self.runtime
            .block_on(io::complete_steps(&self.location))
            .with_context(|| format!("listing {}", self.uri))
    }

    fn read_step(&self, step: u64) -> Result<LoadedCheckpoint, CheckpointError> {
        self.runtime.block_on(async {
            let manifest = io::read_manifest(&self.location, step).await?;
            let mut files = Vec::new();
            for entry in &manifest.files {
                files.push((entry.name.clone(), io::read_verified(&self.location, &manifest, &entry.name).await?));
            }
            Ok(LoadedCheckpoint { manifest, files })
        })
    }

    /// Reads and verifies the checkpoint of `step`; errors name the object.
    pub fn load_step(&self, step: u64) -> Result<LoadedCheckpoint> {
        self.read_step(step)
            .with_context(|| format!("{}: checkpoint {}", self.uri, step_folder(step)))
    }

    /// The newest checkpoint that verifies. One whose files are absent or
    /// do not verify is skipped (logged with the object and why); a store
    /// that cannot be read is an error, never a reason to go back to an
    /// older checkpoint or to step 0.
    pub fn load_latest(&self) -> Result<Option<LoadedCheckpoint>> {
        for step in self.complete_steps()?.into_iter().rev() {
            match self.read_step(step) {
                Ok(c) => return Ok(Some(c)),
                Err(e) => match e.skip_reason() {
                    Some(why) => tracing::warn!(
                        step,
                        object = e.path(),
                        reason = %e,
                        "skipping checkpoint: {why}; trying the previous one"
                    ),
                    None => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "{}: cannot read checkpoint {} (not falling back to an older one)",
                            self.uri,
                            step_folder(step)
                        )));
                    }
                },
            }
        }
        Ok(None)
    }

    /// Deletes the complete checkpoints `keep` does not retain, and those
    /// an earlier prune failed to delete. Folders without a manifest (being
    /// written) are never touched. Failures are logged with the object and
    /// remembered for the next call; returns how many steps failed.
    pub fn prune(&self, keep: Retention) -> usize {
        let mut todo = std::mem::take(&mut *self.unpruned.lock().unwrap_or_else(|e| e.into_inner()));
        let listed = self.complete_steps();
        match &listed {
            Ok(complete) => todo.extend(keep.to_delete(complete)),
            Err(e) => {
                tracing::warn!(uri = %self.uri, reason = %format!("{e:#}"), "cannot list checkpoints to prune; pruning again after the next checkpoint")
            }
        }
        let mut failed = BTreeSet::new();
        for step in todo {
            if let Err(e) = self.runtime.block_on(io::delete_step(&self.location, step)) {
                tracing::warn!(step, object = e.path(), reason = %e, "pruning failed; trying again after the next checkpoint");
                failed.insert(step);
            }
        }
        let failures = failed.len() + usize::from(listed.is_err());
        self.unpruned.lock().unwrap_or_else(|e| e.into_inner()).extend(failed);
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_the_newest_and_every_nth() {
        let complete = [2, 4, 6, 8, 10, 12];
        let keep = |newest, every_steps| Retention { newest, every_steps }.to_delete(&complete);
        assert_eq!(keep(2, 0), vec![2, 4, 6, 8]);
        assert_eq!(keep(2, 4), vec![2, 6]);
        assert_eq!(keep(0, 0), Vec::<u64>::new(), "0 keeps all");
        assert_eq!(keep(10, 0), Vec::<u64>::new());
        assert_eq!(keep(1, 0), vec![2, 4, 6, 8, 10], "the newest always survives");
    }
}
