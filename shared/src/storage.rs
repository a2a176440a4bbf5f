//! Locations on object storage from user-facing URIs: a local folder path,
//! `file:///abs/path`, or `s3://bucket/prefix`. S3 settings come from the
//! usual `AWS_*` environment variables (region, `AWS_ENDPOINT_URL` for a
//! custom endpoint, which also turns on path-style requests and allows plain
//! http); credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, or
//! from a mounted credentials file (`AWS_SHARED_CREDENTIALS_FILE`, INI,
//! profile `AWS_PROFILE` or `default`) — never from a job spec, and never
//! put in a message. Owns parsing and error messages that name the config
//! field; no reading or writing here (retrying requests is `retry`'s).

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use std::sync::Arc;

/// A URI that names no usable location; never holds a credential.
#[derive(Debug, thiserror::Error)]
#[error("{field} = `{uri}`: {message}")]
pub struct StorageError {
    /// The config field or argument that gave the URI.
    pub field: String,
    /// The URI.
    pub uri: String,
    /// What is wrong with it.
    pub message: String,
}

/// An AWS credentials file without what was asked of it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    /// The profile has no section.
    #[error("no [{profile}] profile")]
    NoProfile {
        /// The profile asked for.
        profile: String,
    },
    /// The profile lacks a required key.
    #[error("profile [{profile}] has no {key}")]
    MissingKey {
        /// The profile asked for.
        profile: String,
        /// The key it lacks.
        key: &'static str,
    },
}

/// A local folder that cannot serve as a location.
#[derive(Debug, thiserror::Error)]
enum LocalError {
    #[error("cannot create the folder: {0}")]
    Create(std::io::Error),
    #[error("no such folder")]
    Missing,
    #[error("cannot open the folder: {0}")]
    Open(object_store::Error),
}

/// A store and the prefix inside it that `uri` names.
pub struct Location {
    /// The store (a local folder or a bucket).
    pub store: Arc<dyn ObjectStore>,
    /// The prefix inside it.
    pub prefix: ObjPath,
}

impl Location {
    /// `prefix/part/part…`
    pub fn path(&self, parts: &[&str]) -> ObjPath {
        parts.iter().fold(self.prefix.clone(), |p, part| p.child(*part))
    }
}

/// Opens `uri` (the value of config field or argument `field`); with
/// `create`, a local folder is created when missing (for writers).
pub fn open(uri: &str, field: &str, create: bool) -> Result<Location, StorageError> {
    let err = |message: String| StorageError {
        field: field.to_string(),
        uri: uri.to_string(),
        message,
    };
    if !uri.contains("://") {
        return local(std::path::Path::new(uri), create).map_err(|e| err(e.to_string()));
    }
    let url = url::Url::parse(uri).map_err(|e| err(format!("not a valid URL: {e}")))?;
    match url.scheme() {
        "file" => {
            let dir = url.to_file_path().map_err(|_| err("not a local file URL".into()))?;
            local(&dir, create).map_err(|e| err(e.to_string()))
        }
        "s3" => {
            let mut builder = AmazonS3Builder::from_env().with_url(uri);
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
                && let Some(file) = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
            {
                let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    err(format!(
                        "AWS_SHARED_CREDENTIALS_FILE {}: {e}",
                        std::path::Path::new(&file).display()
                    ))
                })?;
                let c = credentials_from_ini(&text, &profile).map_err(|m| {
                    err(format!(
                        "AWS_SHARED_CREDENTIALS_FILE {}: {m}",
                        std::path::Path::new(&file).display()
                    ))
                })?;
                builder = builder.with_access_key_id(c.key_id).with_secret_access_key(c.secret);
                if let Some(token) = c.session_token {
                    builder = builder.with_token(token);
                }
            }
            let endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).ok();
            if let Some(endpoint) = endpoint {
                builder = builder
                    .with_endpoint(&endpoint)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
            // A few quick retries per HTTP request here; whole operations are
            // retried, within a time budget, by `crate::retry`.
            builder = builder.with_retry(object_store::RetryConfig {
                max_retries: 2,
                retry_timeout: std::time::Duration::from_secs(10),
                ..Default::default()
            });
            let store = builder.build().map_err(|e| err(e.to_string()))?;
            let prefix = ObjPath::from_url_path(url.path()).map_err(|e| err(e.to_string()))?;
            Ok(Location {
                store: Arc::new(store),
                prefix,
            })
        }
        other => Err(err(format!("unsupported scheme `{other}` (use a path, file:// or s3://)"))),
    }
}

