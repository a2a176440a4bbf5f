//! Code shared by the coordinator, `amdimctl` and the workers.
//!
//! This crate owns the job spec (parsing, environment overrides, field-named
//! validation), the deterministic random streams and the global sample order
//! (pure functions), the checkpoint layout, manifest and folder I/O, the run history, storage
//! URIs and the retrying of storage requests, the packed-dataset format, the
//! client end of a worker's heartbeat stream, the backoff policy of RPC
//! clients (jitter, the server's retry-after hint), and the metrics registry with the
//! HTTP endpoints (health, readiness, metrics) both processes serve. It must stay free
//! of ML dependencies: the coordinator links it without burn.

pub mod auth;
pub mod backoff;
pub mod checkpoint;
pub mod duration;
pub mod history;
pub mod http;
pub mod imagefolder;
pub mod log_line;
pub mod metrics;
pub mod order;
pub mod procfs;
pub mod proto;
pub mod retry;
pub mod rng;
pub mod seaweed;
pub mod session;
pub mod shards;
pub mod shutdown;
pub mod spec;
pub mod storage;
pub mod tls;
pub mod utc;
