//! Encoded photos addressed by sample index, wherever they are stored:
//! - an ImageFolder tree (`<root>/train/<class>/<image>`, optional `val`) on
//!   a local disk, or under an object-store prefix (`file://`, `s3://`);
//! - a packed dataset (`amdim_shared::shards`: tar shards, `index.bin`,
//!   `manifest.json` per split) on a local disk or object store, read with
//!   ranged GETs so that only the requested samples' bytes travel and no
//!   shard is ever held whole.
//!
//! Owns listing, opening and reading bytes (object-store reads run on the
//! given tokio runtime; a batch's reads are issued concurrently). A read
//! the store does not answer is retried (`amdim_shared::retry`, counted);
//! when the budget is spent, or access is refused, the read is
//! [`ReadError::Unavailable`] and the run must stop; only a sample whose
//! bytes are missing from the dataset is [`ReadError::Bad`]. Decoding
//! is `photo`'s; choosing samples is `amdim_shared::order`'s.

use crate::data::dataset::{DataError, Split};
use amdim_shared::imagefolder;
use amdim_shared::retry::{ErrorKind, RetryError, RetryPolicy, no_count, retry};
use amdim_shared::shards::{self, INDEX_FILE, IndexEntry, MANIFEST_FILE, ShardManifest};
use amdim_shared::storage;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path as ObjPath;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::runtime::Handle;

/// Object-store requests in flight for one batch.
const CONCURRENT_REQUESTS: usize = 32;

/// Why a sample's bytes could not be read.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReadError {
    /// This sample's bytes are missing or cut short: skip it.
    #[error("{0}")]
    Bad(String),
    /// The store did not answer within the retry budget, or refused
    /// access (names the object): the run cannot go on.
    #[error("{0}")]
    Unavailable(String),
}

/// One sample's bytes, or why they could not be read.
pub type Fetched = Result<Bytes, ReadError>;

/// What a failed (and retried) read of `object` means for its sample.
fn read_error(object: &ObjPath, e: RetryError) -> ReadError {
    let refused = matches!(
        e.error,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    );
    if e.kind == ErrorKind::Transient || refused {
        ReadError::Unavailable(format!("{object}: {e}"))
    } else {
        ReadError::Bad(e.to_string())
    }
}

/// The config field a dataset location comes from, for error messages.
const FIELD: &str = "data.path";

pub fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "val",
    }
}

pub fn split_dir(root: &Path, split: Split) -> PathBuf {
    root.join(split_name(split))
}

fn is_uri(path: &str) -> bool {
    path.contains("://")
}

enum Items {
    Files(Vec<PathBuf>),
    Objects {
        store: Arc<dyn ObjectStore>,
        paths: Vec<ObjPath>,
        runtime: Handle,
    },
    Shards {
        store: Arc<dyn ObjectStore>,
        shards: Vec<ObjPath>,
        entries: Vec<IndexEntry>,
        runtime: Handle,
    },
}

/// One split of a photo dataset: class names, labels, and where each
/// sample's encoded bytes are.
pub struct EncodedSource {
    pub classes: Vec<String>,
    pub labels: Vec<u32>,
    items: Items,
    retry: RetryPolicy,
    /// Object-store reads retried so far.
    retries: AtomicU64,
}

fn data_err(path: impl Into<PathBuf>, message: impl Into<String>) -> DataError {
    DataError::File {
        path: path.into(),
        message: message.into(),
    }
}

fn storage_err(e: storage::StorageError) -> DataError {
    data_err(e.uri, format!("{}: {}", e.field, e.message))
}

fn location_err(root: &str, split: Split, message: impl std::fmt::Display) -> DataError {
    data_err(format!("{root}/{}", split_name(split)), format!("{FIELD}: {message}"))
}

