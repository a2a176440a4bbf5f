//! Code shared by the coordinator, `amdimctl` and the workers.
//!
//! This crate owns the job spec (parsing, environment overrides, field-named
//! validation), the deterministic random streams and the global sample order
//! (pure functions), and the checkpoint layout and manifest. It must stay free
//! of ML dependencies: the coordinator links it without burn.

pub mod checkpoint;
pub mod imagefolder;
pub mod order;
pub mod rng;
pub mod shards;
pub mod spec;
pub mod storage;
