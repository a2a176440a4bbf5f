//! `amdim-worker bench-collective --cuda` (feature `cuda`): NCCL all-reduce
//! and all-gather of burn CUDA tensors through the same device path that
//! training uses (collective/device.rs), at world 1 on one GPU, with
//! - the values checked (world 1: every result equals the input),
//! - time, algorithm bandwidth and bus bandwidth (nccl-tests definitions;
//!   the bus factor is 0 at world 1, so busbw is reported for the record),
//! - the same operation through the host path (device → host → NCCL →
//!   host → device, what training did before) timed next to it: the
//!   device path moving no bytes over PCIe is what makes it many times
//!   faster on large buffers, which the check script asserts.
//!
//! Nothing here is used by training.

use super::CollResult;
use super::nccl::NcclCollective;
use super::ops::{Comm, Exchange};
use super::tcp::RendezvousSpec;
use anyhow::{Context, Result, bail};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use std::time::{Duration, Instant};

type Gpu = burn::backend::Cuda;

/// One size of one operation, device path and host path.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceCollectiveResult {
    pub op: String,
    pub world: usize,
    pub bytes: usize,
    pub device_seconds: f64,
    pub algbw_gb_s: f64,
    pub busbw_gb_s: f64,
    /// The same exchange through host buffers.
    pub host_seconds: f64,
    pub host_over_device: f64,
    /// Every output element equal to the expected value.
    pub values_ok: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

fn check(op: &str, got: Vec<f32>, want: &[f32]) -> bool {
    let ok = got.len() == want.len() && got.iter().zip(want).all(|(a, b)| a == b);
    if !ok {
        tracing::error!(op, "device collective returned wrong values");
    }
    ok
}

fn flat(t: Tensor<Gpu, 1>) -> burn::tensor::ops::FloatTensor<Gpu> {
    t.into_primitive().tensor()
}

fn device_result(r: Option<CollResult<burn::tensor::ops::FloatTensor<Gpu>>>) -> Result<Tensor<Gpu, 1>> {
    match r {
        Some(out) => Ok(Tensor::from_primitive(TensorPrimitive::Float(out?))),
        None => bail!("the NCCL collective offered no device path"),
    }
}

/// Measures `sizes_mib` on CUDA device `device` at world 1.
pub fn run(device: usize, sizes_mib: &[usize], iters: usize, timeout: Duration) -> Result<Vec<DeviceCollectiveResult>> {
    crate::backend::check_cuda(device)?;
    let spec = RendezvousSpec {
        rank: 0,
        world: 1,
        rendezvous: "127.0.0.1:0".into(),
        advertise_host: "127.0.0.1".into(),
        timeout,
        shared_memory: false,
    };
    let comm = Comm::new(Box::new(NcclCollective::connect(&spec, device).context("NCCL world 1")?));
    let dev = burn::backend::cuda::CudaDevice::new(device);
    let mut out = Vec::new();
    for &mib in sizes_mib {
        let n = (mib << 20) / 4;
        let values: Vec<f32> = (0..n).map(|i| (i % 4093) as f32 - 2046.0).collect();
        let x = Tensor::<Gpu, 1>::from_data(TensorData::new(values.clone(), [n]), &dev);
        for op in ["all_reduce", "all_gather"] {
            let run_device = || -> Result<Tensor<Gpu, 1>> {
                let t = flat(x.clone());
                match op {
                    "all_reduce" => device_result(super::device::all_reduce_sum::<Gpu>(&t, &comm, Exchange::AllReduce)),
                    _ => device_result(super::device::all_gather::<Gpu>(&t, &comm)),
                }
            };
            let values_ok = check(op, run_device()?.into_data().to_vec::<f32>().unwrap_or_default(), &values);
            let device_seconds = timed(iters, || run_device().map(drop))?;
            // The old path: to the host, through NCCL on staged buffers, back.
            let host_seconds = timed(iters, || {
                let mut host = x.clone().into_data().to_vec::<f32>().unwrap_or_default();
                comm.run(Exchange::AllReduce, n, |c| match op {
                    "all_reduce" => c.all_reduce_sum(&mut host),
                    _ => c.all_gather(&host).map(|g| host = g),
                })?;
                let back = Tensor::<Gpu, 1>::from_data(TensorData::new(host, [n]), &dev);
                futures::executor::block_on(flat(back).client.sync()).map_err(|e| anyhow::anyhow!("{e:?}"))
            })?;
            let bytes = n * 4;
            let algbw = bytes as f64 / device_seconds / 1e9;
            let w = comm.world() as f64;
            let factor = if op == "all_reduce" { 2.0 * (w - 1.0) / w } else { (w - 1.0) / w };
            out.push(DeviceCollectiveResult {
                op: op.into(),
                world: 1,
                bytes,
                device_seconds,
                algbw_gb_s: algbw,
                busbw_gb_s: algbw * factor,
                host_seconds,
                host_over_device: host_seconds / device_seconds,
                values_ok,
            });
        }
    }
    comm.check()?;
    Ok(out)
}
