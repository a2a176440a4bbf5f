//! Collectives on device memory: the interface ([`DeviceCollective`]) and
//! the glue that hands burn's CUDA tensors to it (feature `cuda`).
//!
//! Design. [`super::Collective`] stays the host-buffer interface every
//! backend implements; a collective that can also work on device memory
//! says so through `Collective::device()`, which returns this trait (only
//! the NCCL backend does). `collective/ops.rs` tries the device path first for
//! the three per-step exchanges (gathered r5/r7 targets forward, their
//! reduce-scattered gradients backward, synchronised BatchNorm statistics
//! both ways) and for the gradient buckets; the functions here answer
//! `None` when the tensor is not a burn CUDA tensor or the collective has
//! no device path, and ops.rs then takes the host path (CPU ranks, and CUDA
//! ranks on `dist.backend = "tcp"`).
//!
//! How a burn CUDA tensor reaches NCCL (burn 0.21, cubecl 0.10, no fusion:
//! `burn::backend::Cuda` is `CubeBackend<CudaRuntime, f32, i32, u8>`, whose
//! float primitive is a `CubeTensor`):
//! - the primitive of a generic backend is recognised as
//!   `FloatTensor<Cuda>` by a safe `Any` downcast (no trait bound added to
//!   the training code, no transmute);
//! - it is made contiguous (`burn_cubecl::kernel::into_contiguous`, a no-op
//!   for the flat tensors ops.rs passes);
//! - the output is a fresh burn buffer (`float_empty`), so NCCL never
//!   writes into memory another tensor (e.g. autodiff's saved input) shares;
//! - `client.get_resource(handle)` yields the cubecl `GpuResource` whose
//!   `ptr` is the `CUdeviceptr` (offset of the handle included); the
//!   returned guard keeps the allocation alive until NCCL is done;
//! - ordering before: burn gives no access to its `CUstream`, so the
//!   input's producer is waited for with `client.sync()`, a fence on burn's
//!   stream for this thread (event record + event wait), not a device-wide
//!   synchronise, once per exchange (one per bucket, not per tensor);
//! - ordering after: NCCL runs on the collective's own stream of the same
//!   (primary) context; the call returns once an event recorded after it
//!   has completed (polled by the watchdog), so burn's later kernels on its
//!   stream read finished results. No copy goes through the host.
//!
//! Copies that remain on the device path, and why:
//! - gradient buckets: one device-side concatenation of the bucket's
//!   gradients into one contiguous buffer (NCCL takes one pointer; burn
//!   allocates each gradient separately), and the scaled result is split
//!   back by views, i.e. one extra device read+write of the gradient bytes;
//! - all-reduce outputs (BN statistics, buckets) go to a fresh buffer
//!   rather than in place, for the aliasing reason above (same bytes as an
//!   in-place call, one more allocation from burn's pool);
//! - nothing else: no host staging, no pageable allocation.
//!
//! Must not: decide what to exchange (ops.rs does), or keep device
//! pointers beyond one call.

use super::CollResult;

/// Device-memory collectives over f32 buffers on the collective's device,
/// each returning once the result is in place (or failing within the
/// collective's timeout, naming the rank when it can).
pub trait DeviceCollective: Send + Sync {
    /// Element-wise sum over ranks of `len` f32 from `send` into `recv`.
    ///
    /// # Safety
    /// `send` and `recv` are device pointers on this collective's CUDA
    /// device to at least `len` f32 each; the work that wrote `send` has
    /// completed; nothing else touches `recv` until the call returns.
    unsafe fn all_reduce_sum_device(&self, send: u64, recv: u64, len: usize) -> CollResult<()>;
    /// Every rank's `len` f32 from `send`, in rank order, into `recv` (world·len).
    ///
    /// # Safety
    /// As [`DeviceCollective::all_reduce_sum_device`], `recv` holding world·`len` f32.
    unsafe fn all_gather_device(&self, send: u64, recv: u64, len: usize) -> CollResult<()>;
    /// The sum over ranks of `send` (world·`recv_len`), this rank's slice into `recv`.
    ///
    /// # Safety
    /// As [`DeviceCollective::all_reduce_sum_device`], `send` holding world·`recv_len` f32.
    unsafe fn reduce_scatter_sum_device(&self, send: u64, recv: u64, recv_len: usize) -> CollResult<()>;
}

#[cfg(feature = "cuda")]
pub(crate) use cuda::{all_gather, all_reduce_sum, reduce_scatter_sum};

/// Without CUDA there is no device path: ops.rs always takes the host one.
#[cfg(not(feature = "cuda"))]
mod host_only {
    use super::super::ops::{Comm, Exchange};
    use burn::tensor::backend::Backend;
    use burn::tensor::ops::FloatTensor;

    pub(crate) fn all_gather<B: Backend>(_t: &FloatTensor<B>, _comm: &Comm) -> Option<super::CollResult<FloatTensor<B>>> {
        None
    }
    pub(crate) fn all_reduce_sum<B: Backend>(
        _t: &FloatTensor<B>,
        _comm: &Comm,
        _kind: Exchange,
    ) -> Option<super::CollResult<FloatTensor<B>>> {
        None
    }
    pub(crate) fn reduce_scatter_sum<B: Backend>(_t: &FloatTensor<B>, _comm: &Comm) -> Option<super::CollResult<FloatTensor<B>>> {
        None
    }
}
#[cfg(not(feature = "cuda"))]
pub(crate) use host_only::{all_gather, all_reduce_sum, reduce_scatter_sum};