impl EncodedSource {
    /// Opens split `split` of the ImageFolder tree at `root` (a path or URI).
    pub fn open_folder(root: &str, split: Split, runtime: &Handle) -> Result<Self, DataError> {
        if !is_uri(root) {
            let listing = imagefolder::list(&split_dir(Path::new(root), split)).map_err(|e| data_err(e.path, e.message))?;
            return Ok(Self::new(listing.classes, listing.labels, Items::Files(listing.files)));
        }
        let location = storage::open(root, FIELD, false).map_err(storage_err)?;
        let prefix = location.path(&[split_name(split)]);
        let policy = RetryPolicy::from_env();
        let objects: Vec<ObjPath> = runtime
            .block_on(retry(&policy, &prefix, &no_count, || {
                location.store.list(Some(&prefix)).map_ok(|m| m.location).try_collect()
            }))
            .map_err(|e| location_err(root, split, format!("cannot list: {e}")))?;
        // Keep `<class>/<image>` directly under the split, ordered like the local listing.
        let mut by_class: BTreeMap<String, Vec<ObjPath>> = BTreeMap::new();
        for object in objects {
            let Some(rest) = object.prefix_match(&prefix) else { continue };
            let parts: Vec<_> = rest.collect();
            if parts.len() == 2 && imagefolder::is_image(Path::new(parts[1].as_ref())) {
                by_class.entry(parts[0].as_ref().to_string()).or_default().push(object.clone());
            }
        }
        if by_class.is_empty() {
            return Err(location_err(
                root,
                split,
                "no images (expected <class>/<image>.jpg|jpeg|png objects under this prefix)",
            ));
        }
        let mut source = Self::new(Vec::new(), Vec::new(), Items::Files(Vec::new()));
        let mut paths = Vec::new();
        for (label, (class, mut objects)) in by_class.into_iter().enumerate() {
            objects.sort();
            source.classes.push(class);
            source.labels.extend(std::iter::repeat_n(label as u32, objects.len()));
            paths.extend(objects);
        }
        source.items = Items::Objects {
            store: location.store,
            paths,
            runtime: runtime.clone(),
        };
        Ok(source)
    }

    /// Opens split `split` of the packed dataset at `root` (a path or URI).
    pub fn open_shards(root: &str, split: Split, runtime: &Handle) -> Result<Self, DataError> {
        let location = storage::open(root, FIELD, false).map_err(storage_err)?;
        let name = split_name(split);
        let policy = RetryPolicy::from_env();
        let read = |file: &str| {
            let path = location.path(&[name, file]);
            runtime.block_on(retry(&policy, &path, &no_count, || async {
                location.store.get(&path).await?.bytes().await
            }))
        };
        let manifest = match read(MANIFEST_FILE) {
            Ok(bytes) => bytes,
            Err(e) if e.is_absent() => {
                return Err(location_err(
                    root,
                    split,
                    format!("no {MANIFEST_FILE}: not a packed dataset (create one with `amdimctl dataset pack`)"),
                ));
            }
            Err(e) => return Err(location_err(root, split, format!("reading {MANIFEST_FILE}: {e}"))),
        };
        let manifest: ShardManifest = serde_json::from_slice(&manifest)
            .map_err(|e| location_err(root, split, format!("{MANIFEST_FILE} is not a shard manifest: {e}")))?;
        let index = read(INDEX_FILE).map_err(|e| location_err(root, split, format!("reading {INDEX_FILE}: {e}")))?;
        let entries = shards::decode_index(&index, &manifest).map_err(|e| location_err(root, split, e))?;
        if entries.is_empty() {
            return Err(location_err(root, split, "the packed dataset holds no samples"));
        }
        let labels = entries.iter().map(|e| e.label).collect();
        let items = Items::Shards {
            shards: manifest.shards.iter().map(|s| location.path(&[name, &s.name])).collect(),
            store: location.store,
            entries,
            runtime: runtime.clone(),
        };
        Ok(Self::new(manifest.classes, labels, items))
    }

    fn new(classes: Vec<String>, labels: Vec<u32>, items: Items) -> Self {
        Self {
            classes,
            labels,
            items,
            retry: RetryPolicy::from_env(),
            retries: AtomicU64::new(0),
        }
    }

