//! The AMDIM model: architecture plan, parameter storage, and forward passes
//! of the encoder, online classifiers and mixture map.
//!
//! Owns the maths of spec §1–2 and §4; the losses live in `loss/`, the
//! optimisation in `optim/`.

pub mod encoder;
pub mod kernels;
pub mod layers;
pub mod params;
pub mod plan;

pub use encoder::{BnMode, BnStats, Embeddings};
pub use params::ParamStore;
pub use plan::{ModelPlan, plan};
