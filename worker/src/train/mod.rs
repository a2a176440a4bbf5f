//! Training: one optimisation step ([`step`]), evaluation of the online
//! classifiers ([`eval`]), and the loop over the global sample order with
//! checkpoints and clean stops ([`run`]), starting where the ranks agree to
//! resume ([`resume`]). Around the loop: when checkpoints
//! fall due ([`checkpoint_policy`]), the logged step ([`log_window`]), the
//! run's `history.jsonl` (`history`), the events a run reports
//! ([`observer`]), the progress bar on a terminal ([`progress`]) and the
//! test-only [`sample_log`].

pub mod checkpoint_policy;
pub mod eval;
mod history;
pub mod log_window;
pub mod observer;
pub mod progress;
pub mod resume;
pub mod run;
pub mod sample_log;
pub mod step;

pub use observer::{Observers, RunObserver, StepReport, StepTiming};
pub use step::{StepMetrics, Trainer};
