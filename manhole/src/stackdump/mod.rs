//! Every thread's backtrace, captured in-process: the public result types ([`StackDump`],
//! [`ThreadStack`], [`Frame`], [`FrameSymbol`], [`ThreadGroup`]) and the entry points the layers
//! above use.
//!
//! Rust has no runtime that knows every thread's stack, so each thread is asked, with a signal,
//! to copy its registers and a window of its stack; the copies are unwound and symbolized on the
//! dumping thread. The layers, one module each, with a `//!` saying what it owns:
//!
//! * `capture`: one dump, on the dumping thread: which threads may be signalled (not those that
//!   block the signal, have it pending, or have too little stack room), the requests, the
//!   dumping thread's own stack, the answers, a note for every thread without a full stack;
//! * `handler`: the signal side: installing the handler, the requests and their slots, and the
//!   handler itself, which only copies (with `sys::memory`, the only `unsafe` code of the dump);
//! * `unwind`: framehop over the copies and the loaded objects' unwind tables;
//! * `symbolize`: addresses to functions, files and lines, with a cache;
//! * `waits`: which futex word each sleeping thread waits on, from `/proc`;
//! * `dump`, `group`, `format`: the result types, identical stacks grouped, and their text and
//!   JSON forms.
//!
//! No thread is ever left out silently: each one is listed with how it was captured
//! ([`CaptureMethod`]) and, when its stack is missing or partial, a note. What a dump can and
//! cannot see is in the crate docs' "Stack dump accuracy".

mod capture;
mod dump;
mod format;
mod group;
mod handler;
pub(crate) mod symbolize;
mod unwind;
mod waits;

/// A framehop module for one loaded object (the profiler builds its unwinder from these too).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use self::unwind::module_for as unwind_module;

pub(crate) use self::capture::capture;
pub use self::dump::{
    CaptureMethod, DumpCounts, Frame, FrameSymbol, FutexWait, StackDump, ThreadStack,
};
pub(crate) use self::format::{JsonEscaped, write_json_str};
pub use self::format::{MAX_LINE, TextLayout};
pub use self::group::ThreadGroup;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use self::symbolize::{RawFrame, Symbolizer};
use crate::Result;
use crate::procfs;

/// The longest one capture may take, whatever the timeout asks for.
pub const HARD_CAP: Duration = Duration::from_secs(2);
/// Set by every dump, taken by [`release_dump_memory`].
static DUMPED: AtomicBool = AtomicBool::new(false);
/// Callers of [`capture`] between its start and its end (waiting for the dump lock included).
static IN_CAPTURE: AtomicUsize = AtomicUsize::new(0);
/// This process was forked while a thread of its parent was inside [`capture`]: the locks the
/// dump holds (the dump lock, the symbolizer's cache, the unwinder's state) may have been
/// copied locked, with their owner left behind in the parent, so this process never dumps.
static FORKED_MID_DUMP: AtomicBool = AtomicBool::new(false);

/// Counts a caller of [`capture`] in [`IN_CAPTURE`] while it lives.
struct InCapture;

impl InCapture {
    fn enter() -> InCapture {
        IN_CAPTURE.fetch_add(1, Ordering::SeqCst);
        InCapture
    }
}

