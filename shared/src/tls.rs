//! TLS for gRPC (docs/architecture.md §10): the coordinator's server configuration from a
//! certificate and key (PEM files), and the client endpoint of `amdimctl`
//! and the worker agents: an `https://` address is verified against a CA
//! file when one is given, else against the system's roots. Owns reading
//! and checking the PEM files so that every error names the flag and file;
//! it does not decide which flags exist.

use std::path::Path;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// A TLS setting that cannot be used; messages name the flag.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file that cannot be read or holds no PEM block
    /// of the kind asked for.
    #[error("{flag} {path}: {message}")]
    File {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A server address that is not a valid URL for TLS.
    #[error("{flag} {url}: {message}")]
    Address {
        /// The flag that gave the address.
        flag: &'static str,
        /// The address.
        url: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The PEM file at `path`, checked to hold at least one `what` block.
fn read_pem(flag: &'static str, path: &Path, what: &[&str]) -> Result<Vec<u8>, TlsError> {
    let err = |message: String| TlsError::File {
        flag,
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    if !what.iter().any(|w| text.contains(&format!("-----BEGIN {w}-----"))) {
        return Err(err(format!("no PEM block of type {} in the file", what.join(" or "))));
    }
    Ok(bytes)
}

/// The server side: certificate chain and private key, both PEM.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig, TlsError> {
    let cert = read_pem("--tls-cert-file", cert, &["CERTIFICATE"])?;
    let key = read_pem("--tls-key-file", key, &["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"])?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
}

/// A client endpoint for `url` (`--server`/`--coordinator`, named by
/// `flag`): plain for `http://`, TLS for `https://`, trusting `ca_file`
/// (PEM) when given and the system's roots otherwise.
pub fn endpoint(flag: &'static str, url: &str, ca_file: Option<&Path>) -> Result<Endpoint, TlsError> {
    let err = |message: String| TlsError::Address {
        flag,
        url: url.to_string(),
        message,
    };
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| err(format!("not a valid URL: {e}")))?;
    match (url.starts_with("https://"), ca_file) {
        (false, None) => Ok(endpoint),
        (false, Some(_)) => Err(err("--tls-ca-file is set but the address is not https://".into())),
        (true, ca) => {
            let config = match ca {
                Some(path) => {
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("--tls-ca-file", path, &["CERTIFICATE"])?))
                }
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint.tls_config(config).map_err(|e| err(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_flag_and_the_file() {
        let dir = std::env::temp_dir().join(format!("amdim-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("cert.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = server_config(&not_pem, &not_pem).unwrap_err().to_string();
        assert!(
            e.starts_with("--tls-cert-file ") && e.contains("cert.pem") && e.contains("CERTIFICATE"),
            "{e}"
        );
        let e = server_config(&dir.join("missing.pem"), &not_pem).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let e = endpoint("--server", "http://127.0.0.1:1", Some(&not_pem)).unwrap_err().to_string();
        assert!(e.starts_with("--server http://127.0.0.1:1") && e.contains("not https://"), "{e}");
        let e = endpoint("--server", "https://127.0.0.1:1", Some(&not_pem)).unwrap_err().to_string();
        assert!(e.starts_with("--tls-ca-file "), "{e}");
        assert!(endpoint("--server", "http://127.0.0.1:1", None).is_ok());
        assert!(endpoint("--server", "not a url", None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
