//! safetensors (de)serialisation of model and optimizer state.
//!
//! Model tensors carry the authors' PyTorch `state_dict` names; BN counters
//! are int64 scalars as in PyTorch. Loading accepts the `encoder.module.`
//! prefix that `nn.DataParallel` adds, and names the first missing or
//! unexpected tensor with its shape. A model file written by training
//! describes itself in its safetensors metadata
//! ([`WeightsInfo`](amdim_shared::checkpoint::WeightsInfo): format version,
//! model section, effective job spec); files without it (older ones, the
//! authors' converted weights) still load given the spec. Optimizer state is
//! stored as `<param>.exp_avg`, `<param>.exp_avg_sq` and `<param>.step`.

use crate::model::plan::{EntryKind, ModelPlan};
use amdim_shared::checkpoint::{WeightsInfo, WeightsMetaError};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{file}: not a readable safetensors file: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: tensor `{name}` (shape {expected:?}) is missing{instead}")]
    Missing {
        file: String,
        name: String,
        expected: Vec<usize>,
        /// Empty, or which unexpected tensor the file has (a renamed layer).
        instead: String,
    },
    #[error(
        "{file}: unexpected tensor `{name}` (shape {found:?}): the model has no tensor of that name (check model.image_size, depth and the checkpoint's origin)"
    )]
    Unexpected { file: String, name: String, found: Vec<usize> },
    #[error("{file}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    Shape {
        file: String,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{file}: tensor `{name}` has dtype {dtype}; expected F32, F64 or I64")]
    Dtype { file: String, name: String, dtype: String },
    #[error("cannot serialise {what}: {message}")]
    Write { what: String, message: String },
    #[error("{file}: {source}")]
    Metadata { file: String, source: WeightsMetaError },
}

/// Host values of every plan entry (floats) plus BN counters.
#[derive(Clone, Debug, PartialEq)]
pub struct HostState {
    pub values: Vec<Vec<f32>>,
    pub counters: Vec<i64>,
}

/// Little-endian bytes of f32 values, as safetensors stores them.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// safetensors bytes of (name, dtype, shape, data) tensors; `what` names them in errors.
pub fn serialize(
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    metadata: Option<HashMap<String, String>>,
    what: &str,
) -> Result<Vec<u8>, FormatError> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.clone(), v)))
        .collect::<Result<_, _>>()
        .map_err(|e| FormatError::Write {
            what: what.into(),
            message: e.to_string(),
        })?;
    safetensors::serialize(views, metadata).map_err(|e| FormatError::Write {
        what: what.into(),
        message: e.to_string(),
    })
}

/// model.safetensors bytes for the given state, without metadata.
pub fn model_bytes(plan: &ModelPlan, state: &HostState) -> Result<Vec<u8>, FormatError> {
    let tensors = plan
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| match e.kind {
            EntryKind::Counter => (e.name.clone(), Dtype::I64, vec![], state.counters[i].to_le_bytes().to_vec()),
            _ => (e.name.clone(), Dtype::F32, e.shape.clone(), f32_bytes(&state.values[i])),
        })
        .collect();
    serialize(tensors, None, "model")
}

/// model.safetensors bytes for the given state, describing itself with
/// `info`; the same state and description always give the same bytes.
pub fn described_model_bytes(plan: &ModelPlan, state: &HostState, info: &WeightsInfo) -> Result<Vec<u8>, FormatError> {
    let bare = model_bytes(plan, state)?;
    with_sorted_metadata(&bare, &info.to_metadata())
}

/// `bytes` (safetensors without metadata) with `metadata` in key order:
/// the safetensors crate writes a HashMap, whose order changes from
/// process to process.
fn with_sorted_metadata(bytes: &[u8], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>, FormatError> {
    let fail = |message: String| FormatError::Write {
        what: "model metadata".into(),
        message,
    };
    let n = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| fail("no header".into()))? as usize;
    let header = bytes.get(8..8 + n).ok_or_else(|| fail("short header".into()))?;
    let rest = std::str::from_utf8(header).map_err(|e| fail(e.to_string()))?.trim_end();
    let tensors = rest.strip_prefix('{').ok_or_else(|| fail("header is not a JSON object".into()))?;
    let meta = serde_json::to_string(metadata).map_err(|e| fail(e.to_string()))?;
    let sep = if tensors.trim_start().starts_with('}') { "" } else { "," };
    let mut text = format!("{{\"__metadata__\":{meta}{sep}{tensors}").into_bytes();
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// What a model file says about itself; None when it has no description
/// (written before format version 1, or converted from other code).
pub fn weights_info(bytes: &[u8], file: &str) -> Result<Option<WeightsInfo>, FormatError> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| FormatError::Parse {
        file: file.into(),
        message: e.to_string(),
    })?;
    match header.metadata() {
        None => Ok(None),
        Some(meta) => WeightsInfo::from_metadata(meta).map_err(|source| FormatError::Metadata { file: file.into(), source }),
    }
}