    /// Object-store reads retried so far because the store did not answer.
    pub fn read_retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Whether the dataset at `root` has `split` (`val` is optional); a
    /// store that cannot be read is an error, not a missing split.
    pub fn has_split(root: &str, packed: bool, split: Split, runtime: &Handle) -> Result<bool, DataError> {
        if !is_uri(root) && !packed {
            return Ok(split_dir(Path::new(root), split).is_dir());
        }
        let Ok(location) = storage::open(root, FIELD, false) else {
            return Ok(false);
        };
        let name = split_name(split);
        let policy = RetryPolicy::from_env();
        let found = if packed {
            let path = location.path(&[name, MANIFEST_FILE]);
            match runtime.block_on(retry(&policy, &path, &no_count, || location.store.head(&path))) {
                Ok(_) => Ok(true),
                Err(e) if e.is_absent() => Ok(false),
                Err(e) => Err(e),
            }
        } else {
            let prefix = location.path(&[name]);
            runtime.block_on(retry(&policy, &prefix, &no_count, || async {
                location
                    .store
                    .list(Some(&prefix))
                    .next()
                    .await
                    .transpose()
                    .map(|first| first.is_some())
            }))
        };
        found.map_err(|e| location_err(root, split, format!("cannot tell whether this split exists: {e}")))
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Keeps only the first `n` samples (0 keeps all).
    pub fn truncate(mut self, n: usize) -> Self {
        if n > 0 && n < self.len() {
            self.labels.truncate(n);
            match &mut self.items {
                Items::Files(files) => files.truncate(n),
                Items::Objects { paths, .. } => paths.truncate(n),
                Items::Shards { entries, .. } => entries.truncate(n),
            }
        }
        self
    }

    /// Whether reads go through object storage (and are worth batching).
    pub fn is_remote(&self) -> bool {
        !matches!(self.items, Items::Files(_))
    }

    /// Where sample `i` is, for logs: a path, object, or shard and offset.
    pub fn name(&self, i: usize) -> String {
        match &self.items {
            Items::Files(files) => files[i].display().to_string(),
            Items::Objects { paths, .. } => paths[i].to_string(),
            Items::Shards { shards, entries, .. } => {
                let e = entries[i];
                format!(
                    "{} sample {i:09} (bytes {}..{})",
                    shards[e.shard as usize],
                    e.offset,
                    e.offset + e.size as u64
                )
            }
        }
    }

    /// The bytes of sample `i`.
    pub fn read(&self, i: usize) -> Fetched {
        match &self.items {
            Items::Files(files) => std::fs::read(&files[i]).map(Bytes::from).map_err(|e| ReadError::Bad(e.to_string())),
            _ => self
                .read_many(&[i])
                .into_iter()
                .next()
                .unwrap_or_else(|| Err(ReadError::Bad(format!("no read issued for {}", self.name(i))))),
        }
    }

    /// The bytes of samples `indices`, fetched concurrently; ranges in the
    /// same shard go in one request per shard (object_store merges nearby
    /// ranges). Local files are read one by one.
    pub fn read_many(&self, indices: &[usize]) -> Vec<Fetched> {
        let policy = &self.retry;
        let count = || {
            self.retries.fetch_add(1, Ordering::Relaxed);
        };
        let count: &(dyn Fn() + Sync) = &count;
        match &self.items {
            Items::Files(_) => indices.iter().map(|&i| self.read(i)).collect(),
            Items::Objects { store, paths, runtime } => runtime.block_on(
                futures::stream::iter(indices)
                    .map(|&i| async move {
                        let path = &paths[i];
                        retry(policy, path, count, || async { store.get(path).await?.bytes().await })
                            .await
                            .map_err(|e| read_error(path, e))
                    })
                    .buffered(CONCURRENT_REQUESTS)
                    .collect(),
            ),
            Items::Shards {
                store,
                shards,
                entries,
                runtime,
            } => {
                let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
                for (k, &i) in indices.iter().enumerate() {
                    by_shard.entry(entries[i].shard).or_default().push(k);
                }
                let fetched: Vec<(Vec<usize>, Vec<Fetched>)> = runtime.block_on(
                    futures::stream::iter(by_shard)
                        .map(|(shard, positions)| async move {
                            let ranges: Vec<_> = positions
                                .iter()
                                .map(|&k| {
                                    let e = entries[indices[k]];
                                    e.offset..e.offset + e.size as u64
                                })
                                .collect();
                            let path = &shards[shard as usize];
                            let got = match retry(policy, path, count, || store.get_ranges(path, &ranges)).await {
                                Ok(parts) => parts.into_iter().map(Ok).collect(),
                                Err(e) => match read_error(path, e) {
                                    // The store is not answering: every sample of this shard fails the run.
                                    unavailable @ ReadError::Unavailable(_) => vec![Err(unavailable); ranges.len()],
                                    // One bad range fails the merged request: read each
                                    // alone so that only the bad samples are skipped,
                                    // whatever else shares the batch.
                                    ReadError::Bad(_) => {
                                        let mut each = Vec::with_capacity(ranges.len());
                                        for range in ranges {
                                            let got = retry(policy, path, count, || store.get_range(path, range.clone())).await;
                                            each.push(got.map_err(|e| read_error(path, e)));
                                        }
                                        each
                                    }
                                },
                            };
                            (positions, got)
                        })
                        .buffer_unordered(CONCURRENT_REQUESTS)
                        .collect(),
                );
                let mut out: Vec<Fetched> = vec![Err(ReadError::Bad(String::new())); indices.len()];
                for (positions, got) in fetched {
                    positions.into_iter().zip(got).for_each(|(k, b)| out[k] = b);
                }
                out
            }
        }
    }
}
