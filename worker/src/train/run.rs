//! The training loop of one rank: global sample order (this rank's slice), a
//! prefetching batch builder, logging with the step's time split, per-epoch
//! evaluation, checkpoints every N steps (written by rank 0), exact resume
//! from the checkpoint rank 0 chooses (`resume`),
//! and a clean stop (checkpoint first) on Ctrl-C. With one rank it is the
//! single-process loop.
//!
//! The loop only sequences a step; the decisions and reports around it are
//! elsewhere: when a checkpoint falls due is [`CheckpointPolicy`]'s, the
//! logged step's record and line are [`StepWindow`]'s, keeping and writing
//! `history.jsonl` is [`RunHistory`]'s, and everything the rest of the worker
//! learns about the run (metrics, the agent's progress and checkpoint
//! commits, the sample log) goes through one [`RunObserver`].

use crate::checkpoint::CheckpointStore;
use crate::checkpoint::writer::{AsyncCheckpointer, Snapshot};
use crate::collective::ops::{Comm, StepEnd, end_of_step};
use crate::data::Split;
use crate::data::pipeline::{Pipeline, Source, TrainBatch};
use crate::data::prefetch::{StepRange, spawn_batches};

use crate::checkpoint::writer::OnUpload;
use crate::model::kernels::Kernels;
use crate::train::checkpoint_policy::{CheckpointDecision, CheckpointPolicy};
use crate::train::eval::{EvalResult, evaluate};
use crate::train::history::RunHistory;
use crate::train::log_window::{StepWindow, log_step};
use crate::train::observer::{RunObserver, StepReport, StepTiming, upload_events};
pub use crate::train::resume::resume;
use crate::train::resume::resume_agreed;
use crate::train::step::{StepMetrics, Trainer};
use amdim_shared::checkpoint::{MANIFEST_FORMAT, Manifest};
use amdim_shared::history::{EvalRecord, HistoryRecord, StepRecord};
use amdim_shared::order::{step_position, steps_per_epoch};
use amdim_shared::spec::JobSpec;
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
    pub last_eval: Option<EvalResult>,
    /// Training samples skipped because their bytes could not be decoded.
    pub skipped_samples: u64,
    /// Reads of training data retried because the store did not answer.
    pub data_read_retries: u64,
    /// Seconds this run took, from start to the last checkpoint landing.
    pub wall_s: f64,
    /// The last logged step: its loss terms, learning rate, throughput.
    pub last_step: Option<StepRecord>,
    /// Where the checkpoints are (`checkpoint.uri`).
    pub checkpoint_uri: String,
    /// Where the run history is; None on ranks that do not write it.
    pub history_uri: Option<String>,
}

