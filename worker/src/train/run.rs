//! The training loop of one rank: global sample order (this rank's slice), a
//! prefetching batch builder, logging with the step's time split, per-epoch
//! evaluation, checkpoints every N steps (written by rank 0), exact resume,
//! and a clean stop (checkpoint first) on Ctrl-C. With one rank it is the
//! single-process loop.

use crate::checkpoint::CheckpointStore;
use crate::checkpoint::format::{read_model, read_optimizer};
use crate::checkpoint::store::Retention;
use crate::checkpoint::writer::{AsyncCheckpointer, Snapshot};
use crate::data::Split;
use crate::data::pipeline::{Pipeline, Source};
use crate::data::prefetch::{StepRange, spawn_batches};
use crate::dist::ops::{Comm, CommTimes, excess_over_min};
use crate::metrics::{RunMetrics, StepTiming};
use crate::model::kernels::Kernels;
use crate::train::eval::evaluate;
use crate::train::step::{StepMetrics, Trainer};
use amdim_shared::checkpoint::{MANIFEST_FORMAT, MODEL_FILE, Manifest, OPTIMIZER_FILE};
use amdim_shared::order::{step_position, steps_per_epoch};
use amdim_shared::proto::v1::TrainingStats;
use amdim_shared::spec::{JobSpec, WhenBusy};
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub steps: u64,
    pub stopped_early: bool,
    /// Seconds the training steps of this run waited for their batches.
    pub data_wait_s: f64,
    /// Seconds training was blocked by checkpoints (snapshots, and waiting
    /// for a previous upload); the uploads themselves run in the background.
    pub checkpoint_blocked_s: f64,
    pub last_eval: Option<crate::train::eval::EvalResult>,
}

/// Options of `amdim-worker train` beyond the job spec.
pub struct RunOptions {
    pub resume: bool,
    pub stop: Arc<AtomicBool>,
    /// This process's rank in a multi-rank job (None: the only rank).
    pub comm: Option<Arc<Comm>>,
    /// Published after every step (for the agent's heartbeats).
    pub progress: Option<Arc<Progress>>,
    /// Told about every complete checkpoint (for the coordinator's registry).
    pub on_checkpoint: Option<crate::checkpoint::writer::OnWritten>,
    /// Prometheus series of this run (`metrics::WorkerMetrics::for_run`).
    pub metrics: Option<RunMetrics>,
    /// Test mode: append `step epoch index…` for every step this rank
    /// starts to this file (written before the step, so every step that
    /// reached a checkpoint is in it even if the process is killed later).
    pub sample_log: Option<std::path::PathBuf>,
}

