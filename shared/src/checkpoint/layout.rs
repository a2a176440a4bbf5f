//! The names inside a checkpoint URI (docs/architecture.md §7): every checkpoint is a
//! folder `step-<k, zero-padded>/` holding `model.safetensors`,
//! `optimizer.safetensors` and `manifest.json`; the run's `history.jsonl`
//! sits beside the folders. Names only: no I/O, no
//! manifest contents.

/// The model weights (safetensors, the authors' PyTorch names).
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimizer state (safetensors).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The manifest, written last: its presence makes a checkpoint complete.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The run's history (JSON lines, `amdim_shared::history`), next to the
/// step folders; rewritten whole at each checkpoint and at the end.
pub const HISTORY_FILE: &str = "history.jsonl";
/// The manifest format this build writes and reads.
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
}
