//! Writing, listing, verifying, loading and pruning checkpoint folders on an
//! `object_store` location (a bare path, `file://` or `s3://` URL).
//!
//! A checkpoint counts only once its manifest exists; the manifest is written
//! after every data file. Loading verifies sizes and SHA-256 against the
//! manifest and falls back to the previous complete checkpoint, logging why.

use amdim_shared::checkpoint::{MANIFEST_FILE, Manifest, parse_step_folder, step_folder};
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStore, PutPayload, path::Path as ObjPath};
use std::sync::Arc;

/// A checkpoint location plus the runtime that drives its async I/O.
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    root: ObjPath,
    uri: String,
    runtime: tokio::runtime::Handle,
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
        let location = amdim_shared::storage::open(uri, "checkpoint.uri", true)?;
        Ok(Self {
            store: location.store,
            root: location.prefix,
            uri: uri.to_string(),
            runtime,
        })
    }

    fn path(&self, parts: &[&str]) -> ObjPath {
        parts.iter().fold(self.root.clone(), |p, part| p.child(*part))
    }

    /// Writes the files of step `manifest.step`, then the manifest, then prunes to `keep`.
    pub fn save(&self, manifest: &Manifest, files: Vec<(String, Vec<u8>)>, keep: usize) -> Result<()> {
        let folder = step_folder(manifest.step);
        let manifest_json = serde_json::to_vec_pretty(manifest)?;
        self.runtime.block_on(async {
            for (name, bytes) in files {
                self.store
                    .put(&self.path(&[&folder, &name]), PutPayload::from(bytes))
                    .await
                    .with_context(|| format!("writing {}/{folder}/{name}", self.uri))?;
            }
            self.store
                .put(&self.path(&[&folder, MANIFEST_FILE]), PutPayload::from(manifest_json))
                .await
                .with_context(|| format!("writing {}/{folder}/{MANIFEST_FILE}", self.uri))?;
            Ok::<_, anyhow::Error>(())
        })?;
        if keep > 0 {
            self.prune(keep)?;
        }
        Ok(())
    }

    /// Steps of all folders that hold a manifest, ascending.
    pub fn complete_steps(&self) -> Result<Vec<u64>> {
        self.runtime.block_on(async {
            let listing = self
                .store
                .list_with_delimiter(Some(&self.root))
                .await
                .with_context(|| format!("listing {}", self.uri))?;
            let mut steps = Vec::new();
            for prefix in listing.common_prefixes {
                let Some(step) = prefix.filename().and_then(parse_step_folder) else {
                    continue;
                };
                if self.store.head(&prefix.child(MANIFEST_FILE)).await.is_ok() {
                    steps.push(step);
                }
            }
            steps.sort_unstable();
            Ok(steps)
        })
    }

    /// Reads and verifies the checkpoint of `step`.
    pub fn load_step(&self, step: u64) -> Result<LoadedCheckpoint> {
        let folder = step_folder(step);
        self.runtime.block_on(async {
            let raw = self.store.get(&self.path(&[&folder, MANIFEST_FILE])).await?.bytes().await?;
            let manifest: Manifest =
                serde_json::from_slice(&raw).with_context(|| format!("{}/{folder}/{MANIFEST_FILE} is not a valid manifest", self.uri))?;
            if manifest.step != step {
                bail!(
                    "{}/{folder}/{MANIFEST_FILE} says step {} but sits in {folder}",
                    self.uri,
                    manifest.step
                );
            }
            let mut files = Vec::new();
            for entry in &manifest.files {
                let bytes = self
                    .store
                    .get(&self.path(&[&folder, &entry.name]))
                    .await
                    .with_context(|| format!("reading {}/{folder}/{}", self.uri, entry.name))?
                    .bytes()
                    .await?;
                entry.verify(&bytes).map_err(|e| anyhow!("{}/{folder}/{e}", self.uri))?;
                files.push((entry.name.clone(), bytes));
            }
            Ok(LoadedCheckpoint { manifest, files })
        })
    }

    /// The newest checkpoint that verifies; corrupt ones are skipped with a logged reason.
    pub fn load_latest(&self) -> Result<Option<LoadedCheckpoint>> {
        for step in self.complete_steps()?.into_iter().rev() {
            match self.load_step(step) {
                Ok(c) => return Ok(Some(c)),
                Err(e) => tracing::warn!(step, reason = %format!("{e:#}"), "skipping checkpoint that does not verify"),
            }
        }
        Ok(None)
    }

    /// Deletes all but the newest `keep` complete checkpoints.
    pub fn prune(&self, keep: usize) -> Result<()> {
        let steps = self.complete_steps()?;
        if steps.len() <= keep {
            return Ok(());
        }
        for &step in &steps[..steps.len() - keep] {
            let prefix = self.path(&[&step_folder(step)]);
            self.runtime
                .block_on(async {
                    // Manifest first: a half-deleted folder is never mistaken for a checkpoint.
                    self.store.delete(&prefix.child(MANIFEST_FILE)).await?;
                    let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
                    for o in objects {
                        self.store.delete(&o.location).await?;
                    }
                    Ok::<_, object_store::Error>(())
                })
                .with_context(|| format!("pruning {}/{}", self.uri, step_folder(step)))?;
        }
        Ok(())
    }
}
