//! What runs as the process dies of a signal.
//!
//! SIGTERM, SIGINT and SIGHUP, while they have their default action, remove the manhole's files
//! (the socket, the activation file) and then kill the process with the same signal, so it still
//! dies of it with the same wait status.
//!
//! Only a signal at `SIG_DFL` gets our handler ([`arm`]); one the application handles or ignores
//! is never touched. A handler installed after ours that chains to it (signal-hook calls the
//! handler it found) makes the signal the application's: when ours runs and the current
//! disposition is not ours, it does nothing at all, neither removal nor re-raise.
//!
//! The handler is async-signal-safe: it reads a list of paths made before (published through
//! an atomic pointer, [`set_files`]), `lstat`s and `unlink`s each one that is still the file we
//! made, in the process that made it, then puts `SIG_DFL` back and `raise`s the signal, which is
//! delivered with its default action when the handler returns. No allocation, lock or panic.
//!
//! A crash (SIGABRT, SIGSEGV, SIGBUS, SIGILL, SIGFPE) runs a hook first ([`arm_fatal`]: the
//! stderr/stdout tee lets its pumps copy what the process wrote last and points the fds back at
//! the originals), then passes the signal on to the handler that was there before ours, or, if
//! that was `SIG_DFL`, dies of it with the default action. Nothing is taken from the
//! application: its handler, installed before, runs after ours; one installed after replaces
//! ours.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The signals whose default action is to terminate and that people send to stop a process.
pub(crate) const TERMINATING: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Files the handler removes: each path with the (device, inode) it had when we made it.
struct Files {
    pid: libc::pid_t,
    files: Vec<(CString, u64, u64)>,
}

/// The published [`Files`] (null: none). Replaced by [`set_files`], which frees the old list
/// only once no handler is reading it.
static FILES: AtomicPtr<Files> = AtomicPtr::new(std::ptr::null_mut());
/// Handlers reading `FILES` right now.
static READERS: AtomicUsize = AtomicUsize::new(0);

