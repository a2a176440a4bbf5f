//! The NCCL collective backend (feature `cuda`).
//!
//! The ranks first meet over the TCP rendezvous ([`TcpCollective`]), which
//! stays on as the control channel: rank 0 creates NCCL's unique id and
//! broadcasts it there, `barrier` runs there, and after an NCCL failure it
//! names the rank that is gone (a dead process's sockets close at once).
//! Data collectives run on NCCL on this rank's device, on device memory
//! ([`DeviceCollective`], used by training through collective/device.rs) or on
//! host slices (the [`Collective`] interface: metrics, straggler times,
//! `bench-collective`; staged through a device buffer).
//!
//! Never hangs: the communicator is created non-blocking
//! (`ncclCommInitRankConfig` with `blocking = 0`, NCCL ≥ 2.17), so init and
//! every collective return at once and are then polled, with
//! `ncclCommGetAsyncError` and a CUDA event recorded after the operation,
//! by [`wait_until_done`] under `dist.timeout_s`; an error or the deadline
//! calls `ncclCommAbort`, which also frees NCCL's kernels stuck on the GPU.
//! The result is a [`CollectiveError`] naming the lost rank when the control
//! channel can tell, and the communicator stays poisoned (every later call
//! fails at once with the same error). A clean drop finalises it.
//! [`Collective::cancel`] (the agent, when a stop is overdue) makes the
//! next poll fail, so a waiting collective aborts within milliseconds.
//!
//! Runtime fit: NCCL is loaded by collective/nccl_lib.rs (`libnccl.so.2` first;
//! the error names library, version found and version wanted); cudarc's
//! driver bindings are pinned to CUDA 12.8 (worker/Cargo.toml); the socket
//! interface follows `--advertise-host` unless `NCCL_SOCKET_IFNAME` is set
//! (collective/netif.rs). NCCL refuses two ranks on one GPU: several ranks
//! sharing a device use `dist.backend = "tcp"`.
//!
//! Must not: own training logic, or wait on the GPU without the watchdog.

use super::device::DeviceCollective;
use super::nccl_lib::{self, Config, IN_PROGRESS, Nccl, NcclResult, RawComm, SUCCESS, UniqueId};
use super::tcp::{RendezvousSpec, TcpCollective};
use super::watchdog::{Status, WaitError, wait_until_done};
use super::{CollResult, Collective, CollectiveError};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use std::ffi::c_void;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

struct State {
    comm: RawComm,
    /// The first failure; the communicator is aborted once it is set.
    failure: Option<CollectiveError>,
}

pub struct NcclCollective {
    control: TcpCollective,
    nccl: &'static Nccl,
    state: Mutex<State>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    timeout: Duration,
    /// Why [`Collective::cancel`] ended this rank's collectives: the next
    /// poll fails, and the waiting thread aborts the communicator itself.
    cancelled: Mutex<Option<String>>,
}

// SAFETY: the raw communicator is only used behind the mutex, one call at a time.
unsafe impl Send for NcclCollective {}
unsafe impl Sync for NcclCollective {}

fn cuda_err(op: &'static str, e: impl std::fmt::Debug) -> CollectiveError {
    CollectiveError::Invalid {
        op,
        message: format!("CUDA: {e:?}"),
    }
}

/// NCCL_SOCKET_IFNAME from the advertised host, set once per process
/// before the first communicator (NCCL reads it at init).
fn choose_socket_interface(advertise_host: &str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let operator = std::env::var("NCCL_SOCKET_IFNAME").ok();
        if let Some(name) = super::netif::nccl_socket_ifname(operator.as_deref(), advertise_host) {
            tracing::info!(interface = %name, advertise_host, "NCCL_SOCKET_IFNAME from --advertise-host");
            // SAFETY: set once, before NCCL starts its threads; no other
            // code of this process writes the environment concurrently.
            unsafe { std::env::set_var("NCCL_SOCKET_IFNAME", name) };
        }
    });
}

