//! `amdim-worker agent`: a worker under a coordinator (docs/architecture.md §1, §8). It
//! registers (its devices and the address where it listens when it is rank
//! 0), heartbeats with its progress, and obeys the reply: train an assigned
//! generation (rank, world, rendezvous, resume), stop it, or wait. When its
//! part ends it reports how (finished, stopped, or the error — e.g. a lost
//! peer). It survives the coordinator going away: it retries with backoff,
//! and registers again when the coordinator no longer knows it (stopping
//! any training first). Training itself is `train::run`'s; what the agent
//! learns from it comes through the observers of [`observer`]. A stop is
//! bounded ([`stopping`]): a part still running `--stop-grace-s` after it
//! has its collectives cancelled, and one that outlives that is given up
//! (reported failed, then the agent exits). Which devices a part runs on
//! is [`devices`]'. Each part's log lines go to the coordinator and to a
//! stored object through [`log_ship`].

mod devices;
mod log_ship;
mod observer;
mod registration;
mod stopping;

use crate::collective::launch::{LocalRank, WorldLayout};
use crate::train::run::{RunOptions, run};
use crate::with_backend;
use amdim_shared::auth::BearerToken;
use amdim_shared::proto::v1 as pb;
use amdim_shared::session::{HeartbeatSession, WorkerClient};
use amdim_shared::spec::BackendKind;
use amdim_shared::spec::JobSpec;
use anyhow::{Context, Result, bail};
use observer::{CheckpointCommits, PartObservers, Progress};
use pb::heartbeat_response::Command;
use pb::worker_service_client::WorkerServiceClient;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stopping::{Overdue, PartStop};

pub use log_ship::PartLogLayer;

/// Who this agent is and where its coordinator is.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub coordinator: String,
    pub name: String,
    /// Host or IP other workers reach this one at.
    pub advertise_host: String,
    pub devices: u32,
    /// The CUDA device of the first local rank (`--first-device`); None:
    /// the job's `runtime.device`.
    pub first_device: Option<usize>,
    /// How long a part told to stop may take before its collectives are
    /// cancelled (`--stop-grace-s`).
    pub stop_grace: Duration,
    /// The join token the coordinator may require.
    pub join_token: Option<String>,
    /// CA of the coordinator's TLS certificate (https:// addresses).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Set while registered with the coordinator (`/readyz`).
    pub ready: Arc<AtomicBool>,
    /// Set on SIGINT/SIGTERM: stop the current part (it writes a checkpoint
    /// when it is rank 0), report it, and return.
    pub shutdown: Arc<AtomicBool>,
    /// Test mode: where each part logs the sample indices it trains.
    pub sample_log_dir: Option<std::path::PathBuf>,
}

struct Training {
    job_id: String,
    generation: u32,
    stop: Arc<PartStop>,
    progress: Arc<Progress>,
    /// Complete checkpoints (step, bytes) not yet committed to the coordinator.
    written: std::sync::mpsc::Receiver<(u64, u64)>,
    handle: JoinHandle<Result<bool>>,
}

/// A port free now on `host`, for the rendezvous this worker hosts as rank 0.
fn free_port(host: &str) -> Result<u16> {
    let l = std::net::TcpListener::bind((host, 0)).with_context(|| format!("--advertise-host {host}: cannot listen"))?;
    Ok(l.local_addr()?.port())
}

fn start_training(a: pb::Assignment, settings: &AgentSettings, runtime: tokio::runtime::Handle) -> Result<Training> {
    let mut spec = JobSpec::from_toml_with_env(&a.spec_toml, &[]).with_context(|| format!("job {}: spec", a.job_id))?;
    let local_ranks = a.local_ranks.max(1);
    if local_ranks > settings.devices {
        bail!(
            "job {}: assigned {local_ranks} ranks but this agent has {} device(s) (--devices)",
            a.job_id,
            settings.devices
        );
    }
    if spec.runtime.backend == BackendKind::Cuda {
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        spec.runtime.device = devices::first_device(spec.runtime.device, settings.first_device, local_ranks as usize, visible.as_deref())
            .map_err(|e| anyhow::anyhow!("job {}: {e}", a.job_id))?;
    }
    let layout = WorldLayout {
        world_size: a.world_size as usize,
        first_rank: a.rank as usize,
        local_ranks: local_ranks as usize,
        rendezvous: Some(a.rendezvous.clone()),
        advertise_host: settings.advertise_host.clone(),
    };
    layout.local().with_context(|| format!("job {}: assignment", a.job_id))?;
    let device = spec.runtime.device;
    let stop = PartStop::new(settings.stop_grace);
    let progress = Arc::new(Progress::default());
    let (stop2, resume) = (stop.clone(), a.resume);
    let (tx, written) = std::sync::mpsc::channel();
    let observers = PartObservers {
        job_id: a.job_id.clone(),
        generation: a.generation,
        first_rank: a.rank as usize,
        progress: progress.clone(),
        commits: Arc::new(CheckpointCommits::new(tx)),
        sample_log_dir: settings.sample_log_dir.clone(),
    };
    let logs = log_ship::PartLog::start(&a.job_id, a.generation, &spec.checkpoint.uri);
    let handle = std::thread::Builder::new()
        .name(format!("train-{}-g{}", a.job_id, a.generation))
        .spawn(move || -> Result<bool> {
            // One thread per local rank, each on its own device; the first
            // reports progress (every rank is at the same step).
            let done = layout.launch(&spec, |LocalRank { rank, spec, comm }| {
                let _log = logs.capture(rank);
                if let Some(comm) = &comm {
                    stop2.register(comm);
                }
                let options = RunOptions {
                    resume,
                    stop: stop2.flag(),
                    comm,
                    observer: observers.for_rank(rank),
                };
                let summary = with_backend!(spec, |B, device| run::<B>(spec.clone(), device, options, runtime.clone())?);
                Ok(!summary.stopped_early)
            })?;
            Ok(done.into_iter().all(|trained_to_the_end| trained_to_the_end))
        })?;
    tracing::info!(job = %a.job_id, generation = a.generation, rank = a.rank, local_ranks, world = a.world_size, device, resume = a.resume, "training started");
    Ok(Training {
        job_id: a.job_id,
        generation: a.generation,
        stop,
        progress,
        written,
        handle,
    })
}

