//! Waiting without timers: a manhole thread sleeps in `poll(2)` on the descriptor it serves and
//! the installation's stop pipe, so it costs no CPU and no wake-ups while idle, and uninstall
//! (which hangs up the stop pipe) wakes it at once. (The listener alone may set a timeout, and
//! only while sessions are open or their dump caches wait out their grace period: see
//! `stackdump::cache_wake_interval`.)
//!
//! Only a hang-up (`POLLHUP`, `POLLERR`, `POLLNVAL`) on the stop pipe means stop: bytes that
//! somehow reach it (a stop pipe that became fd 1 in a process started with its standard
//! descriptors closed, say) are drained and ignored, never taken for a stop.

#![deny(unsafe_code)]

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// What on the stop pipe means "stop".
const HANG_UP: PollFlags = PollFlags::POLLHUP
    .union(PollFlags::POLLERR)
    .union(PollFlags::POLLNVAL);

/// Whether `revents` of the stop pipe say it hung up; data there is drained (the read end is
/// non-blocking) and does not count.
pub(crate) fn stop_fired(stop: BorrowedFd<'_>, revents: Option<PollFlags>) -> bool {
    let revents = revents.unwrap_or(PollFlags::empty());
    if revents.intersects(HANG_UP) {
        return true;
    }
    if revents.contains(PollFlags::POLLIN) {
        let mut sink = [0u8; 64];
        while matches!(nix::unistd::read(stop, &mut sink), Ok(n) if n > 0) {}
    }
    false
}

/// Whether the stop pipe has hung up, right now (no wait).
pub(crate) fn stopped_now(stop: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(stop, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => stop_fired(stop, fds[0].revents()),
        _ => false,
    }
}

/// What ended a [`until_ready_or_stopped`] wait; both can be true.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Woken {
    /// The served descriptor is readable (a connection to accept, a byte in the wake pipe).
    pub ready: bool,
    /// The stop pipe hung up: the installation is being torn down.
    pub stopped: bool,
}

/// Waits with no timeout until `served` is readable or `stop` hangs up. A signal interrupting
/// the wait (`EINTR`) just restarts it.
pub(crate) fn until_ready_or_stopped(
    served: BorrowedFd<'_>,
    stop: BorrowedFd<'_>,
) -> nix::Result<Woken> {
    until_ready_stopped_or(served, stop, None)
}

/// As [`until_ready_or_stopped`], but gives up after `timeout` (then neither flag is set).
pub(crate) fn until_ready_stopped_or(
    served: BorrowedFd<'_>,
    stop: BorrowedFd<'_>,
    timeout: Option<Duration>,
) -> nix::Result<Woken> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let mut fds = [
            PollFd::new(served, PollFlags::POLLIN),
            PollFd::new(stop, PollFlags::POLLIN),
        ];
        let wait = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Rounded up, so the wake-up never comes early and spins.
                let millis = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut fds, wait) {
            Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => {
                return Ok(Woken {
                    ready: false,
                    stopped: false,
                });
            }
            Ok(_) => {
                let ready = fds[0].revents().is_some_and(|r| !r.is_empty());
                let stopped = stop_fired(stop, fds[1].revents());
                if !ready && !stopped {
                    continue;
                }
                return Ok(Woken { ready, stopped });
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
