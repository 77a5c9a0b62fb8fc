//! Waiting without timers: a manhole thread sleeps in `poll(2)` on the descriptor it serves and
//! the installation's stop pipe, so it costs no CPU and no wake-ups while idle, and uninstall
//! (which hangs up the stop pipe) wakes it at once.

#![deny(unsafe_code)]

use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

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
    loop {
        let mut fds = [
            PollFd::new(served, PollFlags::POLLIN),
            PollFd::new(stop, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let fired = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
                return Ok(Woken {
                    ready: fired(&fds[0]),
                    stopped: fired(&fds[1]),
                });
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