/// Options of `amdim-worker train` beyond the job spec.
pub struct RunOptions {
    pub resume: bool,
    pub stop: Arc<AtomicBool>,
    /// This process's rank in a multi-rank job (None: the only rank).
    pub comm: Option<Arc<Comm>>,
    /// Told what the run does (metrics, the agent's progress and checkpoint
    /// commits, the sample log); `Arc::new(Observers::default())` for nobody.
    pub observer: Arc<dyn RunObserver>,
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
            spec: Some(t.spec.clone()),
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

/// The training pipeline and, when evaluation can run, the test pipeline.
pub fn open_pipelines(spec: &JobSpec, runtime: &tokio::runtime::Handle) -> Result<(Pipeline, Option<Pipeline>)> {
    let d = &spec.data;
    let pipeline = |source: Source| -> Result<Pipeline> { Ok(Pipeline::for_job(source, spec)?) };
    let train = pipeline(Source::open(d, Split::Train, runtime)?.truncate(d.max_train_samples))?;
    let test = if spec.eval.enabled && train.source.labels().is_some() && Source::has_split(d, Split::Test, runtime)? {
        Some(pipeline(Source::open(d, Split::Test, runtime)?)?)
    } else {
        None
    };
    Ok((train, test))
}

/// Steps per epoch and the step the run ends at, for `n_train` samples
/// split over `world` ranks.
fn schedule(spec: &JobSpec, n_train: usize, world: usize) -> Result<(u64, u64)> {
    let g = spec.train.batch_size;
    if !g.is_multiple_of(world) {
        bail!("train.batch_size = {g} must be divisible by the world size {world} (every rank takes an equal slice)");
    }
    let spe = steps_per_epoch(n_train, g, spec.data.last_batch);
    if spe == 0 {
        bail!("train.batch_size = {g} is larger than the {n_train} training samples");
    }
    let total = match spec.train.max_steps {
        0 => spec.train.epochs * spe,
        m => m.min(spec.train.epochs * spe),
    };
    Ok((spe, total))
}

/// The job's checkpoint location, reached now: bad credentials or a
/// missing bucket stop the job at start, not at its first checkpoint.
fn open_store(spec: &JobSpec, runtime: tokio::runtime::Handle) -> Result<Arc<CheckpointStore>> {
    let store = Arc::new(CheckpointStore::open(&spec.checkpoint.uri, runtime)?);
    store
        .complete_steps()
        .with_context(|| format!("checkpoint.uri = {}: the checkpoint location cannot be read", spec.checkpoint.uri))?;
    Ok(store)
}

/// Trains one step on `batch`; with several ranks, also ends it on every
/// rank at once ([`end_of_step`], a collective every rank takes part in):
/// how much longer this rank computed than the fastest (counted in the
/// step's exchange times) and whether any rank was asked to stop. With one
/// rank, the stop is this process's flag.
fn train_step<B: Kernels>(
    t: &mut Trainer<B>,
    batch: &TrainBatch,
    epoch: u64,
    comm: Option<&Comm>,
    stop: &AtomicBool,
) -> Result<(StepMetrics, StepEnd)> {
    let (rank, world) = comm.map_or((0, 1), |c| (c.rank(), c.world()));
    let mut m = t
        .train_step(batch, epoch)
        .with_context(|| format!("rank {rank} of {world}, step {}", t.step))?;
    let stop = stop.load(Ordering::Relaxed);
    let end = match comm {
        Some(comm) if world > 1 => {
            let end = end_of_step(m.compute_s, stop, comm)
                .with_context(|| format!("rank {rank} of {world}, step {}: end-of-step exchange", t.step))?;
            m.comm.add(&comm.take_times());
            end
        }
        _ => StepEnd { lag_s: 0.0, stop },
    };
    Ok((m, end))
}

/// Evaluates after the trainer's step when it ends an evaluation epoch or
/// the run (and a test split and classifiers exist); logs the accuracy.
fn evaluate_if_due<B: Kernels>(t: &Trainer<B>, test: Option<&Pipeline>, epoch: u64, spe: u64, total: u64) -> Result<Option<EvalResult>> {
    let epoch_done = t.step.is_multiple_of(spe);
    let due = (epoch_done && (epoch + 1).is_multiple_of(t.spec.eval.every_epochs)) || t.step == total;
    let Some(test) = test.filter(|_| due) else { return Ok(None) };
    let rank = t.comm.as_ref().map_or(0, |c| c.rank());
    let Some(r) = evaluate(t, test).with_context(|| format!("rank {rank}: evaluation"))? else {
        return Ok(None);
    };
    tracing::info!(
        epoch,
        step = t.step,
        linear_accuracy = r.linear,
        mlp_accuracy = r.mlp,
        samples = r.samples,
        "online heads (live signal): test accuracy; the frozen-feature figure is `amdim-worker probe`"
    );
    Ok(Some(r))
}

/// The checkpoint writer's upload events, told to `observer`; a committed
/// checkpoint also rewrites the run history (uploader thread).
fn upload_events_and_history(observer: Arc<dyn RunObserver>, history: Arc<RunHistory>) -> OnUpload {
    let told = upload_events(observer);
    Arc::new(move |event| {
        let written = matches!(event, crate::checkpoint::writer::UploadEvent::Written { .. });
        told(event);
        if written {
            history.write_or_warn();
        }
    })
}

/// Trains the job on this process's backend.
pub fn run<B: Kernels>(spec: JobSpec, device: B::Device, options: RunOptions, runtime: tokio::runtime::Handle) -> Result<RunSummary> {
    let run_started = Instant::now();
    let (train, test) = open_pipelines(&spec, &runtime)?;
    let (rank, world) = options.comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world()));
    let n_train = train.source.len();
    let (spe, total) = schedule(&spec, n_train, world)?;
    let store = open_store(&spec, runtime.clone())?;
    let mut t = Trainer::<B>::new(spec.clone(), Some(train.source.n_classes()), device);
    t.last_step = total;
    if let Some(comm) = &options.comm {
        t = t.with_comm(comm.clone());
    }
    let resumed = if options.resume {
        resume_agreed(&mut t, &store, options.comm.as_deref())?
    } else {
        None
    };
    if options.resume && resumed.is_none() {
        tracing::info!(uri = %spec.checkpoint.uri, "no checkpoint to resume from; starting at step 0");
    }
    let history = Arc::new(RunHistory::open(
        &spec.checkpoint.uri,
        rank == 0,
        options.resume.then_some(t.step),
        runtime,
    )?);
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
    let observer = options.observer.clone();
    let mut policy = CheckpointPolicy::new(&spec.checkpoint, total, rank == 0);
    let mut writer = AsyncCheckpointer::new(store, t.plan.clone(), policy.retention())
        .on_upload(upload_events_and_history(observer.clone(), history.clone()));
    if let Some(r) = resumed.filter(|_| rank == 0) {
        // Rank 0 vouches for the complete checkpoint its generation resumed
        // from, which a generation ended early may have written but never
        // got registered (the final one, say).
        observer.on_resumed(r.step, r.bytes);
    }
    observer.on_start(t.step, total)?;
    let (mut last_eval, mut stopped_early, mut last_step) = (None, false, None);
    let (mut checkpoint_blocked, mut total_wait) = (0.0f64, 0.0f64);
    // Batches are built ahead on a second thread, in step order; at most
    // data.prefetch_batches wait in the queue (back-pressure).
    let steps = StepRange {
        seed: spec.job.seed,
        global_batch: spec.train.batch_size,
        steps_per_epoch: spe,
        start: t.step,
        end: total,
        rank,
        world,
    };
    // A stop ends the run between steps. With several ranks it is acted on
    // only once every rank has agreed on it at the end of a step, so they
    // all stop after the same one; their batch builders then end when the
    // loop drops its receiver, never on the flag, so that no rank runs out
    // of batches before the others.
    let several = world > 1;
    let never = AtomicBool::new(false);
    let builder_stop = if several { &never } else { options.stop.as_ref() };
    let mut stop_agreed = false;
    std::thread::scope(|scope| -> Result<()> {
        let rx = spawn_batches(scope, &train, steps, spec.data.prefetch_batches, builder_stop);
        let mut window = StepWindow::new();
        while t.step < total {
            if stop_agreed || (!several && options.stop.load(Ordering::Relaxed)) {
                stopped_early = true;
                break;
            }
            let waiting = Instant::now();
            let Ok(next) = rx.recv() else { break };
            let (epoch, batch) = next.with_context(|| format!("rank {rank}: building the batch of step {}", t.step + 1))?;
            let waited = waiting.elapsed().as_secs_f64();
            total_wait += waited;
            observer.on_batch(t.step, epoch, &batch.indices)?;
            let (m, end) = train_step(&mut t, &batch, epoch, options.comm.as_deref(), &options.stop)?;
            stop_agreed = end.stop;
            let trained_s = waiting.elapsed().as_secs_f64();
            observer.on_update(t.step);
            window.add(batch.n * world, waited, &m);
            if m.skipped {
                tracing::warn!(step = m.step, "non-finite loss: update skipped");
            }
            if t.step.is_multiple_of(spec.train.log_every) || t.step == total {
                let record = window.close(t.step, epoch, &m, train.health.skipped(), history.elapsed_s());
                if crate::logging::step_lines() {
                    log_step(&record, total, (world > 1).then(|| param_checksum(&t)).as_deref());
                }
                history.push(HistoryRecord::Step(record.clone()));
                last_step = Some(record);
            }
            if let Some(r) = evaluate_if_due(&t, test.as_ref(), epoch, spe, total)? {
                observer.on_eval(&r);
                history.push(HistoryRecord::Eval(EvalRecord {
                    step: t.step,
                    epoch,
                    elapsed_s: history.elapsed_s(),
                    linear_accuracy: r.linear,
                    mlp_accuracy: r.mlp,
                    samples: r.samples,
                }));
                last_eval = Some(r);
            }
            let checkpoint_s = match policy.after_step(t.step, writer.busy()) {
                CheckpointDecision::Take => checkpoint(&t, &mut writer, step_position(t.step, spe).epoch),
                CheckpointDecision::Defer => {
                    tracing::info!(
                        step = t.step,
                        "previous checkpoint still uploading: this one is taken once it has finished"
                    );
                    observer.on_checkpoint_deferred(t.step);
                    0.0
                }
                CheckpointDecision::Skip => 0.0,
            };
            checkpoint_blocked += checkpoint_s;
            let timing = StepTiming {
                samples: batch.n,
                data_wait_s: waited,
                checkpoint_s,
                total_s: trained_s + checkpoint_s,
                lag_s: end.lag_s,
            };
            observer.on_step(&StepReport {
                metrics: &m,
                timing: &timing,
                world,
                last_eval: last_eval.as_ref(),
                skipped_samples: train.health.skipped(),
                read_retries: train.read_retries(),
            });
        }
        drop(rx);
        Ok(())
    })?;
    if stopped_early && policy.on_stop() {
        checkpoint_blocked += checkpoint(&t, &mut writer, step_position(t.step, spe).epoch);
    }
    // The last checkpoint must land before the run reports success.
    let landed = writer.wait().context("the final checkpoint could not be written");
    history.write_or_warn();
    landed?;
    if stopped_early {
        tracing::info!(step = t.step, "stopped on request after writing a checkpoint; resume with --resume");
    }
    let (skipped_samples, data_read_retries) = (train.health.skipped(), train.read_retries());
    tracing::info!(
        skipped_samples,
        data_read_retries,
        "training data: {skipped_samples} undecodable sample(s) skipped, {data_read_retries} read(s) retried"
    );
    Ok(RunSummary {
        steps: t.step,
        stopped_early,
        data_wait_s: total_wait,
        checkpoint_blocked_s: checkpoint_blocked,
        last_eval,
        skipped_samples,
        data_read_retries,
        wall_s: run_started.elapsed().as_secs_f64(),
        last_step,
        checkpoint_uri: spec.checkpoint.uri.clone(),
        history_uri: (rank == 0).then(|| history.uri().to_string()),
    })
}
