//! `amdimctl dataset pack` and `inspect`: turning a local ImageFolder tree
//! into the packed shard format of `amdim_shared::shards` on any storage
//! location, and summarising a packed dataset.
//!
//! Packing reads files in the listing's order (so sample i of the packed set
//! is sample i of the folder), uploads each shard while the next one is being
//! filled, and writes `index.bin` and then `manifest.json` only after every
//! shard is stored: a dataset without its manifest is incomplete and no
//! worker reads it. An existing manifest at the destination is never
//! overwritten. Image bytes are copied, not decoded; the worker skips files
//! that turn out to be unreadable.

use amdim_shared::imagefolder;
use amdim_shared::shards::{self, INDEX_FILE, MANIFEST_FILE, ShardBuilder, ShardManifest};
use amdim_shared::storage::{self, Location};
use anyhow::{Context, Result, bail};
use object_store::{ObjectStore, PutPayload};
use serde::Serialize;
use std::path::Path;

/// The splits of a dataset, in packing order; `train` is required.
pub(crate) const SPLITS: [&str; 2] = ["train", "val"];

/// Parses sizes such as `256MiB`, `1GiB`, `500MB`, `64k` or `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (examples: 256MiB, 1GiB, 500MB, 1048576)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("`{text}`: unknown unit `{other}` (use B, KB, KiB, MB, MiB, GB or GiB)")),
    };
    let bytes = (value * scale as f64).round();
    if bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is not a usable size"));
    }
    Ok(bytes as u64)
}

/// What `pack` wrote for one split.
#[derive(Clone, Debug, Serialize)]
pub struct PackedSplit {
    /// `train` or `val`.
    pub split: String,
    /// Images packed.
    pub samples: u64,
    /// Classes found.
    pub classes: usize,
    /// Shards written.
    pub shards: usize,
    /// Bytes of all shards.
    pub bytes: u64,
}

fn extension(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()) {
        Some(e) if e == "png" => "png",
        _ => "jpg",
    }
}

async fn put(location: &Location, split: &str, name: &str, bytes: Vec<u8>, uri: &str) -> Result<()> {
    location
        .store
        .put(&location.path(&[split, name]), PutPayload::from(bytes))
        .await
        .with_context(|| format!("writing {uri}/{split}/{name}"))?;
    Ok(())
}

/// Packs `<src>/train` (and `<src>/val` when present) into shards of at most
/// `shard_bytes` under `dst` (a path, `file://` or `s3://` URI).
pub async fn pack(src: &Path, dst: &str, shard_bytes: u64) -> Result<Vec<PackedSplit>> {
    let train = src.join("train");
    if !train.is_dir() {
        bail!(
            "{}: no `train` folder (expected the ImageNet layout <src>/train/<class>/<image>)",
            src.display()
        );
    }
    let location = storage::open(dst, "DST", true)?;
    for split in SPLITS {
        let manifest = location.path(&[split, MANIFEST_FILE]);
        if location.store.head(&manifest).await.is_ok() {
            bail!("{dst}/{split}/{MANIFEST_FILE} already exists: refusing to overwrite a packed dataset (choose another DST)");
        }
    }
    let mut out = Vec::new();
    for split in SPLITS {
        let dir = src.join(split);
        if split != "train" && !dir.is_dir() {
            continue;
        }
        let listing = imagefolder::list(&dir)?;
        out.push(pack_split(&listing, &location, split, dst, shard_bytes).await?);
    }
    Ok(out)
}

