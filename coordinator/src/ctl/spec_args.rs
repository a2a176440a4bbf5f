//! Where `amdimctl validate`, `submit` and `local` get their job spec: the
//! file (`-f`), then the submitting shell's `AMDIM_SECTION__FIELD`
//! variables, then `--set section.field=value` flags (the last wins), all
//! read and validated by the same `JobSpec` loader the worker uses, so a bad
//! `--set` gets the same field-named error as a bad file. Every environment
//! variable that changes the spec is reported (returned as notes for
//! stderr), so a stray one cannot change a job silently. Owns the flag
//! syntax, the checks of section and field names and those notes; the
//! field rules are `amdim_shared::spec`'s.

use super::exit::{Exit, ExitExt};
use amdim_shared::spec::{ENV_PREFIX, JobSpec};
use anyhow::{Result, anyhow};
use serde_json::Value;
use std::path::PathBuf;

/// The job spec flags.
#[derive(clap::Args, Clone, Debug)]
pub struct SpecArgs {
    /// The job spec (TOML).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Set one field, e.g. `--set train.batch_size=64` (repeatable; wins
    /// over the file and over AMDIM_SECTION__FIELD variables).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    pub set: Vec<String>,
}

impl SpecArgs {
    /// The effective spec, validated; the environment's changes to it are
    /// printed to stderr. Errors are tagged invalid input (exit 2).
    pub fn load(&self) -> Result<JobSpec> {
        let name = self.file.display().to_string();
        let text = std::fs::read_to_string(&self.file)
            .map_err(|e| anyhow!("{name}: cannot read the job spec: {e}"))
            .exit(Exit::Invalid)?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        let (spec, notes) = load_with(&text, &name, &self.set, &env).exit(Exit::Invalid)?;
        for note in notes {
            eprintln!("amdimctl: {note}");
        }
        Ok(spec)
    }
}

/// Every field of a spec as JSON: what names `--set` may use.
fn known_fields() -> Value {
    serde_json::to_value(JobSpec::default()).unwrap_or(Value::Null)
}

/// Checks a dotted field name against the spec's sections and fields.
fn check_field(key: &str, known: &Value) -> Result<(), String> {
    let mut node = known;
    let mut path = Vec::new();
    for part in key.split('.') {
        let Value::Object(map) = node else {
            return Err(format!("`{}` is a field, not a section", path.join(".")));
        };
        match map.get(part) {
            Some(next) => node = next,
            None => {
                let names: Vec<&str> = map.keys().map(String::as_str).collect();
                return Err(if path.is_empty() {
                    format!("unknown section `{part}` (sections: {})", names.join(", "))
                } else {
                    format!(
                        "unknown field `{}.{part}` (fields of [{}]: {})",
                        path.join("."),
                        path.join("."),
                        names.join(", ")
                    )
                });
            }
        }
        path.push(part);
    }
    if path.len() < 2 {
        return Err(format!("`{key}` is a section: name one of its fields (section.field)"));
    }
    match node {
        Value::Object(map) => Err(format!(
            "`{key}` is a section: name one of its fields ({})",
            map.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
        )),
        _ => Ok(()),
    }
}

/// `section.field=value` as the dotted field name and the value.
fn parse_set(arg: &str, known: &Value) -> Result<(String, String)> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| anyhow!("--set {arg}: expected SECTION.FIELD=VALUE, e.g. --set train.batch_size=64"))?;
    let key = key.trim();
    check_field(key, known).map_err(|e| anyhow!("--set {arg}: {e}"))?;
    Ok((key.to_string(), value.to_string()))
}

/// The variable that carries `key` (`train.batch_size` → `AMDIM_TRAIN__BATCH_SIZE`).
fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('.', "__"))
}

/// The override variables among `env`: (variable, dotted field, value).
fn env_overrides(env: &[(String, String)]) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = env
        .iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(ENV_PREFIX)?;
            rest.contains("__")
                .then(|| (k.clone(), rest.to_lowercase().replace("__", "."), v.clone()))
        })
        .collect();
    out.sort();
    out
}

/// The value of dotted `key` in `spec`, as JSON.
fn field_value(spec: &JobSpec, key: &str) -> Option<Value> {
    let v = serde_json::to_value(spec).ok()?;
    v.pointer(&format!("/{}", key.replace('.', "/"))).cloned()
}

