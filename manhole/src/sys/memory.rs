//! Reading this process's own memory without ever faulting: `process_vm_readv` on our own pid.
//!
//! The kernel checks every page, so an address that is unmapped, a guard page, or memory that
//! another thread unmaps during the read ends the copy early (with fewer bytes) instead of a
//! SIGSEGV. The same call is used by the dump handler (for the thread's stack window) and by the
//! dumper (for a loaded object's unwind tables, which a concurrent `dlclose` could unmap).
//!
//! A raw syscall: no allocation, no lock, no libc state but `errno` (which the handler saves),
//! so it is async-signal-safe. Reading our own process passes the kernel's ptrace access check
//! without any privilege (same thread group). A seccomp filter may still forbid it; then nothing
//! is copied and the caller reports why ([`copy_denied`]).

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicI32, Ordering};

/// Page granularity of the remote side: a partial transfer never splits one remote iovec, so
/// the copy stops at the first unreadable page rather than failing whole.
const PAGE: usize = 4096;
/// Most remote iovecs per call (and on the stack of the caller): 16 pages, 64 KiB.
const IOVECS: usize = 16;

/// The last error a copy of ours got other than `EFAULT` (0: none), e.g. `EPERM` or `ENOSYS`
/// from a seccomp filter.
static DENIED: AtomicI32 = AtomicI32::new(0);

/// Copies up to `len` bytes from our own address `from` to `to`, stopping at the first page that
/// cannot be read; returns how many bytes were copied. Async-signal-safe; never faults on the
/// source side.
///
/// # Safety
///
/// `to` must be valid for writes of `len` bytes (the kernel writes there; an invalid destination
/// only makes the call fail with `EFAULT`, but overlapping live Rust data would be a data race).
pub(crate) unsafe fn copy_own(from: usize, to: *mut u8, len: usize) -> usize {
    // SAFETY: `getpid` has no preconditions; the rest is the caller's contract.
    unsafe { copy_own_as(libc::getpid(), from, to, len) }
}

/// [`copy_own`] for a caller that knows our pid already (the dump handler: one system call
/// fewer inside the application's thread).
///
/// # Safety
///
/// As [`copy_own`]; and `pid` must be this process's pid (another pid would read another
/// process's memory, where ptrace rules allow it).
pub(crate) unsafe fn copy_own_as(pid: libc::pid_t, from: usize, to: *mut u8, len: usize) -> usize {
    let mut done = 0usize;
    while done < len {
        let mut remote = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOVECS];
        let mut count = 0usize;
        let mut at = from.wrapping_add(done);
        let mut planned = 0usize;
        while count < IOVECS && done + planned < len {
            // Up to the next page boundary, so each remote iovec is within one page.
            let in_page = PAGE - (at % PAGE);
            let piece = in_page.min(len - done - planned);
            if let Some(iov) = remote.get_mut(count) {
                iov.iov_base = at as *mut libc::c_void;
                iov.iov_len = piece;
            }
            count += 1;
            planned += piece;
            at = at.wrapping_add(piece);
        }
        let local = libc::iovec {
            // SAFETY: `done < len`, so the pointer stays inside the caller's buffer.
            iov_base: unsafe { to.add(done) }.cast(),
            iov_len: planned,
        };
        // SAFETY: the local buffer is writable for `planned` bytes (caller's contract).
        let got = unsafe { read_vm(pid, &local, remote.get(..count).unwrap_or_default()) };
        if got == 0 {
            break;
        }
        done += got;
        if got < planned {
            break;
        }
    }
    done
}

/// One `process_vm_readv` from `pid` into `local`: the bytes read (0 on failure). A failure
/// other than `EFAULT` (a policy forbidding the call) is kept for [`copy_denied`].
/// Async-signal-safe.
///
/// # Safety
///
/// `local` must describe memory writable for its whole length; `pid` as in [`copy_own_as`].
unsafe fn read_vm(pid: libc::pid_t, local: &libc::iovec, remote: &[libc::iovec]) -> usize {
    // SAFETY: `local` and `remote` are live iovecs of the stated lengths (the caller vouches for
    // the local memory); the remote side is only read, and the kernel validates it page by page.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            pid,
            local as *const libc::iovec,
            1usize,
            remote.as_ptr(),
            remote.len(),
            0usize,
        )
    };
    if rc < 0 {
        // SAFETY: reading errno right after the failed call, on this thread.
        let errno = unsafe { *libc::__errno_location() };
        if errno != libc::EFAULT {
            DENIED.store(errno, Ordering::Relaxed);
        }
    }
    usize::try_from(rc).unwrap_or(0)
}

