//! Checkpoint folders on an object-store [`Location`] (docs/architecture.md §7), shared by
//! the worker (writing, resuming, pruning) and `amdimctl` (listing,
//! exporting): which checkpoints are complete, reading a manifest, reading
//! a file verified against it, writing a file (multipart when large) and
//! deleting a checkpoint manifest-first. Async; callers bring the runtime.
//! What goes into a checkpoint is the worker's business.
//!
//! Every request is retried through [`crate::retry`] while the store is
//! unreachable (within `AMDIM_STORAGE_RETRY_S`); an error is never taken
//! for absence: only a store that says "not found" makes an object absent.

use super::layout::{MANIFEST_FILE, parse_step_folder, step_folder};
use super::manifest::Manifest;
use crate::retry::{ErrorKind, RetryError, RetryPolicy, no_count, retry};
use crate::storage::Location;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{PutPayload, WriteMultipart};

/// Files above this size are uploaded in parts of [`PART_BYTES`].
pub const MULTIPART_THRESHOLD: usize = 64 << 20;
/// The part size of a multipart upload.
pub const PART_BYTES: usize = 16 << 20;
/// Parts of one file in flight at once.
const PART_CONCURRENCY: usize = 4;

/// A checkpoint folder that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The object store failed (after retrying, when that could help).
    #[error("{path}: {source}")]
    Store {
        /// The object or prefix.
        path: String,
        /// What the store said, and after how many tries.
        #[source]
        source: RetryError,
    },
    /// The object was read but is not what a checkpoint holds there.
    #[error("{path}: {message}")]
    Invalid {
        /// The object.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl CheckpointError {
    /// Why this checkpoint may be passed over for an older one: its object
    /// is absent or its bytes do not verify. `None` when the store could not
    /// be read (unreachable, permissions): then nobody knows what is there.
    pub fn skip_reason(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { .. } => Some("does not verify"),
            Self::Store { source, .. } if source.is_absent() => Some("a file is missing"),
            Self::Store { .. } => None,
        }
    }

    /// The object or prefix the error is about.
    pub fn path(&self) -> &str {
        match self {
            Self::Store { path, .. } | Self::Invalid { path, .. } => path,
        }
    }
}

fn store_err(path: &Path) -> impl FnOnce(RetryError) -> CheckpointError + '_ {
    move |source| CheckpointError::Store {
        path: path.to_string(),
        source,
    }
}

/// `op` on `path`, retried while the store is unreachable.
pub(super) async fn retried<T, F, Fut>(path: &Path, op: F) -> Result<T, CheckpointError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, object_store::Error>>,
{
    retry(&RetryPolicy::from_env(), path, &no_count, op).await.map_err(store_err(path))
}

async fn get(location: &Location, path: &Path) -> Result<Bytes, CheckpointError> {
    retried(path, || async { location.store.get(path).await?.bytes().await }).await
}

/// Steps of the folders that hold a manifest, ascending.
pub async fn complete_steps(location: &Location) -> Result<Vec<u64>, CheckpointError> {
    let listing = retried(&location.prefix, || location.store.list_with_delimiter(Some(&location.prefix))).await?;
    let mut steps = Vec::new();
    for prefix in listing.common_prefixes {
        let Some(step) = prefix.filename().and_then(parse_step_folder) else {
            continue;
        };
        let manifest = prefix.child(MANIFEST_FILE);
        match retried(&manifest, || location.store.head(&manifest)).await {
            Ok(_) => steps.push(step),
            // No manifest: being written, or abandoned. Not a checkpoint.
            Err(CheckpointError::Store { source, .. }) if source.is_absent() => {}
            Err(e) => return Err(e),
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// The manifest of checkpoint `step`, checked to belong to that folder.
pub async fn read_manifest(location: &Location, step: u64) -> Result<Manifest, CheckpointError> {
    let folder = step_folder(step);
    let path = location.path(&[&folder, MANIFEST_FILE]);
    let raw = get(location, &path).await?;
    let manifest: Manifest = serde_json::from_slice(&raw).map_err(|e| CheckpointError::Invalid {
        path: path.to_string(),
        message: format!("not a valid manifest: {e}"),
    })?;
    if manifest.step != step {
        return Err(CheckpointError::Invalid {
            path: path.to_string(),
            message: format!("says step {} but sits in {folder}", manifest.step),
        });
    }
    Ok(manifest)
}

/// File `name` of checkpoint `manifest.step`, verified (size, SHA-256).
pub async fn read_verified(location: &Location, manifest: &Manifest, name: &str) -> Result<Bytes, CheckpointError> {
    let path = location.path(&[&step_folder(manifest.step), name]);
    let entry = manifest.file(name).ok_or_else(|| CheckpointError::Invalid {
        path: path.to_string(),
        message: "not listed in the manifest".into(),
    })?;
    let bytes = get(location, &path).await?;
    entry.verify(&bytes).map_err(|e| CheckpointError::Invalid {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    Ok(bytes)
}

/// Writes `bytes` to `folder/name`: one PUT, or a multipart upload (aborted
/// on failure) for large files; the whole upload is retried while the
/// store is unreachable.
pub async fn put_file(location: &Location, folder: &str, name: &str, bytes: Bytes) -> Result<(), CheckpointError> {
    let path = location.path(&[folder, name]);
    retried(&path, || put_once(location, &path, bytes.clone())).await
}

async fn put_once(location: &Location, path: &Path, bytes: Bytes) -> Result<(), object_store::Error> {
    if bytes.len() <= MULTIPART_THRESHOLD {
        location.store.put(path, PutPayload::from(bytes)).await?;
        return Ok(());
    }
    let upload = location.store.put_multipart(path).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut offset = 0;
    while offset < bytes.len() {
        if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
            let _ = writer.abort().await;
            return Err(e);
        }
        let end = (offset + PART_BYTES).min(bytes.len());
        writer.put(bytes.slice(offset..end));
        offset = end;
    }
    writer.finish().await?;
    Ok(())
}

/// Deletes checkpoint `step`, manifest first, so that a half-deleted folder
/// is never mistaken for a checkpoint. Objects already gone are fine: a
/// deletion that failed half-way can simply be run again.
pub async fn delete_step(location: &Location, step: u64) -> Result<(), CheckpointError> {
    let prefix = location.path(&[&step_folder(step)]);
    let manifest = prefix.child(MANIFEST_FILE);
    delete(location, &manifest).await?;
    let objects: Vec<_> = retried(&prefix, || location.store.list(Some(&prefix)).try_collect::<Vec<_>>()).await?;
    for o in objects {
        delete(location, &o.location).await?;
    }
    Ok(())
}

async fn delete(location: &Location, path: &Path) -> Result<(), CheckpointError> {
    match retried(path, || location.store.delete(path)).await {
        Err(CheckpointError::Store { source, .. }) if source.kind == ErrorKind::Absent => Ok(()),
        other => other,
    }
}
