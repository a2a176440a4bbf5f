//! A run's history (docs/architecture.md §7): `history.jsonl` next to the
//! checkpoints under a job's checkpoint URI, one JSON object per line — a
//! `step` record per logged step (every loss term, learning rate,
//! throughput, the step's time split) and an `eval` record per evaluation of
//! the online heads. The record types, their JSON form, and reading and
//! rewriting the whole object on a [`Location`] live here, so that the
//! worker (which writes it) and `amdimctl` (which prints and plots it) share
//! one definition. Object stores cannot append: the writer always puts the
//! whole file. When to write, and what a run measures, is the worker's.

use crate::checkpoint::HISTORY_FILE;
use crate::storage::Location;
use bytes::Bytes;
use object_store::PutPayload;
use serde::{Deserialize, Deserializer, Serialize};

/// One line of `history.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HistoryRecord {
    /// A logged training step.
    Step(StepRecord),
    /// An evaluation of the online heads.
    Eval(EvalRecord),
}

impl HistoryRecord {
    /// The optimizer updates done when the record was taken.
    pub fn step(&self) -> u64 {
        match self {
            Self::Step(s) => s.step,
            Self::Eval(e) => e.step,
        }
    }

    /// Seconds of training since the run's first start (resumes continue
    /// the count of the run they resume).
    pub fn elapsed_s(&self) -> f64 {
        match self {
            Self::Step(s) => s.elapsed_s,
            Self::Eval(e) => e.elapsed_s,
        }
    }
}

/// Reads a float written by `serde_json`, which writes non-finite values
/// (a loss that diverged) as `null`: `null` reads back as NaN.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A logged step: the loss terms of that step, and throughput and time
/// split over the steps since the previous logged step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Optimizer updates done.
    pub step: u64,
    /// The epoch the step belongs to (0-based).
    pub epoch: u64,
    /// Seconds of training since the run's first start.
    pub elapsed_s: f64,
    /// The total loss.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// NCE term r1 → r5.
    #[serde(deserialize_with = "nan_if_null")]
    pub nce_1t5: f64,
    /// NCE term r1 → r7.
    #[serde(deserialize_with = "nan_if_null")]
    pub nce_1t7: f64,
    /// NCE term r5 → r5.
    #[serde(deserialize_with = "nan_if_null")]
    pub nce_5t5: f64,
    /// The score regulariser.
    #[serde(deserialize_with = "nan_if_null")]
    pub reg: f64,
    /// Cross-entropy of the online linear head.
    #[serde(deserialize_with = "nan_if_null")]
    pub class_lin: f64,
    /// Cross-entropy of the online MLP head.
    #[serde(deserialize_with = "nan_if_null")]
    pub class_mlp: f64,
    /// The learning rate of the step.
    pub lr: f64,
    /// Images per second of all ranks since the previous logged step.
    pub images_per_s: f64,
    /// Seconds waiting for batches since the previous logged step.
    pub data_wait_s: f64,
    /// Seconds computing.
    pub compute_s: f64,
    /// Seconds in the all-gather of the NCE keys.
    pub gather_s: f64,
    /// Seconds synchronising BatchNorm statistics.
    pub bn_sync_s: f64,
    /// Seconds in the gradient all-reduce.
    pub all_reduce_s: f64,
    /// Seconds waiting for slower ranks.
    pub rank_sync_s: f64,
    /// Training samples skipped so far (unreadable or undecodable).
    #[serde(default)]
    pub skipped_samples: u64,
}

/// Test accuracy of the online heads: a live signal during training, not
/// the frozen-feature figure (that is `amdim-worker probe`'s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer updates done.
    pub step: u64,
    /// The epoch that ended (0-based).
    pub epoch: u64,
    /// Seconds of training since the run's first start.
    pub elapsed_s: f64,
    /// Top-1 accuracy of the online linear head, in [0, 1].
    pub linear_accuracy: f64,
    /// Top-1 accuracy of the online MLP head, in [0, 1].
    pub mlp_accuracy: f64,
    /// Test images evaluated.
    pub samples: usize,
}

