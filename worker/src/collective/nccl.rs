//! The NCCL collective backend (feature `cuda`), through cudarc.
//!
//! The ranks first meet over the TCP rendezvous ([`TcpCollective`]), which
//! also stays on as the control plane: rank 0 creates NCCL's unique id and
//! broadcasts it there, and `barrier` runs there so that a missing rank is
//! named. Data collectives run on NCCL on this rank's device.
//!
//! Buffers cross the [`Collective`] interface as host f32 slices, so each
//! call copies host → device, runs NCCL and copies back: correct and simple,
//! but not zero-copy (burn's CUDA tensors are not handed to NCCL directly
//! yet). NCCL itself has no per-call timeout; a lost peer is detected by the
//! TCP control plane at the next barrier. Missing libcuda/libnccl is an error
//! at start, never a panic.

use super::tcp::{RendezvousSpec, TcpCollective};
use super::{CollResult, Collective, CollectiveError};
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};
use std::sync::{Arc, Mutex};

pub struct NcclCollective {
    control: TcpCollective,
    comm: Mutex<Comm>,
    stream: Arc<CudaStream>,
}

// SAFETY: the communicator is only used behind the mutex, one call at a time.
unsafe impl Send for NcclCollective {}
unsafe impl Sync for NcclCollective {}

fn nccl_err(op: &'static str, e: impl std::fmt::Debug) -> CollectiveError {
    CollectiveError::Invalid {
        op,
        message: format!("NCCL/CUDA: {e:?}"),
    }
}

impl NcclCollective {
    /// Meets the other ranks over TCP, then builds the NCCL communicator on CUDA device `device`.
    pub fn connect(spec: &RendezvousSpec, device: usize) -> CollResult<Self> {
        // SAFETY: only probe whether the shared libraries can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CollectiveError::Rendezvous(
                "the CUDA driver library (libcuda.so) cannot be loaded".into(),
            ));
        }
        if !unsafe { cudarc::nccl::sys::is_culib_present() } {
            return Err(CollectiveError::Rendezvous(
                "libnccl.so cannot be loaded (install NCCL or put its lib folder on LD_LIBRARY_PATH)".into(),
            ));
        }
        // Control traffic only: no shared-memory pipes (NCCL has its own,
        // and containers' /dev/shm is small).
        let control = TcpCollective::connect(&RendezvousSpec {
            shared_memory: false,
            ..spec.clone()
        })?;
        let mut id_words = [0f32; 32];
        if control.rank() == 0 {
            let id = Id::new().map_err(|e| nccl_err("nccl unique id", e))?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            bytemuck::cast_slice_mut::<f32, u8>(&mut id_words).copy_from_slice(&bytes);
        }
        control.broadcast(&mut id_words, 0)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (dst, &b) in internal.iter_mut().zip(bytemuck::cast_slice::<f32, u8>(&id_words)) {
            *dst = b as std::ffi::c_char;
        }
        let ctx = CudaContext::new(device).map_err(|e| nccl_err("cuda device", e))?;
        let stream = ctx.new_stream().map_err(|e| nccl_err("cuda stream", e))?;
        let comm = Comm::from_rank(stream.clone(), control.rank(), control.world(), Id::uninit(internal))
            .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(Self {
            control,
            comm: Mutex::new(comm),
            stream,
        })
    }

    fn run(
        &self,
        op: &'static str,
        input: &[f32],
        out_len: usize,
        f: impl FnOnce(
            &Comm,
            &cudarc::driver::CudaSlice<f32>,
            &mut cudarc::driver::CudaSlice<f32>,
        ) -> Result<(), cudarc::nccl::result::NcclError>,
    ) -> CollResult<Vec<f32>> {
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        let send = self.stream.clone_htod(input).map_err(|e| nccl_err(op, e))?;
        let mut recv = self.stream.alloc_zeros::<f32>(out_len).map_err(|e| nccl_err(op, e))?;
        f(&comm, &send, &mut recv).map_err(|e| nccl_err(op, e))?;
        let out = self.stream.clone_dtoh(&recv).map_err(|e| nccl_err(op, e))?;
        self.stream.synchronize().map_err(|e| nccl_err(op, e))?;
        Ok(out)
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
        let out = self.run("all_reduce", buf, buf.len(), |c, s, r| {
            c.all_reduce(s, r, &ReduceOp::Sum).map(|_| ())
        })?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn all_gather_into(&self, local: &[f32], out: &mut [f32]) -> CollResult<()> {
        let got = self.run("all_gather", local, out.len(), |c, s, r| c.all_gather(s, r).map(|_| ()))?;
        out.copy_from_slice(&got);
        Ok(())
    }

    fn reduce_scatter_sum(&self, full: &[f32]) -> CollResult<Vec<f32>> {
        let n = full.len() / self.world();
        self.run("reduce_scatter", full, n, |c, s, r| {
            c.reduce_scatter(s, r, &ReduceOp::Sum).map(|_| ())
        })
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> CollResult<()> {
        let out = self.run("broadcast", buf, buf.len(), |c, s, r| {
            c.broadcast(Some(s), r, root as i32).map(|_| ())
        })?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn barrier(&self) -> CollResult<()> {
        self.control.barrier()
    }
}
