//! The exactly-once check of one job, from the sample logs its ranks wrote
//! (`AMDIM_SAMPLE_LOG_DIR/<job>-g<generation>-r<rank>.log`, one line
//! `step epoch index…` per step, written before the step trains). Every
//! generation restarts the job's history at the step it resumed from: the
//! steps it logged replace those of earlier generations from that step on.
//! The history that results must hold every step once with a full global
//! batch, every full epoch every sample exactly once and the last partial
//! epoch none twice; each generation must start at step 0 or at a complete
//! checkpoint, with all its ranks at the same step, and never before the
//! newest checkpoint registered by an earlier generation. Reading and
//! judging only.

use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One logged step of one rank.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Logged {
    pub(crate) step: u64,
    pub(crate) epoch: u64,
    pub(crate) indices: Vec<u32>,
}

/// The lines of every rank of every generation of one job.
pub(crate) type JobLogs = BTreeMap<u32, BTreeMap<u32, Vec<Logged>>>;

/// What the job was meant to do and what storage and the coordinator hold.
pub(crate) struct Expected {
    /// Steps of the whole job.
    pub(crate) total_steps: u64,
    /// Training samples.
    pub(crate) samples: usize,
    /// The global batch.
    pub(crate) batch: usize,
    /// Steps of the complete checkpoints in storage.
    pub(crate) complete: BTreeSet<u64>,
    /// (generation, step) of every checkpoint the coordinator registered.
    pub(crate) registered: Vec<(u32, u64)>,
}

/// The verdict on one job.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// What is wrong, one line each; empty when the check passed.
    pub(crate) problems: Vec<String>,
    /// Steps logged over all generations (a step counted once per generation).
    pub(crate) steps_logged: u64,
    /// Steps trained again after a restart (logged, then replaced).
    pub(crate) steps_redone: u64,
    /// (generation, the step it started at) of every generation that trained.
    pub(crate) starts: Vec<(u32, u64)>,
}

fn parse_line(line: &str) -> Option<Logged> {
    let mut fields = line.split_ascii_whitespace();
    let step = fields.next()?.parse().ok()?;
    let epoch = fields.next()?.parse().ok()?;
    let indices = fields.map(str::parse).collect::<Result<Vec<u32>, _>>().ok()?;
    Some(Logged { step, epoch, indices })
}

/// Reads the logs of job `job` from `dir`. A line cut short by a kill (the
/// last of its file, without a newline) is dropped: that step never trained.
pub(crate) fn read_job_logs(dir: &Path, job: &str) -> Result<JobLogs> {
    let prefix = format!("{job}-g");
    let mut logs = JobLogs::new();
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((generation, rank)) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|rest| rest.split_once("-r"))
        else {
            continue;
        };
        let (Ok(generation), Ok(rank)) = (generation.parse::<u32>(), rank.parse::<u32>()) else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).with_context(|| entry.path().display().to_string())?;
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        let mut lines = Vec::new();
        for (n, line) in complete.lines().enumerate() {
            let parsed = parse_line(line).with_context(|| format!("{name}:{}: not `step epoch index…`", n + 1))?;
            lines.push(parsed);
        }
        logs.entry(generation).or_default().insert(rank, lines);
    }
    Ok(logs)
}

/// One generation's steps, the ranks' indices put together, or what is wrong.
fn merge_ranks(generation: u32, ranks: &BTreeMap<u32, Vec<Logged>>, problems: &mut Vec<String>) -> BTreeMap<u64, Logged> {
    let mut merged: BTreeMap<u64, Logged> = BTreeMap::new();
    for (rank, lines) in ranks {
        let mut previous: Option<u64> = None;
        for l in lines {
            if previous.is_some_and(|p| l.step != p + 1) {
                problems.push(format!("g{generation} rank {rank}: step {} follows step {previous:?}", l.step));
            }
            previous = Some(l.step);
            let entry = merged.entry(l.step).or_insert_with(|| Logged {
                step: l.step,
                epoch: l.epoch,
                indices: Vec::new(),
            });
            if entry.epoch != l.epoch {
                problems.push(format!(
                    "g{generation} step {}: rank {rank} says epoch {}, another rank {}",
                    l.step, l.epoch, entry.epoch
                ));
            }
            entry.indices.extend(&l.indices);
        }
    }
    merged
}

/// Judges one job's logs against what it should have trained.
pub(crate) fn judge(logs: &JobLogs, expected: &Expected) -> Verdict {
    let mut v = Verdict::default();
    let mut history: BTreeMap<u64, Logged> = BTreeMap::new();
    for (&generation, ranks) in logs {
        let firsts: BTreeMap<u32, u64> = ranks
            .iter()
            .filter_map(|(rank, lines)| lines.first().map(|l| (*rank, l.step)))
            .collect();
        let Some(&start) = firsts.values().min() else {
            continue; // this generation trained nothing
        };
        if firsts.values().any(|s| *s != start) {
            v.problems
                .push(format!("g{generation}: its ranks started at different steps {firsts:?}"));
        }
        if start > 0 && !expected.complete.contains(&start) {
            v.problems.push(format!(
                "g{generation} started at step {start}, where there is no complete checkpoint"
            ));
        }
        let newest_before = expected.registered.iter().filter(|(g, _)| *g < generation).map(|(_, s)| *s).max();
        if let Some(newest) = newest_before.filter(|n| start < *n) {
            v.problems.push(format!(
                "g{generation} started at step {start}, before the newest checkpoint registered earlier (step {newest})"
            ));
        }
        v.starts.push((generation, start));
        let merged = merge_ranks(generation, ranks, &mut v.problems);
        v.steps_logged += merged.len() as u64;
        history.split_off(&start);
        history.extend(merged);
    }
    v.steps_redone = v.steps_logged.saturating_sub(history.len() as u64);
    let steps: Vec<u64> = history.keys().copied().collect();
    if steps != (0..expected.total_steps).collect::<Vec<_>>() {
        let missing: Vec<u64> = (0..expected.total_steps).filter(|s| !history.contains_key(s)).take(10).collect();
        v.problems.push(format!(
            "the history holds {} steps, not 0..{} (first missing: {missing:?}, last: {:?})",
            steps.len(),
            expected.total_steps,
            steps.last()
        ));
    }
    let mut epochs: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (step, l) in &history {
        if l.indices.len() != expected.batch {
            v.problems.push(format!(
                "step {step}: {} samples trained, not the global batch {}",
                l.indices.len(),
                expected.batch
            ));
        }
        epochs.entry(l.epoch).or_default().extend(&l.indices);
    }
    let per_epoch = (expected.samples / expected.batch.max(1)) as u64;
    let everything: Vec<u32> = (0..expected.samples as u32).collect();
    for (epoch, mut seen) in epochs {
        seen.sort_unstable();
        let full = (epoch + 1) * per_epoch <= expected.total_steps;
        let n = seen.len();
        seen.dedup();
        if n != seen.len() {
            v.problems
                .push(format!("epoch {epoch}: {} sample(s) trained twice", n - seen.len()));
        } else if full && seen != everything {
            v.problems
                .push(format!("epoch {epoch}: {} of {} samples trained", seen.len(), expected.samples));
        }
    }
    v
}

#[cfg(test)]
#[path = "samples_tests.rs"]
mod tests;