impl NcclCollective {
    /// Meets the other ranks over TCP, then builds the NCCL communicator on
    /// CUDA device `device`, within `spec.timeout`.
    pub fn connect(spec: &RendezvousSpec, device: usize) -> CollResult<Self> {
        // SAFETY: only probes whether the shared library can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CollectiveError::Rendezvous(
                "the CUDA driver library (libcuda.so.1) cannot be loaded (CUDA >= 12.8 driver wanted)".into(),
            ));
        }
        let nccl = Nccl::get().map_err(CollectiveError::Rendezvous)?;
        choose_socket_interface(&spec.advertise_host);
        // Control traffic only: no shared-memory pipes (NCCL has its own,
        // and containers' /dev/shm is small).
        let control = TcpCollective::connect(&RendezvousSpec {
            shared_memory: false,
            ..spec.clone()
        })?;
        let mut id_words = [0f32; 32];
        if control.rank() == 0 {
            let mut id = UniqueId { internal: [0; 128] };
            // SAFETY: writes the 128-byte id.
            let r = unsafe { (nccl.get_unique_id)(&mut id) };
            if r != SUCCESS {
                return Err(CollectiveError::Rendezvous(format!("ncclGetUniqueId: {}", nccl.describe(r, None))));
            }
            let bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
            bytemuck::cast_slice_mut::<f32, u8>(&mut id_words).copy_from_slice(&bytes);
        }
        control.broadcast(&mut id_words, 0)?;
        let mut id = UniqueId { internal: [0; 128] };
        for (dst, &b) in id.internal.iter_mut().zip(bytemuck::cast_slice::<f32, u8>(&id_words)) {
            *dst = b as std::ffi::c_char;
        }
        let ctx = CudaContext::new(device).map_err(|e| cuda_err("cuda device", e))?;
        let stream = ctx.new_stream().map_err(|e| cuda_err("cuda stream", e))?;
        let mut comm: RawComm = std::ptr::null_mut();
        let mut config = Config::non_blocking();
        let (rank, world) = (control.rank(), control.world());
        // SAFETY: `comm` and `config` outlive the call; the id came from rank 0.
        let r = unsafe { (nccl.comm_init_rank_config)(&mut comm, world as i32, id, rank as i32, &mut config) };
        let this = Self {
            control,
            nccl,
            state: Mutex::new(State { comm, failure: None }),
            ctx,
            stream,
            timeout: spec.timeout,
            cancelled: Mutex::new(None),
        };
        let deadline = Instant::now() + spec.timeout;
        let ready = if r != SUCCESS && r != IN_PROGRESS {
            if !comm.is_null() {
                this.abort(comm);
            }
            Err(WaitError::Failed {
                reason: nccl.describe(r, None),
                after: Duration::ZERO,
            })
        } else {
            this.settle(comm, deadline)
        };
        if let Err(e) = ready {
            let err = this.fail("ncclCommInitRankConfig", e);
            this.state.lock().unwrap_or_else(|e| e.into_inner()).failure = Some(err.clone());
            return Err(err);
        }
        tracing::info!(rank, world, device, nccl = %nccl.version_text(), library = %nccl.path, "NCCL communicator ready");
        Ok(this)
    }

    /// One poll of the communicator's asynchronous state.
    fn poll_comm(&self, comm: RawComm) -> Status {
        if let Some(reason) = self.cancelled.lock().unwrap_or_else(|e| e.into_inner()).as_deref() {
            return Status::Failed(format!("cancelled on this rank: {reason}"));
        }
        let mut state: NcclResult = SUCCESS;
        // SAFETY: `comm` is live (not destroyed) while `self` is.
        let r = unsafe { (self.nccl.comm_get_async_error)(comm, &mut state) };
        match (r, state) {
            (SUCCESS, SUCCESS) => Status::Done,
            (SUCCESS, IN_PROGRESS) => Status::Pending,
            (SUCCESS, e) | (e, _) => Status::Failed(self.nccl.describe(e, Some(comm))),
        }
    }

    fn abort(&self, comm: RawComm) {
        // SAFETY: aborting a live communicator; it is never used afterwards
        // (the failure poisons it).
        unsafe { (self.nccl.comm_abort)(comm) };
    }

    /// Waits until the communicator has no operation in progress.
    fn settle(&self, comm: RawComm, deadline: Instant) -> Result<(), WaitError> {
        let left = deadline.saturating_duration_since(Instant::now());
        wait_until_done(|| self.poll_comm(comm), || self.abort(comm), left)
    }

    /// The error for a failed or timed-out NCCL wait (the communicator is
    /// already aborted): the control channel names the rank that is gone.
    fn fail(&self, op: &'static str, e: WaitError) -> CollectiveError {
        let nccl = match &e {
            WaitError::Failed { reason, after } => format!("NCCL failed after {after:?}: {reason}"),
            WaitError::TimedOut(t) => format!("NCCL did not finish within {t:?}; communicator aborted"),
        };
        let err = match self.control.barrier() {
            Err(control) => match control.blamed().first() {
                Some(&peer) => CollectiveError::PeerLost {
                    op,
                    peer,
                    message: format!("{nccl}; control channel: {control}"),
                },
                None => CollectiveError::Invalid {
                    op,
                    message: format!("{nccl}; control channel: {control}"),
                },
            },
            Ok(()) => CollectiveError::Invalid {
                op,
                message: format!("{nccl}; every rank still answers on the control channel"),
            },
        };
        tracing::error!(rank = self.control.rank(), error = %err, "NCCL communicator aborted");
        err
    }

    /// Enqueues `f(comm, stream)` and waits (watchdog) until it has run.
    fn launch(&self, op: &'static str, f: impl FnOnce(RawComm, *mut c_void) -> NcclResult) -> CollResult<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &state.failure {
            return Err(e.clone());
        }
        let comm = state.comm;
        self.ctx.bind_to_thread().map_err(|e| cuda_err(op, e))?;
        let deadline = Instant::now() + self.timeout;
        let r = f(comm, self.stream.cu_stream() as *mut c_void);
        let waited = if r != SUCCESS && r != IN_PROGRESS {
            self.abort(comm);
            Err(WaitError::Failed {
                reason: self.nccl.describe(r, Some(comm)),
                after: Duration::ZERO,
            })
        } else {
            // Enqueued once the communicator settles; then the GPU work
            // is done when an event recorded after it completes.
            self.settle(comm, deadline).and_then(|()| {
                let event = self.stream.record_event(None).map_err(|e| WaitError::Failed {
                    reason: format!("cuEventRecord: {e:?}"),
                    after: Duration::ZERO,
                })?;
                let left = deadline.saturating_duration_since(Instant::now());
                wait_until_done(
                    || match self.poll_comm(comm) {
                        Status::Done | Status::Pending => match event.try_is_complete() {
                            Ok(true) => Status::Done,
                            Ok(false) => Status::Pending,
                            Err(e) => Status::Failed(format!("CUDA: {e:?}")),
                        },
                        failed => failed,
                    },
                    || self.abort(comm),
                    left,
                )
            })
        };
        waited.map_err(|e| {
            let err = self.fail(op, e);
            state.failure = Some(err.clone());
            err
        })
    }

    /// A host-slice collective staged through device buffers.
    fn staged(&self, op: &'static str, input: &[f32], out: &mut [f32], f: impl FnOnce(u64, u64) -> CollResult<()>) -> CollResult<()> {
        self.ctx.bind_to_thread().map_err(|e| cuda_err(op, e))?;
        let send: CudaSlice<f32> = self.stream.clone_htod(input).map_err(|e| cuda_err(op, e))?;
        let recv: CudaSlice<f32> = self.stream.alloc_zeros::<f32>(out.len()).map_err(|e| cuda_err(op, e))?;
        {
            let (s, _s) = send.device_ptr(&self.stream);
            let (r, _r) = recv.device_ptr(&self.stream);
            f(s, r)?;
        }
        self.stream.memcpy_dtoh(&recv, out).map_err(|e| cuda_err(op, e))?;
        self.stream.synchronize().map_err(|e| cuda_err(op, e))
    }
}

