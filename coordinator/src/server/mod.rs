//! The coordinator server (docs/architecture.md §3, §8): everything that runs inside the
//! `amdim-coordinator` process. `state` holds the rules, pure and without
//! I/O; `store` the SQLite persistence; `wal` its log checkpoints, off the lock; `coordinator` the process around
//! them (one lock, persistence before answering, ticker, recovery);
//! `admission` the registration rate limit (load shedding);
//! `job_service` and `worker_service` the two gRPC services (tokens are
//! checked by interceptors before a call reaches them); `convert` the
//! mapping to gRPC messages; `metrics` the `/metrics` text; `log_buffer`
//! and `log_service` the workers' log lines and their two RPCs. Only
//! [`Coordinator`] and its [`Settings`] are public: the binaries and
//! `amdimctl local` start a coordinator through them (and the binary starts
//! the store's log checkpointer, [`spawn_wal_checkpointer`]).

mod admission;
mod convert;
mod coordinator;
mod job_service;
mod log_buffer;
mod log_service;
mod metrics;
mod state;
mod store;
mod wal;
mod worker_service;

#[cfg(test)]
pub(crate) use convert::event_kind;
pub use coordinator::{Coordinator, Settings};
#[cfg(test)]
pub(crate) use state::EventKind;
pub use wal::spawn_wal_checkpointer;
