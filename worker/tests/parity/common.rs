//! Helpers shared by the parity tests (`tests/parity.rs`,
//! `tests/parity_gradients.rs`): running the PyTorch side
//! (`tests/fixtures/parity_case.py` on `worker/python/amdim_torch.py`),
//! writing job files, and reading safetensors. Holds no assertion of its own
//! beyond "the tool ran".

#![allow(dead_code)]

use amdim_shared::spec::{LossSpec, ModelSpec};
use amdim_worker::checkpoint::format::{HostState, read_model};
use amdim_worker::model::params::to_vec;
use amdim_worker::model::{ModelPlan, ParamStore};
use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PYTHON: &str = "/usr/bin/python3";
pub const BIN: &str = env!("CARGO_BIN_EXE_amdim-worker");
pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/parity_case.py");
pub const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/amdim_torch.py");

/// Fails with the install hint when PyTorch is missing.
pub fn check_torch() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import torch, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "PyTorch is missing: `apt-get install python3-torch python3-numpy` (.ci/run installs them)"
    );
}

/// stdout of a finished command, or a panic with its stderr.
pub fn stdout_of(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `parity_case.py` with `args`; its stdout.
pub fn fixture(args: &[String]) -> String {
    check_torch();
    let out = Command::new(PYTHON).arg(FIXTURE).args(args).output().unwrap();
    stdout_of(out, &format!("parity_case.py {}", args.join(" ")))
}

/// One parity configuration.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub size: usize,
    pub ndf: usize,
    pub n_rkhs: usize,
    pub depth: usize,
    pub use_bn: bool,
    pub reg_lambda: f64,
}

impl Case {
    /// The parity configurations: 32 px (ndf 8, D 64, depth 2) and 128 px
    /// (ndf 4, D 32, depth 1); the authors' λ = 5e-2 with BN, the paper's
    /// 4e-2 without.
    pub fn small(size: usize, use_bn: bool) -> Self {
        let (ndf, n_rkhs, depth) = if size == 32 { (8, 64, 2) } else { (4, 32, 1) };
        Case {
            size,
            ndf,
            n_rkhs,
            depth,
            use_bn,
            reg_lambda: if use_bn { 0.05 } else { 0.04 },
        }
    }

    /// Perturbed weights, inputs and the reference values under `dir` (see parity_case.py).
    pub fn make(&self, dir: &Path) {
        let args = [
            "make".to_string(),
            dir.display().to_string(),
            self.size.to_string(),
            self.ndf.to_string(),
            self.n_rkhs.to_string(),
            self.depth.to_string(),
            (self.use_bn as u8).to_string(),
            self.reg_lambda.to_string(),
        ];
        fixture(&args);
    }

    /// A job file of this model (synthetic data) at `dir/job.toml`.
    pub fn job(&self, dir: &Path, extra: &str) -> PathBuf {
        let path = dir.join("job.toml");
        let Case {
            size,
            ndf,
            n_rkhs,
            depth,
            use_bn,
            reg_lambda,
        } = *self;
        std::fs::write(
            &path,
            format!(
                "[data]\nformat = \"synthetic\"\n\
                 [model]\nimage_size = {size}\nndf = {ndf}\nn_rkhs = {n_rkhs}\ndepth = {depth}\nuse_bn = {use_bn}\n\
                 [loss]\nreg_lambda = {reg_lambda}\n{extra}"
            ),
        )
        .unwrap();
        path
    }
}

/// Every float32 and int64 tensor of a safetensors file, as f64, with its shape.
pub fn read_tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter_map(|(name, v)| {
            let values: Vec<f64> = match v.dtype() {
                Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                    .collect(),
                Dtype::I64 => v
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64)
                    .collect(),
                _ => return None,
            };
            Some((name, (v.shape().to_vec(), values)))
        })
        .collect()
}

/// The model of `case` (classifiers for 10 classes when `classifiers`) with
/// the weights of `path` loaded, every tensor required.
pub fn load_model(case: &Case, path: &Path, classifiers: bool) -> (ModelPlan, ParamStore<Flex>) {
    let spec = model_spec(case);
    let loss = LossSpec {
        reg_lambda: case.reg_lambda,
        ..LossSpec::default()
    };
    let plan = amdim_worker::model::plan(&spec, &loss, classifiers.then_some(10));
    let device = Default::default();
    let init = ParamStore::<Flex>::init(&plan, 0, &device);
    let fallback = HostState {
        values: init.to_host(),
        counters: init.counters.clone(),
    };
    let bytes = std::fs::read(path).unwrap();
    let state = read_model(&plan, &bytes, &path.display().to_string(), &fallback, true).unwrap_or_else(|e| panic!("{e}"));
    let params = ParamStore::from_host(state.values, state.counters, &device);
    (plan, params)
}

pub fn model_spec(case: &Case) -> ModelSpec {
    ModelSpec {
        image_size: case.size,
        ndf: case.ndf,
        n_rkhs: case.n_rkhs,
        depth: case.depth,
        use_bn: case.use_bn,
        ..ModelSpec::default()
    }
}

/// Host values (as f32) to a Flex tensor of `shape`.
pub fn tensor<const D: usize>(values: &[f64], shape: [usize; D]) -> Tensor<Flex, D> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

/// A tensor's values as f64.
pub fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f64> {
    to_vec(t).into_iter().map(f64::from).collect()
}

/// max over elements of |a − b| / (abs + rel·|b|): ≤ 1 passes.
pub fn worst_excess(a: &[f64], b: &[f64], rel: f64, abs: f64) -> (f64, usize) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| ((x - y).abs() / (abs + rel * y.abs()), i))
        .fold((0.0, 0), |best, cur| if cur.0 > best.0 { cur } else { best })
}
