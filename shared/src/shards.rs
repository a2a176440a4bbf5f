//! The packed dataset format: tar shards in the WebDataset convention
//! (`<key>.jpg|png` followed by `<key>.cls`, the class index as text), a
//! binary index giving every sample's shard, byte range and label (so a
//! worker reads exactly the samples of the global order with ranged GETs,
//! never a whole shard), and `manifest.json`, written last.
//!
//! Layout of one packed split under a prefix:
//! `manifest.json`, `index.bin`, `shard-000000.tar`, `shard-000001.tar`, …
//! A packed dataset holds `train/` and optionally `val/`.
//!
//! Pure functions and an in-memory shard builder; uploading is the caller's.

use serde::{Deserialize, Serialize};

/// The manifest of a split, written last.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The index of a split: one record per sample.
pub const INDEX_FILE: &str = "index.bin";
/// The `format` a manifest of this layout carries.
pub const FORMAT: &str = "amdim-shards/1";
const BLOCK: usize = 512;
/// Bytes of one index record: shard u32, offset u64, size u32, label u32 (little endian).
pub const INDEX_RECORD: usize = 20;

/// One shard as the manifest lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardInfo {
    /// The object name (`shard-000000.tar`).
    pub name: String,
    /// Samples it holds.
    pub samples: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// `manifest.json` of one split.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardManifest {
    /// [`FORMAT`].
    pub format: String,
    /// Class names; label i is classes[i].
    pub classes: Vec<String>,
    /// Samples in all shards.
    pub samples: u64,
    /// The shards, in order.
    pub shards: Vec<ShardInfo>,
}

/// Where one sample's encoded image lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The shard it is in.
    pub shard: u32,
    /// The byte offset of its content in that shard.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u32,
    /// Its class index.
    pub label: u32,
}

/// A split whose index and manifest do not agree.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ShardError {
    /// The index size is not a whole number of records.
    #[error("{INDEX_FILE}: {0} bytes is not a whole number of {INDEX_RECORD}-byte records")]
    IndexLength(usize),
    /// The index and the manifest count different samples.
    #[error("{INDEX_FILE} has {index} records but {MANIFEST_FILE} says {manifest} samples")]
    Count {
        /// Records in the index.
        index: usize,
        /// Samples the manifest counts.
        manifest: u64,
    },
    /// A record names a shard the manifest lacks.
    #[error("{INDEX_FILE} record {record}: shard {shard} does not exist")]
    Shard {
        /// The record's number.
        record: usize,
        /// The shard it names.
        shard: u32,
    },
    /// A record's label is not a class.
    #[error("{INDEX_FILE} record {record}: label {label} but only {classes} classes")]
    Label {
        /// The record's number.
        record: usize,
        /// Its label.
        label: u32,
        /// Classes the manifest lists.
        classes: usize,
    },
    /// The manifest is of another format.
    #[error("{MANIFEST_FILE}: format `{0}`, expected `{FORMAT}`")]
    Format(String),
}

/// The object name of shard `i`.
pub fn shard_name(i: usize) -> String {
    format!("shard-{i:06}.tar")
}

/// The bytes of `index.bin` for `entries`.
pub fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * INDEX_RECORD);
    for e in entries {
        out.extend_from_slice(&e.shard.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.label.to_le_bytes());
    }
    out
}

/// Parses `index.bin` and checks it against the manifest.
pub fn decode_index(bytes: &[u8], manifest: &ShardManifest) -> Result<Vec<IndexEntry>, ShardError> {
    if manifest.format != FORMAT {
        return Err(ShardError::Format(manifest.format.clone()));
    }
    if !bytes.len().is_multiple_of(INDEX_RECORD) {
        return Err(ShardError::IndexLength(bytes.len()));
    }
    let entries: Vec<IndexEntry> = bytes
        .chunks_exact(INDEX_RECORD)
        .map(|r| IndexEntry {
            shard: u32::from_le_bytes([r[0], r[1], r[2], r[3]]),
            offset: u64::from_le_bytes([r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]]),
            size: u32::from_le_bytes([r[12], r[13], r[14], r[15]]),
            label: u32::from_le_bytes([r[16], r[17], r[18], r[19]]),
        })
        .collect();
    if entries.len() as u64 != manifest.samples {
        return Err(ShardError::Count {
            index: entries.len(),
            manifest: manifest.samples,
        });
    }
    for (record, e) in entries.iter().enumerate() {
        if e.shard as usize >= manifest.shards.len() {
            return Err(ShardError::Shard { record, shard: e.shard });
        }
        if e.label as usize >= manifest.classes.len() {
            return Err(ShardError::Label {
                record,
                label: e.label,
                classes: manifest.classes.len(),
            });
        }
    }
    Ok(entries)
}

