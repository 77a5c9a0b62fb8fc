//! `redirect_stderr`: while a session is open, what the process writes to fd 2 is also shown in
//! the session, live.
//!
//! When the first session attaches, fd 2 is pointed (with `dup2`) at a pipe whose other end a
//! `mh-stderr` pump thread reads; the pump writes everything to the original stderr (a saved
//! duplicate, so nothing is lost) and to each attached session's feed, a non-blocking pipe the
//! session polls together with its socket. When the last session detaches, fd 2 is pointed back
//! at the original. The pump keeps draining its pipe until every writer is gone (a child forked
//! meanwhile may still hold it as its stderr), then ends.
//!
//! A session whose client reads too slowly loses stderr text rather than slowing the application
//! down: feeds are written without blocking. The manhole's own log lines go straight to the
//! original stderr while the tee is on, so they never echo into sessions.

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};

use crate::log::log_event;
use crate::sys;
use crate::sys::output::write_all_without_sigpipe;

const STDERR: RawFd = 2;

struct TeeState {
    /// Each attached session's feed: its id and the write end of its pipe (non-blocking).
    feeds: Vec<(u64, OwnedFd)>,
    /// The read end of the current pump's pipe, for the exit-time drain.
    pump_pipe: RawFd,
    /// Closed by the current pump when it has finished (and closed its pipe).
    pump_done: Option<mpsc::Receiver<()>>,
}

/// Held across `fork` (see `fork.rs`); taken after `lifecycle::STATE` when both are needed.
static TEE: Mutex<TeeState> = Mutex::new(TeeState {
    feeds: Vec::new(),
    pump_pipe: -1,
    pump_done: None,
});
/// fd 2 points at our pipe.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// A duplicate of the original stderr, made at install (see [`prepare`]) and kept for the life of
/// the process (refreshed in place with `dup2` at each activation), so no writer ever sees its
/// number closed and reused.
static SAVED: AtomicI32 = AtomicI32::new(-1);
static NEXT_FEED: AtomicU64 = AtomicU64::new(1);

fn tee() -> MutexGuard<'static, TeeState> {
    TEE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `TEE`, held by the fork handlers from `prepare` until `parent`/`child`.
pub(crate) struct ForkHold(#[allow(dead_code)] MutexGuard<'static, TeeState>);

pub(crate) fn fork_hold() -> ForkHold {
    ForkHold(tee())
}

/// A session's view of stderr; dropping it detaches the session.
pub(crate) struct Feed {
    id: u64,
    reader: OwnedFd,
}

impl Feed {
    pub(crate) fn reader(&self) -> &OwnedFd {
        &self.reader
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        detach(self.id);
    }
}

fn io_err(e: Errno) -> std::io::Error {
    e.into()
}

/// Attaches a session: turns the tee on if it is the first.
pub(crate) fn attach() -> std::io::Result<Feed> {
    let mut state = tee();
    if !ACTIVE.load(Ordering::Acquire) {
        activate(&mut state)?;
    }
    let (reader, writer) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io_err)?;
    let id = NEXT_FEED.fetch_add(1, Ordering::Relaxed);
    state.feeds.push((id, writer));
    Ok(Feed { id, reader })
}

/// Makes the lasting duplicate of stderr, once per process, at install: the descriptor a
/// process with a manhole has open does not change when sessions come and go.
pub(crate) fn prepare() {
    let _state = tee();
    if SAVED.load(Ordering::Acquire) < 0
        && let Err(e) = save_stderr()
    {
        log_event!("Cannot duplicate stderr; sessions will not show it: {e}");
    }
}

