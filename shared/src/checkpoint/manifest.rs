//! `manifest.json` of one checkpoint (docs/architecture.md §7): what it records and the
//! check of a file against its entry. Types only; reading and writing the
//! folder is `store`'s.

use crate::spec::JobSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One file of a checkpoint, as recorded in its manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// The file's name inside the checkpoint folder.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
}

/// A file that does not match its manifest entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The size differs.
    #[error("{name}: size {actual} but the manifest says {expected}")]
    Size {
        /// The file.
        name: String,
        /// Bytes read.
        actual: u64,
        /// Bytes the manifest records.
        expected: u64,
    },
    /// The size matches but the content does not.
    #[error("{name}: SHA-256 {actual} but the manifest says {expected}")]
    Sha256 {
        /// The file.
        name: String,
        /// The digest of the bytes read.
        actual: String,
        /// The digest the manifest records.
        expected: String,
    },
}

impl FileEntry {
    /// The entry that `bytes`, stored as `name`, gets.
    pub fn of_bytes(name: &str, bytes: &[u8]) -> Self {
        Self {
            name: name.to_string(),
            size: bytes.len() as u64,
            sha256: crate::spec::hex(&Sha256::digest(bytes)),
        }
    }

    /// Checks `bytes` against this entry; the error names the file and what differs.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), VerifyError> {
        if bytes.len() as u64 != self.size {
            return Err(VerifyError::Size {
                name: self.name.clone(),
                actual: bytes.len() as u64,
                expected: self.size,
            });
        }
        let sha = crate::spec::hex(&Sha256::digest(bytes));
        if sha != self.sha256 {
            return Err(VerifyError::Sha256 {
                name: self.name.clone(),
                actual: sha,
                expected: self.sha256.clone(),
            });
        }
        Ok(())
    }
}

/// `manifest.json` of one checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`](super::MANIFEST_FORMAT) when written.
    pub format: u32,
    /// The job it belongs to.
    pub job_id: String,
    /// The generation that wrote it.
    pub generation: u64,
    /// Optimizer updates done: training resumes at global step `step`.
    pub step: u64,
    /// Epoch the next step belongs to.
    pub epoch: u64,
    /// Images per step over all ranks.
    pub global_batch: usize,
    /// Ranks that trained it.
    pub world_size: usize,
    /// The job's seed.
    pub seed: u64,
    /// [`JobSpec::config_hash`](crate::spec::JobSpec::config_hash) of the job.
    pub config_hash: String,
    /// Every other file of the checkpoint.
    pub files: Vec<FileEntry>,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    /// The whole effective job spec it was trained with (absent in
    /// manifests written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<JobSpec>,
}

impl Manifest {
    /// The entry of file `name`, if the checkpoint has one.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_names_file_and_mismatch() {
        let e = FileEntry::of_bytes("model.safetensors", b"abc");
        assert!(e.verify(b"abc").is_ok());
        assert!(e.verify(b"abd").unwrap_err().to_string().contains("SHA-256"));
        assert!(e.verify(b"ab").unwrap_err().to_string().contains("size 2"));
    }

    #[test]
    fn manifests_without_a_spec_still_read_and_new_ones_carry_it() {
        let old = r#"{"format":1,"job_id":"j","generation":0,"step":3,"epoch":0,"global_batch":8,
            "world_size":1,"seed":7,"config_hash":"ab","files":[],"created_unix":5}"#;
        let m: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!((m.step, m.spec.as_ref()), (3, None));
        let mut spec = JobSpec::default();
        spec.model.ndf = 12;
        let with = Manifest { spec: Some(spec), ..m };
        let text = serde_json::to_string(&with).unwrap();
        assert!(text.contains(r#""ndf":12"#), "{text}");
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), with);
    }
}
