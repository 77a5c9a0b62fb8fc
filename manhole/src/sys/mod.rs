//! Thin safe wrappers over the few libc calls std and nix do not cover.
//!
//! The `unsafe` code lives here, in its submodules (`output`, ...) and in `stackdump::handler`.
//! Each function here is safe to call; the `// SAFETY:` comment on each block says why the call
//! is sound.

#![allow(unsafe_code)]

pub(crate) mod dying;
pub(crate) mod log;
pub(crate) mod memory;
pub(crate) mod objects;
pub(crate) mod output;
pub mod procfs;
pub(crate) mod threads;
pub(crate) mod wait;

use std::os::fd::{BorrowedFd, RawFd};

/// Borrows a raw descriptor for one call.
///
/// The descriptor may have been closed by someone else; every call made through the borrow then
/// fails with `EBADF`, which callers treat as an ordinary error. It is never closed through it.
pub(crate) fn borrow_fd(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: `BorrowedFd` requires the descriptor to stay open while borrowed. We only pass it to
    // syscalls, which report a closed descriptor as EBADF instead of misbehaving, and we never
    // close it or hand ownership anywhere.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Runs `hook` once when the process exits normally (main returns or `std::process::exit`).
pub(crate) fn at_exit(hook: extern "C" fn()) -> std::io::Result<()> {
    // SAFETY: `atexit` stores the function pointer; `hook` is a plain `extern "C" fn()` with
    // `'static` lifetime, so it is valid whenever the C runtime calls it.
    let rc = unsafe { libc::atexit(hook) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::other("atexit refused the exit hook"))
    }
}

/// A saved signal mask, restored by [`restore_signal_mask`].
pub(crate) struct SavedMask(libc::sigset_t);

/// Puts back a mask saved by [`block_signal_set`].
pub(crate) fn restore_signal_mask(saved: SavedMask) {
    // SAFETY: `saved.0` was filled in by `pthread_sigmask`, so it is an initialised set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &saved.0, std::ptr::null_mut());
    }
}

/// While it lives, the calling thread is in the `SCHED_BATCH` class instead of `SCHED_OTHER`:
/// the same share of the CPU, but its wake-ups never preempt a running thread. (Made by
/// [`without_wakeup_preemption`]; a thread in another class, real-time for instance, is left
/// as it is.)
#[must_use = "the thread's class is restored when this is dropped"]
pub(crate) struct NoWakeupPreemption {
    switched: bool,
}

/// See [`NoWakeupPreemption`].
pub(crate) fn without_wakeup_preemption() -> NoWakeupPreemption {
    // SAFETY: pid 0 names the calling thread; the call only reads its policy.
    let policy = unsafe { libc::sched_getscheduler(0) };
    let switched = policy == libc::SCHED_OTHER && set_own_policy(libc::SCHED_BATCH);
    NoWakeupPreemption { switched }
}

impl Drop for NoWakeupPreemption {
    fn drop(&mut self) {
        if self.switched {
            set_own_policy(libc::SCHED_OTHER);
        }
    }
}