fn save_stderr() -> std::io::Result<RawFd> {
    let fd = fcntl(sys::borrow_fd(STDERR), FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(io_err)?;
    let fd = fd.into_raw_fd();
    SAVED.store(fd, Ordering::Release);
    Ok(fd)
}

fn activate(state: &mut TeeState) -> std::io::Result<()> {
    let saved = SAVED.load(Ordering::Acquire);
    if saved < 0 {
        save_stderr()?;
    } else {
        // The application may have pointed fd 2 elsewhere since: follow it, in place.
        sys::dup2_raw(STDERR, saved)?;
        fcntl(sys::borrow_fd(saved), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io_err)?;
    }
    let (reader, writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io_err)?;
    let pump_pipe = reader.as_raw_fd();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    crate::threads::spawn("mh-stderr".into(), move || {
        pump(reader);
        drop(done_tx);
    })?;
    state.pump_done = Some(done_rx);
    // From here on, writes to fd 2 go to the pump; `writer` itself is closed on return.
    sys::dup2_raw(writer.as_raw_fd(), STDERR)?;
    state.pump_pipe = pump_pipe;
    ACTIVE.store(true, Ordering::Release);
    crate::log::set_original_stderr(SAVED.load(Ordering::Acquire));
    Ok(())
}

fn detach(id: u64) {
    let pump_done = {
        let mut state = tee();
        state.feeds.retain(|(feed, _)| *feed != id);
        if !(state.feeds.is_empty() && ACTIVE.load(Ordering::Acquire)) {
            return;
        }
        deactivate(&mut state);
        state.pump_done.take()
    };
    // Usually the pump sees the end of its pipe at once and finishes; wait a little for it (not
    // holding the lock, which it may need for its last chunk), so that when the session is over
    // its thread and pipe are gone too. A child forked during the session may keep the pipe
    // open; the pump then goes on copying its output to the original stderr.
    if let Some(done) = pump_done {
        let _ = done.recv_timeout(Duration::from_millis(500));
    }
}

fn deactivate(state: &mut TeeState) {
    let saved = SAVED.load(Ordering::Acquire);
    if let Err(e) = sys::dup2_raw(saved, STDERR) {
        // The TEE lock is held and fd 2 still feeds the pump, which needs that lock.
        crate::log::event_to_descriptor(&format!("Cannot point stderr back at the original: {e}"));
        return;
    }
    ACTIVE.store(false, Ordering::Release);
    crate::log::set_original_stderr(-1);
    state.pump_pipe = -1;
}

/// Copies the pipe to the original stderr and to every feed until every writer is gone.
fn pump(reader: OwnedFd) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match nix::unistd::read(&reader, &mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        };
        let chunk = &buf[..n];
        write_all_without_sigpipe(SAVED.load(Ordering::Acquire), chunk);
        let state = tee();
        for (_, feed) in &state.feeds {
            // Non-blocking: a session that cannot keep up loses text instead of stalling us.
            let _ = nix::unistd::write(feed, chunk);
        }
    }
}

/// At process exit: point fd 2 back at the original and give the pump a moment to copy what
/// is still in its pipe, so the last lines the application wrote are not lost.
pub(crate) fn at_exit() {
    let pump_pipe = {
        let Ok(mut state) = TEE.try_lock() else {
            return;
        };
        if !ACTIVE.load(Ordering::Acquire) {
            return;
        }
        let pipe = state.pump_pipe;
        deactivate(&mut state);
        pipe
    };
    let deadline = Instant::now() + Duration::from_millis(200);
    while pump_pipe >= 0 && sys::readable_bytes(pump_pipe) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// In a forked child (async-signal-safe, with `TEE` held by the fork handlers): the child has
/// no pump and no sessions, so stderr goes straight back to the original.
pub(crate) fn after_fork_in_child(hold: &mut ForkHold) {
    if ACTIVE.load(Ordering::Acquire) {
        let _ = sys::dup2_raw(SAVED.load(Ordering::Acquire), STDERR);
        ACTIVE.store(false, Ordering::Release);
        crate::log::set_original_stderr(-1);
    }
    hold.0.pump_pipe = -1;
    // The receiver's channel belongs to the parent's pump: leak it (no allocation, no lock).
    if let Some(done) = hold.0.pump_done.take() {
        std::mem::forget(done);
    }
    // Closing the parent's feed pipes: `clear` drops (closes) them and frees nothing.
    hold.0.feeds.clear();
}