/// A history that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The object store failed.
    #[error("{path}: {source}")]
    Store {
        /// The object.
        path: String,
        /// What the store said.
        #[source]
        source: object_store::Error,
    },
    /// A line is not a history record.
    #[error("{path} line {line}: {message}")]
    Invalid {
        /// The object.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// Parses `history.jsonl` text (`path` names it in errors); blank lines
/// are skipped, unknown fields ignored.
pub fn parse(path: &str, text: &str) -> Result<Vec<HistoryRecord>, HistoryError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(line).map_err(|e| HistoryError::Invalid {
            path: path.to_string(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(record);
    }
    Ok(out)
}

/// The JSON-lines text of `records`, one per line.
pub fn to_jsonl(records: &[HistoryRecord]) -> String {
    let mut out = String::new();
    for r in records {
        // A record of plain numbers always serialises.
        if let Ok(line) = serde_json::to_string(r) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// The history under `location`, or `None` when there is none.
pub async fn read(location: &Location) -> Result<Option<Vec<HistoryRecord>>, HistoryError> {
    let path = location.path(&[HISTORY_FILE]);
    let store_err = |source| HistoryError::Store {
        path: path.to_string(),
        source,
    };
    let raw = match location.store.get(&path).await {
        Ok(got) => got.bytes().await.map_err(store_err)?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_err(e)),
    };
    let text = String::from_utf8_lossy(&raw);
    parse(path.as_ref(), &text).map(Some)
}

/// Replaces the history under `location` with `records` (one PUT).
pub async fn write(location: &Location, records: &[HistoryRecord]) -> Result<(), HistoryError> {
    let path = location.path(&[HISTORY_FILE]);
    let body = Bytes::from(to_jsonl(records));
    location
        .store
        .put(&path, PutPayload::from(body))
        .await
        .map_err(|source| HistoryError::Store {
            path: path.to_string(),
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64, loss: f64) -> HistoryRecord {
        HistoryRecord::Step(StepRecord {
            step,
            epoch: 0,
            elapsed_s: step as f64,
            loss,
            nce_1t5: 1.0,
            nce_1t7: 2.0,
            nce_5t5: 3.0,
            reg: 0.1,
            class_lin: 2.3,
            class_mlp: 2.2,
            lr: 1e-3,
            images_per_s: 50.0,
            data_wait_s: 0.0,
            compute_s: 1.0,
            gather_s: 0.0,
            bn_sync_s: 0.0,
            all_reduce_s: 0.0,
            rank_sync_s: 0.0,
            skipped_samples: 0,
        })
    }

    #[test]
    fn records_round_trip_through_jsonl_with_their_kind() {
        let records = vec![
            step(1, 6.5),
            HistoryRecord::Eval(EvalRecord {
                step: 1,
                epoch: 0,
                elapsed_s: 1.5,
                linear_accuracy: 0.5,
                mlp_accuracy: 0.6,
                samples: 100,
            }),
        ];
        let text = to_jsonl(&records);
        assert!(
            text.lines().next().is_some_and(|l| l.starts_with(r#"{"kind":"step","step":1,"#)),
            "{text}"
        );
        assert!(text.lines().nth(1).is_some_and(|l| l.starts_with(r#"{"kind":"eval""#)), "{text}");
        assert_eq!(parse("h", &text).ok(), Some(records));
    }

    #[test]
    fn a_diverged_loss_reads_back_as_nan_and_a_bad_line_is_named() {
        let text = to_jsonl(&[step(2, f64::NAN)]);
        assert!(text.contains(r#""loss":null"#), "{text}");
        let back = parse("h", &text).ok();
        assert!(matches!(back.as_deref(), Some([HistoryRecord::Step(s)]) if s.loss.is_nan()));
        let bad = format!("{text}\n{{\"kind\":\"nope\"}}\n");
        let err = parse("runs/x/history.jsonl", &bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("runs/x/history.jsonl line 3:"), "{err}");
    }
}
