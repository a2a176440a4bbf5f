//! How `amdimctl` prints records: `-o table` (each command's own columns,
//! drawn by `table`), `-o wide` (the same with more columns), `-o json` (one document) or `-o yaml` (the same document as YAML block
//! style, which `yq` and Kubernetes users read). The YAML writer is small
//! on purpose: it quotes every string that YAML could read as something
//! else, so a YAML parser gives back exactly the JSON document. Also the
//! UTC timestamps of event lines. Pure text; printing is the caller's.

use serde_json::Value;

/// The `-o` format of a command's records: `table`, `json` or `yaml`.
#[allow(missing_docs, reason = "clap would print variant docs in --help, which the names already say")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

impl Output {
    /// `value` as JSON or YAML; None for a table (the caller draws it).
    pub fn document(self, value: &Value) -> Option<String> {
        match self {
            Self::Table | Self::Wide => None,
            Self::Json => Some(value.to_string()),
            Self::Yaml => Some(to_yaml(value)),
        }
    }
}

/// A string YAML reads back as this same string without quotes.
fn is_plain(s: &str) -> bool {
    const RESERVED: [&str; 12] = ["true", "false", "yes", "no", "on", "off", "null", "y", "n", "~", "nan", "inf"];
    let mut chars = s.chars();
    let Some(first) = chars.next() else { return false };
    (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str())
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) if is_plain(s) => s.clone(),
        // A JSON string literal is a valid YAML double-quoted scalar.
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    }
}

/// The lines of a non-empty mapping or sequence, at indent 0.
fn block_lines(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                let key = scalar(&Value::String(k.clone()));
                if is_block(val) {
                    out.push(format!("{key}:"));
                    out.extend(block_lines(val).into_iter().map(|l| format!("  {l}")));
                } else {
                    out.push(format!("{key}: {}", scalar(val)));
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                if is_block(item) {
                    for (i, l) in block_lines(item).into_iter().enumerate() {
                        out.push(if i == 0 { format!("- {l}") } else { format!("  {l}") });
                    }
                } else {
                    out.push(format!("- {}", scalar(item)));
                }
            }
        }
        other => out.push(scalar(other)),
    }
    out
}

/// `v` as a YAML document (block style, ending in a newline-free last line).
pub(crate) fn to_yaml(v: &Value) -> String {
    if is_block(v) { block_lines(v).join("\n") } else { scalar(v) }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (UTC).
pub(crate) fn utc_time(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (year, month, day) = amdim_shared::utc::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_is_block_style_with_risky_strings_quoted() {
        let v = json!({
            "id": "job-000001",
            "state": "RUNNING",
            "message": "generation 2 on 1 worker(s): resumed",
            "flag": "yes",
            "number_like": "12",
            "empty": "",
            "stats": {"loss": 1.5, "acc": null},
            "workers": ["worker-000001", "worker-000002"],
            "generations": [{"number": 1, "end_reason": "lost: no heartbeat"}, {"number": 2, "end_reason": ""}],
            "none": [],
            "nothing": {},
        });
        let expected = r#"empty: ""
flag: "yes"
generations:
  - end_reason: "lost: no heartbeat"
    number: 1
  - end_reason: ""
    number: 2
id: job-000001
message: "generation 2 on 1 worker(s): resumed"
none: []
nothing: {}
number_like: "12"
state: RUNNING
stats:
  acc: null
  loss: 1.5
workers:
  - worker-000001
  - worker-000002"#;
        assert_eq!(to_yaml(&v), expected);
        assert_eq!(to_yaml(&json!([])), "[]");
        assert_eq!(to_yaml(&json!("a\nb")), "\"a\\nb\"");
    }

    #[test]
    fn utc_times_match_known_dates() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_time(1_796_000_000), "2026-11-30T00:53:20Z");
    }
}