/// Keys of one profile of an AWS credentials file.
#[derive(Debug, PartialEq, Eq)]
pub struct FileCredentials {
    /// `aws_access_key_id`.
    pub key_id: String,
    /// `aws_secret_access_key`.
    pub secret: String,
    /// `aws_session_token`, when the profile has one.
    pub session_token: Option<String>,
}

/// Reads profile `profile` of an AWS-style INI credentials file. Errors
/// name the profile and the missing key, never a value.
pub fn credentials_from_ini(text: &str, profile: &str) -> Result<FileCredentials, CredentialsError> {
    let mut in_profile = false;
    let mut seen = false;
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            seen |= in_profile;
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        if !in_profile {
            continue;
        }
        let v = Some(v.trim().to_string());
        match k.trim() {
            "aws_access_key_id" => key_id = v,
            "aws_secret_access_key" => secret = v,
            "aws_session_token" => token = v,
            _ => {}
        }
    }
    if !seen {
        return Err(CredentialsError::NoProfile {
            profile: profile.to_string(),
        });
    }
    let missing = |key| CredentialsError::MissingKey {
        profile: profile.to_string(),
        key,
    };
    Ok(FileCredentials {
        key_id: key_id.ok_or_else(|| missing("aws_access_key_id"))?,
        secret: secret.ok_or_else(|| missing("aws_secret_access_key"))?,
        session_token: token,
    })
}

fn local(dir: &std::path::Path, create: bool) -> Result<Location, LocalError> {
    if create {
        std::fs::create_dir_all(dir).map_err(LocalError::Create)?;
    } else if !dir.is_dir() {
        return Err(LocalError::Missing);
    }
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(LocalError::Open)?;
    Ok(Location {
        store: Arc::new(fs),
        prefix: ObjPath::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_give_the_profile_asked_for_and_errors_hide_values() {
        let text = "# comment\n[default]\naws_access_key_id = AKIA1\naws_secret_access_key=s3cr3t\n\n[ci]\naws_access_key_id=AKIA2\naws_secret_access_key = other\naws_session_token = tok\n[broken]\naws_access_key_id = AKIA3\n";
        let d = credentials_from_ini(text, "default").unwrap();
        assert_eq!((d.key_id.as_str(), d.secret.as_str(), d.session_token), ("AKIA1", "s3cr3t", None));
        let ci = credentials_from_ini(text, "ci").unwrap();
        assert_eq!((ci.key_id.as_str(), ci.session_token.as_deref()), ("AKIA2", Some("tok")));
        let e = credentials_from_ini(text, "broken").unwrap_err().to_string();
        assert_eq!(e, "profile [broken] has no aws_secret_access_key");
        assert!(!e.contains("AKIA3"));
        assert_eq!(credentials_from_ini(text, "prod").unwrap_err().to_string(), "no [prod] profile");
    }

    #[test]
    fn errors_name_the_field_and_the_uri() {
        let e = open("ftp://host/x", "data.path", false).err().unwrap().to_string();
        assert_eq!(
            e,
            "data.path = `ftp://host/x`: unsupported scheme `ftp` (use a path, file:// or s3://)"
        );
        let e = open("/definitely/not/here", "data.path", false).err().unwrap().to_string();
        assert!(e.starts_with("data.path = `/definitely/not/here`: no such folder"), "{e}");
        let dir = std::env::temp_dir().join(format!("amdim-storage-{}", std::process::id()));
        let loc = open(&format!("file://{}", dir.display()), "out", true).unwrap();
        assert_eq!(loc.path(&["a", "b"]).as_ref(), "a/b");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
