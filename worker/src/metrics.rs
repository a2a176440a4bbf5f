//! The worker's Prometheus metrics (docs/architecture.md §9): one process-wide registry,
//! served on `--metrics-listen` by `amdim_shared::http`, and the per-run
//! handles the training loop and the checkpoint writer update. Every series
//! carries `job_id` and `rank`; further labels are closed sets (`phase`,
//! `term`, `head`). A new run forgets the series of the previous job, so a
//! long-lived agent's label sets stay bounded.
//!
//! This module decides names, units and buckets only; the numbers come from
//! the training run, to which a run's series are an observer
//! (`train::observer::RunObserver`: steps, evaluations, checkpoint uploads).

use crate::train::eval::EvalResult;
use crate::train::observer::{RunObserver, StepReport, StepTiming};
use crate::train::step::StepMetrics;
use amdim_shared::metrics::{Counter, Family, Gauge, Histogram, Registry, exponential_buckets};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Time a step spends in each part, in the order of `amdim_step_phase_seconds_total`'s `phase`.
pub const PHASES: [&str; 7] = [
    "data_wait",
    "compute",
    "allgather",
    "bn_sync",
    "allreduce",
    "rank_sync",
    "checkpoint",
];
/// The loss terms of `amdim_loss`'s `term`.
pub const TERMS: [&str; 7] = ["total", "nce_1t5", "nce_1t7", "nce_5t5", "reg", "class_lin", "class_mlp"];

/// Every family of the worker.
pub struct WorkerMetrics {
    registry: Registry,
    samples: Arc<Family<Counter>>,
    steps: Arc<Family<Counter>>,
    step: Arc<Family<Gauge>>,
    total_steps: Arc<Family<Gauge>>,
    step_duration: Arc<Family<Histogram>>,
    phase: Arc<Family<Counter>>,
    loss: Arc<Family<Gauge>>,
    accuracy: Arc<Family<Gauge>>,
    allreduce_duration: Arc<Family<Histogram>>,
    allreduce_bytes: Arc<Family<Counter>>,
    allgather_duration: Arc<Family<Histogram>>,
    allgather_bytes: Arc<Family<Counter>>,
    loader_wait: Arc<Family<Histogram>>,
    decode_errors: Arc<Family<Counter>>,
    read_retries: Arc<Family<Counter>>,
    lag: Arc<Family<Gauge>>,
    checkpoint_duration: Arc<Family<Histogram>>,
    checkpoint_bytes: Arc<Family<Counter>>,
    checkpoint_failures: Arc<Family<Counter>>,
    checkpoint_deferred: Arc<Family<Counter>>,
    checkpoint_prune_failures: Arc<Family<Counter>>,
    checkpoint_last_step: Arc<Family<Gauge>>,
}

/// The `backend` label of `amdim_build_info`: the most capable backend this
/// build runs (a CUDA build runs CPU jobs too).
const BUILD_BACKEND: &str = if cfg!(feature = "cuda") { "cuda" } else { "cpu-flex" };

const RUN: [&str; 2] = ["job_id", "rank"];