/// The spec from TOML `text` (named `name` in errors) with the overrides
/// of `env` and then `sets`, and a note for each variable of `env` that
/// changed it. Pure: the caller passes the environment.
pub(crate) fn load_with(text: &str, name: &str, sets: &[String], env: &[(String, String)]) -> Result<(JobSpec, Vec<String>)> {
    let known = known_fields();
    let mut from_flags = Vec::new();
    for arg in sets {
        from_flags.push(parse_set(arg, &known)?);
    }
    let flagged = |key: &str| from_flags.iter().any(|(k, _)| k == key);
    let variables: Vec<_> = env_overrides(env).into_iter().filter(|(_, key, _)| !flagged(key)).collect();
    for (var, key, _) in &variables {
        check_field(key, &known).map_err(|e| anyhow!("environment variable {var}: {e}"))?;
    }
    let as_env = |pairs: &mut Vec<(String, String)>| {
        pairs.extend(from_flags.iter().map(|(k, v)| (env_name(k), v.clone())));
    };
    let mut all: Vec<(String, String)> = variables.iter().map(|(var, _, v)| (var.clone(), v.clone())).collect();
    as_env(&mut all);
    let spec = JobSpec::from_toml_with_env(text, &all).map_err(|e| {
        let blamed = match &e {
            amdim_shared::spec::SpecError::Field { field, .. } => {
                from_flags.iter().find(|(k, _)| k == field).map(|(k, v)| format!("--set {k}={v}"))
            }
            _ => None,
        };
        match blamed {
            Some(flag) => anyhow!("{flag}: {e}"),
            None if variables.is_empty() => anyhow!("{name}: {e}"),
            None => anyhow!(
                "{name} with {}: {e}",
                variables
                    .iter()
                    .map(|(var, _, v)| format!("{var}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        }
    })?;
    let mut notes = Vec::new();
    if !variables.is_empty() {
        let mut flags_only = Vec::new();
        as_env(&mut flags_only);
        let before = JobSpec::from_toml_with_env(text, &flags_only).ok();
        for (var, key, raw) in &variables {
            let after = field_value(&spec, key);
            let was = before.as_ref().and_then(|b| field_value(b, key));
            let show = |v: &Option<Value>| v.as_ref().map_or_else(|| raw.clone(), Value::to_string);
            match was {
                Some(_) if was == after => {}
                Some(_) => notes.push(format!("environment {var} changes {key}: {} -> {}", show(&was), show(&after))),
                None => notes.push(format!(
                    "environment {var} sets {key} = {} ({name} alone is not a valid spec)",
                    show(&after)
                )),
            }
        }
    }
    Ok((spec, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn err(text: &str, sets: &[&str], vars: &[(&str, &str)]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        format!("{:#}", load_with(text, "job.toml", &sets, &env(vars)).unwrap_err())
    }

    #[test]
    fn set_flags_win_and_bad_ones_name_the_field() {
        let sets = vec!["train.batch_size=64".to_string(), "loss.mixture.k=3".to_string()];
        let vars = env(&[("AMDIM_TRAIN__BATCH_SIZE", "32")]);
        let (spec, notes) = load_with("[train]\nbatch_size = 8\n", "job.toml", &sets, &vars).unwrap();
        assert_eq!((spec.train.batch_size, spec.loss.mixture.k), (64, 3));
        assert!(notes.is_empty(), "{notes:?}");

        let e = err("", &["train.batch_size=x"], &[]);
        assert!(e.contains("--set train.batch_size=x") && e.contains("train.batch_size"), "{e}");
        let e = err("", &["train.batch_sizee=4"], &[]);
        assert!(e.contains("unknown field `train.batch_sizee`") && e.contains("batch_size,"), "{e}");
        let e = err("", &["trian.epochs=4"], &[]);
        assert!(e.contains("unknown section `trian`") && e.contains("train"), "{e}");
        let e = err("", &["train"], &[]);
        assert!(e.contains("SECTION.FIELD=VALUE"), "{e}");
        let e = err("", &["loss.mixture=2"], &[]);
        assert!(e.contains("is a section") && e.contains('k'), "{e}");
        let e = err("", &["optim.lr=-1"], &[]);
        assert!(e.contains("--set optim.lr=-1") && e.contains("optim.lr"), "{e}");
        let e = err("", &[], &[("AMDIM_TRAIN__NOPE", "1")]);
        assert!(e.contains("AMDIM_TRAIN__NOPE") && e.contains("unknown field `train.nope`"), "{e}");
    }

    #[test]
    fn every_variable_that_changes_the_spec_is_named_with_the_change() {
        let vars = env(&[
            ("AMDIM_TRAIN__MAX_STEPS", "100"),
            ("AMDIM_TRAIN__EPOCHS", "3"),
            ("AMDIM_WORKER_BIN", "/x"),
        ]);
        let (spec, notes) = load_with("[train]\nepochs = 3\n", "job.toml", &[], &vars).unwrap();
        assert_eq!(spec.train.max_steps, 100);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("AMDIM_TRAIN__MAX_STEPS changes train.max_steps:"), "{notes:?}");
        assert!(notes[0].ends_with("-> 100"), "{notes:?}");
        // A variable that makes an invalid file valid is still named.
        let vars = env(&[("AMDIM_OPTIM__LR", "0.001")]);
        let (_, notes) = load_with("[optim]\nlr = -1.0\n", "job.toml", &[], &vars).unwrap();
        assert!(notes[0].contains("AMDIM_OPTIM__LR sets optim.lr = 0.001"), "{notes:?}");
    }
}
