//! The small synthetic job that the tests with a coordinator submit: 64
//! synthetic samples, a tiny encoder, batches of 8, every step logged,
//! collectives that time out after 20 s. What the tests vary (its name,
//! length, checkpoints, workers, extra scheduling lines) is a field of
//! [`SmallJob`].

use std::path::{Path, PathBuf};

/// A small synthetic job spec; [`SmallJob::new`] and the setters say
/// what each test changes.
#[derive(Clone, Debug)]
pub struct SmallJob<'a> {
    name: &'a str,
    max_steps: u64,
    checkpoints: PathBuf,
    every_steps: u64,
    min_workers: u32,
    max_workers: u32,
    scheduling: &'a str,
}

impl<'a> SmallJob<'a> {
    /// Job `name` of `max_steps` steps on one worker, checkpointed every
    /// 10 steps into the folder `checkpoints`.
    pub fn new(name: &'a str, max_steps: u64, checkpoints: PathBuf) -> Self {
        Self {
            name,
            max_steps,
            checkpoints,
            every_steps: 10,
            min_workers: 1,
            max_workers: 1,
            scheduling: "",
        }
    }

    /// Checkpoints every `steps` steps.
    pub fn every_steps(mut self, steps: u64) -> Self {
        self.every_steps = steps;
        self
    }

    /// Runs on `min`..=`max` workers.
    pub fn workers(mut self, min: u32, max: u32) -> Self {
        self.min_workers = min;
        self.max_workers = max;
        self
    }

    /// More lines of the `[scheduling]` table (each ending in a newline).
    pub fn scheduling(mut self, lines: &'a str) -> Self {
        self.scheduling = lines;
        self
    }

    /// The spec as TOML.
    pub fn toml(&self) -> String {
        format!(
            "[job]\nname = \"{}\"\n[data]\nformat = \"synthetic\"\nsynthetic_samples = 64\n\
             [model]\nndf = 8\nn_rkhs = 32\ndepth = 1\n[train]\nbatch_size = 8\nmax_steps = {}\nlog_every = 1\n\
             [dist]\ntimeout_s = 20\n[checkpoint]\nuri = \"{}\"\nevery_steps = {}\nkeep = 0\n\
             [scheduling]\nmin_workers = {}\nmax_workers = {}\n{}",
            self.name,
            self.max_steps,
            self.checkpoints.display(),
            self.every_steps,
            self.min_workers,
            self.max_workers,
            self.scheduling
        )
    }

    /// Writes the spec to `path`; returns `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.toml()).unwrap();
        path.to_path_buf()
    }
}
