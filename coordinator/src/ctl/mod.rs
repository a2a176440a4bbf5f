//! The client side of the coordinator: what `amdimctl` does (jobs over
//! gRPC, their output formats, where the client finds its coordinator,
//! dataset packing, checkpoint listing and export, run histories and
//! their plots) and the two tools that
//! drive a whole coordinator from outside: `local` (an `amdimctl` command
//! that embeds a coordinator and local agents, then acts as a client of
//! them) and `bench` (`amdim-coordinator bench`, which starts a real
//! coordinator process and talks to it only over the network, through the
//! same client code). Nothing here touches the coordinator's state
//! directly: `local` starts it through `server::Coordinator` and then only
//! calls it, as any client does.

pub mod bench;
pub mod checkpoints;
pub mod client_config;
pub mod dataset;
pub mod health;
pub mod history;
pub mod jobs;
pub mod local;
pub mod output;
pub mod plot;
pub mod probe;