/// Publishes the files the handler removes (path, (device, inode)), made by this process.
pub(crate) fn set_files(files: &[(&Path, (u64, u64))]) {
    let new = if files.is_empty() {
        std::ptr::null_mut()
    } else {
        let files = files
            .iter()
            .filter_map(|(path, (dev, ino))| {
                Some((CString::new(path.as_os_str().as_bytes()).ok()?, *dev, *ino))
            })
            .collect();
        Box::into_raw(Box::new(Files {
            pid: std::process::id() as libc::pid_t,
            files,
        }))
    };
    let old = FILES.swap(new, Ordering::SeqCst);
    if old.is_null() {
        return;
    }
    // A handler that loaded `old` counted itself in `READERS` first (both SeqCst), so once the
    // count is zero after the swap nobody can still read it.
    let deadline = Instant::now() + Duration::from_secs(1);
    while READERS.load(Ordering::SeqCst) != 0 {
        if Instant::now() > deadline {
            // A reader that never finishes (it cannot: the handler does not block) would be
            // reading freed memory; keeping the few bytes is the safe side.
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: `old` came from `Box::into_raw` above, was unpublished by the swap, and no handler
    // reads it any more (see above); it is freed exactly once.
    drop(unsafe { Box::from_raw(old) });
}

/// In a forked child (async-signal-safe): a handler that was running on another thread at the
/// fork does not exist here.
pub(crate) fn after_fork_in_child() {
    READERS.store(0, Ordering::SeqCst);
}

fn our_handler() -> libc::sighandler_t {
    on_terminating_signal as *const () as libc::sighandler_t
}

fn current_handler(signal: i32) -> std::io::Result<libc::sighandler_t> {
    // SAFETY: a zeroed `sigaction` is a valid out-parameter; a null `act` only reads.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(current.sa_sigaction)
    }
}

fn set_handler(signal: i32, handler: libc::sighandler_t) -> std::io::Result<()> {
    // SAFETY: the disposition is `SIG_DFL` or `on_terminating_signal`, a plain `extern "C"`
    // handler that lives as long as the process; the set and pointers are initialised locals.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = libc::SA_RESTART;
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Gives `signal` our handler if its disposition is `SIG_DFL`. `Ok(true)`: ours is in place
/// (now or already); `Ok(false)`: the application handles or ignores it, nothing was changed.
pub(crate) fn arm(signal: i32) -> std::io::Result<bool> {
    let current = current_handler(signal)?;
    if current == our_handler() {
        return Ok(true);
    }
    if current != libc::SIG_DFL {
        return Ok(false);
    }
    set_handler(signal, our_handler())?;
    Ok(true)
}

/// Puts `SIG_DFL` back if our handler is still the disposition of `signal` (a handler installed
/// since, which may chain to ours, is left alone).
pub(crate) fn disarm(signal: i32) {
    if current_handler(signal).is_ok_and(|h| h == our_handler()) {
        let _ = set_handler(signal, libc::SIG_DFL);
    }
}

extern "C" fn on_terminating_signal(signal: libc::c_int) {
    // SAFETY: only async-signal-safe calls (sigaction, getpid, lstat, unlink, raise) and reads
    // of `Files`, which `set_files` frees only once `READERS` is zero; errno is put back for the
    // code we interrupted when we return to it.
    unsafe {
        let errno = *libc::__errno_location();
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction != our_handler()
        {
            // Chained to by a handler installed after ours: the signal is the application's.
            *libc::__errno_location() = errno;
            return;
        }
        READERS.fetch_add(1, Ordering::SeqCst);
        if let Some(files) = FILES.load(Ordering::SeqCst).as_ref()
            && files.pid == libc::getpid()
        {
            for (path, dev, ino) in &files.files {
                let mut stat: libc::stat = std::mem::zeroed();
                if libc::lstat(path.as_ptr(), &mut stat) == 0
                    && stat.st_dev as u64 == *dev
                    && stat.st_ino as u64 == *ino
                {
                    libc::unlink(path.as_ptr());
                }
            }
        }
        READERS.fetch_sub(1, Ordering::SeqCst);
        // Die of it as if we had never been here: the signal stays blocked while this handler
        // runs, so it is delivered, with its default action, as soon as we return.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut default.sa_mask);
        libc::sigaction(signal, &default, std::ptr::null_mut());
        libc::raise(signal);
        *libc::__errno_location() = errno;
    }
}

/// The signals a crash dies of.
pub(crate) const FATAL: [i32; 5] = [
    libc::SIGABRT,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
];

/// What a fatal signal's handler runs before passing the signal on: an async-signal-safe `fn()`.
static CRASH_HOOK: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());
static FATAL_ARMED: AtomicBool = AtomicBool::new(false);
/// The handler (`sa_sigaction`) and flags each of [`FATAL`] had before ours.
static PREVIOUS: [AtomicUsize; 5] = [const { AtomicUsize::new(libc::SIG_DFL) }; 5];
static PREVIOUS_FLAGS: [AtomicI32; 5] = [const { AtomicI32::new(0) }; 5];

/// Has `hook` run first when the process gets a fatal signal (once per process; a later call
/// only replaces the hook). The disposition each signal had is kept and passed the signal
/// after the hook.
pub(crate) fn arm_fatal(hook: fn()) {
    CRASH_HOOK.store(hook as *mut (), Ordering::SeqCst);
    if FATAL_ARMED.swap(true, Ordering::SeqCst) {
        return;
    }
    for (i, &signal) in FATAL.iter().enumerate() {
        // SAFETY: zeroed `sigaction`s are valid out-parameters and starting values; ours is a
        // plain `extern "C"` handler with the SA_SIGINFO signature that lives as long as the
        // process. The old disposition is stored before ours is in place, so the handler always
        // finds it.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            PREVIOUS[i].store(old.sa_sigaction, Ordering::SeqCst);
            PREVIOUS_FLAGS[i].store(old.sa_flags, Ordering::SeqCst);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fatal_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            // On the alternate stack, if the thread has one: a stack overflow must still reach
            // Rust's own handler (chained below), which says so.
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

extern "C" fn on_fatal_signal(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the hook is an async-signal-safe `fn()` stored by `arm_fatal`; the previous
    // handler is called with the signature its flags say it has, with our own arguments; the
    // rest is `sigaction` and `raise`, async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let hook = CRASH_HOOK.load(Ordering::SeqCst);
        if !hook.is_null() {
            let hook = std::mem::transmute::<*mut (), fn()>(hook);
            hook();
        }
        // The output is back on the real fds: a second fatal signal needs nothing of ours, and
        // must not stack another frame of ours on an alternate stack that may be nearly full
        // (Rust's overflow handler, chained below, ends in abort(): with our SIGABRT handler
        // still in place, its frame overflowed Rust's 8 KiB alternate stack and the process
        // died of SIGSEGV instead of SIGABRT).
        for (j, &other) in FATAL.iter().enumerate() {
            if other != signal {
                let mut previous: libc::sigaction = std::mem::zeroed();
                previous.sa_sigaction = PREVIOUS[j].load(Ordering::SeqCst);
                previous.sa_flags = PREVIOUS_FLAGS[j].load(Ordering::SeqCst);
                libc::sigemptyset(&mut previous.sa_mask);
                libc::sigaction(other, &previous, std::ptr::null_mut());
            }
        }
        let Some(i) = FATAL.iter().position(|&s| s == signal) else {
            return;
        };
        let previous = PREVIOUS[i].load(Ordering::SeqCst);
        let flags = PREVIOUS_FLAGS[i].load(Ordering::SeqCst);
        // A fault the kernel raised (si_code > 0) cannot be ignored: it forces the default.
        let from_kernel = !info.is_null() && (*info).si_code > 0;
        if previous == libc::SIG_DFL || (previous == libc::SIG_IGN && from_kernel) {
            // Blocked while we run: delivered with the default action when we return.
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut default.sa_mask);
            libc::sigaction(signal, &default, std::ptr::null_mut());
            libc::raise(signal);
        } else if previous == libc::SIG_IGN {
            // Sent, and ignored before we came: still ignored.
        } else if flags & libc::SA_SIGINFO != 0 {
            let handler = std::mem::transmute::<
                usize,
                extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
            >(previous);
            handler(signal, info, context);
        } else {
            let handler = std::mem::transmute::<usize, extern "C" fn(libc::c_int)>(previous);
            handler(signal);
        }
        *libc::__errno_location() = errno;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_takes_only_a_default_disposition_and_disarm_gives_it_back() {
        // SIGHUP of the test process: at SIG_DFL under cargo test, and never sent to it.
        let signal = libc::SIGHUP;
        assert_eq!(current_handler(signal).unwrap(), libc::SIG_DFL);
        assert!(arm(signal).unwrap());
        assert_eq!(current_handler(signal).unwrap(), our_handler());
        assert!(arm(signal).unwrap(), "arming twice is fine");
        disarm(signal);
        assert_eq!(current_handler(signal).unwrap(), libc::SIG_DFL);
        set_handler(signal, libc::SIG_IGN).unwrap();
        assert!(!arm(signal).unwrap(), "an ignored signal stays ignored");
        assert_eq!(current_handler(signal).unwrap(), libc::SIG_IGN);
        set_handler(signal, libc::SIG_DFL).unwrap();
    }
}
