//! Bearer tokens on the control plane (docs/architecture.md §10): clients (`amdimctl`)
//! present the client token, worker agents the join token, in the gRPC
//! `authorization: Bearer …` header. [`BearerToken`] adds it to every
//! request; [`RequireToken`] checks it on the coordinator and answers
//! UNAUTHENTICATED without saying more. Tokens come from a value or a file
//! (whitespace trimmed) and are never logged.

use std::path::Path;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A token that cannot be used; the message names the flag, never the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("{flag} {path}: {source}")]
    Read {
        /// The flag that named the file.
        flag: String,
        /// The file.
        path: String,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// Nothing but white space.
    #[error("{flag}: the token is empty")]
    Empty {
        /// The flag that gave it.
        flag: String,
    },
    /// Spaces, control or non-ASCII characters.
    #[error("{flag}: the token must be printable ASCII without spaces")]
    NotPrintable {
        /// The flag that gave it.
        flag: String,
    },
    /// Not valid in a gRPC header.
    #[error("the token is not valid ASCII")]
    NotAscii,
}

/// A token from `value` (a flag or environment variable), else from
/// `file`; None when neither is given. Errors name the flag, not the token.
pub fn read_token(value: Option<String>, file: Option<&Path>, flag: &str) -> Result<Option<String>, TokenError> {
    let token = match (value, file) {
        (Some(v), _) => v,
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|source| TokenError::Read {
            flag: flag.to_string(),
            path: f.display().to_string(),
            source,
        })?,
        (None, None) => return Ok(None),
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(TokenError::Empty { flag: flag.to_string() });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::NotPrintable { flag: flag.to_string() });
    }
    Ok(Some(token))
}

/// Adds `authorization: Bearer <token>` to outgoing requests.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// Presents `token` (None: no header).
    pub fn new(token: Option<&str>) -> Result<Self, TokenError> {
        token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| TokenError::NotAscii)
            })
            .transpose()
            .map(Self)
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// Refuses requests without `Bearer <expected>` (accepts all when None).
#[derive(Clone)]
pub struct RequireToken {
    expected: Option<String>,
    /// Which token, for the refusal: "client token" or "join token".
    what: &'static str,
}

impl RequireToken {
    /// Requires `expected` (None: accepts every request); `what` names the
    /// token in refusals.
    pub fn new(expected: Option<String>, what: &'static str) -> Self {
        Self { expected, what }
    }
}

/// Equal-length inputs compared without an early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else { return Ok(request) };
        let given = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        match given.and_then(|v| v.strip_prefix("Bearer ")) {
            Some(t) if same(t.as_bytes(), expected.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated(format!("wrong {}", self.what))),
            None => Err(Status::unauthenticated(format!("missing {} (authorization: Bearer …)", self.what))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_errors_never_show_them() {
        let mut require = RequireToken::new(Some("s3cret".into()), "client token");
        let with = |t: Option<&str>| BearerToken::new(t).unwrap().call(Request::new(())).unwrap();
        assert!(require.call(with(Some("s3cret"))).is_ok());
        let wrong = require.call(with(Some("guess"))).unwrap_err();
        assert_eq!(
            (wrong.code(), wrong.message()),
            (tonic::Code::Unauthenticated, "wrong client token")
        );
        let missing = require.call(with(None)).unwrap_err();
        assert!(missing.message().starts_with("missing client token"));
        assert!(RequireToken::new(None, "x").call(with(None)).is_ok());
    }

    #[test]
    fn tokens_come_from_a_value_or_a_file() {
        let dir = std::env::temp_dir().join(format!("amdim-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "abc123\n").unwrap();
        assert_eq!(read_token(None, Some(&f), "--token-file").unwrap().as_deref(), Some("abc123"));
        assert_eq!(read_token(Some("v".into()), Some(&f), "--token").unwrap().as_deref(), Some("v"));
        assert_eq!(read_token(None, None, "--token").unwrap(), None);
        std::fs::write(&f, "  \n").unwrap();
        assert_eq!(
            read_token(None, Some(&f), "--token-file").unwrap_err().to_string(),
            "--token-file: the token is empty"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
