//! Checkpoint folders on an object-store [`Location`] (docs/architecture.md §7), shared by
//! the worker (writing, resuming, pruning) and `amdimctl` (listing,
//! exporting): which checkpoints are complete, reading a manifest, reading
//! a file verified against it, writing a file (multipart when large) and
//! deleting a checkpoint manifest-first. Async; callers bring the runtime.
//! What goes into a checkpoint is the worker's business.

use super::layout::{MANIFEST_FILE, parse_step_folder, step_folder};
use super::manifest::Manifest;
use crate::storage::Location;
use bytes::Bytes;
use futures::TryStreamExt;
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
    /// The object store failed.
    #[error("{path}: {source}")]
    Store {
        /// The object or prefix.
        path: String,
        /// What the store said.
        #[source]
        source: object_store::Error,
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

fn store_err(path: &object_store::path::Path) -> impl FnOnce(object_store::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Store {
        path: path.to_string(),
        source,
    }
}

/// Steps of the folders that hold a manifest, ascending.
pub async fn complete_steps(location: &Location) -> Result<Vec<u64>, CheckpointError> {
    let listing = location
        .store
        .list_with_delimiter(Some(&location.prefix))
        .await
        .map_err(store_err(&location.prefix))?;
    let mut steps = Vec::new();
    for prefix in listing.common_prefixes {
        let Some(step) = prefix.filename().and_then(parse_step_folder) else {
            continue;
        };
        if location.store.head(&prefix.child(MANIFEST_FILE)).await.is_ok() {
            steps.push(step);
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// The manifest of checkpoint `step`, checked to belong to that folder.
pub async fn read_manifest(location: &Location, step: u64) -> Result<Manifest, CheckpointError> {
    let folder = step_folder(step);
    let path = location.path(&[&folder, MANIFEST_FILE]);
    let raw = async { location.store.get(&path).await?.bytes().await }
        .await
        .map_err(store_err(&path))?;
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
    let bytes = async { location.store.get(&path).await?.bytes().await }
        .await
        .map_err(store_err(&path))?;
    entry.verify(&bytes).map_err(|e| CheckpointError::Invalid {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    Ok(bytes)
}

/// Writes `bytes` to `folder/name`: one PUT, or a multipart upload (aborted
/// on failure) for large files.
pub async fn put_file(location: &Location, folder: &str, name: &str, bytes: Bytes) -> Result<(), CheckpointError> {
    let path = location.path(&[folder, name]);
    if bytes.len() <= MULTIPART_THRESHOLD {
        location.store.put(&path, PutPayload::from(bytes)).await.map_err(store_err(&path))?;
        return Ok(());
    }
    let upload = location.store.put_multipart(&path).await.map_err(store_err(&path))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut offset = 0;
    while offset < bytes.len() {
        if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
            let _ = writer.abort().await;
            return Err(store_err(&path)(e));
        }
        let end = (offset + PART_BYTES).min(bytes.len());
        writer.put(bytes.slice(offset..end));
        offset = end;
    }
    writer.finish().await.map_err(store_err(&path))?;
    Ok(())
}

/// Deletes checkpoint `step`, manifest first, so that a half-deleted folder
/// is never mistaken for a checkpoint.
pub async fn delete_step(location: &Location, step: u64) -> Result<(), CheckpointError> {
    let prefix = location.path(&[&step_folder(step)]);
    let manifest = prefix.child(MANIFEST_FILE);
    location.store.delete(&manifest).await.map_err(store_err(&manifest))?;
    let objects: Vec<_> = location.store.list(Some(&prefix)).try_collect().await.map_err(store_err(&prefix))?;
    for o in objects {
        location.store.delete(&o.location).await.map_err(store_err(&o.location))?;
    }
    Ok(())
}
