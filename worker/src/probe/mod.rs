//! Frozen-feature evaluation of an encoder (`amdim-worker probe`): the
//! number a self-supervised representation is judged by. r1 features of a
//! labelled dataset's training and test splits (evaluation transform, BN in
//! eval mode) go through a linear probe (multinomial logistic regression on
//! standardised features, one fixed recipe: [`linear::Recipe`]) and a
//! k-NN classifier (k = 20, cosine, similarity-weighted vote), fitted on the
//! training split only and scored on the test split; raw pixels and a
//! randomly initialised encoder of the same shape go through the same probe
//! as baselines.
//!
//! - `features`: evaluation views to feature rows (pixels or encoder r1)
//! - `standardise`, `softmax`, `linear`, `knn`: the maths, pure functions
//! - `matmul`: the gemm products they use
//! - `weights`: which weights (checkpoint, file, random init)
//! - `run`: one probe end to end; `report`: its rows and table
//!
//! Never trains the encoder and never writes checkpoints.

mod features;
mod knn;
mod linear;
mod matmul;
mod progress;
mod report;
mod run;
mod softmax;
mod standardise;
mod weights;

pub use linear::Recipe;
pub use report::{Report, Row, RowKind, table};
pub use run::{ProbeRequest, probe};
