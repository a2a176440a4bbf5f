//! Which devices an agent's local ranks run on: a pure function of the
//! job's `runtime.device`, the agent's `--first-device` and the process's
//! `CUDA_VISIBLE_DEVICES`, so that several agents on one host can each be
//! given their own GPUs (by `--first-device`, or by a different
//! `CUDA_VISIBLE_DEVICES` each, under which every agent counts from 0).
//! Local rank i runs on the first device + i (collective/launch.rs).
//!
//! It must not touch CUDA or the environment itself (the agent reads
//! `CUDA_VISIBLE_DEVICES` and passes it in).

/// The CUDA ordinal of an agent's first local rank: `--first-device` when
/// given, else the job's `runtime.device`. With `CUDA_VISIBLE_DEVICES` set
/// (`visible`), ordinals count its entries, and the ranks must fit in them.
pub(crate) fn first_device(job_device: usize, flag: Option<usize>, local_ranks: usize, visible: Option<&str>) -> Result<usize, String> {
    let first = flag.unwrap_or(job_device);
    let Some(visible) = visible else {
        return Ok(first);
    };
    let count = visible.split(',').map(str::trim).take_while(|e| !e.is_empty()).count();
    let last = first + local_ranks.max(1) - 1;
    if last >= count {
        let from = if flag.is_some() {
            "--first-device"
        } else {
            "the job's runtime.device"
        };
        return Err(format!(
            "{} rank(s) from device {first} ({from}) need devices {first}..={last}, but CUDA_VISIBLE_DEVICES={visible:?} shows {count}",
            local_ranks.max(1)
        ));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_the_job_and_ranks_must_fit_the_visible_devices() {
        // No flag, no CUDA_VISIBLE_DEVICES: the job's device, as before.
        assert_eq!(first_device(0, None, 1, None), Ok(0));
        assert_eq!(first_device(2, None, 4, None), Ok(2));
        // Two agents on one 8-GPU host, four devices each.
        assert_eq!(first_device(0, Some(0), 4, None), Ok(0));
        assert_eq!(first_device(0, Some(4), 4, None), Ok(4));
        // Or each given its own CUDA_VISIBLE_DEVICES: both count from 0.
        assert_eq!(first_device(0, None, 2, Some("2,3")), Ok(0));
        assert_eq!(first_device(0, Some(1), 1, Some("GPU-aa, GPU-bb")), Ok(1));
        let e = first_device(0, Some(1), 2, Some("2,3")).unwrap_err();
        assert!(e.contains("--first-device") && e.contains("1..=2") && e.contains("shows 2"), "{e}");
        let e = first_device(3, None, 1, Some("0,1")).unwrap_err();
        assert!(e.contains("runtime.device"), "{e}");
        // Empty: no GPU visible at all; CUDA stops at the first empty entry.
        assert!(first_device(0, None, 1, Some("")).unwrap_err().contains("shows 0"));
        assert_eq!(first_device(0, None, 1, Some("0,,1")), Ok(0));
        assert!(first_device(0, None, 2, Some("0,,1")).is_err());
    }
}
