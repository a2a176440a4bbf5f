//! What a `model.safetensors` says about itself (docs/architecture.md §7):
//! the safetensors metadata keys and values — the weights format and its
//! version, the job's `[model]` section, the `[loss]` section (its mixture
//! components shape tensors; its constants are what `score` computes), the
//! `[augment]` section (whether evaluation views are normalised), the seed,
//! and the classes of the online classifiers — and the check of a job spec
//! against them, which names the first field that differs. Only what using
//! the weights depends on: two runs that differ in name or storage write the
//! same bytes. The whole effective spec is the manifest's. Strings in,
//! strings out: reading and writing the tensors themselves is the worker's.

use crate::spec::{AugmentSpec, JobSpec, LossSpec, ModelSpec};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;

/// `format`: what kind of file this is.
pub const WEIGHTS_FORMAT: &str = "amdim-model";
/// `format_version`: the layout of this metadata that this build writes,
/// and the newest it reads.
pub const WEIGHTS_FORMAT_VERSION: u32 = 1;

const FORMAT_KEY: &str = "format";
const VERSION_KEY: &str = "format_version";
const MODEL_KEY: &str = "model";
const LOSS_KEY: &str = "loss";
const AUGMENT_KEY: &str = "augment";
const SEED_KEY: &str = "seed";
const N_CLASSES_KEY: &str = "n_classes";

/// The `[model]` fields that must be in the `model` value: the ones that
/// decide the tensors' names and shapes, and `use_bn` (which decides
/// whether the stored BatchNorms are used).
const MODEL_FIELDS: [&str; 5] = ["image_size", "ndf", "n_rkhs", "depth", "use_bn"];

/// Metadata that cannot be read as this module writes it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WeightsMetaError {
    /// A key has a value of the wrong kind, or a required one is missing.
    #[error("weights metadata `{key}`: {message}")]
    Value {
        /// The metadata key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// Written by a newer build.
    #[error(
        "weights format {WEIGHTS_FORMAT} version {found} is newer than this build reads ({WEIGHTS_FORMAT_VERSION}); upgrade, or pass --config"
    )]
    Newer {
        /// The version the file has.
        found: u64,
    },
    /// Not a safetensors header at all.
    #[error("not a safetensors file: {0}")]
    Header(String),
}

/// A field of a job spec that contradicts the weights.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: the config says {config} but the weights were trained with {weights}")]
pub struct Mismatch {
    /// The dotted spec field (`model.ndf`).
    pub field: &'static str,
    /// The config's value.
    pub config: String,
    /// The value the weights were written with.
    pub weights: String,
}

/// What a weights file says about the model it holds. Only `model` is
/// required on read; the other sections fall back to their defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightsInfo {
    /// [`WEIGHTS_FORMAT_VERSION`] when written.
    pub version: u64,
    /// The job's `[model]` section.
    pub model: ModelSpec,
    /// The job's `[loss]` section (`loss.mixture.k` shapes the mixture tensors).
    pub loss: Option<LossSpec>,
    /// The job's `[augment]` section (`normalize` applies to evaluation views).
    pub augment: Option<AugmentSpec>,
    /// `job.seed`.
    pub seed: Option<u64>,
    /// Classes of the online classifiers (None: no classifier tensors).
    pub n_classes: Option<u64>,
}

fn bad(key: &str, message: impl Into<String>) -> WeightsMetaError {
    WeightsMetaError::Value {
        key: key.to_string(),
        message: message.into(),
    }
}

fn number(meta: &BTreeMap<String, String>, key: &str) -> Result<Option<u64>, WeightsMetaError> {
    meta.get(key)
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| bad(key, format!("{v:?} is not a whole number")))
        })
        .transpose()
}

fn section<T: DeserializeOwned>(meta: &BTreeMap<String, String>, key: &str) -> Result<Option<T>, WeightsMetaError> {
    meta.get(key)
        .map(|v| serde_json::from_str(v).map_err(|e| bad(key, e.to_string())))
        .transpose()
}

impl WeightsInfo {
    /// The description of weights trained by `spec`, with `n_classes`
    /// online classes (None: encoder-only).
    pub fn new(spec: &JobSpec, n_classes: Option<usize>) -> Self {
        Self {
            version: u64::from(WEIGHTS_FORMAT_VERSION),
            model: spec.model.clone(),
            loss: Some(spec.loss.clone()),
            augment: Some(spec.augment.clone()),
            seed: Some(spec.job.seed),
            n_classes: n_classes.map(|n| n as u64),
        }
    }

    /// Mixture components the weights have tensors for.
    pub fn mixture_k(&self) -> usize {
        self.loss.as_ref().map_or(1, |l| l.mixture.k)
    }

