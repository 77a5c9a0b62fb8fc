//! `redirect_stderr` and `redirect_stdout`: while a session is open, what the process writes to
//! fd 2 and fd 1 is also shown in the session, live.
//!
//! When the first session that shows a stream attaches, that stream's fd is pointed (with
//! `dup2`) at a pipe whose other end a pump thread (`mh-stderr`, `mh-stdout`) reads; the pump
//! writes everything to the original descriptor (a saved duplicate, so nothing is taken from the
//! real stdout or stderr: it gets every byte, in order, and when it is a full pipe the pump
//! waits on it as the application's own write would have) and to each attached session's feed,
//! a non-blocking pipe the session polls together with its socket. When the last such session
//! detaches, the fd is pointed back at the original, once the pump has emptied its pipe (so what
//! the application writes next cannot overtake what is still in it). The pump keeps draining its
//! pipe until every writer is gone (a child forked meanwhile may still hold it), then ends.
//!
//! A session whose client reads too slowly loses text rather than slowing the application
//! down: feeds are written without blocking, and nothing of a session or the listener waits on
//! the original descriptors. The manhole's own log lines go straight to the original descriptor
//! (stderr, or stdout with `verbose_destination(1)`) while the tee is on, so they never echo into
//! sessions.

use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};

use crate::log::log_event;
use crate::sys;
use crate::sys::output::write_all_without_sigpipe;

/// One of the two teed standard streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    const BOTH: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    fn fd(self) -> RawFd {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which streams a session shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shown {
    pub(crate) stdout: bool,
    pub(crate) stderr: bool,
}

impl Shown {
    pub(crate) fn any(self) -> bool {
        self.stdout || self.stderr
    }

    fn has(self, stream: Stream) -> bool {
        match stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        }
    }
}

/// One stream's pump, while its fd points at the pump's pipe.
struct Pump {
    /// The read end of the pump's pipe, for the drains before switching back and at exit.
    pipe: RawFd,
    /// Closed by the pump when it has finished (and closed its pipe).
    done: Option<mpsc::Receiver<()>>,
}

struct TeeState {
    /// Each attached session's feed: its id, the streams it shows and the write end of its pipe
    /// (non-blocking).
    feeds: Vec<(u64, Shown, OwnedFd)>,
    pumps: [Pump; 2],
}

/// Held across `fork` (see `fork.rs`); taken after `lifecycle::STATE` when both are needed.
static TEE: Mutex<TeeState> = Mutex::new(TeeState {
    feeds: Vec::new(),
    pumps: [
        Pump {
            pipe: -1,
            done: None,
        },
        Pump {
            pipe: -1,
            done: None,
        },
    ],
});
/// The stream's fd points at our pipe.
static ACTIVE: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];
/// The read end of the stream's pump pipe while it is active (-1: none), for [`at_crash`],
/// which cannot take the lock.
static PIPE: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];
/// Bytes the stream's pump has taken (or is about to take) from its pipe and not yet written to
/// the original.
static IN_FLIGHT: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];
/// A duplicate of the original descriptor, made at install (see [`prepare`]) and kept for the
/// life of the process (refreshed in place with `dup2` at each activation), so no writer ever
/// sees its number closed and reused.
static SAVED: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];
static NEXT_FEED: AtomicU64 = AtomicU64::new(1);

fn tee() -> MutexGuard<'static, TeeState> {
    TEE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn saved(stream: Stream) -> RawFd {
    SAVED[stream.index()].load(Ordering::Acquire)
}

fn active(stream: Stream) -> bool {
    ACTIVE[stream.index()].load(Ordering::Acquire)
}

/// `TEE`, held by the fork handlers from `prepare` until `parent`/`child`.
pub(crate) struct ForkHold(#[allow(dead_code)] MutexGuard<'static, TeeState>);

pub(crate) fn fork_hold() -> ForkHold {
    ForkHold(tee())
}

/// A session's view of the streams it shows; dropping it detaches the session.
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

/// Attaches a session showing `shown`: turns on the tee of each stream it is the first to show.
pub(crate) fn attach(shown: Shown) -> std::io::Result<Feed> {
    let mut state = tee();
    for stream in Stream::BOTH {
        if shown.has(stream) && !active(stream) {
            activate(&mut state, stream)?;
        }
    }
    let (reader, writer) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io_err)?;
    let id = NEXT_FEED.fetch_add(1, Ordering::Relaxed);
    state.feeds.push((id, shown, writer));
    Ok(Feed { id, reader })
}