/// Moves the calling thread (only it: Linux schedules threads one by one) to a non-real-time
/// `policy`, keeping its nice value; false if refused.
fn set_own_policy(policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is a live `sched_param`, only read. The
    // non-real-time classes need no privilege and change nothing but how the thread is scheduled.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

/// Puts the calling thread in the `SCHED_IDLE` class, so that it runs only on CPU time that no
/// other thread of the machine wants. Best effort: a policy that refuses it changes nothing.
pub(crate) fn run_only_when_idle() {
    set_own_policy(libc::SCHED_IDLE);
}

/// Blocks the signals whose bits are set in `set` (bit `n - 1` for signal `n`) in the calling
/// thread, returning the old mask. Threads spawned while it is in force inherit it. Signals the
/// kernel or the C library refuse to block (SIGKILL, SIGSTOP, glibc's internal ones) are skipped.
pub(crate) fn block_signal_set(set: u64) -> std::io::Result<SavedMask> {
    // SAFETY: zeroed `sigset_t` is a valid starting value that `sigemptyset` then initialises;
    // `sigaddset` only reports an error for numbers it does not accept, which we skip; the
    // pointers passed are to live locals.
    unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        for signal in 1..=64 {
            if set & (1u64 << (signal - 1)) != 0 {
                libc::sigaddset(&mut block, signal);
            }
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(SavedMask(old))
    }
}

/// Unblocks the signals whose bits are set in `set` (bit `n - 1` for signal `n`) in the calling
/// thread.
pub(crate) fn unblock_signal_set(set: u64) -> std::io::Result<()> {
    // SAFETY: as in `block_signal_set`: a zeroed, then emptied `sigset_t`, filled with the
    // numbers `sigaddset` accepts, passed by pointer to a live local; no old mask is asked for.
    unsafe {
        let mut unblock: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut unblock);
        for signal in 1..=64 {
            if set & (1u64 << (signal - 1)) != 0 {
                libc::sigaddset(&mut unblock, signal);
            }
        }
        let rc = libc::pthread_sigmask(libc::SIG_UNBLOCK, &unblock, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

/// A signal's disposition as `sigaction` reports it.
#[derive(Clone, Copy)]
pub(crate) struct SavedAction(libc::sigaction);

impl SavedAction {
    /// Whether the disposition is `SIG_DFL` or `SIG_IGN` (no handler function to chain to).
    pub(crate) fn is_default_or_ignore(&self) -> bool {
        self.0.sa_sigaction == libc::SIG_DFL || self.0.sa_sigaction == libc::SIG_IGN
    }

    /// Whether both name the same handler function (or the same default/ignore setting).
    pub(crate) fn same_handler(&self, other: &SavedAction) -> bool {
        self.0.sa_sigaction == other.0.sa_sigaction
    }
}

/// Reads the current disposition of `signal` without changing it.
pub(crate) fn get_action(signal: i32) -> std::io::Result<SavedAction> {
    // SAFETY: a zeroed `sigaction` is a valid out-parameter; a null `act` makes the call
    // read-only; both pointers are valid for the call.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SavedAction(old))
    }
}

/// Puts back a disposition read by [`get_action`].
///
/// Used only to undo our own change: restoring `SIG_DFL`/`SIG_IGN` where signal-hook's handler
/// was left behind by `unregister`, and putting signal-hook's handler back on re-install.
pub(crate) fn set_action(signal: i32, action: &SavedAction) -> std::io::Result<()> {
    // SAFETY: `action.0` was filled in by `sigaction` itself, so it is a complete, valid
    // disposition (a handler that is still loaded: signal-hook's lives in the registry's static
    // code, and SIG_DFL/SIG_IGN are constants).
    let rc = unsafe { libc::sigaction(signal, &action.0, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Chains `action(signal)` for `signal` through signal-hook's registry: the handler the
/// application had (if any) keeps running first. The action is never unregistered, so it stays
/// valid for the life of the process.
///
/// `action` runs in a signal handler: it must be async-signal-safe (no allocation, lock or
/// panic). The one caller's (`signals::on_signal`) loads and updates lock-free atomics and
/// writes one byte to a non-blocking pipe.
pub(crate) fn hook_signal(
    signal: i32,
    action: fn(i32),
) -> std::io::Result<signal_hook_registry::SigId> {
    // SAFETY: `action` is async-signal-safe, as the caller promises above. Callers have checked
    // `signal` against `signal_hook_registry::FORBIDDEN`.
    unsafe { signal_hook_registry::register(signal, move || action(signal)) }
}

/// Sends `signal` to the whole process with its default action in force, e.g. to die "killed by
/// SIGTERM" after cleaning up.
pub(crate) fn raise_with_default_action(signal: i32) {
    // SAFETY: resetting a disposition to SIG_DFL with a zeroed, initialised `sigaction` and
    // sending a signal to our own pid have no memory-safety requirements.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(signal, &act, std::ptr::null_mut());
        libc::kill(libc::getpid(), signal);
    }
}

/// Registers fork handlers: `prepare` runs in the forking thread before `fork`, `parent` after it
/// in the parent, `child` in the child (where only the forking thread exists).
pub(crate) fn at_fork(
    prepare: extern "C" fn(),
    parent: extern "C" fn(),
    child: extern "C" fn(),
) -> std::io::Result<()> {
    // SAFETY: `pthread_atfork` stores the three function pointers; they are plain `extern "C"`
    // functions with `'static` lifetime, valid whenever the C library calls them.
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// Closes a raw descriptor whose owner will never close it (a value leaked in a forked child).
/// Async-signal-safe.
pub(crate) fn close_raw(fd: RawFd) {
    if fd >= 0 {
        // SAFETY: closing a descriptor is memory-safe. Callers pass descriptors whose owning
        // objects are leaked (never dropped), so no double close or use after close follows.
        unsafe {
            libc::close(fd);
        }
    }
}

/// `dup2(from, to)`: makes `to` refer to what `from` refers to. Async-signal-safe.
pub(crate) fn dup2_raw(from: RawFd, to: RawFd) -> std::io::Result<()> {
    // SAFETY: `dup2` only manipulates the descriptor table; `to` is a descriptor number we own
    // the meaning of (stderr or our saved copy), replaced atomically.
    let rc = unsafe { libc::dup2(from, to) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Bytes waiting to be read in a pipe (`FIONREAD`).
pub(crate) fn readable_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one `int` through the pointer, which points to a live local.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if rc < 0 { 0 } else { n.max(0) as usize }
}

/// Defines a function `$name` that runs `$body()` before `main` (an `.init_array` constructor,
/// through `ctor`). The caller's `$body` must only use what needs no std initialisation.
#[cfg(feature = "env")]
macro_rules! run_before_main {
    ($name:ident => $body:path) => {
        // SAFETY: code before `main` may not rely on std's runtime being set up. The callers'
        // bodies read the environment (glibc has `environ` ready before constructors run) and
        // use threads, pipes and sockets, which need no std initialisation on Linux.
        #[allow(unsafe_code)]
        #[ctor::ctor(unsafe)]
        fn $name() {
            $body();
        }
    };
}
#[cfg(feature = "env")]
pub(crate) use run_before_main;

/// Whether the process runs in secure-execution mode (`AT_SECURE`: setuid, setgid or file
/// capabilities), where the environment belongs to a less privileged user.
pub(crate) fn is_secure_execution() -> bool {
    // SAFETY: `getauxval` only reads the auxiliary vector; an absent entry gives 0.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Opens `/dev/null` on any of fds 0, 1 and 2 that is closed, as std's runtime does before
/// `main`, so that no descriptor the manhole opens before `main` lands on a standard number.
/// Returns how many were opened.
pub(crate) fn ensure_standard_fds() -> usize {
    let mut opened = 0;
    for fd in 0..3 {
        // SAFETY: `F_GETFD` only reads the descriptor's flags; `open` with a static NUL-terminated
        // path returns the lowest free descriptor, which is `fd` since the lower ones are open.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
            {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 && null != fd {
                    // Something else filled the gap; do not keep a stray descriptor.
                    libc::close(null);
                } else if null == fd {
                    opened += 1;
                }
            }
        }
    }
    opened
}

/// Gives memory freed into the C library's heaps back to the system: glibc keeps what a session
/// thread's arena freed (a big dump's megabytes of text and JSON) for that arena, and with a new
/// session thread per client, up to eight arenas per CPU each keep their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn release_freed_memory() {
    // SAFETY: `malloc_trim` only returns free heap pages to the kernel (under the arenas' own
    // locks); it is called in normal context and does not touch any allocated block.
    unsafe { libc::malloc_trim(0) };
}

/// Not glibc: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn release_freed_memory() {}

/// `CLOCK_MONOTONIC` in nanoseconds: `clock_gettime` is async-signal-safe (POSIX), and on Linux
/// it is a vDSO call that does not even enter the kernel. Cannot panic (saturating arithmetic).
pub(crate) fn monotonic_nanos() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec on this stack and CLOCK_MONOTONIC always
    // exists; on failure `now` stays zero, which only makes the measured time wrong.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// `gettid` as a raw syscall (async-signal-safe, no libc wrapper state).
pub(crate) fn raw_gettid() -> i32 {
    // SAFETY: the gettid syscall takes no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    tid as i32
}
