//! Checkpoints (docs/architecture.md §7) on any `object_store` location.
//!
//! `format` turns the model and optimizer state into safetensors bytes with
//! the authors' PyTorch names and back; `store` writes a checkpoint folder
//! (data files first, manifest last), lists complete ones, loads and verifies
//! the newest good one (falling back past corrupt or partial ones, never past
//! a store that cannot be read), and prunes to the newest K; `writer` uploads snapshots in the background.

pub mod format;
pub mod store;
pub mod writer;

pub use store::{CheckpointStore, LoadedCheckpoint};
