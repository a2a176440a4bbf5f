//! The exit codes of `amdimctl` and the typed errors that carry them:
//! 0 ok, 1 the job failed (or another failure), 2 invalid input, 3 the
//! coordinator is unreachable or refused, 130 interrupted. A command tags
//! the error it returns with [`Exit`] (`.exit(Exit::Invalid)` on a
//! `Result`, or [`tagged`]); the binary maps it to the process status with
//! [`code`]. The message is untouched: the tag is invisible in `{:#}`.
//! Owns only this mapping; it prints nothing.

use std::fmt;

/// Why a command failed, as scripts see it in the exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The job did not succeed (`watch`, `submit --watch`, `local`), or a
    /// failure that is none of the others: status 1.
    Failed,
    /// Bad flags, a bad job spec or `--set`, an unknown job or state: status 2.
    Invalid,
    /// The coordinator could not be reached, or refused the call (token,
    /// TLS, unavailable): status 3.
    Unreachable,
    /// Ctrl-C or SIGTERM: status 130.
    Interrupted,
}

impl Exit {
    /// The process exit status.
    pub fn status(self) -> u8 {
        match self {
            Self::Failed => 1,
            Self::Invalid => 2,
            Self::Unreachable => 3,
            Self::Interrupted => 130,
        }
    }
}

/// An error with its exit kind; displays (and chains) exactly as the error
/// it wraps.
#[derive(Debug)]
struct Tagged {
    kind: Exit,
    error: anyhow::Error,
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for Tagged {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// `error` tagged with `kind`; contexts added later keep the tag.
pub fn tagged(kind: Exit, error: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(Tagged { kind, error: error.into() })
}

/// Tags the error of a `Result` with an exit kind.
pub trait ExitExt<T> {
    /// The same result, its error tagged with `kind`.
    fn exit(self, kind: Exit) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> ExitExt<T> for Result<T, E> {
    fn exit(self, kind: Exit) -> anyhow::Result<T> {
        self.map_err(|e| tagged(kind, e))
    }
}

/// The exit kind of `error`: the outermost tag in its chain; `Failed`
/// when it has none.
pub fn kind(error: &anyhow::Error) -> Exit {
    if let Some(t) = error.downcast_ref::<Tagged>() {
        return t.kind;
    }
    error
        .chain()
        .find_map(|e| e.downcast_ref::<Tagged>().map(|t| t.kind))
        .unwrap_or(Exit::Failed)
}

/// The process exit status for `error`.
pub fn code(error: &anyhow::Error) -> u8 {
    kind(error).status()
}

/// The exit kind of a gRPC status from the coordinator: unreachable or
/// refused (token, permission, unavailable, timed out) is 3; a request it
/// rejected as wrong (bad argument, unknown job) is 2; anything else 1.
pub fn of_status(code: tonic::Code) -> Exit {
    use tonic::Code;
    match code {
        Code::Unavailable | Code::Unauthenticated | Code::PermissionDenied | Code::DeadlineExceeded => Exit::Unreachable,
        Code::InvalidArgument | Code::NotFound | Code::OutOfRange => Exit::Invalid,
        _ => Exit::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn tags_survive_contexts_and_leave_the_message_alone() {
        let e: anyhow::Result<()> = Err(anyhow::anyhow!("no such field")).exit(Exit::Invalid);
        let e = e.context("job.toml").context("submitting").unwrap_err();
        assert_eq!(code(&e), 2);
        assert_eq!(format!("{e:#}"), "submitting: job.toml: no such field");
        assert_eq!(code(&anyhow::anyhow!("plain")), 1);
        let io = std::io::Error::other("refused");
        let e = tagged(Exit::Unreachable, anyhow::Error::new(io).context("connecting"));
        assert_eq!((code(&e), format!("{e:#}").as_str()), (3, "connecting: refused"));
        assert_eq!(Exit::Interrupted.status(), 130);
        assert_eq!(of_status(tonic::Code::Unauthenticated), Exit::Unreachable);
        assert_eq!(of_status(tonic::Code::NotFound), Exit::Invalid);
        assert_eq!(of_status(tonic::Code::Internal), Exit::Failed);
    }
}
