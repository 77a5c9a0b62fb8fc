//! The client's one error type: a kind (which fixes the exit code), a one-line message and an
//! optional hint.
//!
//! Every failure the operator can meet maps to a kind with its own exit code, so scripts can tell
//! "no such process" from "the server refused me" without parsing text. The table printed by
//! `--help` ([`EXIT_CODES_HELP`]) and docs/cli.md list the same codes; a unit test keeps the help
//! text and [`ErrorKind::exit_code`] in step.

use std::fmt;
use std::io;

/// Like `eprintln!`, but a stderr that cannot be written (a closed pipe, as in `2>&1 | head`) is
/// ignored instead of a panic: the exit code still tells what happened.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use note;

/// `Result` with the client's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong, coarsely: one kind per exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad command line (clap's own errors use the same code).
    Usage,
    /// The target pid is not a running process.
    NoSuchProcess,
    /// Nothing to connect to: no socket at the path, or nothing listening on it.
    NoSocket,
    /// The operating system said no: connecting to the socket, signalling the process, reading it.
    PermissionDenied,
    /// The server refused this peer (`manhole: access denied ...`).
    AccessDenied,
    /// The server is at its session cap (`manhole: too many sessions ...`).
    TooManySessions,
    /// The socket did not accept, or did not appear, or the server did not answer, in time.
    TimedOut,
    /// The server closed the connection before it answered.
    ServerClosed,
    /// The client refused to go on because it could harm the target or talk to an impostor:
    /// a signal the process does not catch, a socket served or owned by someone else.
    Unsafe,
    /// Anything else: an unexpected I/O error, an answer the client does not understand.
    Other,
    /// `-s SIG` refused: nothing shows that a manhole in the process waits for that signal
    /// (no trusted activation file, see `evidence`).
    NoEvidence,
    /// The server went silent in the middle of an answer for longer than the client waits.
    Stalled,
    /// The server sent a line or an answer larger than the client accepts.
    TooLarge,
    /// Our own stdout was closed by its reader (`| head`): not reported, exit 0.
    StdoutClosed,
}

impl ErrorKind {
    /// Every kind, in exit-code order.
    #[cfg(test)]
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::StdoutClosed,
        ErrorKind::Usage,
        ErrorKind::NoSuchProcess,
        ErrorKind::NoSocket,
        ErrorKind::PermissionDenied,
        ErrorKind::AccessDenied,
        ErrorKind::TooManySessions,
        ErrorKind::TimedOut,
        ErrorKind::ServerClosed,
        ErrorKind::Unsafe,
        ErrorKind::Other,
        ErrorKind::NoEvidence,
        ErrorKind::Stalled,
        ErrorKind::TooLarge,
    ];

    /// The process exit code for this kind (0 and 1 are success and "the command failed").
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::StdoutClosed => 0,
            ErrorKind::Usage => 2,
            ErrorKind::NoSuchProcess => 3,
            ErrorKind::NoSocket => 4,
            ErrorKind::PermissionDenied => 5,
            ErrorKind::AccessDenied => 6,
            ErrorKind::TooManySessions => 7,
            ErrorKind::TimedOut => 8,
            ErrorKind::ServerClosed => 9,
            ErrorKind::Unsafe => 10,
            ErrorKind::Other => 11,
            ErrorKind::NoEvidence => 12,
            ErrorKind::Stalled => 13,
            ErrorKind::TooLarge => 14,
        }
    }
}

/// Exit code when the one-shot COMMAND ran and failed (the server answered `ok: false`).
pub const EXIT_COMMAND_FAILED: u8 = 1;