impl WorkerMetrics {
    fn new() -> Self {
        let r = Registry::new();
        let seconds = exponential_buckets(0.001, 2.0, 18); // 1 ms .. 131 s
        let long = exponential_buckets(0.1, 2.0, 14); // 0.1 s .. 27 min
        r.gauge(
            "amdim_build_info",
            "Always 1: the worker's version and the backend it was built for.",
            &["version", "backend"],
        )
        .with(&[env!("CARGO_PKG_VERSION"), BUILD_BACKEND])
        .set(1.0);
        Self {
            samples: r.counter("amdim_train_samples_total", "Images this rank trained on.", &RUN),
            steps: r.counter("amdim_train_steps_total", "Training steps this rank finished.", &RUN),
            step: r.gauge("amdim_train_step", "The step this rank has reached.", &RUN),
            total_steps: r.gauge("amdim_train_total_steps", "Steps the job trains for.", &RUN),
            step_duration: r.histogram(
                "amdim_step_duration_seconds",
                "Wall time of one training step, data wait and checkpoint snapshot included.",
                &RUN,
                seconds.clone(),
            ),
            phase: r.counter(
                "amdim_step_phase_seconds_total",
                "Step time by phase: data_wait, compute, allgather (targets and their gradients), bn_sync, allreduce (gradients and metrics), checkpoint (snapshot).",
                &["job_id", "rank", "phase"],
            ),
            loss: r.gauge("amdim_loss", "The last step's loss terms (means over ranks).", &["job_id", "rank", "term"]),
            accuracy: r.gauge(
                "amdim_eval_accuracy_ratio",
                "Test accuracy of the online classifiers at the last evaluation (0..1).",
                &["job_id", "rank", "head"],
            ),
            allreduce_duration: r.histogram(
                "amdim_allreduce_duration_seconds",
                "All-reduce time per step (gradients, metrics, synchronised BatchNorm).",
                &RUN,
                seconds.clone(),
            ),
            allreduce_bytes: r.counter("amdim_allreduce_bytes_total", "Bytes this rank all-reduced.", &RUN),
            allgather_duration: r.histogram(
                "amdim_allgather_duration_seconds",
                "Time per step gathering the targets and reduce-scattering their gradients.",
                &RUN,
                seconds.clone(),
            ),
            allgather_bytes: r.counter(
                "amdim_allgather_bytes_total",
                "Bytes this rank contributed to gathers and reduce-scatters.",
                &RUN,
            ),
            loader_wait: r.histogram(
                "amdim_dataloader_wait_seconds",
                "Time a step waited for its batch.",
                &RUN,
                seconds,
            ),
            decode_errors: r.counter(
                "amdim_decode_errors_total",
                "Training samples skipped because their bytes could not be decoded (or were missing from the dataset); store outages are retried, not counted here.",
                &RUN,
            ),
            read_retries: r.counter(
                "amdim_data_read_retries_total",
                "Reads of training data from object storage retried because the store did not answer.",
                &RUN,
            ),
            lag: r.gauge(
                "amdim_rank_step_lag_seconds",
                "How much longer this rank computed than the fastest rank, last step (stragglers).",
                &RUN,
            ),
            checkpoint_duration: r.histogram(
                "amdim_checkpoint_duration_seconds",
                "Time to serialise and upload one checkpoint (background).",
                &RUN,
                long,
            ),
            checkpoint_bytes: r.counter("amdim_checkpoint_bytes_total", "Bytes of complete checkpoints written.", &RUN),
            checkpoint_failures: r.counter(
                "amdim_checkpoint_failures_total",
                "Checkpoints abandoned after every retry.",
                &RUN,
            ),
            checkpoint_deferred: r.counter(
                "amdim_checkpoint_deferred_total",
                "Checkpoints taken late because the previous upload was still running.",
                &RUN,
            ),
            checkpoint_prune_failures: r.counter(
                "amdim_checkpoint_prune_failures_total",
                "Old checkpoints that could not be deleted after a new one was written (retried at the next checkpoint).",
                &RUN,
            ),
            checkpoint_last_step: r.gauge("amdim_checkpoint_last_step", "Step of the newest complete checkpoint.", &RUN),
            registry: r,
        }
    }

    /// The process's metrics.
    pub fn global() -> &'static WorkerMetrics {
        static METRICS: OnceLock<WorkerMetrics> = OnceLock::new();
        METRICS.get_or_init(WorkerMetrics::new)
    }

    /// Every series in the Prometheus text format.
    pub fn encode(&self) -> String {
        self.registry.encode()
    }

    /// The handles of one run of `job` as `rank`; series of other jobs are
    /// forgotten.
    pub fn for_run(&self, job: &str, rank: usize) -> RunMetrics {
        self.registry.retain("job_id", job);
        let rank = rank.to_string();
        let l = [job, rank.as_str()];
        let with = |extra: &'static str| [job, rank.as_str(), extra];
        RunMetrics {
            samples: self.samples.with(&l),
            steps: self.steps.with(&l),
            step: self.step.with(&l),
            total_steps: self.total_steps.with(&l),
            step_duration: self.step_duration.with(&l),
            phase: PHASES.map(|p| self.phase.with(&with(p))),
            loss: TERMS.map(|t| self.loss.with(&with(t))),
            accuracy: (self.accuracy.clone(), job.to_string(), rank.clone()),
            allreduce_duration: self.allreduce_duration.with(&l),
            allreduce_bytes: self.allreduce_bytes.with(&l),
            allgather_duration: self.allgather_duration.with(&l),
            allgather_bytes: self.allgather_bytes.with(&l),
            loader_wait: self.loader_wait.with(&l),
            decode_errors: self.decode_errors.with(&l),
            read_retries: self.read_retries.with(&l),
            lag: self.lag.with(&l),
            checkpoint: Arc::new(CheckpointMetrics {
                duration: self.checkpoint_duration.with(&l),
                bytes: self.checkpoint_bytes.with(&l),
                failures: self.checkpoint_failures.with(&l),
                deferred: self.checkpoint_deferred.with(&l),
                prune_failures: self.checkpoint_prune_failures.with(&l),
                last_step: self.checkpoint_last_step.with(&l),
            }),
            decode_errors_seen: AtomicU64::new(0),
            read_retries_seen: AtomicU64::new(0),
        }
    }
}