/// Makes the lasting duplicates of the streams sessions will show, once per process, at
/// install: the descriptors a process with a manhole has open do not change when sessions come
/// and go.
pub(crate) fn prepare(shown: Shown) {
    let _state = tee();
    for stream in Stream::BOTH {
        if shown.has(stream)
            && saved(stream) < 0
            && let Err(e) = save(stream)
        {
            log_event!(
                "Cannot duplicate {}; sessions will not show it: {e}",
                stream.name()
            );
        }
    }
}

fn save(stream: Stream) -> std::io::Result<RawFd> {
    let fd = fcntl(sys::borrow_fd(stream.fd()), FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(io_err)?;
    let fd = fd.into_raw_fd();
    SAVED[stream.index()].store(fd, Ordering::Release);
    Ok(fd)
}

fn activate(state: &mut TeeState, stream: Stream) -> std::io::Result<()> {
    let saved = self::saved(stream);
    if saved < 0 {
        save(stream)?;
    } else {
        // The application may have pointed the fd elsewhere since: follow it, in place.
        sys::dup2_raw(stream.fd(), saved)?;
        fcntl(sys::borrow_fd(saved), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io_err)?;
    }
    let (reader, writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io_err)?;
    let pipe = reader.as_raw_fd();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    crate::threads::spawn(format!("mh-{}", stream.name()), move || {
        pump(stream, reader);
        drop(done_tx);
    })?;
    // From the first session on, a crash gives the pumps a moment to copy the last words.
    sys::dying::arm_fatal(at_crash);
    // The manhole's own lines go to the original from before the switch, so that none lands in
    // the pipe (and echoes into the sessions) while it happens.
    crate::log::set_original(stream.fd(), self::saved(stream));
    // From here on, writes to the fd go to the pump; `writer` itself is closed on return.
    if let Err(e) = sys::dup2_raw(writer.as_raw_fd(), stream.fd()) {
        crate::log::set_original(stream.fd(), -1);
        return Err(e);
    }
    state.pumps[stream.index()] = Pump {
        pipe,
        done: Some(done_rx),
    };
    PIPE[stream.index()].store(pipe, Ordering::Release);
    ACTIVE[stream.index()].store(true, Ordering::Release);
    Ok(())
}

fn detach(id: u64) {
    let unshown = |state: &TeeState, stream: Stream| {
        active(stream) && !state.feeds.iter().any(|(_, shown, _)| shown.has(stream))
    };
    let pipes = {
        let mut state = tee();
        state.feeds.retain(|(feed, _, _)| *feed != id);
        Stream::BOTH.map(|stream| {
            unshown(&state, stream).then(|| (stream, state.pumps[stream.index()].pipe))
        })
    };
    let mut finished = Vec::new();
    for (stream, pipe) in pipes.into_iter().flatten() {
        // Not holding the lock, which the pump takes after each chunk.
        wait_until_drained(stream, pipe, SWITCH_BACK_PATIENCE);
        let mut state = tee();
        // A session may have attached meanwhile.
        if unshown(&state, stream) {
            deactivate(&mut state, stream);
            finished.extend(state.pumps[stream.index()].done.take());
        }
    }
    // Usually the pump sees the end of its pipe at once and finishes; wait a little for it (not
    // holding the lock, which it may need for its last chunk), so that when the session is over
    // its thread and pipe are gone too. A child forked during the session may keep the pipe
    // open; the pump then goes on copying its output to the original.
    for done in finished {
        let _ = done.recv_timeout(Duration::from_millis(500));
    }
}

/// How long a detach waits for a pump to empty its pipe before pointing the fd back: bounded,
/// because the original may be a full pipe nobody reads.
const SWITCH_BACK_PATIENCE: Duration = Duration::from_millis(200);

/// Waits (at most `patience`) until the pump of `stream` has copied everything in its pipe.
fn wait_until_drained(stream: Stream, pipe: RawFd, patience: Duration) {
    let deadline = Instant::now() + patience;
    while pipe >= 0
        && (sys::readable_bytes(pipe) > 0 || IN_FLIGHT[stream.index()].load(Ordering::Acquire))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn deactivate(state: &mut TeeState, stream: Stream) {
    if let Err(e) = sys::dup2_raw(saved(stream), stream.fd()) {
        // The TEE lock is held and the fd still feeds the pump, which needs that lock.
        crate::log::event_to_descriptor(&format!(
            "Cannot point {} back at the original: {e}",
            stream.name()
        ));
        return;
    }
    ACTIVE[stream.index()].store(false, Ordering::Release);
    PIPE[stream.index()].store(-1, Ordering::Release);
    crate::log::set_original(stream.fd(), -1);
    state.pumps[stream.index()].pipe = -1;
}

/// Copies the pipe to the original and to every feed that shows `stream`, until every writer is
/// gone.
fn pump(stream: Stream, reader: OwnedFd) {
    let mut buf = [0u8; 16 * 1024];
    let in_flight = &IN_FLIGHT[stream.index()];
    loop {
        // Marked in flight before the bytes leave the pipe (only this thread reads it, so after
        // `poll` the read does not block): whoever sees the pipe empty and nothing in flight
        // knows the original has everything.
        let mut fds = [nix::poll::PollFd::new(
            reader.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
        in_flight.store(true, Ordering::Release);
        let n = match nix::unistd::read(&reader, &mut buf) {
            Ok(0) => {
                in_flight.store(false, Ordering::Release);
                return;
            }
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(_) => {
                in_flight.store(false, Ordering::Release);
                return;
            }
        };
        let chunk = &buf[..n];
        write_all_without_sigpipe(saved(stream), chunk);
        in_flight.store(false, Ordering::Release);
        let state = tee();
        for (_, shown, feed) in &state.feeds {
            if shown.has(stream) {
                // Non-blocking: a session that cannot keep up loses text instead of stalling us.
                let _ = nix::unistd::write(feed, chunk);
            }
        }
    }
}

/// At process exit: point the fds back at the originals and give the pumps a moment to copy
/// what is still in their pipes, so the last lines the application wrote are not lost.
pub(crate) fn at_exit() {
    let pipes = {
        let Ok(mut state) = TEE.try_lock() else {
            return;
        };
        let mut pipes = [(Stream::Stdout, -1), (Stream::Stderr, -1)];
        for (stream, pipe) in &mut pipes {
            if active(*stream) {
                *pipe = state.pumps[stream.index()].pipe;
                deactivate(&mut state, *stream);
            }
        }
        pipes
    };
    let deadline = Instant::now() + Duration::from_millis(200);
    for (stream, pipe) in pipes {
        wait_until_drained(
            stream,
            pipe,
            deadline.saturating_duration_since(Instant::now()),
        );
    }
}

/// How long a crash waits for the pumps to copy what is in their pipes to the originals.
const CRASH_PATIENCE: Duration = Duration::from_millis(500);

/// Runs in the handler of a fatal signal (SIGABRT, SIGSEGV, ...; async-signal-safe: atomics,
/// `ioctl`, `clock_gettime`, `nanosleep`, `dup2`), before the process dies of it: gives each
/// active pump up to [`CRASH_PATIENCE`] to copy what the process wrote last (the line before an
/// `abort`, a panic's message) to the original, and mirror it to the sessions, then points fd 1
/// and fd 2 back at the originals, so what is written while dying goes straight there.
fn at_crash() {
    let deadline = Instant::now() + CRASH_PATIENCE;
    for stream in Stream::BOTH {
        if active(stream) {
            let pipe = PIPE[stream.index()].load(Ordering::Acquire);
            wait_until_drained(
                stream,
                pipe,
                deadline.saturating_duration_since(Instant::now()),
            );
            let _ = sys::dup2_raw(saved(stream), stream.fd());
        }
    }
}

/// In a forked child (async-signal-safe, with `TEE` held by the fork handlers): the child has
/// no pumps and no sessions, so both fds go straight back to the originals.
pub(crate) fn after_fork_in_child(hold: &mut ForkHold) {
    for stream in Stream::BOTH {
        if active(stream) {
            let _ = sys::dup2_raw(saved(stream), stream.fd());
            ACTIVE[stream.index()].store(false, Ordering::Release);
        }
        PIPE[stream.index()].store(-1, Ordering::Release);
        IN_FLIGHT[stream.index()].store(false, Ordering::Release);
        let pump = &mut hold.0.pumps[stream.index()];
        pump.pipe = -1;
        // The receiver's channel belongs to the parent's pump: leak it (no allocation, no lock).
        if let Some(done) = pump.done.take() {
            std::mem::forget(done);
        }
        crate::log::set_original(stream.fd(), -1);
    }
    // Closing the parent's feed pipes: `clear` drops (closes) them and frees nothing.
    hold.0.feeds.clear();
}