impl Drop for InCapture {
    fn drop(&mut self) {
        IN_CAPTURE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// In a forked child (async-signal-safe: atomics only). Only the forking thread exists here and
/// it is not inside [`capture`] (a dump never forks), so a non-zero count means a parent thread
/// was: its locks may be held forever, and dumps are refused here rather than waiting on them.
pub(crate) fn after_fork_in_child() {
    if IN_CAPTURE.swap(0, Ordering::SeqCst) > 0 {
        FORKED_MID_DUMP.store(true, Ordering::SeqCst);
    }
}

/// Whether this process was forked in the middle of a dump (see [`after_fork_in_child`]).
pub(crate) fn forked_mid_dump() -> bool {
    FORKED_MID_DUMP.load(Ordering::SeqCst)
}

/// After a session that made a dump has ended (its text and JSON are freed): gives the freed
/// heap memory back to the system (`malloc_trim` on glibc). Each client gets a new session
/// thread, and glibc keeps what each thread's arena freed, so without this the megabytes of
/// every big dump stayed resident, up to one copy per arena.
pub(crate) fn release_dump_memory() {
    if DUMPED.swap(false, Ordering::Relaxed) {
        crate::sys::release_freed_memory();
    }
}

/// Open holds on the dump caches ([`hold_caches`]).
static CACHE_HOLDERS: AtomicUsize = AtomicUsize::new(0);

/// Keeps the dump's caches (parsed debug info, resolved addresses, the unwinder's copied unwind
/// tables) while it lives. Every manhole session holds one, so its dumps after the first are
/// fast; when the last hold is dropped the caches go and the freed heap is given back
/// (`malloc_trim` on glibc). (A session started by the listener keeps them 5 s after
/// it ends, so that the next `manhole-cli` call finds them warm.) A dump or profile made while nothing holds them drops them when it
/// is done, so an application that calls [`dump_threads`](crate::dump_threads) often and wants
/// each call fast holds one for as long as it does.
#[must_use = "the caches are released when the hold is dropped"]
#[derive(Debug)]
pub struct CacheHold(());

/// Takes a hold on the dump caches (see [`CacheHold`]).
pub fn hold_caches() -> CacheHold {
    CACHE_HOLDERS.fetch_add(1, Ordering::SeqCst);
    CacheHold(())
}

impl Drop for CacheHold {
    fn drop(&mut self) {
        if CACHE_HOLDERS.fetch_sub(1, Ordering::SeqCst) == 1 {
            release_unheld_caches();
        }
    }
}

/// How long the dump caches outlive the last session that held them: long enough that an
/// operator's or a script's next `manhole-cli PID threads` (a new session) finds them warm,
/// short enough that a manhole left idle holds nothing.
pub(crate) const CACHE_GRACE: Duration = Duration::from_secs(5);

/// Set when the last session hold went, until the listener drops the caches ([`CACHE_GRACE`]).
static GRACE_PENDING: AtomicBool = AtomicBool::new(false);
/// When the last session hold went, in milliseconds of the monotonic clock.
static LAST_SESSION_MS: AtomicU64 = AtomicU64::new(0);

/// A session's hold on the dump caches: as [`CacheHold`], but when the last one goes the caches
/// stay [`CACHE_GRACE`] longer, dropped then by the listener ([`release_caches_after_grace`]),
/// which started the session and so wakes up for it ([`cache_wake_interval`]).
#[must_use = "the caches are released when the hold is dropped"]
pub(crate) struct SessionCacheHold(());

/// Takes a session's hold (in the listener, before the session's thread starts).
pub(crate) fn hold_caches_for_session() -> SessionCacheHold {
    CACHE_HOLDERS.fetch_add(1, Ordering::SeqCst);
    SessionCacheHold(())
}

impl Drop for SessionCacheHold {
    fn drop(&mut self) {
        LAST_SESSION_MS.store(monotonic_ms(), Ordering::SeqCst);
        GRACE_PENDING.store(true, Ordering::SeqCst);
        CACHE_HOLDERS.fetch_sub(1, Ordering::SeqCst);
    }
}

fn monotonic_ms() -> u64 {
    crate::sys::monotonic_nanos() / 1_000_000
}

/// How long the listener may sleep before [`release_caches_after_grace`] has work: `None` (no
/// timeout, no wake-ups) when no session is open and no grace period runs.
pub(crate) fn cache_wake_interval() -> Option<Duration> {
    if CACHE_HOLDERS.load(Ordering::SeqCst) > 0 {
        return Some(CACHE_GRACE);
    }
    if !GRACE_PENDING.load(Ordering::SeqCst) {
        return None;
    }
    let idle = monotonic_ms().saturating_sub(LAST_SESSION_MS.load(Ordering::SeqCst));
    let left = (CACHE_GRACE.as_millis() as u64).saturating_sub(idle);
    Some(Duration::from_millis(left.max(1)))
}

/// Drops the dump caches once no session has held them for [`CACHE_GRACE`].
pub(crate) fn release_caches_after_grace() {
    let idle = monotonic_ms().saturating_sub(LAST_SESSION_MS.load(Ordering::SeqCst));
    if GRACE_PENDING.load(Ordering::SeqCst)
        && CACHE_HOLDERS.load(Ordering::SeqCst) == 0
        && idle >= CACHE_GRACE.as_millis() as u64
    {
        GRACE_PENDING.store(false, Ordering::SeqCst);
        release_unheld_caches();
    }
}

/// Drops the dump caches if nothing holds them, and trims the heap.
///
/// They are freed on a thread of its own, which then exits: what a thread frees goes first to
/// its own tcache, and only an exiting thread hands that back to the arenas, so freed by the
/// listener or a session thread, megabytes stayed behind (seen: 1 to 4 MiB kept after a
/// session, against 0.2 MiB this way).
fn release_unheld_caches() {
    if CACHE_HOLDERS.load(Ordering::SeqCst) > 0 {
        return;
    }
    let free = || {
        if CACHE_HOLDERS.load(Ordering::SeqCst) == 0 {
            symbolize::release();
            unwind::release();
        }
    };
    capture::release_copies_unless_dumping();
    match crate::sys::threads::spawn("mh-release".into(), free) {
        Ok(thread) => {
            let _ = thread.join();
        }
        // No thread to be had: free them here.
        Err(_) => free(),
    }
    crate::sys::release_freed_memory();
}

/// Options for one capture.
#[derive(Debug, Clone)]
pub(crate) struct DumpOptions {
    /// The signal used to ask each thread for its stack (already resolved to a number).
    pub signal: libc::c_int,
    /// How long to wait for all threads to answer after the last signal was sent.
    pub timeout: Duration,
    /// The most frames recorded per thread.
    pub max_frames: usize,
    /// Signal every thread, even one that has not run since the last dump captured it parked
    /// (whose stack that dump's capture still shows exactly: see `ThreadStack::unchanged`).
    pub fresh: bool,
}

/// Checks that `signal` may be the dump signal: its default action must be to ignore it, so no
/// request can ever kill or stop the process (see `handler::SAFE_DUMP_SIGNALS`).
pub(crate) fn check_dump_signal(signal: libc::c_int) -> Result<()> {
    handler::check_signal(signal)
}

/// Installs the capture handler for `signal` (idempotent for the same signal) and warms the unwinder up.
///
/// Fails with [`ErrorKind::Signal`] when the signal cannot be used or already has a handler
/// (or is ignored) that is not ours: an existing handler is never replaced.
pub(crate) fn install_handler(signal: libc::c_int) -> Result<()> {
    handler::install(signal)
}

/// Whether the dump handler still owns `signal` with the disposition `install` gave it (the
/// profiler checks before arming its timers and while they run).
pub(crate) fn handler_owns_signal(signal: libc::c_int) -> bool {
    handler::check_ours(signal).is_ok()
}

/// Lets the profiler take its ticks on the dump signal: `handler` runs first in the dump
/// handler and returns true for a tick (see `capture::TickHandler` for its rules).
pub(crate) fn set_tick_handler(
    handler: fn(*const libc::siginfo_t, *const std::ffi::c_void) -> bool,
) {
    self::handler::set_tick_handler(handler);
}

/// Symbolizes addresses captured elsewhere (the profiler's samples): `(address, exact)`, where
/// `exact` marks an interrupted instruction and the others are return addresses.
pub(crate) fn symbolize_addresses(addresses: &[(usize, bool)]) -> Vec<Frame> {
    let raw: Vec<RawFrame> = addresses
        .iter()
        .map(|&(ip, exact)| RawFrame { ip, exact })
        .collect();
    let frames = Symbolizer::new().frames(&raw);
    release_unheld_caches();
    frames
}

/// The stack a thread must have free below its stack pointer (or on its alternate signal stack,
/// when it runs on one) to be sent the dump signal: the kernel's signal frame on this CPU (from
/// `AT_MINSIGSTKSZ`, with the x86_64 red zone) plus what the handler itself uses. A thread that
/// is blocked in the kernel with less is not signalled and is listed with a note; see the crate
/// docs' "Stack dump accuracy".
pub fn signal_stack_needed() -> usize {
    handler::stack_needed()
}

/// Warnings about this platform that make dumps less useful, one sentence each (empty when all
/// is well): an architecture the unwinder does not support, a policy that forbids copying our
/// own memory (`process_vm_readv`, e.g. a seccomp filter), or no readable `/proc/self/task`.
pub fn platform_warnings() -> Vec<String> {
    let mut warnings = Vec::new();
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        warnings.push(
            "stack unwinding supports x86_64 and aarch64 only: threads are listed without stacks"
                .to_string(),
        );
    }
    if let Some(e) = crate::sys::memory::copy_denied() {
        warnings.push(format!(
            "copying stacks with process_vm_readv fails ({e}): stacks are missing"
        ));
    }
    if let Err(e) = procfs::thread_ids() {
        warnings.push(format!(
            "cannot list /proc/self/task ({e}): thread dumps are impossible"
        ));
    }
    warnings
}

/// Sample dumps and the tests of what renders one (the server's tests use the samples too).
#[cfg(test)]
pub(crate) mod tests;
