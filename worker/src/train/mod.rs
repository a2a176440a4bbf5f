//! Training: one optimisation step ([`step`]), evaluation of the online
//! classifiers ([`eval`]), the loop over the global sample order with
//! checkpoints and clean stops ([`run`]), and the throughput benchmark
//! ([`bench`]).

pub mod bench;
pub mod eval;
pub mod run;
pub mod step;

pub use step::{StepMetrics, Trainer};
