//! The client side of the coordinator: what `amdimctl` does (jobs over
//! gRPC, their log lines, their tables and output formats, its exit codes, the job spec
//! flags, where the client finds its coordinator,
//! dataset packing, checkpoint listing and export, run histories and
//! their plots) and the three tools that
//! drive a whole coordinator from outside: `local` (an `amdimctl` command
//! that embeds a coordinator and local agents, then acts as a client of
//! them), `bench` (`amdim-coordinator bench`, which starts a real
//! coordinator process and talks to it only over the network, through the
//! same client code) and `chaos` (`amdim-coordinator chaos`, the soak that
//! runs a coordinator, agents and an S3 server as processes and injects
//! faults into them). Nothing here touches the coordinator's state
//! directly: `local` starts it through `server::Coordinator` and then only
//! calls it, as any client does.

pub mod bench;
pub mod chaos;
pub mod checkpoints;
pub mod client;
pub mod client_config;
pub mod dataset;
pub mod exit;
pub mod health;
pub mod history;
pub mod jobs;
pub mod local;
pub mod logs;
pub mod output;
pub mod plot;
pub mod probe;
mod progress;
pub mod show;
pub mod spec_args;
pub mod table;
pub mod watch;