impl DeviceCollective for NcclCollective {
    unsafe fn all_reduce_sum_device(&self, send: u64, recv: u64, len: usize) -> CollResult<()> {
        let nccl = self.nccl;
        self.launch("all_reduce", |comm, stream| unsafe {
            (nccl.all_reduce)(
                send as *const c_void,
                recv as *mut c_void,
                len,
                nccl_lib::FLOAT32,
                nccl_lib::SUM,
                comm,
                stream,
            )
        })
    }

    unsafe fn all_gather_device(&self, send: u64, recv: u64, len: usize) -> CollResult<()> {
        let nccl = self.nccl;
        self.launch("all_gather", |comm, stream| unsafe {
            (nccl.all_gather)(send as *const c_void, recv as *mut c_void, len, nccl_lib::FLOAT32, comm, stream)
        })
    }

    unsafe fn reduce_scatter_sum_device(&self, send: u64, recv: u64, recv_len: usize) -> CollResult<()> {
        let nccl = self.nccl;
        self.launch("reduce_scatter", |comm, stream| unsafe {
            (nccl.reduce_scatter)(
                send as *const c_void,
                recv as *mut c_void,
                recv_len,
                nccl_lib::FLOAT32,
                nccl_lib::SUM,
                comm,
                stream,
            )
        })
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.control.rank()
    }

