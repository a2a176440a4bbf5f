//! `amdimctl checkpoints` and `amdimctl export`: the complete checkpoints
//! under a checkpoint URI (step, epoch, size, age), and a verified download
//! of one checkpoint's model weights (safetensors with the authors' PyTorch
//! `state_dict` names, describing their model in their metadata) plus its
//! manifest, and a one-line description of what was exported. Reading
//! only; the folder I/O and the metadata are `amdim_shared::checkpoint`'s.

use amdim_shared::checkpoint as io;
use amdim_shared::checkpoint::{MANIFEST_FILE, MODEL_FILE, WeightsInfo, safetensors_metadata};
use amdim_shared::storage;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::io::Read;
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

/// What an exported weights file says about its model, in one line: the
/// model section when it describes itself (then `embed` and `score` need
/// no config), else that a config is needed. Reads only the file's header.
pub fn describe(weights: &Path) -> Result<String> {
    let name = weights.display();
    let mut file = std::fs::File::open(weights).with_context(|| format!("opening {name}"))?;
    let mut header = vec![0u8; 8];
    file.read_exact(&mut header).with_context(|| format!("reading {name}"))?;
    let len = u64::from_le_bytes([
        header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7],
    ]);
    if len > 100 << 20 {
        bail!("{name}: safetensors header of {len} bytes");
    }
    file.take(len).read_to_end(&mut header).with_context(|| format!("reading {name}"))?;
    let meta = safetensors_metadata(&header).with_context(|| name.to_string())?;
    Ok(match WeightsInfo::from_metadata(&meta).with_context(|| name.to_string())? {
        Some(info) => {
            let m = &info.model;
            let classes = info.n_classes.map(|n| format!(", {n} classes")).unwrap_or_default();
            format!(
                "{name}: format {} version {}, image_size {}, ndf {}, n_rkhs {}, depth {}, use_bn {}{classes}; `amdim-worker embed/score --weights` need no --config",
                amdim_shared::checkpoint::WEIGHTS_FORMAT,
                info.version,
                m.image_size,
                m.ndf,
                m.n_rkhs,
                m.depth,
                m.use_bn
            )
        }
        None => format!(
            "{name}: no model description (written before checkpoints described themselves); embed and score need --config with its job spec"
        ),
    })
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
