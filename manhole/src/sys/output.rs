//! Writing to descriptors the manhole does not own (the application's stderr, a log
//! destination) without ever blocking and without ever raising `SIGPIPE`.
//!
//! The descriptor's open file description is the application's, so its `O_NONBLOCK` flag is
//! not ours to change. What is done instead depends on what the descriptor is:
//!
//! - a **socket**: `send` with `MSG_DONTWAIT | MSG_NOSIGNAL`;
//! - a **pipe or fifo**: a write through a second, non-blocking open file description of the
//!   same pipe (`open("/proc/self/fd/N", O_WRONLY | O_NONBLOCK)`), closed afterwards; a pipe
//!   write of at most `PIPE_BUF` bytes is then all or nothing, so a log line is never torn. If
//!   `/proc` cannot reopen it, a `poll` for room comes first and one chunk of at most `PIPE_BUF`
//!   bytes is written;
//! - a **terminal or other character device**: a `poll` for room, then the write;
//! - a **regular file** (or block device): a plain write, which does not wait on a reader.
//!
//! Pipe writes run with `SIGPIPE` blocked in the calling thread; a `SIGPIPE` the write raised
//! is taken back with `sigtimedwait` before the mask is restored, so a closed reader costs the
//! line, never the process (even with an empty `sigmask` and `SIGPIPE` at `SIG_DFL`).
//!
//! None of this allocates or locks, so it is also fine in a forked child.

#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// `PIPE_BUF` on Linux: pipe writes up to this size are atomic.
const PIPE_BUF: usize = 4096;

/// What kind of file a descriptor refers to, for choosing how to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Socket,
    Pipe,
    CharDevice,
    Other,
}

fn kind(fd: RawFd) -> Option<Kind> {
    // SAFETY: a zeroed `stat` is a valid out-parameter; `fstat` fills it or fails (EBADF for a
    // closed descriptor), touching nothing else.
    let mode = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return None;
        }
        st.st_mode & libc::S_IFMT
    };
    Some(match mode {
        libc::S_IFSOCK => Kind::Socket,
        libc::S_IFIFO => Kind::Pipe,
        libc::S_IFCHR => Kind::CharDevice,
        _ => Kind::Other,
    })
}

/// Writes as much of `bytes` to `fd` as can go without blocking, waiting at most `patience`
/// in total for room (zero: not at all). Returns the number of bytes written. Never raises
/// `SIGPIPE`, never changes the descriptor's flags.
pub(crate) fn write_without_blocking(fd: RawFd, bytes: &[u8], patience: Duration) -> usize {
    if fd < 0 || bytes.is_empty() {
        return 0;
    }
    let Some(kind) = kind(fd) else {
        return 0;
    };
    let deadline = Instant::now() + patience;
    match kind {
        Kind::Socket => write_loop(bytes, deadline, fd, |chunk| {
            // SAFETY: `chunk` is a live slice; `send` reads at most its length.
            unsafe {
                libc::send(
                    fd,
                    chunk.as_ptr().cast(),
                    chunk.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            }
        }),
        Kind::Pipe => {
            let _no_sigpipe = SigpipeBlocked::new();
            match reopen_nonblocking(fd) {
                Some(twin) => {
                    let written = write_loop(bytes, deadline, twin, |chunk| raw_write(twin, chunk));
                    close(twin);
                    written
                }
                // No reader at all (a fifo whose reader left): nothing can be written.
                None if last_errno() == libc::ENXIO => 0,
                None => write_loop(bytes, deadline, fd, |chunk| {
                    if poll_out(fd, Duration::ZERO) {
                        raw_write(fd, &chunk[..chunk.len().min(PIPE_BUF)])
                    } else {
                        set_errno(libc::EAGAIN);
                        -1
                    }
                }),
            }
        }
        Kind::CharDevice => write_loop(bytes, deadline, fd, |chunk| {
            if poll_out(fd, Duration::ZERO) {
                raw_write(fd, &chunk[..chunk.len().min(PIPE_BUF)])
            } else {
                set_errno(libc::EAGAIN);
                -1
            }
        }),
        Kind::Other => write_loop(bytes, deadline, fd, |chunk| raw_write(fd, chunk)),
    }
}

/// Writes all of `bytes` to `fd`, blocking as a plain `write` would (for the application's own
/// output, which must not be dropped), but never raising `SIGPIPE`. Gives up on any error
/// other than `EINTR`.
pub(crate) fn write_all_without_sigpipe(fd: RawFd, mut bytes: &[u8]) {
    if fd < 0 {
        return;
    }
    let _no_sigpipe = SigpipeBlocked::new();
    while !bytes.is_empty() {
        let n = raw_write(fd, bytes);
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n == 0 || last_errno() != libc::EINTR {
            return;
        }
    }
}

/// Runs `write` on the rest of `bytes` until done, an error other than `EINTR`/`EAGAIN`, or (on
/// `EAGAIN`) until `poll_fd` has no room before `deadline`.
fn write_loop(
    bytes: &[u8],
    deadline: Instant,
    poll_fd: RawFd,
    mut write: impl FnMut(&[u8]) -> isize,
) -> usize {
    let mut done = 0;
    while done < bytes.len() {
        let n = write(&bytes[done..]);
        if n > 0 {
            done += n as usize;
            continue;
        }
        match last_errno() {
            libc::EINTR if n < 0 => continue,
            libc::EAGAIN if n < 0 => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || !poll_out(poll_fd, left) {
                    break;
                }
            }
            _ => break,
        }
    }
    done
}

