//! Losses: the multiscale NCE objective (docs/model.md §3, with mixtures) and the
//! online classifiers' loss (docs/model.md §4). Pure tensor functions; no parameters.

pub mod classifier;
pub mod fused;
pub mod nce;
