//! Real Fashion-MNIST for the end-to-end tests: where Debian's
//! `dataset-fashion-mnist` puts it, the check that it is there, and the
//! tiny job on 64 of its samples that the CLI and history tests train
//! ([`TinyFashionJob`]; what those tests vary is a field of it).

use std::path::{Path, PathBuf};

/// Where `dataset-fashion-mnist` installs the IDX files.
pub const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// Fails the test, saying how to install it, when Fashion-MNIST is missing.
pub fn require_dataset() {
    assert!(
        Path::new(FASHION).join("train-images-idx3-ubyte.gz").exists(),
        "Fashion-MNIST is missing: `apt-get install dataset-fashion-mnist` (.ci/run installs it)"
    );
}

/// A tiny job on real Fashion-MNIST samples: 64 of them, batches of 8 (8
/// steps per epoch), 3 epochs, checkpoints every 3 steps, every step logged.
/// [`TinyFashionJob::new`] and the setters say what each test changes.
#[derive(Clone, Debug)]
pub struct TinyFashionJob<'a> {
    name: &'a str,
    checkpoints: PathBuf,
    milestones: Option<&'a str>,
    bn_refresh_batches: u32,
    extra: &'a str,
}

impl<'a> TinyFashionJob<'a> {
    /// Job `name` checkpointed into the folder `checkpoints`, with the
    /// default LR milestones and one batch to refresh BatchNorm before
    /// evaluating.
    pub fn new(name: &'a str, checkpoints: PathBuf) -> Self {
        Self {
            name,
            checkpoints,
            milestones: None,
            bn_refresh_batches: 1,
            extra: "",
        }
    }

    /// `optim.milestones`, a TOML array.
    pub fn milestones(mut self, milestones: &'a str) -> Self {
        self.milestones = Some(milestones);
        self
    }

    /// `eval.bn_refresh_batches`.
    pub fn bn_refresh_batches(mut self, batches: u32) -> Self {
        self.bn_refresh_batches = batches;
        self
    }

    /// More TOML after the `[checkpoint]` table.
    pub fn extra(mut self, toml: &'a str) -> Self {
        self.extra = toml;
        self
    }

    /// The spec as TOML.
    pub fn toml(&self) -> String {
        let milestones = self.milestones.map(|m| format!("milestones = {m}\n")).unwrap_or_default();
        format!(
            r#"
[job]
name = "{name}"
seed = 7
[data]
format = "idx"
path = "{FASHION}"
max_train_samples = 64
[model]
ndf = 4
n_rkhs = 16
depth = 2
[train]
batch_size = 8
epochs = 3
log_every = 1
[optim]
warmup_steps = 2
{milestones}lr = 1e-3
[eval]
bn_refresh_batches = {bn_refresh_batches}
max_test_samples = 32
[checkpoint]
uri = "{checkpoints}"
every_steps = 3
keep = 0
{extra}
"#,
            name = self.name,
            bn_refresh_batches = self.bn_refresh_batches,
            checkpoints = self.checkpoints.display(),
            extra = self.extra,
        )
    }

    /// Writes the spec to `path`; returns `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.toml()).unwrap();
        path.to_path_buf()
    }
}
