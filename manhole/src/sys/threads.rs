//! The manhole's own threads: spawning them with signals blocked, and running application code
//! (registered commands and value reads) on bounded worker threads.
//!
//! Every manhole thread blocks the `sigmask` signals (default: all), so a signal meant for the
//! application (say a `sigwait`/`signalfd` user's) is never taken by one of ours (python-manhole
//! does the same). Two exceptions, whatever `sigmask` says:
//!
//! * the dump signal is always blocked: a process-directed instance of its number (a `kill()` by
//!   someone else) then goes to an application thread or stays pending for the application's
//!   `signalfd`, never to our handler on one of our threads, which would drop it. Manhole
//!   threads are therefore listed in dumps from `/proc` (the dumping thread copies its own stack);
//! * the fault signals (SEGV, BUS, ILL, FPE, TRAP, SYS) are never blocked: a fault in a registered
//!   command must reach the Rust runtime's handler ("has overflowed its stack") or the
//!   application's, and a blocked synchronous fault is undefined behaviour in POSIX.
//!
//! Application callbacks never run on a session thread: a callback that hangs or panics costs a
//! worker, not the session; after `command_timeout` the session reports it as still running and
//! goes on.

#![deny(unsafe_code)]

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The dump signal, always blocked in manhole threads (0: none yet).
static DUMP_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The signals manhole threads block (bit `n - 1` for signal `n`); all by default, 0 for none.
static SIGMASK: AtomicU64 = AtomicU64::new(u64::MAX);
/// Workers started and not yet finished (stuck ones included).
static RUNNING_WORKERS: AtomicUsize = AtomicUsize::new(0);
/// Numbers the workers, for their thread names (`mh-worker-<n>`).
static NEXT_WORKER: AtomicU64 = AtomicU64::new(1);
/// Past this many unfinished workers new callbacks are refused rather than piling up threads.
const MAX_RUNNING_WORKERS: usize = 16;

pub(crate) fn set_dump_signal(signal: i32) {
    DUMP_SIGNAL.store(signal, Ordering::Relaxed);
}

/// Sets the signals manhole threads spawned from now on block (bit `n - 1` for signal `n`).
pub(crate) fn set_sigmask(set: u64) {
    SIGMASK.store(set, Ordering::Relaxed);
}

/// The tids of the running manhole threads (0: a free entry), so a profile samples only the
/// application's threads. Lock-free: a forked child inherits it as plain memory.
static OUR_TIDS: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];

/// Whether `tid` is one of the manhole's own threads (spawned by [`spawn`]; a thread that found
/// the table full is told by its `mh-` name prefix instead).
pub(crate) fn is_manhole_thread(tid: i32, name: &str) -> bool {
    OUR_TIDS.iter().any(|t| t.load(Ordering::Relaxed) == tid) || name.starts_with("mh-")
}

/// Lists the running thread in [`OUR_TIDS`] while it lives.
struct Listed(Option<usize>);

impl Listed {
    fn enter() -> Listed {
        let tid = nix::unistd::gettid().as_raw();
        Listed(OUR_TIDS.iter().position(|t| {
            t.compare_exchange(0, tid, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        }))
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Some(entry) = self.0.and_then(|i| OUR_TIDS.get(i)) {
            entry.store(0, Ordering::Relaxed);
        }
    }
}

/// The signals no manhole thread ever blocks: synchronous faults (bit `n - 1` for signal `n`).
pub(crate) const FAULT_SIGNALS: u64 = (1 << (libc::SIGSEGV - 1))
    | (1 << (libc::SIGBUS - 1))
    | (1 << (libc::SIGILL - 1))
    | (1 << (libc::SIGFPE - 1))
    | (1 << (libc::SIGTRAP - 1))
    | (1 << (libc::SIGSYS - 1));

/// The signals a manhole thread spawned now blocks: `sigmask` and the dump signal, never a
/// fault signal.
pub(crate) fn blocked_set() -> u64 {
    let dump_signal = DUMP_SIGNAL.load(Ordering::Relaxed);
    let mut set = SIGMASK.load(Ordering::Relaxed);
    if (1..=64).contains(&dump_signal) {
        set |= 1u64 << (dump_signal - 1);
    }
    set & !FAULT_SIGNALS
}

/// Spawns a named manhole thread with [`blocked_set`] blocked (on top of the spawning thread's
/// mask, which it inherits).
pub(crate) fn spawn<F>(name: String, body: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    with_manhole_mask(|| {
        thread::Builder::new()
            .name(name)
            .spawn(as_manhole_thread(body))
    })
}

/// As [`spawn`], for a thread that borrows from the caller's stack frame: it lives inside
/// `scope` and is joined when the scope ends.
pub(crate) fn spawn_scoped<'scope, 'env, F>(
    scope: &'scope thread::Scope<'scope, 'env>,
    name: String,
    body: F,
) -> io::Result<thread::ScopedJoinHandle<'scope, ()>>
where
    F: FnOnce() + Send + 'scope,
{
    with_manhole_mask(|| {
        thread::Builder::new()
            .name(name)
            .spawn_scoped(scope, as_manhole_thread(body))
    })
}

/// `body`, run as a manhole thread: listed in [`OUR_TIDS`], no fault signal blocked.
fn as_manhole_thread(body: impl FnOnce()) -> impl FnOnce() {
    move || {
        let _listed = Listed::enter();
        // The spawning thread's mask is inherited: should it block a fault signal, ours must not.
        let _ = crate::sys::unblock_signal_set(FAULT_SIGNALS);
        body()
    }
}

/// Runs `start` (which spawns a thread) with [`blocked_set`] blocked, so the new thread starts
/// with it blocked; the caller's mask is restored after.
fn with_manhole_mask<T>(start: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let set = blocked_set();
    if set == 0 {
        return start();
    }
    let saved = crate::sys::block_signal_set(set)?;
    let spawned = start();
    crate::sys::restore_signal_mask(saved);
    spawned
}

/// Why a bounded callback gave no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unfinished {
    /// Still running after the timeout; its worker keeps going and its result is dropped.
    TimedOut(Duration),
    /// It panicked; the panic message.
    Panicked(String),
    /// Too many earlier callbacks are still running.
    Busy,
}

