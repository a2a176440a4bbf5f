//! `amdim-worker bench-collective`: all-reduce and all-gather of float32
//! buffers between W processes on one host (ring data through shared
//! memory, or loopback TCP with `--tcp-only`), reported as time,
//! algorithm bandwidth and bus bandwidth (nccl-tests definitions: all-reduce
//! bus = alg × 2(W−1)/W, all-gather bus = alg × (W−1)/W, the size being the
//! whole buffer), next to a single-thread memory copy of the same bytes.
//!
//! The launcher starts W copies of this binary as participants; rank 0
//! measures and prints. Nothing here is used by training.

use crate::collective::Collective;
use crate::collective::tcp::{RendezvousSpec, TcpCollective};
use anyhow::{Context, Result, bail};
use std::time::{Duration, Instant};

/// The flags of `amdim-worker bench-collective`.
#[derive(clap::Args)]
pub struct Args {
    /// Processes (ranks).
    #[arg(long, default_value_t = 2)]
    world: usize,
    /// Buffer sizes in MiB.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64,256")]
    sizes_mib: Vec<usize>,
    /// Timed repetitions per size.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    #[arg(long, default_value_t = 120.0)]
    timeout_s: f64,
    /// Keep ring data on loopback TCP instead of shared memory.
    #[arg(long)]
    tcp_only: bool,
    /// NCCL on burn CUDA tensors of this device, world 1 (device path
    /// vs host path; feature `cuda`).
    #[arg(long)]
    cuda_device: Option<usize>,
    /// Internal: run as this participant instead of launching them.
    #[arg(long, hide = true)]
    rank: Option<usize>,
    #[arg(long, hide = true)]
    rendezvous: Option<String>,
    #[arg(long)]
    json: bool,
}

/// `--cuda-device`: NCCL on one device's burn tensors, device path against
/// the host path, as one JSON line.
#[cfg(feature = "cuda")]
fn cuda_device_bench(device: usize, sizes_mib: &[usize], iters: usize, timeout: Duration) -> Result<()> {
    let report = crate::collective::device_bench::run(device, sizes_mib, iters, timeout)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn cuda_device_bench(device: usize, _sizes_mib: &[usize], _iters: usize, _timeout: Duration) -> Result<()> {
    Err(crate::backend::BackendError::NotBuilt).context(format!("bench-collective --cuda-device {device}"))
}

/// Runs `amdim-worker bench-collective`: as a participant when `--rank`
/// and `--rendezvous` are given (rank 0 prints the results as JSON), else
/// launches the participants and prints rank 0's results.
pub fn run(args: Args) -> Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout_s);
    let iters = args.iters.max(1);
    if let Some(device) = args.cuda_device {
        return cuda_device_bench(device, &args.sizes_mib, iters, timeout);
    }
    let results = match (args.rank, args.rendezvous) {
        (Some(rank), Some(rendezvous)) => {
            let spec = RendezvousSpec {
                rank,
                world: args.world,
                rendezvous,
                advertise_host: "127.0.0.1".into(),
                timeout,
                shared_memory: !args.tcp_only,
            };
            let r = participate(&spec, &args.sizes_mib, iters)?;
            if rank == 0 {
                println!("{}", serde_json::to_string(&r)?);
            }
            return Ok(());
        }
        _ => launch(args.world, &args.sizes_mib, iters, timeout, args.tcp_only)?,
    };
    let parsed: Vec<CollectiveResult> = serde_json::from_str(results.trim()).context("participant output")?;
    if args.json {
        println!("{}", results.trim());
        return Ok(());
    }
    println!(
        "{:<11} {:>5} {:>9} {:>10} {:>10} {:>11} {:>11} {:>12}",
        "op", "world", "transport", "MiB", "ms", "algbw GB/s", "busbw GB/s", "bus/memcpy"
    );
    for r in parsed {
        println!(
            "{:<11} {:>5} {:>9} {:>10.1} {:>10.2} {:>11.2} {:>11.2} {:>12.3}",
            r.op,
            r.world,
            r.transport,
            r.bytes as f64 / (1 << 20) as f64,
            r.seconds * 1e3,
            r.algbw_gb_s,
            r.busbw_gb_s,
            r.busbw_over_memcpy
        );
    }
    Ok(())
}

