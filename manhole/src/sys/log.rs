//! The manhole's own event log: one line per event, `Manhole[<pid>:<time>]: <message>`.
//!
//! Lines go straight to a file descriptor (default 2) with `write(2)`, never through `std::io`'s
//! locked handles or the application's `log`/`tracing` setup: a raw write cannot deadlock on a
//! lock that another thread held at `fork`, and it is what python-manhole does. The settings live
//! in atomics so every thread, including a freshly forked child, reads them without a lock.

#![deny(unsafe_code)]

use std::fmt::Write as _;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static ENABLED: AtomicBool = AtomicBool::new(false);
static DESTINATION: AtomicI32 = AtomicI32::new(2);

/// Sets whether events are logged and where to.
pub(crate) fn configure(enabled: bool, destination: RawFd) {
    DESTINATION.store(destination, Ordering::Relaxed);
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether events are being logged.
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The descriptor log lines go to.
pub(crate) fn destination() -> RawFd {
    DESTINATION.load(Ordering::Relaxed)
}

/// Formats one log line for `message` (with its trailing newline).
pub(crate) fn format_line(message: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut line = String::with_capacity(message.len() + 40);
    let _ = write!(
        line,
        "Manhole[{}:{}.{:04}]: ",
        std::process::id(),
        now.as_secs(),
        now.subsec_micros() / 100
    );
    // One event is one line: fold any newline the message carries.
    for c in message.chars() {
        line.push(if c == '\n' || c == '\r' { ' ' } else { c });
    }
    line.push('\n');
    line
}

/// Logs one event if logging is on. Errors writing the log are ignored: logging must never
/// disturb the process.
pub(crate) fn event(message: &str) {
    if enabled() {
        write_all_raw(destination_now(), format_line(message).as_bytes());
    }
}

/// The descriptor to write to right now: while `redirect_stderr` has fd 2 pointed at the
/// sessions' tee, a destination of 2 means the original stderr, so the manhole's own lines never
/// echo into sessions.
pub(crate) fn destination_now() -> RawFd {
    let fd = destination();
    if fd == 2 {
        crate::tee::original_stderr().unwrap_or(fd)
    } else {
        fd
    }
}

/// Writes all of `bytes` to `fd` with raw `write` calls, retrying on `EINTR`, giving up silently
/// on any other error.
pub(crate) fn write_all_raw(fd: RawFd, mut bytes: &[u8]) {
    if fd < 0 {
        return;
    }
    // A descriptor closed behind our back makes `write` fail with EBADF, which we ignore.
    let fd = crate::sys::borrow_fd(fd);
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

/// `log!`-style formatting for [`event`] that skips the formatting when logging is off.
macro_rules! log_event {
    ($($arg:tt)*) => {
        if $crate::log::enabled() {
            $crate::log::event(&format!($($arg)*));
        }
    };
}
pub(crate) use log_event;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_pid_and_folds_newlines() {
        let line = format_line("two\nlines");
        assert!(line.starts_with(&format!("Manhole[{}:", std::process::id())));
        assert!(line.ends_with("]: two lines\n"), "{line:?}");
        assert_eq!(line.matches('\n').count(), 1);
    }
}
