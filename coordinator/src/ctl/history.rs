//! `amdimctl history JOB|URI`: a run's `history.jsonl` (written by the
//! worker beside its checkpoints; the records are
//! `amdim_shared::history`'s) as a table — one row per logged step, with the
//! online heads' accuracies on the row of the step they were evaluated at —
//! or as one JSON/YAML document (`-o`). Reading only; also loads histories
//! for `amdimctl plot`, and names a run by its target for both.

use crate::ctl::output::Output;
use amdim_shared::history::{self, HistoryRecord};
use amdim_shared::storage;
use anyhow::{Context, Result};
use std::collections::BTreeMap;

/// The records of the history under checkpoint URI `uri`.
pub async fn load(uri: &str) -> Result<Vec<HistoryRecord>> {
    let location = storage::open(uri, "URI", false)?;
    history::read(&location).await?.with_context(|| {
        format!(
            "{uri}: no {} (runs write it beside their checkpoints at each checkpoint and at the end)",
            amdim_shared::checkpoint::HISTORY_FILE
        )
    })
}

/// One table row per step: its logged step and its evaluation, either may
/// be missing.
#[derive(Default)]
struct Row<'a> {
    step: Option<&'a history::StepRecord>,
    eval: Option<&'a history::EvalRecord>,
}

/// The history as a table with upper-case headers and columns as wide as
/// their widest cell.
pub fn table(records: &[HistoryRecord]) -> String {
    let mut rows: BTreeMap<u64, Row<'_>> = BTreeMap::new();
    for r in records {
        let row = rows.entry(r.step()).or_default();
        match r {
            HistoryRecord::Step(s) => row.step = Some(s),
            HistoryRecord::Eval(e) => row.eval = Some(e),
        }
    }
    let header = ["STEP", "EPOCH", "ELAPSED", "LOSS", "LR", "IMG/S", "ONLINE-LIN", "ONLINE-MLP"];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for (step, row) in &rows {
        let pct = |v: Option<f64>| v.map_or(String::new(), |a| format!("{:.1}%", 100.0 * a));
        let (epoch, time) = match (row.step, row.eval) {
            (Some(s), _) => (s.epoch, s.elapsed_s),
            (None, Some(e)) => (e.epoch, e.elapsed_s),
            (None, None) => continue,
        };
        cells.push(vec![
            step.to_string(),
            epoch.to_string(),
            amdim_shared::duration::human(time),
            row.step.map_or(String::new(), |s| format!("{:.4}", s.loss)),
            row.step.map_or(String::new(), |s| format!("{:.2e}", s.lr)),
            row.step.map_or(String::new(), |s| format!("{:.0}", s.images_per_s)),
            pct(row.eval.map(|e| e.linear_accuracy)),
            pct(row.eval.map(|e| e.mlp_accuracy)),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| cells.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &cells {
        let line: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `amdimctl history`: prints the history under `uri` in `output`'s form.
pub async fn print(uri: &str, output: Output) -> Result<()> {
    let records = load(uri).await?;
    match output.document(&serde_json::to_value(&records)?) {
        Some(doc) => println!("{doc}"),
        None => print!("{}", table(&records)),
    }
    Ok(())
}

/// A short name for a run given as `target` (a job id or a URI): the
/// target without a last `checkpoints` part, its last two path parts when
/// it is long.
pub fn run_label(target: &str) -> String {
    let trimmed = target.trim_end_matches('/');
    let trimmed = match trimmed.strip_suffix("/checkpoints") {
        Some(parent) if !parent.is_empty() => parent,
        _ => trimmed,
    };
    if trimmed.chars().count() <= 32 {
        return trimmed.to_string();
    }
    let parts: Vec<&str> = trimmed.rsplit('/').take(2).collect();
    format!("…/{}", parts.into_iter().rev().collect::<Vec<_>>().join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_targets_keep_their_last_two_parts() {
        assert_eq!(run_label("job-000042"), "job-000042");
        assert_eq!(run_label("runs/alpha/checkpoints"), "runs/alpha");
        assert_eq!(run_label("s3://bucket/experiments/2026/fashion-a/ckpt/"), "…/fashion-a/ckpt");
    }
}