/// One measured size of one operation.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CollectiveResult {
    pub op: String,
    pub world: usize,
    /// "shm" (ring data through shared memory) or "tcp".
    pub transport: String,
    pub bytes: usize,
    pub seconds: f64,
    pub algbw_gb_s: f64,
    pub busbw_gb_s: f64,
    /// A one-thread copy of the same bytes, GB/s.
    pub memcpy_gb_s: f64,
    pub busbw_over_memcpy: f64,
}

fn memcpy_gb_s(bytes: usize) -> f64 {
    let src = vec![1.0f32; bytes / 4];
    let mut dst = vec![0.0f32; bytes / 4];
    dst.copy_from_slice(&src);
    let reps = (256 << 20) / bytes.max(1) + 2;
    let start = Instant::now();
    for _ in 0..reps {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
    }
    (bytes * reps) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Runs the measurements as one participant; rank 0 returns the results.
pub fn participate(spec: &RendezvousSpec, sizes_mib: &[usize], iters: usize) -> Result<Vec<CollectiveResult>> {
    let c = TcpCollective::connect(spec).context("bench-collective rendezvous")?;
    let w = c.world();
    let transport = if c.shares_memory() == (true, true) { "shm" } else { "tcp" };
    let mut out = Vec::new();
    for &mib in sizes_mib {
        let bytes = mib << 20;
        let n = bytes / 4;
        let copy = if c.rank() == 0 { memcpy_gb_s(bytes) } else { 0.0 };
        let mut buf = vec![1.0f32; n];
        let local = vec![1.0f32; n / w];
        let mut gathered = vec![0.0f32; (n / w) * w];
        // Warm-up, then timed rounds (a barrier lines the ranks up first).
        c.all_reduce_sum(&mut buf)?;
        c.barrier()?;
        let start = Instant::now();
        for _ in 0..iters {
            c.all_reduce_sum(&mut buf)?;
        }
        let ar = start.elapsed().as_secs_f64() / iters as f64;
        c.all_gather_into(&local, &mut gathered)?;
        c.barrier()?;
        let start = Instant::now();
        for _ in 0..iters {
            c.all_gather_into(&local, &mut gathered)?;
        }
        let ag = start.elapsed().as_secs_f64() / iters as f64;
        let wf = w as f64;
        for (op, seconds, factor, size) in [
            ("all_reduce", ar, 2.0 * (wf - 1.0) / wf, bytes),
            ("all_gather", ag, (wf - 1.0) / wf, (n / w) * w * 4),
        ] {
            let alg = size as f64 / seconds / 1e9;
            out.push(CollectiveResult {
                op: op.to_string(),
                world: w,
                transport: transport.into(),
                bytes: size,
                seconds,
                algbw_gb_s: alg,
                busbw_gb_s: alg * factor,
                memcpy_gb_s: copy,
                busbw_over_memcpy: if copy > 0.0 { alg * factor / copy } else { 0.0 },
            });
        }
    }
    Ok(out)
}

/// Starts `world` participants of this binary and returns rank 0's output.
pub fn launch(world: usize, sizes_mib: &[usize], iters: usize, timeout: Duration, tcp_only: bool) -> Result<String> {
    if world < 2 {
        bail!("--world must be at least 2");
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let sizes = sizes_mib.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
    let mut children = Vec::new();
    for rank in 0..world {
        let child = std::process::Command::new(&exe)
            .args([
                "bench-collective",
                "--json",
                "--world",
                &world.to_string(),
                "--rank",
                &rank.to_string(),
            ])
            .args(["--rendezvous", &addr, "--sizes-mib", &sizes, "--iters", &iters.to_string()])
            .args(["--timeout-s", &timeout.as_secs_f64().to_string()])
            .args(tcp_only.then_some("--tcp-only"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting participant {rank}"))?;
        children.push(child);
    }
    let mut rank0 = String::new();
    let mut failed = Vec::new();
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            failed.push(rank);
        }
        if rank == 0 {
            rank0 = String::from_utf8_lossy(&out.stdout).into_owned();
        }
    }
    if !failed.is_empty() {
        bail!("participants {failed:?} failed");
    }
    Ok(rank0)
}