/// Serves `/healthz`, `/readyz` (200 while `ready` holds) and `/metrics`
/// on `addr` from `runtime`; the address is bound before this returns, so
/// a port in use is an error here, not a silent gap in the scrapes.
pub fn serve(runtime: &tokio::runtime::Handle, addr: &str, ready: Arc<AtomicBool>) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("--metrics-listen {addr}: cannot listen"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let _guard = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let metrics: amdim_shared::http::MetricsFn = Arc::new(|| WorkerMetrics::global().encode());
    runtime.spawn(amdim_shared::http::serve(listener, ready, metrics));
    tracing::info!(addr = %local, "serving /metrics, /healthz and /readyz");
    Ok(())
}

/// The series of one run (job, rank).
pub struct RunMetrics {
    samples: Arc<Counter>,
    steps: Arc<Counter>,
    step: Arc<Gauge>,
    total_steps: Arc<Gauge>,
    step_duration: Arc<Histogram>,
    phase: [Arc<Counter>; PHASES.len()],
    loss: [Arc<Gauge>; 7],
    /// Made at the first evaluation (no accuracy of 0 before one ran):
    /// the family, job and rank.
    accuracy: (Arc<Family<Gauge>>, String, String),
    allreduce_duration: Arc<Histogram>,
    allreduce_bytes: Arc<Counter>,
    allgather_duration: Arc<Histogram>,
    allgather_bytes: Arc<Counter>,
    loader_wait: Arc<Histogram>,
    decode_errors: Arc<Counter>,
    read_retries: Arc<Counter>,
    lag: Arc<Gauge>,
    pub checkpoint: Arc<CheckpointMetrics>,
    /// Skipped samples already counted in `decode_errors`.
    decode_errors_seen: AtomicU64,
    /// Read retries already counted in `read_retries`.
    read_retries_seen: AtomicU64,
}

impl RunMetrics {
    /// Where the run starts and ends.
    pub fn start(&self, step: u64, total_steps: u64) {
        self.step.set(step as f64);
        self.total_steps.set(total_steps as f64);
    }

    pub fn record_step(&self, m: &StepMetrics, t: &StepTiming) {
        self.samples.add(t.samples as f64);
        self.steps.inc();
        self.step.set(m.step as f64);
        self.step_duration.observe(t.total_s);
        let phases = [
            t.data_wait_s,
            m.compute_s,
            m.comm.gather_s,
            m.comm.bn_s,
            m.comm.all_reduce_s,
            m.comm.rank_sync_s,
            t.checkpoint_s,
        ];
        self.phase.iter().zip(phases).for_each(|(c, v)| c.add(v));
        let losses = [m.loss, m.loss_1t5, m.loss_1t7, m.loss_5t5, m.reg, m.class_lin, m.class_mlp];
        self.loss.iter().zip(losses).for_each(|(g, v)| g.set(f64::from(v)));
        self.allreduce_duration.observe(m.comm.all_reduce_s + m.comm.bn_s);
        self.allreduce_bytes.add((m.comm.all_reduce_bytes + m.comm.bn_bytes) as f64);
        self.allgather_duration.observe(m.comm.gather_s);
        self.allgather_bytes.add(m.comm.gather_bytes as f64);
        self.loader_wait.observe(t.data_wait_s);
        self.lag.set(t.lag_s);
    }

    /// Samples skipped since the last call (read/decode failures).
    pub fn decode_errors(&self, n: u64) {
        self.decode_errors.add(n as f64);
    }

    pub fn record_eval(&self, linear: f64, mlp: f64) {
        let (family, job, rank) = &self.accuracy;
        family.with(&[job, rank, "linear"]).set(linear);
        family.with(&[job, rank, "mlp"]).set(mlp);
    }
}

/// A run's series follow its steps, evaluations and checkpoints.
impl RunObserver for RunMetrics {
    fn on_start(&self, step: u64, total: u64) -> Result<()> {
        self.start(step, total);
        Ok(())
    }

    fn on_eval(&self, result: &EvalResult) {
        self.record_eval(result.linear, result.mlp);
    }

    fn on_checkpoint_deferred(&self, _step: u64) {
        self.checkpoint.deferred();
    }

