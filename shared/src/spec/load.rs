//! Reading a job spec: TOML text or file, `AMDIM_SECTION__FIELD`
//! environment overrides through the `config` crate, and the words of its
//! errors; every spec read is then validated. No field rules here: each
//! section's file owns those.

use super::{JobSpec, SpecError, field_err};
use std::path::Path;

/// Prefix of environment overrides: `AMDIM_TRAIN__BATCH_SIZE=64` sets
/// `train.batch_size`. Only variables with the `__` separator are read, so
/// unrelated `AMDIM_…` variables do not turn into unknown fields.
pub const ENV_PREFIX: &str = "AMDIM_";

impl JobSpec {
    /// The spec as TOML, every field spelled out: what `amdimctl submit`
    /// sends, so that the environment overrides applied here travel with it.
    pub fn to_toml(&self) -> Result<String, SpecError> {
        toml::to_string(self).map_err(|e| field_err("(whole spec)", e.to_string()))
    }

    /// Reads a TOML job spec, applies `AMDIM_…` environment overrides and validates.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::from_toml_with_env(&text, &env).map_err(|e| match e {
            SpecError::Read { message, .. } => SpecError::Read {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text with the given environment (pure, for tests).
    pub fn from_toml_with_env(text: &str, env: &[(String, String)]) -> Result<Self, SpecError> {
        let overrides: std::collections::HashMap<String, String> = env
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(ENV_PREFIX)?;
                rest.contains("__").then(|| (rest.to_lowercase().replace("__", "."), v.clone()))
            })
            .collect();
        let mut builder = config::Config::builder().add_source(config::File::from_str(text, config::FileFormat::Toml));
        for (key, value) in &overrides {
            builder = builder
                .set_override(key.as_str(), parse_env_value(value))
                .map_err(|e| field_err(key, e.to_string()))?;
        }
        let cfg = builder.build().map_err(|e| SpecError::Read {
            path: "<job spec>".into(),
            message: e.to_string(),
        })?;
        let spec: JobSpec = cfg.try_deserialize().map_err(config_error)?;
        spec.validate()?;
        Ok(spec)
    }
}

/// Environment values are strings; numbers and booleans are parsed so that
/// `AMDIM_TRAIN__BATCH_SIZE=64` lands as an integer.
fn parse_env_value(v: &str) -> config::Value {
    if let Ok(i) = v.parse::<i64>() {
        return i.into();
    }
    if let Ok(f) = v.parse::<f64>() {
        return f.into();
    }
    match v {
        "true" => true.into(),
        "false" => false.into(),
        _ => v.into(),
    }
}

fn config_error(e: config::ConfigError) -> SpecError {
    // `config` reports "... for key `train.batch_size`" or "unknown field `x`"; keep its words.
    let message = e.to_string();
    let field = message
        .split("key `")
        .nth(1)
        .and_then(|s| s.split('`').next())
        .map(str::to_string)
        .or_else(|| {
            message
                .split("unknown field `")
                .nth(1)
                .and_then(|s| s.split('`').next())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "<spec>".into());
    SpecError::Field { field, message }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_examples_survive_a_round_trip_through_to_toml() {
        for file in ["fashion-mnist.toml", "fashion-mnist-smoke.toml", "cifar-bench.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            let env = vec![("AMDIM_TRAIN__EPOCHS".to_string(), "7".to_string())];
            let spec = JobSpec::from_toml_with_env(&text, &env).unwrap();
            let again = JobSpec::from_toml_with_env(&spec.to_toml().unwrap(), &[]).unwrap();
            assert_eq!(again, spec, "{file}");
            assert_eq!(again.train.epochs, 7);
        }
    }

    use super::*;

    #[test]
    fn defaults_follow_the_spec() {
        let s = JobSpec::from_toml_with_env("", &[]).unwrap();
        assert_eq!(s.loss.reg_lambda, 4e-2);
        assert_eq!(s.loss.tclip, 20.0);
        assert_eq!((s.optim.beta1, s.optim.beta2, s.optim.lr), (0.8, 0.999, 2e-4));
        assert_eq!(s.optim.warmup_steps, 500);
        assert_eq!(s.loss.mixture.k, 1);
    }

    #[test]
    fn env_overrides_win_and_are_typed() {
        let env = vec![
            ("AMDIM_TRAIN__BATCH_SIZE".to_string(), "64".to_string()),
            ("AMDIM_LOSS__MIXTURE__K".to_string(), "3".to_string()),
            ("AMDIM_LOG".to_string(), "ignored".to_string()),
        ];
        let s = JobSpec::from_toml_with_env("[train]\nbatch_size = 8\n", &env).unwrap();
        assert_eq!(s.train.batch_size, 64);
        assert_eq!(s.loss.mixture.k, 3);
    }

    #[test]
    fn errors_name_the_field() {
        let e = JobSpec::from_toml_with_env("[model]\nimage_size = 48\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.image_size") && e.contains("48"), "{e}");
        let e = JobSpec::from_toml_with_env("[train]\nbatch_sizee = 4\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_sizee"), "{e}");
        let e = JobSpec::from_toml_with_env("[train]\nbatch_size = \"many\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
        let e = JobSpec::from_toml_with_env("[optim]\nbeta1 = 1.5\n", &[]).unwrap_err().to_string();
        assert!(e.contains("optim.beta1"), "{e}");
        for strength in ["1.5", "-0.1", "nan"] {
            let e = JobSpec::from_toml_with_env(&format!("[augment]\njitter_strength = {strength}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains("augment.jitter_strength"), "{strength}: {e}");
        }
    }

    #[test]
    fn every_shipped_example_spec_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                if let Err(e) = JobSpec::from_toml_with_env(&text, &[]) {
                    panic!("{}: {e}", path.display());
                }
                seen += 1;
            }
        }
        assert!(seen >= 3, "only {seen} example specs under {}", dir.display());
    }
}
