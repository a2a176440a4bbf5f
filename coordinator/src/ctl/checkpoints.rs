//! `amdimctl checkpoints` and `amdimctl export`: the complete checkpoints
//! under a checkpoint URI (step, epoch, size, age), and a verified download
//! of one checkpoint's model weights (safetensors with the authors' PyTorch
//! `state_dict` names) plus its manifest. Reading only; the folder I/O is
//! `amdim_shared::checkpoint`'s.

use amdim_shared::checkpoint as io;
use amdim_shared::checkpoint::{MANIFEST_FILE, MODEL_FILE};
use amdim_shared::storage;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One complete checkpoint as `amdimctl checkpoints` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointInfo {
    /// Optimizer updates done.
    pub step: u64,
    /// The epoch it resumes in.
    pub epoch: u64,
    /// Ranks that wrote it.
    pub world_size: usize,
    /// Bytes of its files.
    pub bytes: u64,
    /// When its manifest was written (Unix seconds).
    pub created_unix: u64,
    /// Seconds since then.
    pub age_s: u64,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Complete checkpoints under `uri`, oldest first.
pub async fn list(uri: &str) -> Result<Vec<CheckpointInfo>> {
    let location = storage::open(uri, "URI", false)?;
    let mut out = Vec::new();
    for step in io::complete_steps(&location).await? {
        let m = io::read_manifest(&location, step).await?;
        out.push(CheckpointInfo {
            step,
            epoch: m.epoch,
            world_size: m.world_size,
            bytes: m.files.iter().map(|f| f.size).sum(),
            created_unix: m.created_unix,
            age_s: now_unix().saturating_sub(m.created_unix),
        });
    }
    Ok(out)
}

/// Downloads the model weights of checkpoint `step` (default: the newest
/// complete one) into `out`, verified against the manifest; returns the
/// path of the weights.
pub async fn export(uri: &str, step: Option<u64>, out: &Path) -> Result<PathBuf> {
    let location = storage::open(uri, "URI", false)?;
    let steps = io::complete_steps(&location).await?;
    let step = match step {
        Some(k) if steps.contains(&k) => k,
        Some(k) => bail!("{uri}: no complete checkpoint at step {k} (complete: {steps:?})"),
        None => *steps.last().with_context(|| format!("{uri}: no complete checkpoint"))?,
    };
    let manifest = io::read_manifest(&location, step).await?;
    let weights = io::read_verified(&location, &manifest, MODEL_FILE).await?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join(MODEL_FILE);
    std::fs::write(&path, &weights).with_context(|| format!("writing {}", path.display()))?;
    std::fs::write(out.join(MANIFEST_FILE), serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("writing {}", out.join(MANIFEST_FILE).display()))?;
    Ok(path)
}

/// `3h 12m`-style age.
pub fn human_age(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_human_would_write_them() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(125), "2m 5s");
        assert_eq!(human_age(3 * 3600 + 12 * 60), "3h 12m");
        assert_eq!(human_age(2 * 86400 + 3600), "2d 1h");
    }
}