    fn on_step(&self, report: &StepReport<'_>) {
        self.record_step(report.metrics, report.timing);
        let seen = self.decode_errors_seen.swap(report.skipped_samples, Ordering::Relaxed);
        self.decode_errors(report.skipped_samples.saturating_sub(seen));
        let seen = self.read_retries_seen.swap(report.read_retries, Ordering::Relaxed);
        self.read_retries.add(report.read_retries.saturating_sub(seen) as f64);
    }

    fn on_checkpoint_committed(&self, step: u64, bytes: u64, seconds: f64) {
        self.checkpoint.written(step, bytes, seconds);
    }

    fn on_checkpoint_abandoned(&self, _step: u64) {
        self.checkpoint.abandoned();
    }

    fn on_checkpoint_prune_failed(&self, _step: u64, failures: usize) {
        self.checkpoint.prune_failed(failures);
    }
}

/// The checkpoint writer's series.
pub struct CheckpointMetrics {
    duration: Arc<Histogram>,
    bytes: Arc<Counter>,
    failures: Arc<Counter>,
    deferred: Arc<Counter>,
    prune_failures: Arc<Counter>,
    last_step: Arc<Gauge>,
}

impl CheckpointMetrics {
    pub fn written(&self, step: u64, bytes: u64, seconds: f64) {
        self.duration.observe(seconds);
        self.bytes.add(bytes as f64);
        self.last_step.set(step as f64);
    }

    pub fn abandoned(&self) {
        self.failures.inc();
    }

    pub fn deferred(&self) {
        self.deferred.inc();
    }

    pub fn prune_failed(&self, failures: usize) {
        self.prune_failures.add(failures as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::ops::CommTimes;

    #[test]
    fn a_step_lands_in_every_series_and_a_new_job_forgets_the_old_one() {
        let metrics = WorkerMetrics::new();
        let run = metrics.for_run("job-a", 1);
        let m = StepMetrics {
            step: 3,
            loss: 2.5,
            compute_s: 0.25,
            comm: CommTimes {
                gather_s: 0.125,
                all_reduce_s: 0.5,
                rank_sync_s: 0.0625,
                all_reduce_bytes: 1000,
                gather_bytes: 64,
                ..CommTimes::default()
            },
            ..StepMetrics::default()
        };
        let timing = StepTiming {
            samples: 16,
            data_wait_s: 0.01,
            total_s: 1.0,
            lag_s: 0.05,
            ..StepTiming::default()
        };
        run.record_step(&m, &timing);
        run.record_step(&m, &timing);
        run.checkpoint.written(3, 4096, 2.0);
        assert!(
            !metrics.encode().contains("amdim_eval_accuracy_ratio{"),
            "accuracy before any evaluation"
        );
        run.record_eval(0.5, 0.75);
        let text = metrics.encode();
        for line in [
            "amdim_train_samples_total{job_id=\"job-a\",rank=\"1\"} 32",
            "amdim_train_step{job_id=\"job-a\",rank=\"1\"} 3",
            "amdim_step_phase_seconds_total{job_id=\"job-a\",rank=\"1\",phase=\"compute\"} 0.5",
            "amdim_step_phase_seconds_total{job_id=\"job-a\",rank=\"1\",phase=\"allreduce\"} 1",
            "amdim_step_phase_seconds_total{job_id=\"job-a\",rank=\"1\",phase=\"rank_sync\"} 0.125",
            "amdim_loss{job_id=\"job-a\",rank=\"1\",term=\"total\"} 2.5",
            "amdim_allreduce_bytes_total{job_id=\"job-a\",rank=\"1\"} 2000",
            "amdim_allgather_bytes_total{job_id=\"job-a\",rank=\"1\"} 128",
            "amdim_step_duration_seconds_count{job_id=\"job-a\",rank=\"1\"} 2",
            "amdim_rank_step_lag_seconds{job_id=\"job-a\",rank=\"1\"} 0.05",
            "amdim_checkpoint_bytes_total{job_id=\"job-a\",rank=\"1\"} 4096",
            "amdim_checkpoint_last_step{job_id=\"job-a\",rank=\"1\"} 3",
            "amdim_eval_accuracy_ratio{job_id=\"job-a\",rank=\"1\",head=\"mlp\"} 0.75",
            format!(
                "amdim_build_info{{version=\"{}\",backend=\"{BUILD_BACKEND}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )
            .as_str(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let _next = metrics.for_run("job-b", 0);
        let text = metrics.encode();
        assert!(!text.contains("job-a"), "old job's series kept:\n{text}");
        assert!(text.contains("amdim_train_samples_total{job_id=\"job-b\",rank=\"0\"} 0"));
        assert!(text.contains("amdim_build_info{"), "a new job forgot the build info:\n{text}");
    }
}
