//! The manhole's own event log: one line per event, `Manhole[<pid>:<time>]: <message>`, the
//! time in RFC 3339 (UTC, milliseconds: `2026-12-02T07:40:33.123Z`).
//!
//! Lines go straight to a file descriptor (default 2), never through `std::io`'s locked handles
//! or the application's `log`/`tracing` setup: a raw write cannot deadlock on a lock that
//! another thread held at `fork`, and it is what python-manhole does. A line is written
//! **without blocking** and without `SIGPIPE` (see `sys::output`): when the destination is a
//! full pipe nobody reads (a stalled log collector) the line is dropped and counted, and `info`
//! reports the count. So no manhole thread, no application thread and no program start ever
//! waits on the log. The settings live in atomics so every thread, including a freshly forked
//! child, reads them without a lock.
//!
//! Only when the application asks (`Options::log_to_tracing`, feature `tracing`) do events
//! become `tracing` events instead, and then only in the process that asked: a forked child's
//! fork handler and everything before its reinstall still write to the descriptor.

#![deny(unsafe_code)]

use std::fmt::Write as _;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::sys::output::write_without_blocking;

static ENABLED: AtomicBool = AtomicBool::new(false);
static DESTINATION: AtomicI32 = AtomicI32::new(2);
/// Lines that could not be written (whole or in part) because the destination had no room.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Where a destination of 1 or 2 really goes while that fd is teed into sessions (-1: the fd
/// itself), indexed by the fd.
static ORIGINAL: [AtomicI32; 3] = [AtomicI32::new(-1), AtomicI32::new(-1), AtomicI32::new(-1)];

/// The pid whose events go to `tracing`; 0: none.
#[cfg(feature = "tracing")]
static TRACING_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Sets whether this process's events go to `tracing` instead of the descriptor.
#[cfg(feature = "tracing")]
pub(crate) fn send_to_tracing(on: bool) {
    TRACING_PID.store(if on { std::process::id() } else { 0 }, Ordering::Relaxed);
}

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

/// Log lines dropped so far because their destination would have blocked.
pub(crate) fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Log lines being written: counted from before their look at [`ORIGINAL`] to the end of their
/// write (see [`set_original`]).
static WRITING: AtomicUsize = AtomicUsize::new(0);
/// The longest [`set_original`] waits for lines already being written.
const WRITERS_PATIENCE: Duration = Duration::from_millis(50);

/// Says where the original of `fd` (1 or 2) is while it is redirected into sessions (`-1`: not
/// redirected), so that the manhole's own lines never echo into sessions. Called before `fd` is
/// pointed at the sessions' tee: it returns once no line that may have looked before the change
/// is still being written (at most [`WRITERS_PATIENCE`]), so none lands in the tee. (A line
/// written by the listener while a session switched the tee on was seen in a session's answer.)
pub(crate) fn set_original(fd: RawFd, original: RawFd) {
    if let Some(slot) = usize::try_from(fd).ok().and_then(|i| ORIGINAL.get(i)) {
        slot.store(original, Ordering::SeqCst);
    }
    if original >= 0 {
        let since = Instant::now();
        while WRITING.load(Ordering::SeqCst) > 0 && since.elapsed() < WRITERS_PATIENCE {
            std::thread::yield_now();
        }
    }
}

/// Writes one formatted log line to where log lines go right now ([`destination_now`]).
fn write_log_line(line: &[u8]) {
    WRITING.fetch_add(1, Ordering::SeqCst);
    write_line(destination_now(), line);
    WRITING.fetch_sub(1, Ordering::SeqCst);
}

/// Formats one log line for `message` (with its trailing newline).
pub(crate) fn format_line(message: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut line = String::with_capacity(message.len() + 48);
    let _ = write!(line, "Manhole[{}:", std::process::id());
    write_rfc3339(&mut line, now);
    line.push_str("]: ");
    // One event is one line: fold any newline the message carries.
    for c in message.chars() {
        line.push(if c == '\n' || c == '\r' { ' ' } else { c });
    }
    line.push('\n');
    line
}

/// `since_epoch` as RFC 3339 in UTC with milliseconds: `2026-12-02T07:40:33.123Z`.
fn write_rfc3339(out: &mut String, since_epoch: Duration) {
    let secs = since_epoch.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_millis()
    );
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Logs one event if logging is on. The line is written without blocking; a line that does not
/// fit is dropped and counted.
pub(crate) fn event(message: &str) {
    if !enabled() {
        return;
    }
    #[cfg(feature = "tracing")]
    {
        let pid = TRACING_PID.load(Ordering::Relaxed);
        if pid != 0 && pid == std::process::id() {
            let folded = message.replace(['\n', '\r'], " ");
            tracing::info!(target: "manhole", "{folded}");
            return;
        }
    }
    write_log_line(format_line(message).as_bytes());
}

/// Logs one event to the descriptor even when events go to `tracing`: for code that holds a lock
/// the stderr tee's pump needs, where the application's subscriber could block writing into the
/// tee's pipe.
pub(crate) fn event_to_descriptor(message: &str) {
    if enabled() {
        write_log_line(format_line(message).as_bytes());
    }
}

/// Writes one whole line (or drops and counts it) without blocking, whatever `verbose` says: for
/// the few lines that must be said even with logging off (a refused `MANHOLE`).
pub(crate) fn write_line(fd: RawFd, line: &[u8]) {
    if write_without_blocking(fd, line, Duration::ZERO) < line.len() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes a long text (a stack dump for `dump_on`) to `fd`, waiting at most `patience` for room;
/// what does not fit by then is dropped (and counted as one line).
pub(crate) fn write_text(fd: RawFd, text: &[u8], patience: Duration) {
    if write_without_blocking(fd, text, patience) < text.len() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The descriptor to write to right now: while `redirect_stderr` (`redirect_stdout`) has fd 2
/// (fd 1) pointed at the sessions' tee, a destination of 2 (1) means the original, so the
/// manhole's own lines never echo into sessions.
pub(crate) fn destination_now() -> RawFd {
    let fd = destination();
    let original = usize::try_from(fd)
        .ok()
        .and_then(|i| ORIGINAL.get(i))
        .map_or(-1, |slot| slot.load(Ordering::Acquire));
    if original >= 0 { original } else { fd }
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

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        let mut out = String::new();
        write_rfc3339(&mut out, Duration::from_millis(1_796_197_233_123));
        assert_eq!(out, "2026-12-02T07:40:33.123Z");
        out.clear();
        write_rfc3339(&mut out, Duration::ZERO);
        assert_eq!(out, "1970-01-01T00:00:00.000Z");
        out.clear();
        // A leap day.
        write_rfc3339(&mut out, Duration::from_secs(951_782_400));
        assert_eq!(out, "2000-02-29T00:00:00.000Z");
    }
}
