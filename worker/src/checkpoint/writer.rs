//! Checkpoints written in the background (docs/architecture.md §7): the training step only
//! takes a [`Snapshot`] — new handles on the current tensors, which burn
//! never mutates while another handle exists — and copying to host memory,
//! serialising, hashing and uploading run on an uploader thread while
//! training goes on.
//!
//! Memory stays bounded: at most one snapshot is being uploaded. When the
//! next checkpoint is due before the previous upload has finished, the
//! training loop either defers it to the first step after the upload ends
//! (`checkpoint.when_busy = "defer"`, the default: storage that is slow or
//! down never stalls training) or waits for it (`"wait"`; the wait is
//! measured and logged); [`AsyncCheckpointer::busy`] tells which case it is.
//! A failed upload is retried as a whole (after the per-file retries with
//! exponential backoff and jitter of `amdim_shared::retry`); if it still
//! fails, that checkpoint is abandoned — its manifest was never written, so
//! nobody can load it half-written — and training continues. How each
//! upload ended is told to one [`OnUpload`] callback (metrics, the
//! coordinator's registry); this module does not know who listens.

use crate::checkpoint::CheckpointStore;
use crate::checkpoint::format::{HostAdam, HostState, described_model_bytes, model_bytes, optimizer_bytes};
use crate::checkpoint::store::Retention;
use crate::model::ModelPlan;
use crate::model::params::to_vec;
use crate::optim::adam::AdamState;
use amdim_shared::checkpoint::{FileEntry, MODEL_FILE, Manifest, OPTIMIZER_FILE, WeightsInfo};
use anyhow::{Result, anyhow};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use bytes::Bytes;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Whole-checkpoint attempts before a checkpoint is abandoned.
const ATTEMPTS: u32 = 3;

/// The state of one step: handles on its tensors (no copy).
pub struct Snapshot<B: Backend> {
    /// Everything but `files`, which the uploader fills in. Its `spec`
    /// also goes into the model file's metadata.
    pub manifest: Manifest,
    pub values: Vec<Tensor<B, 1>>,
    pub counters: Vec<i64>,
    /// Per entry, once it has Adam state.
    pub adam: Vec<Option<AdamState<B>>>,
}

impl<B: Backend> Snapshot<B> {
    fn host_state(values: Vec<Tensor<B, 1>>, counters: Vec<i64>) -> HostState {
        HostState {
            values: values.into_iter().map(to_vec).collect(),
            counters,
        }
    }

    fn host_adam(adam: Vec<Option<AdamState<B>>>) -> Vec<Option<HostAdam>> {
        adam.into_iter()
            .map(|s| {
                s.map(|s| HostAdam {
                    exp_avg: to_vec(s.exp_avg),
                    exp_avg_sq: to_vec(s.exp_avg_sq),
                    step: s.step,
                })
            })
            .collect()
    }
}

/// How one checkpoint upload ended.
#[derive(Clone, Copy, Debug)]
pub enum UploadEvent {
    /// Complete (manifest written): its step, the bytes of its files, and
    /// the seconds from the snapshot to the manifest.
    Written { step: u64, bytes: u64, seconds: f64 },
    /// Given up after every attempt (or never started); never registered.
    Abandoned { step: u64 },
    /// Written, but pruning older checkpoints failed `failures` times after
    /// its manifest (retried after the next checkpoint). Told before
    /// `Written`.
    PruneFailed { step: u64, failures: usize },
}

/// Told how every upload ended, on the uploader thread (or, for an upload
/// that could not start, on the caller's).
pub type OnUpload = Arc<dyn Fn(UploadEvent) + Send + Sync>;

/// Owns the uploader thread of one run.
pub struct AsyncCheckpointer<B: Backend> {
    store: Arc<CheckpointStore>,
    plan: Arc<ModelPlan>,
    keep: Retention,
    pending: Option<(u64, JoinHandle<Result<f64>>)>,
    on_upload: Option<OnUpload>,
    _backend: std::marker::PhantomData<B>,
}

fn jitter_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()) % 1000)
}