fn raw_write(fd: RawFd, bytes: &[u8]) -> isize {
    // SAFETY: `bytes` is a live slice; `write` reads at most its length from it.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn set_errno(value: i32) {
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid to write.
    unsafe { *libc::__errno_location() = value };
}

/// Waits at most `timeout` for `fd` to have room for a write.
fn poll_out(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid `pollfd` on the stack, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    rc > 0
        && pfd.revents & libc::POLLOUT != 0
        && pfd.revents & (libc::POLLERR | libc::POLLNVAL) == 0
}

/// A second open file description of the pipe behind `fd`, non-blocking, or `None` (errno set).
fn reopen_nonblocking(fd: RawFd) -> Option<RawFd> {
    // "/proc/self/fd/" + up to 10 digits + NUL, formatted without allocating.
    let mut path = [0u8; 32];
    let prefix = b"/proc/self/fd/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 10];
    let mut n = fd as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        path[prefix.len() + i] = *d;
    }
    // SAFETY: `path` is NUL-terminated (zero-filled past the digits).
    let twin = unsafe {
        libc::open(
            path.as_ptr().cast(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    (twin >= 0).then_some(twin)
}

fn close(fd: RawFd) {
    // SAFETY: `fd` was opened by `reopen_nonblocking` for this write and is not used again.
    unsafe { libc::close(fd) };
}

/// `SIGPIPE` blocked in this thread while alive; on drop, a `SIGPIPE` raised meanwhile (and not
/// pending before) is consumed, then the old mask is restored.
struct SigpipeBlocked {
    old: libc::sigset_t,
    was_pending: bool,
}

fn sigpipe_set() -> libc::sigset_t {
    // SAFETY: `sigemptyset` initialises the zeroed set; SIGPIPE is a valid signal.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        set
    }
}

fn sigpipe_pending() -> bool {
    // SAFETY: `sigpending` fills a valid out-parameter; `sigismember` reads it.
    unsafe {
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut pending) == 0 && libc::sigismember(&pending, libc::SIGPIPE) == 1
    }
}

impl SigpipeBlocked {
    fn new() -> SigpipeBlocked {
        let set = sigpipe_set();
        // SAFETY: valid sets; blocking SIGPIPE in this thread only.
        let old = unsafe {
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            old
        };
        SigpipeBlocked {
            old,
            was_pending: sigpipe_pending(),
        }
    }
}

impl Drop for SigpipeBlocked {
    fn drop(&mut self) {
        if !self.was_pending && sigpipe_pending() {
            let set = sigpipe_set();
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid set and timeout; takes the pending SIGPIPE our write raised.
            unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) };
        }
        // SAFETY: `self.old` was filled in by `pthread_sigmask`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_full_pipe_takes_nothing_and_does_not_block() {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let fd = writer.as_raw_fd();
        let mut total = 0;
        loop {
            let n = write_without_blocking(fd, b"x", Duration::ZERO);
            total += n;
            if n == 0 {
                break;
            }
        }
        assert!(total >= 4096, "{total}");
        assert_eq!(write_without_blocking(fd, b"line\n", Duration::ZERO), 0);
        // The application's descriptor is still blocking.
        let flags = nix::fcntl::fcntl(&writer, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        drop(reader);
    }

    #[test]
    fn a_pipe_without_reader_raises_no_sigpipe() {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        assert_eq!(
            write_without_blocking(writer.as_raw_fd(), b"x\n", Duration::ZERO),
            0
        );
        write_all_without_sigpipe(writer.as_raw_fd(), b"x\n");
        assert!(!sigpipe_pending());
    }
}