    fn world(&self) -> usize {
        self.control.world()
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> CollResult<()> {
        let input = buf.to_vec();
        // SAFETY: staged buffers of buf.len() f32 each, written by the stream.
        self.staged("all_reduce", &input, buf, |s, r| unsafe {
            self.all_reduce_sum_device(s, r, input.len())
        })
    }

    fn all_gather_into(&self, local: &[f32], out: &mut [f32]) -> CollResult<()> {
        // SAFETY: local.len() and world·local.len() f32.
        self.staged("all_gather", local, out, |s, r| unsafe {
            self.all_gather_device(s, r, local.len())
        })
    }

    fn reduce_scatter_sum(&self, full: &[f32]) -> CollResult<Vec<f32>> {
        let mut out = vec![0.0; full.len() / self.world()];
        let n = out.len();
        // SAFETY: world·n and n f32.
        self.staged("reduce_scatter", full, &mut out, |s, r| unsafe {
            self.reduce_scatter_sum_device(s, r, n)
        })?;
        Ok(out)
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> CollResult<()> {
        let input = buf.to_vec();
        let nccl = self.nccl;
        let n = input.len();
        self.staged("broadcast", &input, buf, |s, r| {
            self.launch("broadcast", |comm, stream| unsafe {
                (nccl.broadcast)(
                    s as *const c_void,
                    r as *mut c_void,
                    n,
                    nccl_lib::FLOAT32,
                    root as i32,
                    comm,
                    stream,
                )
            })
        })
    }

    fn barrier(&self) -> CollResult<()> {
        self.control.barrier()
    }

    fn device(&self) -> Option<&dyn DeviceCollective> {
        Some(self)
    }

    fn cancel(&self, reason: &str) {
        // Never ncclCommAbort from here: another thread may be polling the
        // communicator. Its next poll fails and it aborts; the control
        // channel's sockets close now.
        *self.cancelled.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
        self.control.cancel(reason);
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        let (comm, failed) = {
            let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
            (state.comm, state.failure.is_some())
        };
        // An aborted communicator is already freed.
        if comm.is_null() || failed {
            return;
        }
        let _ = self.ctx.bind_to_thread();
        // SAFETY: the communicator is live and used by no one else now.
        let r = unsafe { (self.nccl.comm_finalize)(comm) };
        let settled = (r == SUCCESS || r == IN_PROGRESS)
            && wait_until_done(|| self.poll_comm(comm), || self.abort(comm), Duration::from_secs(10)).is_ok();
        if settled {
            // SAFETY: finalised above; destroyed once.
            unsafe { (self.nccl.comm_destroy)(comm) };
        } else {
            tracing::warn!("NCCL communicator did not finalise within 10 s; aborted");
        }
    }
}