/// A POSIX ustar header for a regular file `name` (< 100 bytes) of `size` bytes.
pub fn tar_header(name: &str, size: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let name = name.as_bytes();
    h[..name.len().min(99)].copy_from_slice(&name[..name.len().min(99)]);
    let mut octal = |at: usize, width: usize, value: u64| {
        let s = format!("{value:0w$o}", w = width - 1);
        h[at..at + width - 1].copy_from_slice(s.as_bytes());
    };
    octal(100, 8, 0o644);
    octal(108, 8, 0);
    octal(116, 8, 0);
    octal(124, 12, size);
    octal(136, 12, 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn padding(len: usize) -> usize {
    (BLOCK - len % BLOCK) % BLOCK
}

/// Accumulates samples into tar shards of at most `shard_bytes` (a sample
/// larger than that gets a shard of its own).
pub struct ShardBuilder {
    shard_bytes: u64,
    current: Vec<u8>,
    current_samples: u64,
    /// Where every sample added so far lies.
    pub index: Vec<IndexEntry>,
    /// The shards finished so far.
    pub shards: Vec<ShardInfo>,
}

/// A finished shard: its object name and its tar bytes.
pub type NamedShard = (String, Vec<u8>);

impl ShardBuilder {
    /// A builder of shards of at most `shard_bytes`.
    pub fn new(shard_bytes: u64) -> Self {
        Self {
            shard_bytes,
            current: Vec::new(),
            current_samples: 0,
            index: Vec::new(),
            shards: Vec::new(),
        }
    }

    /// Header plus padded data of one tar member.
    fn member_len(len: usize) -> u64 {
        (BLOCK + len + padding(len)) as u64
    }

    /// Adds a sample (`ext` is "jpg" or "png"); returns a finished shard
    /// (name, tar bytes) when this sample did not fit in the current one.
    pub fn add(&mut self, ext: &str, data: &[u8], label: u32) -> Option<NamedShard> {
        let key = format!("{:09}", self.index.len());
        let cls = label.to_string();
        let need = Self::member_len(data.len()) + Self::member_len(cls.len()) + 2 * BLOCK as u64;
        let finished = if self.current_samples > 0 && self.current.len() as u64 + need > self.shard_bytes {
            self.finish_shard()
        } else {
            None
        };
        let shard = self.shards.len() as u32;
        self.current
            .extend_from_slice(&tar_header(&format!("{key}.{ext}"), data.len() as u64));
        let offset = self.current.len() as u64;
        self.current.extend_from_slice(data);
        self.current.resize(self.current.len() + padding(data.len()), 0);
        self.current.extend_from_slice(&tar_header(&format!("{key}.cls"), cls.len() as u64));
        self.current.extend_from_slice(cls.as_bytes());
        self.current.resize(self.current.len() + padding(cls.len()), 0);
        self.current_samples += 1;
        self.index.push(IndexEntry {
            shard,
            offset,
            size: data.len() as u32,
            label,
        });
        finished
    }

    fn finish_shard(&mut self) -> Option<NamedShard> {
        if self.current_samples == 0 {
            return None;
        }
        let mut tar = std::mem::take(&mut self.current);
        tar.resize(tar.len() + 2 * BLOCK, 0);
        let name = shard_name(self.shards.len());
        self.shards.push(ShardInfo {
            name: name.clone(),
            samples: self.current_samples,
            bytes: tar.len() as u64,
        });
        self.current_samples = 0;
        Some((name, tar))
    }

    /// The last shard (if any samples are pending), then the index and manifest.
    pub fn finish(mut self, classes: Vec<String>) -> (Option<NamedShard>, Vec<u8>, ShardManifest) {
        let last = self.finish_shard();
        let manifest = ShardManifest {
            format: FORMAT.into(),
            classes,
            samples: self.index.len() as u64,
            shards: self.shards,
        };
        (last, encode_index(&self.index), manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_at_the_size_limit_and_the_index_points_at_each_image() {
        let mut b = ShardBuilder::new(4096);
        let images: Vec<Vec<u8>> = (0..7).map(|i| vec![i as u8 + 1; 700 + 300 * i]).collect();
        let mut tars = Vec::new();
        for (i, img) in images.iter().enumerate() {
            tars.extend(b.add("jpg", img, (i % 3) as u32));
        }
        let (last, index, manifest) = b.finish(vec!["a".into(), "b".into(), "c".into()]);
        tars.extend(last);
        assert_eq!(manifest.samples, 7);
        assert_eq!(tars.len(), manifest.shards.len());
        assert!(manifest.shards.len() >= 3, "{manifest:?}");
        let entries = decode_index(&index, &manifest).unwrap();
        for (i, e) in entries.iter().enumerate() {
            let tar = &tars[e.shard as usize].1;
            assert!(tar.len() as u64 <= 4096 || manifest.shards[e.shard as usize].samples == 1);
            assert_eq!(&tar[e.offset as usize..e.offset as usize + e.size as usize], &images[i][..]);
            assert_eq!(e.label, (i % 3) as u32);
            // The header before the image names it `<key>.jpg`.
            let header = &tar[e.offset as usize - 512..e.offset as usize];
            assert!(header.starts_with(format!("{i:09}.jpg").as_bytes()));
        }
        assert_eq!(manifest.shards.iter().map(|s| s.samples).sum::<u64>(), 7);
    }

    #[test]
    fn a_damaged_index_is_refused_with_the_reason() {
        let mut b = ShardBuilder::new(1 << 20);
        b.add("png", &[1, 2, 3], 1);
        let (_, index, manifest) = b.finish(vec!["x".into(), "y".into()]);
        assert_eq!(decode_index(&index[..19], &manifest), Err(ShardError::IndexLength(19)));
        let mut wrong = manifest.clone();
        wrong.classes.pop();
        assert_eq!(
            decode_index(&index, &wrong),
            Err(ShardError::Label {
                record: 0,
                label: 1,
                classes: 1
            })
        );
        wrong.format = "other".into();
        assert_eq!(decode_index(&index, &wrong), Err(ShardError::Format("other".into())));
    }

    #[test]
    fn tar_header_checksum_is_valid() {
        let h = tar_header("000000001.jpg", 1234);
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut blank = h;
        blank[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, blank.iter().map(|&b| b as u32).sum::<u32>());
        assert_eq!(std::str::from_utf8(&h[124..135]).unwrap(), format!("{:011o}", 1234));
    }
}
