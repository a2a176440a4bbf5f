//! The AMDIM worker library: everything `amdim-worker` does, behind a thin CLI.
//!
//! - `model/`: architecture plan, parameters, forward passes (docs/model.md §1–2, §4)
//! - `loss/`: multiscale NCE with mixtures, classifier loss (docs/model.md §3–4)
//! - `optim/`: Adam and the learning-rate schedule (docs/model.md §6)
//! - `data/`: dataset readers and augmentations (docs/model.md §5, docs/architecture.md §4)
//! - `checkpoint/`: safetensors state and object-store checkpoints (docs/architecture.md §7)
//! - `train/`: the training step, evaluation, and the training loop with its
//!   checkpoint policy, run observers, progress bar and run history
//! - `collective/`: collectives (TCP, NCCL), launching a process's ranks, and
//!   data-parallel exchanges (docs/architecture.md §5–6)
//! - `agent/`: the worker under a coordinator (register, heartbeat, train assigned generations)
//! - `probe/`: frozen-feature evaluation (linear probe, k-NN) of a checkpoint
//! - `logging`: log lines (text or JSON) and the progress bars they print above
//! - `metrics`: the Prometheus series of a worker (docs/architecture.md §9)
//! - `backend`: CPU (flex) or CUDA backend selection (and `with_backend!`),
//!   and the per-lane CPU thread pools
//! - `cli/`: one file per `amdim-worker` subcommand (flags and `run`), and the
//!   benchmarks under `cli/bench/`

pub mod agent;
pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod collective;
pub mod data;
pub mod logging;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod probe;
pub mod train;
