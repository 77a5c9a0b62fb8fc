//! Thin safe wrappers over the few libc calls std and nix do not cover.
//!
//! This and `stackdump::capture` are the only modules with `unsafe` code. Each function here is
//! safe to call; the `// SAFETY:` comment on each block says why the call is sound.

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

/// Blocks every signal in the calling thread except those in `keep`, returning the old mask.
/// Threads spawned while it is in force inherit it.
pub(crate) fn block_signals_except(keep: &[i32]) -> std::io::Result<SavedMask> {
    // SAFETY: zeroed `sigset_t` is a valid starting value that `sigfillset` then initialises;
    // the pointers passed are to live locals.
    unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut block);
        for &signal in keep {
            libc::sigdelset(&mut block, signal);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(SavedMask(old))
    }
}

/// Puts back a mask saved by [`block_signals_except`].
pub(crate) fn restore_signal_mask(saved: SavedMask) {
    // SAFETY: `saved.0` was filled in by `pthread_sigmask`, so it is an initialised set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &saved.0, std::ptr::null_mut());
    }
}