/// Copies up to `into.len()` bytes from our own address `from` into `into` (fewer if a page in the
/// range cannot be read): how many were copied. Allocates nothing.
pub(crate) fn read_own_into(from: usize, into: &mut [u8]) -> usize {
    // SAFETY: `into` is an exclusively borrowed, writable buffer of `into.len()` bytes.
    unsafe { copy_own(from, into.as_mut_ptr(), into.len()) }
}

/// Copies `len` bytes from our own address `from` into a new vector (shorter if a page in the
/// range cannot be read). Normal context only (it allocates).
pub(crate) fn read_own(from: usize, len: usize) -> Vec<u8> {
    let mut buffer = vec![0u8; len];
    // SAFETY: `buffer` is an exclusively owned, writable allocation of `len` bytes.
    let got = unsafe { copy_own(from, buffer.as_mut_ptr(), len) };
    buffer.truncate(got);
    buffer
}

/// How many bytes directly below `top` are readable memory, counted in whole pages from the
/// page of `top - 1` downwards and at most `limit` (a guard page or a hole ends the count).
/// One `process_vm_readv` reads one byte of each page, from the page of `top - 1` downwards (a
/// call stops at the first remote iovec it cannot read): used to see whether a thread's stack
/// has room below its stack pointer, without touching it, for every thread of a dump.
pub(crate) fn readable_below(top: usize, limit: usize) -> usize {
    let mut readable = 0usize;
    let mut page_end = top;
    while readable < limit && page_end > PAGE {
        let mut probes = [0u8; IOVECS];
        let mut remote = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOVECS];
        // Page starts, highest first, of the pages this call probes.
        let mut starts = [0usize; IOVECS];
        let mut count = 0usize;
        let mut end = page_end;
        while count < IOVECS && end > PAGE && readable + (page_end - end) < limit {
            let byte = end - 1;
            let start = byte - byte % PAGE;
            if let (Some(iov), Some(slot)) = (remote.get_mut(count), starts.get_mut(count)) {
                iov.iov_base = byte as *mut libc::c_void;
                iov.iov_len = 1;
                *slot = start;
            }
            count += 1;
            end = start;
        }
        let local = libc::iovec {
            iov_base: probes.as_mut_ptr().cast(),
            iov_len: count,
        };
        // SAFETY: `getpid` has no preconditions; the local buffer is the live `probes`, whose
        // `count <= IOVECS` bytes are writable.
        let pages = unsafe {
            read_vm(
                libc::getpid(),
                &local,
                remote.get(..count).unwrap_or_default(),
            )
        }
        .min(count);
        let Some(&lowest) = pages.checked_sub(1).and_then(|last| starts.get(last)) else {
            break;
        };
        readable = top - lowest;
        if pages < count {
            break;
        }
        page_end = lowest;
    }
    readable.min(limit)
}

/// Why copies of our own memory fail, when a policy (seccomp, an old kernel) forbids them.
pub(crate) fn copy_denied() -> Option<std::io::Error> {
    match DENIED.load(Ordering::Relaxed) {
        0 => None,
        errno => Some(std::io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_stop_at_an_unmapped_page_instead_of_faulting() {
        let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        assert_eq!(read_own(data.as_ptr() as usize, data.len()), data);
        // SAFETY: a fresh anonymous mapping of three pages, the last made unreadable.
        let map = unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                3 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            libc::mprotect(map.cast::<u8>().add(2 * PAGE).cast(), PAGE, libc::PROT_NONE);
            map as usize
        };
        assert_eq!(read_own(map + 100, 3 * PAGE).len(), 2 * PAGE - 100);
        assert!(read_own(map + 2 * PAGE, 10).is_empty());
        assert!(read_own(0, 64).is_empty());
        // Below the first page of the mapping nothing is mapped (or something else is).
        assert_eq!(
            readable_below(map + 2 * PAGE, usize::MAX).min(2 * PAGE),
            2 * PAGE
        );
        assert_eq!(readable_below(map + PAGE + 10, 100), 100);
        assert_eq!(readable_below(map + 3 * PAGE, 3 * PAGE), 0);
        assert!(copy_denied().is_none());
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(map as *mut libc::c_void, 3 * PAGE) };
    }
}