fn read_f32(view: &TensorView<'_>, file: &str, name: &str) -> Result<Vec<f32>, FormatError> {
    let data = view.data();
    match view.dtype() {
        Dtype::F32 => Ok(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        Dtype::F64 => Ok(data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect()),
        Dtype::I64 => Ok(data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect()),
        other => Err(FormatError::Dtype {
            file: file.into(),
            name: name.into(),
            dtype: format!("{other:?}"),
        }),
    }
}

fn parse<'a>(bytes: &'a [u8], file: &str) -> Result<SafeTensors<'a>, FormatError> {
    SafeTensors::deserialize(bytes).map_err(|e| FormatError::Parse {
        file: file.into(),
        message: e.to_string(),
    })
}

/// Finds `name`, or its `nn.DataParallel` spelling `encoder.module.…`.
fn lookup<'a>(st: &'a SafeTensors<'a>, name: &str) -> Option<TensorView<'a>> {
    st.tensor(name).ok().or_else(|| {
        name.strip_prefix("encoder.")
            .and_then(|rest| st.tensor(&format!("encoder.module.{rest}")).ok())
    })
}

/// The first tensor (by name, `encoder.module.` read as `encoder.`) of the
/// file that `plan` does not have, among the parts the plan has at all
/// (`encoder`, and `evaluator`/`mixture` when planned; `g2l_loss.masks_r5`
/// and the classifiers of an encoder-only plan are ignored).
fn first_unexpected(plan: &ModelPlan, st: &SafeTensors<'_>) -> Option<(String, Vec<usize>)> {
    let known: HashSet<&str> = plan.entries.iter().map(|e| e.name.as_str()).collect();
    let parts: HashSet<&str> = plan.entries.iter().filter_map(|e| e.name.split('.').next()).collect();
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    names.into_iter().find_map(|raw| {
        let name = match raw.strip_prefix("encoder.module.") {
            Some(rest) => format!("encoder.{rest}"),
            None => raw.to_string(),
        };
        let part = name.split('.').next().unwrap_or_default();
        let shape = st.tensor(raw).map(|v| v.shape().to_vec()).unwrap_or_default();
        (parts.contains(part) && !known.contains(name.as_str())).then_some((name, shape))
    })
}

/// Reads model weights for `plan`. With `require_all = false`, tensors the
/// file lacks keep `fallback` values (e.g. online classifiers absent from an
/// encoder-only export); shapes are always checked, and a tensor of the
/// encoder (or of planned classifiers) that the plan lacks is an error. The
/// first missing tensor is named with its expected shape, and with the
/// unexpected tensor the file has in its place, if any.
pub fn read_model(plan: &ModelPlan, bytes: &[u8], file: &str, fallback: &HostState, require_all: bool) -> Result<HostState, FormatError> {
    let st = parse(bytes, file)?;
    let unexpected = first_unexpected(plan, &st);
    let mut out = fallback.clone();
    for (i, e) in plan.entries.iter().enumerate() {
        let Some(view) = lookup(&st, &e.name) else {
            if require_all || e.name.starts_with("encoder.") {
                return Err(FormatError::Missing {
                    file: file.into(),
                    name: e.name.clone(),
                    expected: e.shape.clone(),
                    instead: unexpected
                        .map(|(n, s)| format!("; the file has `{n}` (shape {s:?}), which the model does not"))
                        .unwrap_or_default(),
                });
            }
            continue;
        };
        let found = view.shape().to_vec();
        if found.iter().product::<usize>() != e.numel() || (e.kind != EntryKind::Counter && found != e.shape) {
            return Err(FormatError::Shape {
                file: file.into(),
                name: e.name.clone(),
                found,
                expected: e.shape.clone(),
            });
        }
        match e.kind {
            EntryKind::Counter => out.counters[i] = read_f32(&view, file, &e.name)?.first().copied().unwrap_or(0.0) as i64,
            _ => out.values[i] = read_f32(&view, file, &e.name)?,
        }
    }
    match unexpected {
        Some((name, found)) => Err(FormatError::Unexpected {
            file: file.into(),
            name,
            found,
        }),
        None => Ok(out),
    }
}

/// One parameter's Adam state on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostAdam {
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
    pub step: u64,
}