fn write<B: Backend>(
    store: &CheckpointStore,
    plan: &ModelPlan,
    keep: Retention,
    snapshot: Snapshot<B>,
    on_upload: Option<OnUpload>,
) -> Result<f64> {
    let started = Instant::now();
    let Snapshot {
        mut manifest,
        values,
        counters,
        adam,
    } = snapshot;
    let state = Snapshot::<B>::host_state(values, counters);
    let model = match &manifest.spec {
        Some(spec) => described_model_bytes(plan, &state, &WeightsInfo::new(spec, plan.classifier.as_ref().map(|c| c.n_classes)))?,
        None => model_bytes(plan, &state)?,
    };
    let model = Bytes::from(model);
    drop(state);
    let adam = Snapshot::<B>::host_adam(adam);
    let optim = Bytes::from(optimizer_bytes(plan, &adam)?);
    drop(adam);
    manifest.files = vec![FileEntry::of_bytes(MODEL_FILE, &model), FileEntry::of_bytes(OPTIMIZER_FILE, &optim)];
    // Bytes: a retry re-sends the same buffers without copying them.
    let files = vec![(MODEL_FILE.to_string(), model), (OPTIMIZER_FILE.to_string(), optim)];
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            let wait = Duration::from_millis((1000 << attempt) + jitter_ms());
            tracing::warn!(
                step = manifest.step,
                attempt,
                wait_s = wait.as_secs_f64(),
                "retrying checkpoint upload"
            );
            std::thread::sleep(wait);
        }
        match store.save(&manifest, &files, keep) {
            Ok(prune_failures) => {
                if let (Some(f), true) = (&on_upload, prune_failures > 0) {
                    f(UploadEvent::PruneFailed {
                        step: manifest.step,
                        failures: prune_failures,
                    });
                }
                let bytes = manifest.files.iter().map(|e| e.size).sum();
                let seconds = started.elapsed().as_secs_f64();
                if let Some(f) = &on_upload {
                    f(UploadEvent::Written {
                        step: manifest.step,
                        bytes,
                        seconds,
                    });
                }
                return Ok(seconds);
            }
            Err(e) => {
                tracing::warn!(step = manifest.step, reason = %format!("{e:#}"), "checkpoint upload failed");
                last = Some(e);
            }
        }
    }
    if let Some(f) = &on_upload {
        f(UploadEvent::Abandoned { step: manifest.step });
    }
    Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
}

impl<B: Backend> AsyncCheckpointer<B> {
    pub fn new(store: Arc<CheckpointStore>, plan: ModelPlan, keep: Retention) -> Self {
        Self {
            store,
            plan: Arc::new(plan),
            keep,
            pending: None,
            on_upload: None,
            _backend: std::marker::PhantomData,
        }
    }

    /// Tells `f` how every checkpoint's upload ended.
    pub fn on_upload(mut self, f: OnUpload) -> Self {
        self.on_upload = Some(f);
        self
    }

    /// Starts uploading `snapshot`, after the previous upload has finished
    /// (at most one in flight). Returns the seconds spent waiting for it.
    pub fn submit(&mut self, snapshot: Snapshot<B>) -> f64 {
        let started = Instant::now();
        let _ = self.wait();
        let waited = started.elapsed().as_secs_f64();
        let (store, plan, keep) = (self.store.clone(), self.plan.clone(), self.keep);
        let on_upload = self.on_upload.clone();
        let step = snapshot.manifest.step;
        let handle = std::thread::Builder::new()
            .name(format!("checkpoint-{step}"))
            .spawn(move || write(&store, &plan, keep, snapshot, on_upload));
        match handle {
            Ok(h) => self.pending = Some((step, h)),
            Err(e) => {
                tracing::warn!(step, reason = %e, "cannot start the checkpoint uploader: checkpoint abandoned");
                if let Some(f) = &self.on_upload {
                    f(UploadEvent::Abandoned { step });
                }
            }
        }
        waited
    }

    /// Whether an upload is still in flight.
    pub fn busy(&self) -> bool {
        self.pending.as_ref().is_some_and(|(_, h)| !h.is_finished())
    }

    /// Waits for the upload in flight, if any, and reports how it ended:
    /// Ok(Some(step)) once written, Err if it was abandoned.
    pub fn wait(&mut self) -> Result<Option<u64>> {
        let Some((step, handle)) = self.pending.take() else {
            return Ok(None);
        };
        match handle.join() {
            Ok(Ok(seconds)) => {
                tracing::info!(step, seconds, uri = %self.store.uri(), "checkpoint written");
                Ok(Some(step))
            }
            Ok(Err(e)) => {
                tracing::error!(step, reason = %format!("{e:#}"), "checkpoint abandoned (never registered); training continues");
                Err(e.context(format!("checkpoint step {step}")))
            }
            Err(_) => Err(anyhow!("checkpoint step {step}: the uploader panicked")),
        }
    }
}

impl<B: Backend> Drop for AsyncCheckpointer<B> {
    fn drop(&mut self) {
        let _ = self.wait();
    }
}
