//! `amdim-worker train` as a command, and worlds of ranks of it meeting on
//! loopback: the flags that make a process one rank of a world, and
//! [`run_ranks`], which starts a whole world and waits for it.

use super::free_addr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `amdim-worker train [--resume] --config spec` with `env`, for
/// `max_steps` steps (`AMDIM_TRAIN__MAX_STEPS`), without colours.
pub fn train_command(spec: &Path, resume: bool, max_steps: u64, env: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_amdim-worker"));
    c.arg("train");
    if resume {
        c.arg("--resume");
    }
    c.arg("--config")
        .arg(spec)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("AMDIM_TRAIN__MAX_STEPS", max_steps.to_string())
        .env("NO_COLOR", "1");
    c
}

/// The flags that make a process rank `rank` of `world` ranks meeting at
/// `rendezvous`.
pub fn rank_args(rank: usize, world: usize, rendezvous: &str) -> [String; 6] {
    [
        "--rank".into(),
        rank.to_string(),
        "--world-size".into(),
        world.to_string(),
        "--rendezvous".into(),
        rendezvous.into(),
    ]
}

/// Runs `world` ranks, rank r being `rank_command(r)` with [`rank_args`]
/// appended, meeting at a free loopback address: stdout discarded, stderr
/// captured. Waits for all of them; their outputs, by rank.
pub fn run_ranks(world: usize, rank_command: impl Fn(usize) -> Command) -> Vec<Output> {
    let rendezvous = free_addr();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            rank_command(rank)
                .args(rank_args(rank, world, &rendezvous))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}