pub fn optimizer_bytes(plan: &ModelPlan, states: &[Option<HostAdam>]) -> Result<Vec<u8>, FormatError> {
    let mut tensors = Vec::new();
    for (e, s) in plan.entries.iter().zip(states) {
        if let Some(s) = s {
            tensors.push((format!("{}.exp_avg", e.name), Dtype::F32, e.shape.clone(), f32_bytes(&s.exp_avg)));
            tensors.push((
                format!("{}.exp_avg_sq", e.name),
                Dtype::F32,
                e.shape.clone(),
                f32_bytes(&s.exp_avg_sq),
            ));
            tensors.push((
                format!("{}.step", e.name),
                Dtype::I64,
                vec![],
                (s.step as i64).to_le_bytes().to_vec(),
            ));
        }
    }
    let meta = HashMap::from([("format".to_string(), "amdim-adam-1".to_string())]);
    serialize(tensors, Some(meta), "optimizer")
}

pub fn read_optimizer(plan: &ModelPlan, bytes: &[u8], file: &str) -> Result<Vec<Option<HostAdam>>, FormatError> {
    let st = parse(bytes, file)?;
    plan.entries
        .iter()
        .map(|e| {
            let Ok(step) = st.tensor(&format!("{}.step", e.name)) else {
                return Ok(None);
            };
            let get = |suffix: &str| -> Result<Vec<f32>, FormatError> {
                let name = format!("{}.{suffix}", e.name);
                let view = st.tensor(&name).map_err(|_| FormatError::Missing {
                    file: file.into(),
                    name: name.clone(),
                    expected: e.shape.clone(),
                    instead: String::new(),
                })?;
                if view.shape() != e.shape.as_slice() {
                    return Err(FormatError::Shape {
                        file: file.into(),
                        name,
                        found: view.shape().to_vec(),
                        expected: e.shape.clone(),
                    });
                }
                read_f32(&view, file, &name)
            };
            let step = read_f32(&step, file, &e.name)?.first().copied().unwrap_or(0.0) as u64;
            Ok(Some(HostAdam {
                exp_avg: get("exp_avg")?,
                exp_avg_sq: get("exp_avg_sq")?,
                step,
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::init_values;
    use amdim_shared::spec::{LossSpec, ModelSpec};

    fn tiny_with(n_rkhs: usize, n_classes: Option<usize>) -> ModelPlan {
        let spec = ModelSpec {
            ndf: 4,
            n_rkhs,
            depth: 1,
            ..ModelSpec::default()
        };
        crate::model::plan(&spec, &LossSpec::default(), n_classes)
    }

    fn tiny() -> ModelPlan {
        tiny_with(16, Some(10))
    }

    fn state(plan: &ModelPlan, seed: u64) -> HostState {
        HostState {
            values: plan
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    if e.kind == EntryKind::Counter {
                        vec![]
                    } else {
                        init_values(e, seed, i)
                    }
                })
                .collect(),
            counters: (0..plan.entries.len() as i64).collect(),
        }
    }

    #[test]
    fn model_round_trips_and_accepts_data_parallel_names() {
        let plan = tiny();
        let s = state(&plan, 3);
        let bytes = model_bytes(&plan, &s).unwrap();
        let back = read_model(&plan, &bytes, "m", &state(&plan, 4), true).unwrap();
        assert_eq!(back.values, s.values);
        for (i, e) in plan.entries.iter().enumerate() {
            if e.kind == EntryKind::Counter {
                assert_eq!(back.counters[i], s.counters[i]);
            }
        }
        // Rename to the DataParallel spelling, as the authors' state_dict has it.
        let bytes2 = rewritten(&bytes, |n| Some(n.replacen("encoder.", "encoder.module.", 1)), Vec::new());
        assert_eq!(read_model(&plan, &bytes2, "m", &state(&plan, 4), true).unwrap().values, s.values);
    }

    #[test]
    fn wrong_shape_and_missing_tensor_are_named() {
        let plan = tiny();
        let small = tiny_with(32, Some(10));
        let bytes = model_bytes(&small, &state(&small, 1)).unwrap();
        let e = read_model(&plan, &bytes, "w.safetensors", &state(&plan, 1), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("w.safetensors") && e.contains("shape"), "{e}");
        let enc_only = tiny_with(16, None);
        let bytes = model_bytes(&enc_only, &state(&enc_only, 1)).unwrap();
        assert!(read_model(&plan, &bytes, "w", &state(&plan, 1), false).is_ok());
        let e = read_model(&plan, &bytes, "w", &state(&plan, 1), true).unwrap_err().to_string();
        assert!(e.contains("evaluator."), "{e}");
    }

    type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

    /// `bytes` with every tensor name passed through `rename` (None drops it), plus `extra`.
    fn rewritten(bytes: &[u8], rename: impl Fn(&str) -> Option<String>, extra: Vec<Raw>) -> Vec<u8> {
        let st = SafeTensors::deserialize(bytes).unwrap();
        let mut tensors: Vec<Raw> = st
            .tensors()
            .into_iter()
            .filter_map(|(n, v)| rename(&n).map(|n| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())))
            .collect();
        tensors.extend(extra);
        serialize(tensors, None, "t").unwrap()
    }

    #[test]
    fn a_renamed_tensor_is_named_with_its_shape_and_its_stand_in() {
        let plan = tiny();
        let bytes = model_bytes(&plan, &state(&plan, 1)).unwrap();
        // This project's names before the fix: `bn1` for the heads' hidden BatchNorm.
        let old = rewritten(&bytes, |n| Some(n.replace("rkhs_block_5.bn_hid.", "rkhs_block_5.bn1.")), Vec::new());
        let e = read_model(&plan, &old, "old.safetensors", &state(&plan, 1), false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "old.safetensors: tensor `encoder.rkhs_block_5.bn_hid.bn.weight` (shape [16]) is missing; \
             the file has `encoder.rkhs_block_5.bn1.bn.bias` (shape [16]), which the model does not"
        );
        // An extra unit (a deeper model) is unexpected even though nothing is missing.
        let deeper = crate::model::plan(
            &ModelSpec {
                ndf: 4,
                n_rkhs: 16,
                depth: 2,
                ..ModelSpec::default()
            },
            &LossSpec::default(),
            Some(10),
        );
        let bytes = model_bytes(&deeper, &state(&deeper, 1)).unwrap();
        let e = read_model(&plan, &bytes, "deep", &state(&plan, 1), true).unwrap_err().to_string();
        assert!(
            e.starts_with("deep: unexpected tensor `encoder.layer_list.2.layer_list.1.bn1.bn.bias` (shape [8])"),
            "{e}"
        );
        // The authors' loss constant and an encoder-only reader's classifiers are not unexpected.
        let plan_bytes = model_bytes(&plan, &state(&plan, 1)).unwrap();
        let masks = ("g2l_loss.masks_r5".to_string(), Dtype::U8, vec![25, 1, 5, 5], vec![0; 625]);
        let with_masks = rewritten(&plan_bytes, |n| Some(n.to_string()), vec![masks]);
        assert!(read_model(&plan, &with_masks, "m", &state(&plan, 1), true).is_ok());
        let enc_only = tiny_with(16, None);
        assert!(read_model(&enc_only, &with_masks, "m", &state(&enc_only, 1), true).is_ok());
    }

    #[test]
    fn described_weights_carry_their_model_and_still_load() {
        let plan = tiny();
        let spec = amdim_shared::spec::JobSpec {
            model: ModelSpec {
                ndf: 4,
                n_rkhs: 16,
                depth: 1,
                ..ModelSpec::default()
            },
            ..Default::default()
        };
        let s = state(&plan, 2);
        let bytes = described_model_bytes(&plan, &s, &WeightsInfo::new(&spec, Some(10))).unwrap();
        let info = weights_info(&bytes, "m").unwrap().unwrap();
        assert_eq!(info, WeightsInfo::new(&spec, Some(10)));
        assert_eq!(described_model_bytes(&plan, &s, &info).unwrap(), bytes, "same state, same bytes");
        assert_eq!(read_model(&plan, &bytes, "m", &state(&plan, 5), true).unwrap().values, s.values);
        assert_eq!(weights_info(&model_bytes(&plan, &s).unwrap(), "m").unwrap(), None);
        let e = weights_info(b"nonsense", "w.safetensors").unwrap_err().to_string();
        assert!(e.starts_with("w.safetensors: not a readable safetensors file"), "{e}");
    }

    #[test]
    fn optimizer_round_trips() {
        let plan = tiny();
        let states: Vec<Option<HostAdam>> = plan
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (e.kind == EntryKind::Param && i % 2 == 0).then(|| HostAdam {
                    exp_avg: vec![0.5; e.numel()],
                    exp_avg_sq: vec![0.25; e.numel()],
                    step: i as u64,
                })
            })
            .collect();
        let bytes = optimizer_bytes(&plan, &states).unwrap();
        assert_eq!(read_optimizer(&plan, &bytes, "o").unwrap(), states);
    }
}
