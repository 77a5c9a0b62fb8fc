//! The crate's one error type.
//!
//! Every fallible public function returns [`Result<T>`]. An [`Error`] carries an [`ErrorKind`] a
//! program can match on, a one-line message meant for a person, and the underlying I/O error when
//! there is one.

use std::fmt;
use std::io;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, for code that needs to react to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `install` was called while a manhole is installed and `strict` is on.
    AlreadyInstalled,
    /// An operation needs an installed manhole and there is none.
    NotInstalled,
    /// The options contradict each other or a value is out of range.
    Configuration,
    /// The socket path is unusable: too long, or something that is not our socket is there.
    SocketPath,
    /// A signal name or number is unknown, or the signal cannot be used.
    Signal,
    /// The platform cannot do this (no `/proc`, a signal taken by someone else, ...).
    Unsupported,
    /// An operating-system call failed.
    Io,
}

/// The error type of the `manhole` crate.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

impl Error {
    /// A new error of `kind` with a one-line `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A new error of `kind` caused by the I/O error `source`.
    pub fn with_source(kind: ErrorKind, message: impl Into<String>, source: io::Error) -> Error {
        Error {
            kind,
            message: message.into(),
            source: Some(source),
        }
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the underlying cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Configuration, message)
    }

    pub(crate) fn io(message: impl Into<String>, source: io::Error) -> Error {
        Error::with_source(ErrorKind::Io, message, source)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl From<io::Error> for Error {
    fn from(source: io::Error) -> Error {
        Error::with_source(ErrorKind::Io, "I/O error", source)
    }
}