    /// The safetensors metadata: string keys and values (JSON for
    /// sections), in key order.
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut meta = BTreeMap::from([
            (FORMAT_KEY.to_string(), WEIGHTS_FORMAT.to_string()),
            (VERSION_KEY.to_string(), self.version.to_string()),
        ]);
        // Plain data types: serialising them cannot fail.
        let mut put = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                meta.insert(key.to_string(), v);
            }
        };
        put(MODEL_KEY, serde_json::to_string(&self.model).ok());
        put(LOSS_KEY, self.loss.as_ref().and_then(|l| serde_json::to_string(l).ok()));
        put(AUGMENT_KEY, self.augment.as_ref().and_then(|a| serde_json::to_string(a).ok()));
        put(SEED_KEY, self.seed.map(|s| s.to_string()));
        put(N_CLASSES_KEY, self.n_classes.map(|n| n.to_string()));
        meta
    }

    /// Reads the description from safetensors metadata; None when the file
    /// has none (written before format version 1, or converted from the
    /// authors' PyTorch code). `format`, when present, must be
    /// [`WEIGHTS_FORMAT`] at a version this build reads.
    pub fn from_metadata<'a>(meta: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<Option<Self>, WeightsMetaError> {
        let meta: BTreeMap<String, String> = meta.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(format) = meta.get(FORMAT_KEY)
            && format != WEIGHTS_FORMAT
        {
            return Err(bad(FORMAT_KEY, format!("{format:?}, expected {WEIGHTS_FORMAT:?}")));
        }
        let Some(model_text) = meta.get(MODEL_KEY) else {
            return match meta.get(FORMAT_KEY) {
                Some(_) => Err(bad(MODEL_KEY, "missing")),
                None => Ok(None),
            };
        };
        let version = number(&meta, VERSION_KEY)?.unwrap_or(1);
        if version > u64::from(WEIGHTS_FORMAT_VERSION) {
            return Err(WeightsMetaError::Newer { found: version });
        }
        let value: Value = serde_json::from_str(model_text).map_err(|e| bad(MODEL_KEY, e.to_string()))?;
        if let Some(field) = MODEL_FIELDS.iter().find(|f| value.get(**f).is_none()) {
            return Err(bad(MODEL_KEY, format!("has no `{field}`")));
        }
        let model: ModelSpec = serde_json::from_value(value).map_err(|e| bad(MODEL_KEY, e.to_string()))?;
        if ![32, 64, 128].contains(&model.image_size) || model.ndf == 0 || model.n_rkhs == 0 || model.depth == 0 {
            return Err(bad(MODEL_KEY, format!("{model_text} is not a model this build has")));
        }
        Ok(Some(Self {
            version,
            model,
            loss: section(&meta, LOSS_KEY)?,
            augment: section(&meta, AUGMENT_KEY)?,
            seed: number(&meta, SEED_KEY)?,
            n_classes: number(&meta, N_CLASSES_KEY)?,
        }))
    }

    /// Checks the fields of `spec` that decide the tensors against the
    /// weights; the first one that differs is named.
    pub fn check(&self, spec: &JobSpec) -> Result<(), Mismatch> {
        let (c, w) = (&spec.model, &self.model);
        let fields: [(&'static str, String, String); 6] = [
            ("model.image_size", c.image_size.to_string(), w.image_size.to_string()),
            ("model.ndf", c.ndf.to_string(), w.ndf.to_string()),
            ("model.n_rkhs", c.n_rkhs.to_string(), w.n_rkhs.to_string()),
            ("model.depth", c.depth.to_string(), w.depth.to_string()),
            ("model.use_bn", c.use_bn.to_string(), w.use_bn.to_string()),
            ("loss.mixture.k", spec.loss.mixture.k.to_string(), self.mixture_k().to_string()),
        ];
        match fields.into_iter().find(|(_, config, weights)| config != weights) {
            Some((field, config, weights)) => Err(Mismatch { field, config, weights }),
            None => Ok(()),
        }
    }

    /// The job spec to use the weights with when no config is given: the
    /// defaults with the sections the weights carry.
    pub fn job_spec(&self) -> JobSpec {
        let mut spec = JobSpec {
            model: self.model.clone(),
            loss: self.loss.clone().unwrap_or_default(),
            augment: self.augment.clone().unwrap_or_default(),
            ..JobSpec::default()
        };
        if let Some(seed) = self.seed {
            spec.job.seed = seed;
        }
        spec
    }
}