impl std::fmt::Display for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfinished::TimedOut(t) => write!(
                f,
                "still running after {:.1} s (timed out; it goes on in the background)",
                t.as_secs_f64()
            ),
            Unfinished::Panicked(msg) => write!(f, "panicked: {msg}"),
            Unfinished::Busy => write!(
                f,
                "{MAX_RUNNING_WORKERS} earlier commands are still running; try again later"
            ),
        }
    }
}

thread_local! {
    /// This thread is an `mh-worker-<n>`, running registered code for a session.
    static ON_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is an `mh-worker-<n>` (a registered command calling
/// `std::process::exit` runs the exit hook there, while its session waits for it).
pub(crate) fn on_worker_thread() -> bool {
    ON_WORKER.get()
}

/// Runs `work` on a manhole worker thread and waits for it at most `timeout`.
pub(crate) fn run_bounded<T, F>(timeout: Duration, work: F) -> Result<T, Unfinished>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if RUNNING_WORKERS.fetch_add(1, Ordering::SeqCst) >= MAX_RUNNING_WORKERS {
        RUNNING_WORKERS.fetch_sub(1, Ordering::SeqCst);
        return Err(Unfinished::Busy);
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let n = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
    let spawned = spawn(format!("mh-worker-{n}"), move || {
        ON_WORKER.set(true);
        let outcome =
            catch_unwind(AssertUnwindSafe(work)).map_err(|payload| panic_message(&*payload));
        RUNNING_WORKERS.fetch_sub(1, Ordering::SeqCst);
        let _ = tx.send(outcome);
    });
    if spawned.is_err() {
        RUNNING_WORKERS.fetch_sub(1, Ordering::SeqCst);
        return Err(Unfinished::Panicked(
            "could not start a worker thread".into(),
        ));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(Unfinished::Panicked(message)),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Unfinished::TimedOut(timeout)),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(Unfinished::Panicked(
            "the worker ended without an answer".into(),
        )),
    }
}

/// The message a panic carried, for reporting it to the client.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_work_returns_panics_and_times_out() {
        assert_eq!(run_bounded(Duration::from_secs(5), || 41 + 1), Ok(42));
        let panicked = run_bounded(Duration::from_secs(5), || -> u8 { panic!("boom") });
        assert_eq!(panicked, Err(Unfinished::Panicked("boom".into())));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let slow = run_bounded(Duration::from_millis(50), move || release_rx.recv().is_ok());
        assert_eq!(slow, Err(Unfinished::TimedOut(Duration::from_millis(50))));
        drop(release_tx);
    }

    #[test]
    fn manhole_threads_block_signals() {
        let handle = spawn("mh-test".into(), || {
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let blocked = status.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
            let mask = u64::from_str_radix(blocked.split_whitespace().nth(1).unwrap(), 16).unwrap();
            assert_ne!(mask & (1 << (libc::SIGUSR1 - 1)), 0, "{blocked}");
            assert_eq!(mask & FAULT_SIGNALS, 0, "{blocked}");
        })
        .unwrap();
        handle.join().unwrap();
    }
}
