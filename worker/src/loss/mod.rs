//! Losses: the multiscale NCE objective (spec §3, with mixtures) and the
//! online classifiers' loss (spec §4). Pure tensor functions; no parameters.

pub mod classifier;
pub mod nce;