/// The `__metadata__` of a safetensors file's header (empty when it has
/// none), read without parsing any tensor.
pub fn safetensors_metadata(bytes: &[u8]) -> Result<BTreeMap<String, String>, WeightsMetaError> {
    let len = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| WeightsMetaError::Header("shorter than its 8-byte header length".into()))?;
    let header = usize::try_from(len)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
        .ok_or_else(|| WeightsMetaError::Header(format!("header of {len} bytes runs past the end of the file")))?;
    let value: Value = serde_json::from_slice(header).map_err(|e| WeightsMetaError::Header(e.to_string()))?;
    match value.get("__metadata__") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(meta) => serde_json::from_value(meta.clone()).map_err(|e| WeightsMetaError::Header(format!("__metadata__: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        let mut s = JobSpec::default();
        s.model.ndf = 16;
        s.model.use_bn = true;
        s.loss.mixture.k = 4;
        s.loss.reg_lambda = 0.5;
        s.augment.normalize = false;
        s.job.seed = 9;
        s
    }

    #[test]
    fn metadata_round_trips_and_files_without_it_read_as_none() {
        let info = WeightsInfo::new(&spec(), Some(10));
        let meta = info.to_metadata();
        assert_eq!(meta["format"], "amdim-model");
        assert_eq!(meta["format_version"], "1");
        let model: Value = serde_json::from_str(&meta["model"]).unwrap();
        assert_eq!((model["ndf"].as_u64(), model["use_bn"].as_bool()), (Some(16), Some(true)));
        assert_eq!(WeightsInfo::from_metadata(&meta).unwrap(), Some(info.clone()));
        let used = info.job_spec();
        assert_eq!(
            (&used.model, &used.loss, &used.augment, used.job.seed),
            (&spec().model, &spec().loss, &spec().augment, 9)
        );
        assert_eq!(WeightsInfo::from_metadata(&BTreeMap::new()).unwrap(), None);
        // The run's name and storage are not in the weights: two such runs write the same metadata.
        let mut renamed = spec();
        renamed.job.name = "other".into();
        renamed.checkpoint.uri = "s3://elsewhere".into();
        assert_eq!(WeightsInfo::new(&renamed, Some(10)).to_metadata(), meta);
        // Model section only (e.g. written by another tool): defaults elsewhere.
        let only_model: BTreeMap<String, String> = meta
            .iter()
            .filter(|(k, _)| *k == "model")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let back = WeightsInfo::from_metadata(&only_model).unwrap().unwrap();
        assert_eq!((back.job_spec().model, back.mixture_k()), (spec().model, 1));
        assert_eq!(back.job_spec().job.seed, JobSpec::default().job.seed);
    }

    #[test]
    fn bad_metadata_names_the_key() {
        let meta = WeightsInfo::new(&spec(), None).to_metadata();
        let with = |k: &str, v: &str| {
            let mut m = meta.clone();
            m.insert(k.into(), v.into());
            WeightsInfo::from_metadata(&m).unwrap_err().to_string()
        };
        assert_eq!(with("format_version", "2"), WeightsMetaError::Newer { found: 2 }.to_string());
        assert!(with("format", "other").starts_with("weights metadata `format`"));
        assert_eq!(with("model", r#"{"image_size": 32}"#), "weights metadata `model`: has no `ndf`");
        assert!(with("n_classes", "ten").contains("`n_classes`"));
        assert!(with("loss", r#"{"tclip": "x"}"#).starts_with("weights metadata `loss`"));
        let mut no_model = meta.clone();
        no_model.remove("model");
        assert_eq!(
            WeightsInfo::from_metadata(&no_model).unwrap_err().to_string(),
            "weights metadata `model`: missing"
        );
    }

    #[test]
    fn check_names_the_first_field_that_differs() {
        let info = WeightsInfo::new(&spec(), Some(10));
        let mut other = spec();
        other.train.batch_size = 7;
        other.loss.reg_lambda = 1.0;
        assert_eq!(info.check(&other), Ok(()), "fields that do not shape tensors may differ");
        other.model.ndf = 32;
        assert_eq!(
            info.check(&other).unwrap_err().to_string(),
            "model.ndf: the config says 32 but the weights were trained with 16"
        );
        let mut k = spec();
        k.loss.mixture.k = 1;
        assert_eq!(info.check(&k).unwrap_err().field, "loss.mixture.k");
    }

    #[test]
    fn header_metadata_is_read_and_garbage_is_an_error() {
        let header = br#"{"__metadata__":{"format":"amdim-model"},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        file.extend_from_slice(&[0; 4]);
        assert_eq!(safetensors_metadata(&file).unwrap()["format"], "amdim-model");
        let plain = br#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut file = (plain.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(plain);
        assert!(safetensors_metadata(&file).unwrap().is_empty());
        assert!(safetensors_metadata(b"abc").is_err());
        assert!(safetensors_metadata(&u64::MAX.to_le_bytes()).is_err());
    }
}
