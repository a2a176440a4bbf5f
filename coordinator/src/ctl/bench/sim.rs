//! The scale benchmark's simulated worker agents: each connects on its own
//! TCP connection, registers as an agent does (retrying with backoff and
//! jitter, after the coordinator's retry-after hint when it sheds load,
//! on a new connection after any other failure), then heartbeats every
//! interval on its heartbeat stream; as rank 0 of a job it reports a step
//! per heartbeat and commits a checkpoint every 30 steps. Counts and
//! latencies go to [`Fleet`]; nothing is printed here.

use super::usage::Samples;
use amdim_shared::auth::BearerToken;
use amdim_shared::backoff::{self, Backoff};
use amdim_shared::proto::v1 as pb;
use amdim_shared::session::{HeartbeatSession, WorkerClient};
use anyhow::{Context, Result, bail};
use pb::worker_service_client::WorkerServiceClient;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A simulated agent gives up registering after this long.
const REGISTER_FOR: Duration = Duration::from_secs(180);

/// What all simulated workers share: where to go, when to stop, and what
/// they measured.
pub(super) struct Fleet {
    pub(super) server: String,
    pub(super) token: String,
    pub(super) interval: Duration,
    /// Set when the workers should stop heartbeating.
    pub(super) stop: AtomicBool,
    /// Workers registered, and workers that gave up registering.
    pub(super) registered: AtomicU64,
    pub(super) gave_up: AtomicU64,
    /// Register calls that were tried again, and of those, answers that
    /// shed load (RESOURCE_EXHAUSTED or UNAVAILABLE with retry-after).
    pub(super) retries: AtomicU64,
    pub(super) shed: AtomicU64,
    /// Connections that failed and were tried again.
    pub(super) reconnects: AtomicU64,
    /// Each register call, and the time from a worker's first try to its
    /// registration.
    pub(super) register_calls: Mutex<Samples>,
    pub(super) time_to_register: Mutex<Samples>,
    pub(super) heartbeats: Mutex<Samples>,
}

impl Fleet {
    pub(super) fn new(server: String, token: String, interval: Duration) -> Self {
        Self {
            server,
            token,
            interval,
            stop: AtomicBool::new(false),
            registered: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            register_calls: Mutex::default(),
            time_to_register: Mutex::default(),
            heartbeats: Mutex::default(),
        }
    }

    /// Workers that registered or gave up.
    pub(super) fn settled(&self) -> u64 {
        self.registered.load(Ordering::Relaxed) + self.gave_up.load(Ordering::Relaxed)
    }
}

pub(super) fn take(s: &Mutex<Samples>) -> Samples {
    std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner()))
}

fn with<T>(s: &Mutex<Samples>, f: impl FnOnce(&mut Samples) -> T) -> T {
    f(&mut s.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A client on a new connection, tried again with backoff until `until`.
async fn connect(fleet: &Fleet, backoff: &mut Backoff, until: Instant) -> Result<WorkerClient> {
    let token = BearerToken::new(Some(&fleet.token)).map_err(anyhow::Error::msg)?;
    let endpoint = tonic::transport::Endpoint::from_shared(fleet.server.clone())?.connect_timeout(Duration::from_secs(10));
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(WorkerServiceClient::with_interceptor(channel, token)),
            Err(_) if Instant::now() < until => {
                fleet.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff.wait(None)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {}", fleet.server)),
        }
    }
}

/// Registers as an agent does; returns the client and the worker id.
async fn register(fleet: &Fleet, index: usize) -> Result<(WorkerClient, String)> {
    let first = Instant::now();
    let until = first + REGISTER_FOR;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut client = connect(fleet, &mut backoff, until).await?;
    loop {
        let started = Instant::now();
        let reply = client
            .register(pb::RegisterRequest {
                name: format!("sim-{index}"),
                devices: 1,
                rendezvous_addr: format!("10.0.{}.{}:29500", index / 250, index % 250),
            })
            .await;
        with(&fleet.register_calls, |s| s.record_result(started, &reply));
        let status = match reply {
            Ok(r) => {
                with(&fleet.time_to_register, |s| s.record(first, true));
                return Ok((client, r.into_inner().worker_id));
            }
            Err(status) => status,
        };
        if Instant::now() >= until || status.code() == tonic::Code::Unauthenticated {
            bail!("worker {index}: register: {:?} {}", status.code(), status.message());
        }
        fleet.retries.fetch_add(1, Ordering::Relaxed);
        let shed = backoff::is_shed(&status);
        if shed {
            fleet.shed.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(backoff.wait(backoff::retry_after(&status))).await;
        if !shed {
            // The connection itself may be what failed.
            client = connect(fleet, &mut backoff, until).await?;
        }
    }
}

/// One simulated worker, until `fleet.stop`.
pub(super) async fn simulated_worker(fleet: std::sync::Arc<Fleet>, index: usize) -> Result<()> {
    let (mut c, worker_id) = match register(&fleet, index).await {
        Ok(r) => {
            fleet.registered.fetch_add(1, Ordering::Relaxed);
            r
        }
        Err(e) => {
            fleet.gave_up.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    let interval = fleet.interval;
    // Spread the heartbeats over the interval, as real workers drift apart.
    tokio::time::sleep(interval.mul_f64((index % 1000) as f64 / 1000.0)).await;
    let mut ticker = tokio::time::interval(interval);
    // A late tick is not made up with a burst (an agent sleeps between beats).
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut job: Option<(String, u32, bool)> = None;
    let mut session: Option<HeartbeatSession> = None;
    let mut step = 0u64;
    while !fleet.stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let mut request = pb::HeartbeatRequest {
            worker_id: worker_id.clone(),
            ..Default::default()
        };
        if let Some((job_id, generation, rank0)) = &job {
            request.job_id = job_id.clone();
            request.generation = *generation;
            if *rank0 {
                step += 1;
                request.step = step;
                request.total_steps = 1_000_000;
            }
        }
        let started = Instant::now();
        let reply = HeartbeatSession::beat_on(&mut c, &mut session, request).await;
        with(&fleet.heartbeats, |s| s.record_result(started, &reply));
        let Ok(reply) = reply else { continue };
        use pb::heartbeat_response::Command as C;
        match reply.command {
            Some(C::Assign(a)) => job = Some((a.job_id, a.generation, a.rank == 0)),
            Some(C::Stop(_)) => job = None,
            _ => {}
        }
        if let Some((job_id, generation, true)) = &job
            && step.is_multiple_of(30)
        {
            let _ = c
                .commit_checkpoint(pb::CommitCheckpointRequest {
                    worker_id: worker_id.clone(),
                    job_id: job_id.clone(),
                    generation: *generation,
                    step,
                    bytes: 1 << 20,
                })
                .await;
        }
    }
    Ok(())
}
