//! Checkpoint layout and manifest (design §7).
//!
//! Under a job's checkpoint URI every checkpoint is a folder
//! `step-<k, zero-padded>/` holding `model.safetensors`,
//! `optimizer.safetensors` and `manifest.json`. The manifest is written last;
//! a folder without one does not exist as far as readers are concerned. This
//! module owns names and the manifest type only; I/O is `checkpoint_store`'s.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const MANIFEST_FORMAT: u32 = 1;

/// Folder name of the checkpoint taken after `step` optimizer updates.
pub fn step_folder(step: u64) -> String {
    format!("step-{step:010}")
}

/// Inverse of [`step_folder`]; `None` for any other name.
pub fn parse_step_folder(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// One file of a checkpoint, as recorded in its manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

impl FileEntry {
    pub fn of_bytes(name: &str, bytes: &[u8]) -> Self {
        Self {
            name: name.to_string(),
            size: bytes.len() as u64,
            sha256: crate::spec::hex(&Sha256::digest(bytes)),
        }
    }

    /// Checks `bytes` against this entry; the error names the file and what differs.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() as u64 != self.size {
            return Err(format!("{}: size {} but the manifest says {}", self.name, bytes.len(), self.size));
        }
        let sha = crate::spec::hex(&Sha256::digest(bytes));
        if sha != self.sha256 {
            return Err(format!("{}: SHA-256 {sha} but the manifest says {}", self.name, self.sha256));
        }
        Ok(())
    }
}

/// `manifest.json` of one checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub job_id: String,
    pub generation: u64,
    /// Optimizer updates done: training resumes at global step `step`.
    pub step: u64,
    pub epoch: u64,
    pub global_batch: usize,
    pub world_size: usize,
    pub seed: u64,
    pub config_hash: String,
    pub files: Vec<FileEntry>,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
}

impl Manifest {
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_folders_round_trip_and_sort() {
        assert_eq!(step_folder(42), "step-0000000042");
        assert_eq!(parse_step_folder("step-0000000042"), Some(42));
        assert_eq!(parse_step_folder("step-42"), None);
        assert_eq!(parse_step_folder("tmp-0000000042"), None);
        assert!(step_folder(9) < step_folder(10));
    }

    #[test]
    fn verify_names_file_and_mismatch() {
        let e = FileEntry::of_bytes("model.safetensors", b"abc");
        assert!(e.verify(b"abc").is_ok());
        assert!(e.verify(b"abd").unwrap_err().contains("SHA-256"));
        assert!(e.verify(b"ab").unwrap_err().contains("size 2"));
    }
}