async fn pack_split(listing: &imagefolder::Listing, location: &Location, split: &str, uri: &str, shard_bytes: u64) -> Result<PackedSplit> {
    // One shard uploads while the next is filled: at most two in memory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(1);
    let uploader = {
        let location = Location {
            store: location.store.clone(),
            prefix: location.prefix.clone(),
        };
        let (split, uri) = (split.to_string(), uri.to_string());
        tokio::spawn(async move {
            while let Some((name, tar)) = rx.recv().await {
                put(&location, &split, &name, tar, &uri).await?;
            }
            anyhow::Ok(())
        })
    };
    let mut builder = ShardBuilder::new(shard_bytes);
    let mut send_failed = false;
    for (file, &label) in listing.files.iter().zip(&listing.labels) {
        let data = tokio::fs::read(file).await.with_context(|| format!("reading {}", file.display()))?;
        if let Some(shard) = builder.add(extension(file), &data, label)
            && tx.send(shard).await.is_err()
        {
            send_failed = true;
            break;
        }
    }
    let (last, index, manifest) = builder.finish(listing.classes.clone());
    if let Some(shard) = last
        && !send_failed
    {
        let _ = tx.send(shard).await;
    }
    drop(tx);
    uploader.await.context("the upload task stopped")??;
    put(location, split, INDEX_FILE, index, uri).await?;
    let summary = PackedSplit {
        split: split.to_string(),
        samples: manifest.samples,
        classes: manifest.classes.len(),
        shards: manifest.shards.len(),
        bytes: manifest.shards.iter().map(|s| s.bytes).sum(),
    };
    put(location, split, MANIFEST_FILE, serde_json::to_vec_pretty(&manifest)?, uri).await?;
    Ok(summary)
}

/// One split of a packed dataset as `inspect` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct SplitReport {
    /// `train` or `val`.
    pub split: String,
    /// Images in the split.
    pub samples: u64,
    /// Classes in the split.
    pub classes: usize,
    /// Its shards.
    pub shards: usize,
    /// Bytes of all its shards.
    pub bytes: u64,
    /// Fewest samples of any class.
    pub class_samples_min: u64,
    /// Most samples of any class.
    pub class_samples_max: u64,
    /// The first class names (all of them when there are at most 10).
    pub class_names: Vec<String>,
}

/// Reads `<uri>/<split>/manifest.json` and `index.bin` for every split
/// present and checks them against each other and the shard objects' sizes.
pub async fn inspect(uri: &str) -> Result<Vec<SplitReport>> {
    let location = storage::open(uri, "URI", false)?;
    let mut reports = Vec::new();
    for split in SPLITS {
        let manifest_bytes = match read_all(&location, &[split, MANIFEST_FILE]).await {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {uri}/{split}/{MANIFEST_FILE}")),
        };
        let manifest: ShardManifest =
            serde_json::from_slice(&manifest_bytes).with_context(|| format!("{uri}/{split}/{MANIFEST_FILE} is not a shard manifest"))?;
        let index = read_all(&location, &[split, INDEX_FILE])
            .await
            .with_context(|| format!("reading {uri}/{split}/{INDEX_FILE}"))?;
        let entries = shards::decode_index(&index, &manifest).with_context(|| format!("{uri}/{split}"))?;
        for shard in &manifest.shards {
            let meta = location
                .store
                .head(&location.path(&[split, &shard.name]))
                .await
                .with_context(|| format!("{uri}/{split}/{}: listed in the manifest but unreadable", shard.name))?;
            if meta.size != shard.bytes {
                bail!(
                    "{uri}/{split}/{}: {} bytes stored, the manifest says {}",
                    shard.name,
                    meta.size,
                    shard.bytes
                );
            }
        }
        let mut per_class = vec![0u64; manifest.classes.len()];
        for e in &entries {
            per_class[e.label as usize] += 1;
        }
        reports.push(SplitReport {
            split: split.to_string(),
            samples: manifest.samples,
            classes: manifest.classes.len(),
            shards: manifest.shards.len(),
            bytes: manifest.shards.iter().map(|s| s.bytes).sum(),
            class_samples_min: per_class.iter().copied().min().unwrap_or(0),
            class_samples_max: per_class.iter().copied().max().unwrap_or(0),
            class_names: manifest.classes.iter().take(10).cloned().collect(),
        });
    }
    if reports.is_empty() {
        bail!("{uri}: no packed dataset here (no train/{MANIFEST_FILE}; create one with `amdimctl dataset pack`)");
    }
    Ok(reports)
}

async fn read_all(location: &Location, parts: &[&str]) -> object_store::Result<bytes::Bytes> {
    location.store.get(&location.path(parts)).await?.bytes().await
}

/// `12.3 MiB` style.
pub fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1.5 KiB"), Ok(1536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").unwrap_err().contains("unknown unit `parsecs`"));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn byte_counts_read_like_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
