//! `amdim-worker`: train AMDIM, embed images with a trained encoder, score
//! view pairs, and benchmark training throughput. A thin shell over the
//! `amdim_worker` library.

use amdim_worker::cli::dist::DistArgs;
use amdim_worker::cli::{backend_name, embed, gradients, load_spec};
use amdim_worker::metrics::WorkerMetrics;
use amdim_worker::train::run::{RunOptions, run};
use amdim_worker::with_backend;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(name = "amdim-worker", version, about = "AMDIM training worker")]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "AMDIM_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a job on this process (Ctrl-C writes a checkpoint and stops).
    Train {
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Continue from the newest complete checkpoint under checkpoint.uri.
        #[arg(long)]
        resume: bool,
        /// Serve Prometheus /metrics (and /healthz, /readyz) at this address.
        #[arg(long, env = "AMDIM_METRICS_LISTEN")]
        metrics_listen: Option<String>,
        #[command(flatten)]
        dist: DistArgs,
    },
    /// Work for a coordinator: register, then train the generations it assigns.
    Agent {
        /// The coordinator's gRPC address.
        #[arg(long, env = "AMDIM_COORDINATOR")]
        coordinator: String,
        /// A name for listings (default: host name and process id).
        #[arg(long, env = "AMDIM_WORKER_NAME")]
        name: Option<String>,
        /// Host or IP the other workers reach this one at.
        #[arg(long, env = "AMDIM_ADVERTISE_HOST", default_value = "127.0.0.1")]
        advertise_host: String,
        /// Devices this agent offers: a job with scheduling.devices_per_worker
        /// = D runs D ranks here, one thread each, on devices
        /// runtime.device … runtime.device + D − 1.
        #[arg(long, env = "AMDIM_DEVICES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        devices: u32,
        /// A file holding the join token (or AMDIM_JOIN_TOKEN).
        #[arg(long, env = "AMDIM_JOIN_TOKEN_FILE")]
        join_token_file: Option<PathBuf>,
        /// Serve Prometheus /metrics, /healthz and /readyz (ready once
        /// registered with the coordinator) at this address.
        #[arg(long, env = "AMDIM_METRICS_LISTEN")]
        metrics_listen: Option<String>,
        /// CA certificate (PEM) of the coordinator's TLS certificate, for an
        /// https:// --coordinator (default: the system's roots).
        #[arg(long, env = "AMDIM_TLS_CA_FILE")]
        tls_ca_file: Option<PathBuf>,
        /// Test mode: append the sample indices of every step this agent
        /// trains to DIR/<job>-g<generation>-r<rank>.log (`step epoch i i …`).
        #[arg(long, env = "AMDIM_SAMPLE_LOG_DIR", hide = true)]
        sample_log_dir: Option<PathBuf>,
    },
    /// Write the loss and rank-averaged gradients of one training step
    /// (safetensors, state_dict names): checks W ranks against one.
    Gradients {
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Global step whose batch is used (default: 0, or the checkpoint's).
        #[arg(long)]
        step: Option<u64>,
        /// Start from the newest checkpoint under checkpoint.uri.
        #[arg(long)]
        resume: bool,
        /// Written by rank 0.
        #[arg(long)]
        out: PathBuf,
        /// Gather targets without summing their gradients over ranks (the
        /// known bug; only to show that it changes the gradients).
        #[arg(long)]
        plain_gather: bool,
        #[command(flatten)]
        dist: DistArgs,
    },
    /// All-reduce and all-gather bandwidth between processes over loopback TCP.
    BenchCollective {
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
    },
    /// Write r1 (and optionally r5, r7) features of images as safetensors.
    Embed {
        #[arg(long)]
        weights: PathBuf,
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// A float32 NCHW .npy (already normalised) or a folder of JPEG/PNG images.
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long)]
        r5: bool,
        #[arg(long)]
        r7: bool,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
    },
    /// Print every loss term of one training-mode forward pass on two views.
    Score {
        #[arg(long)]
        weights: PathBuf,
        #[arg(long, short = 'c')]
        config: PathBuf,
        #[arg(long)]
        view1: PathBuf,
        #[arg(long)]
        view2: PathBuf,
        /// int64 [2, B]: each image's 5→5 source location (row·5 + col) in view 1 and view 2.
        #[arg(long)]
        r5_locations: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Measure the input pipeline: decode + two training views of the job's photos.
    BenchData {
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Photos of the training split held in memory and cycled through.
        #[arg(long, default_value_t = 256)]
        files: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Steps of the simulated training loop (batches of train.batch_size).
        #[arg(long, default_value_t = 10)]
        steps: u64,
        /// Duration of one simulated training step, e.g. the GPU's step time.
        #[arg(long, default_value_t = 0.0)]
        step_ms: f64,
        #[arg(long)]
        json: bool,
    },
    /// Measure a checkpoint of the job's model: step blocked, upload, restore.
    BenchCheckpoint {
        #[arg(long, short = 'c')]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Measure training and forward throughput on synthetic images.
    Bench {
        #[arg(long, short = 'c')]
        config: PathBuf,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AMDIM_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A flag set (and `what` logged) at the first SIGINT or SIGTERM.
fn stop_on_signal(runtime: &tokio::runtime::Runtime, what: &'static str) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    runtime.spawn(async move {
        let signal = amdim_shared::shutdown::signalled().await;
        tracing::warn!(signal, "{what}");
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

/// Keeps freed tensor buffers in the heap instead of returning them to the
/// kernel: glibc maps every allocation above its (adaptive) threshold
/// afresh, so each step's large activations and gradients page-faulted in
/// zeroed pages again. With buffers up to 32 MiB (glibc's maximum) reused
/// and no trimming, the CIFAR step is 3–10 % faster for ~3 % more peak RSS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_buffers() {
    // SAFETY: plain allocator settings, changed before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_buffers() {}

fn main() -> Result<()> {
    keep_freed_buffers();
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    match cli.command {
        Command::Train {
            config,
            resume,
            metrics_listen,
            dist,
        } => {
            let spec = load_spec(&config)?;
            if let Some(addr) = &metrics_listen {
                amdim_worker::metrics::serve(runtime.handle(), addr, Arc::new(AtomicBool::new(true)))?;
            }
            let stop = stop_on_signal(&runtime, "finishing the current step, writing a checkpoint, then stopping");
            let handle = runtime.handle().clone();
            let summaries = dist.run_local(|rank| {
                let spec = dist.spec_for(&spec, rank);
                let comm = dist.connect(&spec, rank)?;
                let options = RunOptions {
                    resume,
                    stop: stop.clone(),
                    comm,
                    progress: None,
                    on_checkpoint: None,
                    metrics: Some(WorkerMetrics::global().for_run(&spec.job.name, rank)),
                    sample_log: None,
                };
                Ok(with_backend!(spec, |B, device| run::<B>(
                    spec.clone(),
                    device,
                    options,
                    handle.clone()
                )?))
            })?;
            for summary in summaries {
                println!("{}", serde_json::to_string(&summary)?);
            }
        }
        Command::Agent {
            coordinator,
            name,
            advertise_host,
            join_token_file,
            metrics_listen,
            tls_ca_file,
            sample_log_dir,
            devices,
        } => {
            let ready = Arc::new(AtomicBool::new(false));
            let shutdown = stop_on_signal(&runtime, "stopping: the current part ends with a checkpoint, then this agent exits");
            if let Some(addr) = &metrics_listen {
                amdim_worker::metrics::serve(runtime.handle(), addr, ready.clone())?;
            }
            let join_token = amdim_shared::auth::read_token(
                std::env::var("AMDIM_JOIN_TOKEN").ok(),
                join_token_file.as_deref(),
                "--join-token-file",
            )
            .map_err(anyhow::Error::msg)?;
            let name = name.unwrap_or_else(|| {
                let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                format!("{}-{}", host.trim(), std::process::id())
            });
            let settings = amdim_worker::agent::AgentSettings {
                coordinator,
                name,
                advertise_host,
                devices,
                join_token,
                tls_ca_file,
                ready,
                shutdown,
                sample_log_dir,
            };
            amdim_worker::agent::run_agent(settings, &runtime)?;
        }
        Command::Gradients {
            config,
            step,
            resume,
            out,
            plain_gather,
            dist,
        } => {
            let spec = load_spec(&config)?;
            let request = gradients::GradientRequest {
                step,
                resume,
                exact_gather: !plain_gather,
            };
            let handle = runtime.handle().clone();
            let results = dist.run_local(|rank| {
                let spec = dist.spec_for(&spec, rank);
                let comm = dist.connect(&spec, rank)?;
                let (metrics, bytes) = with_backend!(spec, |B, device| gradients::gradients::<B>(&spec, device, comm, &request, &handle)?);
                if rank == 0 {
                    std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
                }
                Ok(metrics)
            })?;
            for metrics in results {
                println!("{}", serde_json::to_string(&metrics)?);
            }
        }
        Command::BenchCollective {
            world,
            sizes_mib,
            iters,
            timeout_s,
            tcp_only,
            cuda_device,
            rank,
            rendezvous,
            json,
        } => {
            use amdim_worker::dist::bench;
            let timeout = std::time::Duration::from_secs_f64(timeout_s);
            if let Some(device) = cuda_device {
                #[cfg(feature = "cuda")]
                println!(
                    "{}",
                    serde_json::to_string(&amdim_worker::dist::device_bench::run(device, &sizes_mib, iters.max(1), timeout)?)?
                );
                #[cfg(not(feature = "cuda"))]
                return Err(amdim_worker::backend::BackendError::NotBuilt).context(format!("bench-collective --cuda-device {device}"));
                #[cfg(feature = "cuda")]
                return Ok(());
            }
            let results = match (rank, rendezvous) {
                (Some(rank), Some(rendezvous)) => {
                    let spec = amdim_worker::dist::tcp::RendezvousSpec {
                        rank,
                        world,
                        rendezvous,
                        advertise_host: "127.0.0.1".into(),
                        timeout,
                        shared_memory: !tcp_only,
                    };
                    let r = bench::participate(&spec, &sizes_mib, iters.max(1))?;
                    if rank == 0 {
                        println!("{}", serde_json::to_string(&r)?);
                    }
                    return Ok(());
                }
                _ => bench::launch(world, &sizes_mib, iters.max(1), timeout, tcp_only)?,
            };
            let parsed: Vec<bench::CollectiveResult> = serde_json::from_str(results.trim()).context("participant output")?;
            if json {
                println!("{}", results.trim());
            } else {
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
            }
        }
        Command::Embed {
            weights,
            config,
            input,
            output,
            r5,
            r7,
            batch_size,
        } => {
            let spec = load_spec(&config)?;
            let request = embed::EmbedRequest {
                weights: &weights,
                input: &input,
                output: &output,
                with_r5: r5,
                with_r7: r7,
                batch: batch_size,
            };
            let n = with_backend!(spec, |B, device| embed::embed::<B>(&spec, &request, device)?);
            eprintln!("wrote features of {n} images to {}", output.display());
        }
        Command::Score {
            weights,
            config,
            view1,
            view2,
            r5_locations,
            json,
        } => {
            let spec = load_spec(&config)?;
            let r = with_backend!(spec, |B, device| embed::score::<B>(
                &spec,
                &weights,
                &view1,
                &view2,
                r5_locations.as_deref(),
                device
            )?);
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "1t5 {:.6}  1t7 {:.6}  5t5 {:.6}  reg {:.6}  total {:.6}",
                    r.loss_1t5, r.loss_1t7, r.loss_5t5, r.reg, r.loss_total
                );
            }
        }
        Command::BenchData {
            config,
            files,
            seconds,
            steps,
            step_ms,
            json,
        } => {
            let spec = load_spec(&config)?;
            let sim = amdim_worker::data::bench::StepSimulation { steps, step_ms };
            let r = amdim_worker::data::bench::bench_data(&spec, files, seconds, sim, runtime.handle())?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{r:#?}");
            }
        }
        Command::BenchCheckpoint { config, json } => {
            let spec = load_spec(&config)?;
            let handle = runtime.handle().clone();
            let r = with_backend!(spec, |B, device| amdim_worker::checkpoint::bench::bench_checkpoint::<B>(
                spec.clone(),
                device,
                handle
            )?);
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{r:#?}");
            }
        }
        Command::Bench { config, steps, json } => {
            let spec = load_spec(&config)?;
            let name = backend_name(spec.runtime.backend);
            let r = with_backend!(spec, |B, device| amdim_worker::train::bench::bench::<B>(
                spec.clone(),
                device,
                steps,
                name
            ));
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{r:#?}");
            }
        }
    }
    Ok(())
}