#[cfg(feature = "cuda")]
mod cuda {
    use super::super::CollectiveError;
    use super::super::ops::{Comm, Exchange};
    use super::{CollResult, DeviceCollective};
    use burn::tensor::backend::Backend;
    use burn::tensor::ops::{FloatTensor, FloatTensorOps};
    use burn::tensor::{FloatDType, Shape, TensorMetadata};
    use std::any::Any;

    type Gpu = burn::backend::Cuda;
    type Cube = FloatTensor<Gpu>;

    /// `t` as burn's CUDA tensor, when `B` is burn's CUDA backend.
    fn as_cuda<B: Backend>(t: &FloatTensor<B>) -> Option<Cube> {
        (t as &dyn Any).downcast_ref::<Cube>().cloned()
    }

    /// A CUDA tensor back as `B`'s (the same type: checked by `as_cuda`).
    fn from_cuda<B: Backend>(t: Cube) -> Option<FloatTensor<B>> {
        (Box::new(t) as Box<dyn Any>).downcast::<FloatTensor<B>>().ok().map(|b| *b)
    }

    fn device_err(op: &'static str, message: String) -> CollectiveError {
        CollectiveError::Invalid { op, message }
    }

    /// The device pointer of `t` (contiguous) and the guard that keeps its
    /// allocation alive.
    fn pointer(op: &'static str, t: &Cube) -> CollResult<(u64, impl Sized)> {
        let res = t
            .client
            .get_resource(t.handle.clone())
            .map_err(|e| device_err(op, format!("device pointer of a burn CUDA tensor: {e:?}")))?;
        let ptr = res.resource().ptr;
        Ok((ptr, res))
    }

    fn contiguous(t: Cube) -> Cube {
        if t.is_contiguous() {
            t
        } else {
            burn_cubecl::kernel::into_contiguous(t)
        }
    }

    /// Runs `f(send, recv)` on the device collective with a fresh output of
    /// `out_len` elements; None when this is no CUDA tensor or no device path.
    fn exchange<B: Backend>(
        op: &'static str,
        t: &FloatTensor<B>,
        comm: &Comm,
        kind: Exchange,
        out_len: impl FnOnce(usize, usize) -> usize,
        f: impl FnOnce(&dyn DeviceCollective, u64, u64, usize) -> CollResult<()>,
    ) -> Option<CollResult<FloatTensor<B>>> {
        if !comm.has_device_path() {
            return None;
        }
        let input = contiguous(as_cuda::<B>(t)?);
        let n = input.shape().num_elements();
        let out: Cube = <Gpu as FloatTensorOps<Gpu>>::float_empty(Shape::new([out_len(n, comm.world())]), &input.device, FloatDType::F32);
        let result = comm.run(kind, n, |c| {
            let device = c.device().ok_or_else(|| device_err(op, "no device path".into()))?;
            // Burn's kernels that wrote `input` finish first (its stream only).
            futures::executor::block_on(input.client.sync()).map_err(|e| device_err(op, format!("burn's CUDA stream: {e:?}")))?;
            let (send, _send_guard) = pointer(op, &input)?;
            let (recv, _recv_guard) = pointer(op, &out)?;
            f(device, send, recv, n)
        });
        Some(
            result
                .map(|()| from_cuda::<B>(out))
                .and_then(|o| o.ok_or_else(|| device_err(op, "backend type".into()))),
        )
    }

    /// Every rank's flat `t` (n elements) in rank order: W·n elements.
    pub(crate) fn all_gather<B: Backend>(t: &FloatTensor<B>, comm: &Comm) -> Option<CollResult<FloatTensor<B>>> {
        exchange::<B>(
            "all_gather",
            t,
            comm,
            Exchange::Gather,
            |n, w| n * w,
            // SAFETY: both pointers come from live, contiguous burn buffers
            // of n and W·n f32 whose producers have finished.
            |d, s, r, n| unsafe { d.all_gather_device(s, r, n) },
        )
    }

    /// The element-wise sum over ranks of flat `t`.
    pub(crate) fn all_reduce_sum<B: Backend>(t: &FloatTensor<B>, comm: &Comm, kind: Exchange) -> Option<CollResult<FloatTensor<B>>> {
        // SAFETY: as above, n f32 each.
        exchange::<B>(
            "all_reduce",
            t,
            comm,
            kind,
            |n, _| n,
            |d, s, r, n| unsafe { d.all_reduce_sum_device(s, r, n) },
        )
    }

    /// The sum over ranks of flat `t` (W·n elements), this rank's n.
    pub(crate) fn reduce_scatter_sum<B: Backend>(t: &FloatTensor<B>, comm: &Comm) -> Option<CollResult<FloatTensor<B>>> {
        let w = comm.world();
        // SAFETY: as above, W·n and n f32.
        exchange::<B>(
            "reduce_scatter",
            t,
            comm,
            Exchange::Gather,
            |n, w| n / w,
            move |d, s, r, n| unsafe { d.reduce_scatter_sum_device(s, r, n / w) },
        )
    }
}