/// Registers the checkpoints of (job, generation) completed since the last call.
async fn commit_checkpoints(
    client: &mut WorkerClient,
    worker_id: &str,
    job_id: &str,
    generation: u32,
    written: &std::sync::mpsc::Receiver<(u64, u64)>,
) {
    while let Ok((step, bytes)) = written.try_recv() {
        let request = pb::CommitCheckpointRequest {
            worker_id: worker_id.to_string(),
            job_id: job_id.to_string(),
            generation,
            step,
            bytes,
        };
        if let Err(e) = client.commit_checkpoint(request).await {
            tracing::warn!(step, reason = %e.message(), "could not register a checkpoint with the coordinator");
        }
    }
}

/// Connects to the coordinator of `settings`, retrying with backoff until
/// it answers or the agent is told to shut down.
async fn connect(settings: &AgentSettings, token: &BearerToken) -> Result<WorkerClient> {
    let coordinator = settings.coordinator.as_str();
    let endpoint = amdim_shared::tls::endpoint("--coordinator", coordinator, settings.tls_ca_file.as_deref())?;
    let mut wait = Duration::from_millis(200);
    loop {
        if settings.shutdown.load(Ordering::Relaxed) {
            anyhow::bail!("stopped by a signal while the coordinator {coordinator} was unreachable");
        }
        match endpoint.connect().await {
            Ok(c) => return Ok(WorkerServiceClient::with_interceptor(c, token.clone())),
            Err(e) => {
                tracing::warn!(coordinator, reason = %e, retry_s = wait.as_secs_f64(), "coordinator unreachable");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Stops `t` and waits (polling, never blocking the runtime) until its
/// thread has ended or the stop's bound has passed.
async fn stop_within_bound(t: &Training, reason: &str) {
    t.stop.request(reason);
    while !t.handle.is_finished() {
        if let Overdue::Abandon(_) = t.stop.check(Instant::now()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reports the end of `t`'s part to the coordinator (best effort). A
/// thread still running is given up, never joined: the error returned
/// says why, and the agent must exit (the thread may hold its devices).
async fn report(client: &mut WorkerClient, worker_id: &str, t: Training) -> Result<()> {
    let Training {
        job_id,
        generation,
        stop,
        progress,
        written,
        handle,
    } = t;
    let abandoned = match stop.check(Instant::now()) {
        Overdue::Abandon(why) if !handle.is_finished() => Some(why),
        _ => None,
    };
    let (ok, message) = match &abandoned {
        Some(why) => (false, why.clone()),
        None => match handle.join() {
            Ok(Ok(true)) => (true, String::new()),
            Ok(Ok(false)) => (false, "stopped".to_string()),
            Ok(Err(e)) => (false, format!("{e:#}")),
            Err(_) => (false, "the training thread panicked".to_string()),
        },
    };
    let step = progress.step.load(Ordering::Relaxed);
    // The run has ended: every checkpoint it completed is in the channel.
    commit_checkpoints(client, worker_id, &job_id, generation, &written).await;
    tracing::info!(job = %job_id, generation, ok, message = %message, "part ended");
    log_ship::end_part(client, &job_id, generation, ok, &message).await;
    let request = pb::FinishRequest {
        worker_id: worker_id.to_string(),
        job_id,
        generation,
        ok,
        message,
        step,
    };
    if let Err(e) = client.finish(request).await {
        tracing::warn!(reason = %e.message(), "could not report the end of a part");
    }
    match abandoned {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// Runs the agent until the process is stopped.
pub fn run_agent(settings: AgentSettings, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let port = free_port(&settings.advertise_host)?;
    let rendezvous_addr = format!("{}:{port}", settings.advertise_host);
    let token = BearerToken::new(settings.join_token.as_deref()).map_err(|e| anyhow::anyhow!("join token: {e}"))?;
    runtime.block_on(async {
        let mut client = connect(&settings, &token).await?;
        let _shipper = log_ship::spawn_shipper(client.clone());
        let mut current: Option<Training> = None;
        loop {
            if settings.shutdown.load(Ordering::Relaxed) {
                return Ok(());
            }
            let Some(reg) = registration::register(&mut client, &settings, &token, &rendezvous_addr).await? else {
                return Ok(());
            };
            let worker_id = reg.worker_id;
            let interval = Duration::from_millis(u64::from(reg.heartbeat_interval_ms.max(50)));
            tracing::info!(worker = %worker_id, coordinator = %settings.coordinator, rendezvous = %rendezvous_addr, "registered");
            settings.ready.store(true, Ordering::Relaxed);
            let mut session: Option<HeartbeatSession> = None;
            loop {
                if settings.shutdown.load(Ordering::Relaxed) {
                    settings.ready.store(false, Ordering::Relaxed);
                    if let Some(t) = current.take() {
                        stop_within_bound(&t, "the agent is shutting down").await;
                        report(&mut client, &worker_id, t).await?;
                    }
                    tracing::info!(worker = %worker_id, "agent stopped");
                    return Ok(());
                }
                if let Some(t) = &current {
                    commit_checkpoints(&mut client, &worker_id, &t.job_id, t.generation, &t.written).await;
                }
                // A stop that is overdue cancels the part's collectives, then gives it up.
                let overdue = current
                    .as_ref()
                    .filter(|t| !t.handle.is_finished())
                    .map(|t| t.stop.check(Instant::now()));
                if (current.as_ref().is_some_and(|t| t.handle.is_finished()) || matches!(overdue, Some(Overdue::Abandon(_))))
                    && let Some(t) = current.take()
                {
                    report(&mut client, &worker_id, t).await?;
                }
                let beat = pb::HeartbeatRequest {
                    worker_id: worker_id.clone(),
                    job_id: current.as_ref().map(|t| t.job_id.clone()).unwrap_or_default(),
                    generation: current.as_ref().map_or(0, |t| t.generation),
                    step: current.as_ref().map_or(0, |t| t.progress.step.load(Ordering::Relaxed)),
                    total_steps: current.as_ref().map_or(0, |t| t.progress.total.load(Ordering::Relaxed)),
                    stats: current
                        .as_ref()
                        .and_then(|t| *t.progress.stats.lock().unwrap_or_else(|e| e.into_inner())),
                };
                match HeartbeatSession::beat_on(&mut client, &mut session, beat).await {
                    Ok(reply) => match reply.command {
                        Some(Command::Assign(a)) => {
                            if let Some(t) = current.take() {
                                stop_within_bound(&t, "a new assignment").await;
                                report(&mut client, &worker_id, t).await?;
                            }
                            let (job, generation) = (a.job_id.clone(), a.generation);
                            match start_training(a, &settings, runtime_handle()) {
                                Ok(t) => current = Some(t),
                                Err(e) => {
                                    let request = pb::FinishRequest {
                                        worker_id: worker_id.clone(),
                                        job_id: job,
                                        generation,
                                        ok: false,
                                        message: format!("{e:#}"),
                                        step: 0,
                                    };
                                    let _ = client.finish(request).await;
                                }
                            }
                        }
                        Some(Command::Stop(s)) => {
                            if let Some(t) = &current
                                && t.stop.request(&s.reason)
                            {
                                tracing::warn!(job = %t.job_id, reason = %s.reason, "stopping the current generation");
                            }
                        }
                        Some(Command::Idle(_)) | Some(Command::Continue(_)) | None => {}
                    },
                    Err(s) if s.code() == tonic::Code::NotFound => {
                        tracing::warn!(reason = %s.message(), "the coordinator does not know this worker: registering again");
                        if let Some(t) = current.take() {
                            stop_within_bound(&t, "the coordinator no longer knows this worker").await;
                            if !t.handle.is_finished() {
                                bail!(
                                    "job {}: the part did not end after a stop; exiting so that its devices are freed",
                                    t.job_id
                                );
                            }
                            let _ = t.handle.join();
                        }
                        break;
                    }
                    Err(s) => {
                        tracing::warn!(reason = %s.message(), "heartbeat failed");
                        client = match connect(&settings, &token).await {
                            Ok(c) => c,
                            Err(e) => {
                                // Stopped while cut off: the part still ends with its checkpoint.
                                if let Some(t) = current.take() {
                                    stop_within_bound(&t, "the agent is shutting down").await;
                                    if t.handle.is_finished() {
                                        let _ = t.handle.join();
                                    }
                                }
                                return Err(e);
                            }
                        };
                    }
                }
                tokio::time::sleep(interval).await;
            }
        }
    })
}

fn runtime_handle() -> tokio::runtime::Handle {
    tokio::runtime::Handle::current()
}
