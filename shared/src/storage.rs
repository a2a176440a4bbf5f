//! Locations on object storage from user-facing URIs: a local folder path,
//! `file:///abs/path`, or `s3://bucket/prefix` (credentials, region and a
//! custom endpoint from the usual `AWS_*` environment variables; plain-http
//! endpoints such as a local S3 server are allowed). Owns parsing and error
//! messages that name the config field; no reading or writing here.

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("{field} = `{uri}`: {message}")]
pub struct StorageError {
    pub field: String,
    pub uri: String,
    pub message: String,
}

/// A store and the prefix inside it that `uri` names.
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
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
        return local(std::path::Path::new(uri), create).map_err(err);
    }
    let url = url::Url::parse(uri).map_err(|e| err(format!("not a valid URL: {e}")))?;
    match url.scheme() {
        "file" => {
            let dir = url.to_file_path().map_err(|_| err("not a local file URL".into()))?;
            local(&dir, create).map_err(err)
        }
        "s3" => {
            let mut builder = AmazonS3Builder::from_env().with_url(uri);
            let endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).ok();
            if let Some(endpoint) = endpoint {
                builder = builder
                    .with_endpoint(&endpoint)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
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

fn local(dir: &std::path::Path, create: bool) -> Result<Location, String> {
    if create {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the folder: {e}"))?;
    } else if !dir.is_dir() {
        return Err("no such folder".into());
    }
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| format!("cannot open the folder: {e}"))?;
    Ok(Location {
        store: Arc::new(fs),
        prefix: ObjPath::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
