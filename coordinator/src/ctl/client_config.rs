//! Where `amdimctl` finds its coordinator: flags and environment first, then
//! the config file (`$AMDIM_CONFIG`, else `$XDG_CONFIG_HOME/amdim/config.toml`,
//! else `~/.config/amdim/config.toml`), then the defaults. The file holds
//! `server`, `token_file` and `tls_ca_file` (never a token itself, so it
//! can be shared). Owns the merge rules; the flags belong to `amdimctl`.

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// The config file's fields; unknown ones are refused with their name.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The coordinator URL.
    pub server: Option<String>,
    /// A file holding the client token.
    pub token_file: Option<PathBuf>,
    /// The CA certificate that verifies an https:// coordinator.
    pub tls_ca_file: Option<PathBuf>,
}

/// What a command connects with.
#[derive(Debug, PartialEq)]
pub struct Connection {
    /// The coordinator URL.
    pub server: String,
    /// The client token given directly (flag or environment).
    pub token: Option<String>,
    /// A file holding the client token.
    pub token_file: Option<PathBuf>,
    /// The CA certificate that verifies an https:// coordinator.
    pub tls_ca_file: Option<PathBuf>,
}

/// The config file's path from the environment (`AMDIM_CONFIG`,
/// `XDG_CONFIG_HOME`, `HOME`), if one can be named.
pub fn default_path(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = env("AMDIM_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("amdim").join("config.toml"))
}

/// Reads the config file at `path`; a missing file is an empty config, a
/// broken one an error naming the file. Relative paths inside it are taken
/// from the file's folder.
pub fn load(path: &Path) -> Result<FileConfig, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    // The error names the line, never quotes it: it may hold a secret.
    let mut c: FileConfig = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(0, |s| text[..s.start.min(text.len())].lines().count().max(1));
        format!("{} line {line}: {}", path.display(), e.message())
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for p in [&mut c.token_file, &mut c.tls_ca_file].into_iter().flatten() {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
    Ok(c)
}

/// Flags (and their environment variables) win over the file; the file
/// wins over the defaults. A token given directly makes the file's token
/// file irrelevant.
pub fn merge(
    server: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    tls_ca_file: Option<PathBuf>,
    file: FileConfig,
) -> Connection {
    let token_file = if token.is_some() {
        token_file
    } else {
        token_file.or(file.token_file)
    };
    Connection {
        server: server.or(file.server).unwrap_or_else(|| DEFAULT_SERVER.to_string()),
        token,
        token_file,
        tls_ca_file: tls_ca_file.or(file.tls_ca_file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let file = || FileConfig {
            server: Some("https://amdim.example:7070".into()),
            token_file: Some("/etc/amdim/token".into()),
            tls_ca_file: Some("/etc/amdim/ca.pem".into()),
        };
        let c = merge(None, None, None, None, file());
        assert_eq!(c.server, "https://amdim.example:7070");
        assert_eq!(c.token_file, Some("/etc/amdim/token".into()));
        let c = merge(Some("http://other:1".into()), Some("t".into()), None, None, file());
        assert_eq!((c.server.as_str(), c.token_file), ("http://other:1", None));
        assert_eq!(c.tls_ca_file, Some("/etc/amdim/ca.pem".into()));
        assert_eq!(merge(None, None, None, None, FileConfig::default()).server, DEFAULT_SERVER);
    }

    #[test]
    fn the_path_follows_the_environment() {
        let env =
            |vars: &'static [(&'static str, &'static str)]| move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(
            default_path(env(&[("AMDIM_CONFIG", "/x.toml"), ("HOME", "/h")])),
            Some("/x.toml".into())
        );
        assert_eq!(
            default_path(env(&[("XDG_CONFIG_HOME", "/c"), ("HOME", "/h")])),
            Some("/c/amdim/config.toml".into())
        );
        assert_eq!(default_path(env(&[("HOME", "/h")])), Some("/h/.config/amdim/config.toml".into()));
        assert_eq!(default_path(env(&[])), None);
    }

    #[test]
    fn files_resolve_relative_paths_and_refuse_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert_eq!(load(&path).unwrap(), FileConfig::default());
        std::fs::write(&path, "server = \"http://h:1\"\ntoken_file = \"token\"\n").unwrap();
        assert_eq!(load(&path).unwrap().token_file, Some(dir.path().join("token")));
        std::fs::write(&path, "token = \"secret\"\n").unwrap();
        let e = load(&path).unwrap_err();
        assert!(
            e.contains("config.toml line 1") && e.contains("token") && !e.contains("secret"),
            "{e}"
        );
    }
}