/// Appends the samples of each step to a file (see `RunOptions::sample_log`).
struct SampleLog {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl SampleLog {
    fn open(path: &std::path::Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("sample log {}", path.display()))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    fn record(&mut self, step: u64, epoch: u64, indices: &[u32]) -> Result<()> {
        use std::fmt::Write as _;
        use std::io::Write as _;
        let mut line = format!("{step} {epoch}");
        for i in indices {
            let _ = write!(line, " {i}");
        }
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .with_context(|| format!("sample log {}", self.path.display()))
    }
}

/// The step a run has reached, readable from another thread.
#[derive(Debug, Default)]
pub struct Progress {
    pub step: std::sync::atomic::AtomicU64,
    pub total: std::sync::atomic::AtomicU64,
    /// Throughput (smoothed), losses and the last test accuracy.
    pub stats: std::sync::Mutex<Option<TrainingStats>>,
}

impl Progress {
    /// Folds in one step: rates are smoothed (weight 0.1 per step), losses
    /// and accuracy are the latest.
    pub fn record(&self, m: &StepMetrics, t: &StepTiming, world: usize, eval: Option<&crate::train::eval::EvalResult>) {
        const WEIGHT: f64 = 0.1;
        let rate = (t.samples * world) as f64 / t.total_s.max(1e-9);
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let s = stats.get_or_insert_with(|| TrainingStats {
            samples_per_second: rate,
            step_seconds: t.total_s,
            ..TrainingStats::default()
        });
        s.samples_per_second += WEIGHT * (rate - s.samples_per_second);
        s.step_seconds += WEIGHT * (t.total_s - s.step_seconds);
        (s.loss, s.loss_1t5, s.loss_1t7, s.loss_5t5) = (
            f64::from(m.loss),
            f64::from(m.loss_1t5),
            f64::from(m.loss_1t7),
            f64::from(m.loss_5t5),
        );
        s.linear_accuracy = eval.map(|e| e.linear);
        s.mlp_accuracy = eval.map(|e| e.mlp);
    }
}

/// A cheap fingerprint of the parameters, logged so that ranks can be
/// checked to hold identical weights.
pub fn param_checksum<B: Kernels>(t: &Trainer<B>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for values in t.params.to_host() {
        for v in values {
            h = (h ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The trainer's state at `epoch` for a checkpoint: handles, no copies.
pub fn snapshot<B: Kernels>(t: &Trainer<B>, epoch: u64) -> Snapshot<B> {
    Snapshot {
        manifest: Manifest {
            format: MANIFEST_FORMAT,
            job_id: t.spec.job.name.clone(),
            generation: 0,
            step: t.step,
            epoch,
            global_batch: t.spec.train.batch_size,
            world_size: t.comm.as_ref().map_or(1, |c| c.world()),
            seed: t.spec.job.seed,
            config_hash: t.spec.config_hash(),
            files: Vec::new(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        },
        values: t.params.values.clone(),
        counters: t.params.counters.clone(),
        adam: t.adam.states.clone(),
    }
}

/// Takes a checkpoint of `t` in the background; returns the seconds the
/// step was blocked (the snapshot, plus waiting for a previous upload).
fn checkpoint<B: Kernels>(t: &Trainer<B>, writer: &mut AsyncCheckpointer<B>, epoch: u64) -> f64 {
    let started = Instant::now();
    let snap = snapshot(t, epoch);
    let waited = writer.submit(snap);
    let blocked = started.elapsed().as_secs_f64();
    tracing::info!(
        step = t.step,
        blocked_s = blocked,
        waited_for_previous_s = waited,
        "checkpoint snapshot taken; uploading in the background"
    );
    blocked
}

/// Restores the newest verified checkpoint; returns whether one was found.
pub fn resume<B: Kernels>(t: &mut Trainer<B>, store: &CheckpointStore) -> Result<bool> {
    let Some(ckpt) = store.load_latest()? else { return Ok(false) };
    let m = &ckpt.manifest;
    if m.global_batch != t.spec.train.batch_size {
        bail!(
            "checkpoint step {} was trained with global batch {} but train.batch_size = {}; the sample order would change",
            m.step,
            m.global_batch,
            t.spec.train.batch_size
        );
    }
    if m.seed != t.spec.job.seed {
        bail!(
            "checkpoint step {} was trained with job.seed {} but the spec says {}",
            m.step,
            m.seed,
            t.spec.job.seed
        );
    }
    if m.config_hash != t.spec.config_hash() {
        tracing::warn!(step = m.step, "the job spec differs from the one this checkpoint was written with");
    }
    let model = ckpt.file(MODEL_FILE).context("checkpoint has no model file")?;
    let optim = ckpt.file(OPTIMIZER_FILE).context("checkpoint has no optimizer file")?;
    let state = read_model(&t.plan, model, MODEL_FILE, &t.host_state(), true)?;
    let adam = read_optimizer(&t.plan, optim, OPTIMIZER_FILE)?;
    t.restore(state, adam, m.step);
    tracing::info!(step = m.step, epoch = m.epoch, "resumed from checkpoint");
    Ok(true)
}

/// The training pipeline and, when evaluation can run, the test pipeline.
pub fn open_pipelines(spec: &JobSpec, runtime: &tokio::runtime::Handle) -> Result<(Pipeline, Option<Pipeline>)> {
    let d = &spec.data;
    let pipeline = |source: Source| -> Result<Pipeline> { Ok(Pipeline::for_job(source, spec)?) };
    let train = pipeline(Source::open(d, Split::Train, runtime)?.truncate(d.max_train_samples))?;
    let test = if spec.eval.enabled && train.source.labels().is_some() && Source::has_split(d, Split::Test, runtime) {
        Some(pipeline(Source::open(d, Split::Test, runtime)?)?)
    } else {
        None
    };
    Ok((train, test))
}

/// Trains the job on this process's backend.
pub fn run<B: Kernels>(spec: JobSpec, device: B::Device, options: RunOptions, runtime: tokio::runtime::Handle) -> Result<RunSummary> {
    let (train, test) = open_pipelines(&spec, &runtime)?;
    let g = spec.train.batch_size;
    let (rank, world) = options.comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world()));
    if !g.is_multiple_of(world) {
        bail!("train.batch_size = {g} must be divisible by the world size {world} (every rank takes an equal slice)");
    }
    let n_train = train.source.len();
    let spe = steps_per_epoch(n_train, g, spec.data.last_batch);
    if spe == 0 {
        bail!("train.batch_size = {g} is larger than the {n_train} training samples");
    }
    let total = match spec.train.max_steps {
        0 => spec.train.epochs * spe,
        m => m.min(spec.train.epochs * spe),
    };
    if let Some(p) = &options.progress {
        p.total.store(total, Ordering::Relaxed);
    }
    let store = Arc::new(CheckpointStore::open(&spec.checkpoint.uri, runtime)?);
    // Reach the checkpoint location now: bad credentials or a missing bucket
    // stop the job at start, not at its first checkpoint.
    store
        .complete_steps()
        .with_context(|| format!("checkpoint.uri = {}: the checkpoint location cannot be read", spec.checkpoint.uri))?;
    let mut t = Trainer::<B>::new(spec.clone(), Some(train.source.n_classes()), device);
    if let Some(comm) = &options.comm {
        t = t.with_comm(comm.clone());
    }
    if options.resume && !resume(&mut t, &store)? {
        tracing::info!(uri = %spec.checkpoint.uri, "no checkpoint to resume from; starting at step 0");
    }
    tracing::info!(
        samples = n_train,
        steps_per_epoch = spe,
        total_steps = total,
        parameters = t.plan.count_params(""),
        rank,
        world,
        "training {}",
        spec.job.name
    );
    let seed = spec.job.seed;
    let mut last_eval = None;
    let mut stopped_early = false;
    let retention = Retention {
        newest: spec.checkpoint.keep,
        every_steps: spec.checkpoint.keep_every_steps,
    };
    let mut writer = AsyncCheckpointer::new(store.clone(), t.plan.clone(), retention)
        .on_written(options.on_checkpoint.clone())
        .with_metrics(options.metrics.as_ref().map(|m| m.checkpoint.clone()));
    if let Some(metrics) = &options.metrics {
        metrics.start(t.step, total);
    }
    let mut sample_log = options.sample_log.as_deref().map(SampleLog::open).transpose()?;
    let mut decode_errors_seen = 0u64;
    let mut checkpoint_blocked = 0.0f64;
    // A checkpoint fell due while the previous one was still uploading.
    let mut checkpoint_due = false;
    let start_step = t.step;
    let mut total_wait = 0.0f64;
    std::thread::scope(|scope| -> Result<()> {
        // Batches are built ahead on a second thread, in step order; at most
        // data.prefetch_batches wait in the queue (back-pressure).
        let steps = StepRange {
            seed,
            global_batch: g,
            steps_per_epoch: spe,
            start: start_step,
            end: total,
            rank,
            world,
        };
        let rx = spawn_batches(scope, &train, steps, spec.data.prefetch_batches, &options.stop);
        let mut window = Instant::now();
        let mut window_images = 0usize;
        let mut window_wait = 0.0f64;
        let mut window_compute = 0.0f64;
        let mut window_comm = CommTimes::default();
        while t.step < total {
            if options.stop.load(Ordering::Relaxed) {
                stopped_early = true;
                break;
            }
            let waiting = Instant::now();
            let Ok((epoch, batch)) = rx.recv() else { break };
            let waited = waiting.elapsed().as_secs_f64();
            window_wait += waited;
            total_wait += waited;
            if let Some(log) = &mut sample_log {
                log.record(t.step, epoch, &batch.indices)?;
            }
            let mut m = t
                .train_step(&batch, epoch)
                .with_context(|| format!("rank {rank} of {world}, step {}", t.step))?;
            let lag_s = match &options.comm {
                // Every rank takes part (a collective), metrics or not.
                Some(comm) if comm.world() > 1 => {
                    let lag = excess_over_min(m.compute_s, comm)
                        .with_context(|| format!("rank {rank} of {world}, step {}: straggler check", t.step))?;
                    // Its time (waiting for the slowest rank) belongs to this step.
                    m.comm.add(&comm.take_times());
                    lag
                }
                _ => 0.0,
            };
            let mut timing = StepTiming {
                samples: batch.n,
                data_wait_s: waited,
                lag_s,
                ..StepTiming::default()
            };
            let trained_s = waiting.elapsed().as_secs_f64();
            window_images += batch.n * world;
            if let Some(p) = &options.progress {
                p.step.store(t.step, Ordering::Relaxed);
            }
            window_compute += m.compute_s;
            window_comm.add(&m.comm);
            if m.skipped {
                tracing::warn!(step = m.step, "non-finite loss: update skipped");
            }
            if t.step.is_multiple_of(spec.train.log_every) || t.step == total {
                let secs = window.elapsed().as_secs_f64();
                let comm_s = window_comm.total();
                let checksum = if world > 1 { param_checksum(&t) } else { String::new() };
                tracing::info!(
                    step = t.step,
                    epoch,
                    loss = m.loss,
                    nce_1t5 = m.loss_1t5,
                    nce_1t7 = m.loss_1t7,
                    nce_5t5 = m.loss_5t5,
                    reg = m.reg,
                    class_lin = m.class_lin,
                    class_mlp = m.class_mlp,
                    lr = m.lr,
                    images_per_s = window_images as f64 / secs.max(1e-9),
                    data_wait_s = window_wait,
                    compute_s = window_compute,
                    gather_s = window_comm.gather_s,
                    bn_sync_s = window_comm.bn_s,
                    all_reduce_s = window_comm.all_reduce_s,
                    rank_sync_s = window_comm.rank_sync_s,
                    exposed_comm_share = comm_s / (window_compute + comm_s + window_wait).max(1e-9),
                    skipped_samples = train.health.skipped(),
                    param_checksum = %checksum,
                    "step"
                );
                window = Instant::now();
                window_images = 0;
                window_wait = 0.0;
                window_compute = 0.0;
                window_comm = CommTimes::default();
            }
            let epoch_done = t.step.is_multiple_of(spe);
            let eval_due = (epoch_done && (epoch + 1) % spec.eval.every_epochs == 0) || t.step == total;
            if let Some(test) = &test
                && eval_due
                && let Some(r) = evaluate(&t, test).with_context(|| format!("rank {rank}: evaluation"))?
            {
                {
                    tracing::info!(
                        epoch,
                        step = t.step,
                        linear_accuracy = r.linear,
                        mlp_accuracy = r.mlp,
                        samples = r.samples,
                        "online heads (live signal): test accuracy; the frozen-feature figure is `amdim-worker probe`"
                    );
                    if let Some(metrics) = &options.metrics {
                        metrics.record_eval(r.linear, r.mlp);
                    }
                    last_eval = Some(r);
                }
            }
            let every = spec.checkpoint.every_steps;
            let due_now = every > 0 && t.step.is_multiple_of(every);
            checkpoint_due |= rank == 0 && due_now;
            if rank == 0 && (checkpoint_due || t.step == total) {
                let kept_for_ever = retention.every_steps > 0 && t.step.is_multiple_of(retention.every_steps);
                let must_wait = t.step == total || kept_for_ever || spec.checkpoint.when_busy == WhenBusy::Wait;
                if must_wait || !writer.busy() {
                    timing.checkpoint_s = checkpoint(&t, &mut writer, step_position(t.step, spe).epoch);
                    checkpoint_blocked += timing.checkpoint_s;
                    checkpoint_due = false;
                } else if due_now {
                    tracing::info!(
                        step = t.step,
                        "previous checkpoint still uploading: this one is taken once it has finished"
                    );
                    if let Some(metrics) = &options.metrics {
                        metrics.checkpoint.deferred();
                    }
                }
            }
            timing.total_s = trained_s + timing.checkpoint_s;
            if let Some(p) = &options.progress {
                p.record(&m, &timing, world, last_eval.as_ref());
            }
            if let Some(metrics) = &options.metrics {
                metrics.record_step(&m, &timing);
                let skipped = train.health.skipped();
                metrics.decode_errors(skipped.saturating_sub(decode_errors_seen));
                decode_errors_seen = skipped;
            }
        }
        drop(rx);
        Ok(())
    })?;
    if stopped_early && rank == 0 {
        checkpoint_blocked += checkpoint(&t, &mut writer, step_position(t.step, spe).epoch);
    }
    // The last checkpoint must land before the run reports success.
    writer.wait().context("the final checkpoint could not be written")?;
    if stopped_early {
        tracing::info!(step = t.step, "stopped on request after writing a checkpoint; resume with --resume");
    }
    Ok(RunSummary {
        steps: t.step,
        stopped_early,
        data_wait_s: total_wait,
        checkpoint_blocked_s: checkpoint_blocked,
        last_eval,
    })
}
