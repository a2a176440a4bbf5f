//! The coordinator crate: the coordinator server (`state`: the rules,
//! `server`: gRPC and persistence) and the `amdimctl` client with its job,
//! dataset and checkpoint tools. It links no ML code: job specs are
//! validated with `amdim-shared` alone.

pub mod bench;
pub mod checkpoints;
pub mod client_config;
pub mod dataset;
pub mod jobs;
pub mod local;
pub mod metrics;
pub mod output;
pub mod probe;
pub mod server;
pub mod state;
pub mod store;