/// The exit-code table shown by `--help` (and copied in docs/cli.md).
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
   0  success (also when stdout is closed early, as by `| head`)
   1  COMMAND ran and failed (the server answered an error)
   2  usage error (bad option, invalid TARGET)
   3  no such process
   4  no manhole socket (nothing at the path, or nothing listening on it)
   5  permission denied (connecting to the socket or signalling the process)
   6  access denied by the server
   7  too many sessions open on the server
   8  timed out (connecting, or waiting for the server's first answer)
   9  the server closed the connection before answering
  10  refused for safety (a crash signal, a signal not caught by the process, socket
      served or owned by another process or user)
  11  any other error (I/O, unexpected answer)
  12  -s refused: no evidence that a manhole in the process waits for that signal
  13  the server stalled in the middle of an answer (silent for longer than the wait)
  14  the server sent a line or an answer larger than the client accepts";

/// A failure, with the one line the operator sees.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
}

impl Error {
    /// A new error of `kind` saying `message` (one line, no trailing period needed).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a second line suggesting what to do.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    /// An I/O error while doing `what` (e.g. "reading /proc/12/status"), classified by its kind.
    pub fn io(what: impl fmt::Display, err: &io::Error) -> Error {
        let kind = match err.kind() {
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::TimedOut,
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof => ErrorKind::ServerClosed,
            _ => ErrorKind::Other,
        };
        Error::new(kind, format!("{what}: {}", strip_os_error(err)))
    }

    /// An error writing to our own stdout: a closed pipe is [`ErrorKind::StdoutClosed`].
    pub fn stdout(err: &io::Error) -> Error {
        if err.kind() == io::ErrorKind::BrokenPipe {
            Error::new(ErrorKind::StdoutClosed, "stdout closed")
        } else {
            Error::new(
                ErrorKind::Other,
                format!("writing to stdout: {}", strip_os_error(err)),
            )
        }
    }

    /// The kind, which decides the exit code.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The one-line message.
    #[cfg(test)]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The hint line, if any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// `io::Error`'s text without the " (os error 13)" suffix, which helps nobody here.
fn strip_os_error(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

/// A `nix` errno as an `io::Error`, for [`Error::io`].
pub fn errno(err: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(err as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_in_order() {
        let codes: Vec<u8> = ErrorKind::ALL.iter().map(|kind| kind.exit_code()).collect();
        assert_eq!(codes, vec![0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        assert!(!codes.contains(&EXIT_COMMAND_FAILED));
    }

    #[test]
    fn help_table_lists_every_code() {
        for code in ErrorKind::ALL
            .iter()
            .map(|kind| kind.exit_code())
            .chain([EXIT_COMMAND_FAILED])
        {
            let row = format!("\n{code:>4}  ");
            assert!(
                EXIT_CODES_HELP.contains(&row),
                "exit code {code} missing from the --help table"
            );
        }
    }

    #[test]
    fn io_errors_are_classified() {
        let denied = io::Error::from_raw_os_error(libc_eacces());
        let err = Error::io("connecting to /tmp/manhole-1", &denied);
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert_eq!(err.exit_code(), 5);
        assert_eq!(
            err.message(),
            "connecting to /tmp/manhole-1: Permission denied"
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(Error::io("reading", &reset).kind(), ErrorKind::ServerClosed);
        let timed_out = io::Error::from(io::ErrorKind::WouldBlock);
        assert_eq!(Error::io("reading", &timed_out).exit_code(), 8);
        let odd = io::Error::other("odd");
        assert_eq!(Error::io("reading", &odd).exit_code(), 11);
    }

    #[test]
    fn broken_stdout_is_quiet_success() {
        let err = Error::stdout(&io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(err.kind(), ErrorKind::StdoutClosed);
        assert_eq!(err.exit_code(), 0);
        let full = Error::stdout(&io::Error::from_raw_os_error(28));
        assert_eq!(full.exit_code(), 11);
    }

    #[test]
    fn hints_are_kept() {
        let err = Error::new(ErrorKind::NoSocket, "no socket").with_hint("try -s USR2");
        assert_eq!(err.to_string(), "no socket");
        assert_eq!(err.hint(), Some("try -s USR2"));
        assert_eq!(err.exit_code(), 4);
    }

    fn libc_eacces() -> i32 {
        nix::errno::Errno::EACCES as i32
    }
}
