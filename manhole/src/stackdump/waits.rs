//! What a dump learns about its threads after the capture: which are the manhole's own, and
//! which sleep in a `futex` wait, on what word.
//!
//! The futex word comes from `/proc/self/task/<tid>/syscall` (the system call's first
//! argument): the read the dump made just before signalling the thread (for its stack pointer),
//! or, for a thread not read then, one once the thread has answered and gone back to sleep: the
//! dump signal interrupts the wait, and std, parking_lot and glibc all wait again. Only threads captured
//! asleep whose innermost frame could be a futex wait are read, so a dump of 1,000 sleepers in
//! `nanosleep` reads no file.

use std::collections::HashMap;
use std::sync::Arc;

use super::CaptureMethod;
use super::dump::{FutexWait, ThreadStack};
use super::symbolize::{Symbolizer, static_symbol_at};
use crate::procfs::{self, SyscallState};

/// `FUTEX_WAIT`, `FUTEX_LOCK_PI`, `FUTEX_WAIT_BITSET`, `FUTEX_WAIT_REQUEUE_PI`, `FUTEX_LOCK_PI2`.
const WAIT_OPS: &[u64] = &[0, 6, 9, 11, 13];
/// The futex operation without `FUTEX_PRIVATE_FLAG` and `FUTEX_CLOCK_REALTIME`.
const OP_MASK: u64 = 0x7f;

/// Marks the manhole's threads and reads the futex word of each thread asleep in a futex wait.
/// `in_kernel[i]` is what `/proc/.../syscall` said of `threads[i]` just before it was signalled,
/// when the dump read it (for the stack room check): then that is used instead of a new read.
/// A word inside a static is named from its module's symbol table (each word looked up once).
pub(super) fn annotate(
    threads: &mut [ThreadStack],
    in_kernel: &[Option<SyscallState>],
    symbolizer: &Symbolizer,
) {
    let mut named: HashMap<usize, Option<Arc<str>>> = HashMap::new();
    for (i, thread) in threads.iter_mut().enumerate() {
        thread.manhole = crate::sys::threads::is_manhole_thread(thread.tid, &thread.name);
        if thread.method == CaptureMethod::Signal
            && thread.state.letter() == 'S'
            && may_wait_on_a_futex(thread)
        {
            let seen = in_kernel.get(i).copied().flatten();
            thread.futex = futex_word(thread.tid, seen).map(|address| FutexWait {
                address,
                static_name: named
                    .entry(address)
                    .or_insert_with(|| static_symbol_at(symbolizer, address).map(|s| s.name.into()))
                    .clone(),
            });
        }
    }
}

/// Whether the innermost frame is a system call stub or a futex wrapper: std and parking_lot
/// call `syscall(SYS_futex, ...)`, glibc's locks and condition variables its `futex` helpers.
fn may_wait_on_a_futex(thread: &ThreadStack) -> bool {
    thread.frames.first().is_some_and(|frame| {
        frame.symbols.iter().any(|symbol| {
            symbol.name.as_deref().is_some_and(|name| {
                name == "syscall" || name.contains("futex") || name.contains("lll_lock")
            })
        })
    })
}

/// The word a thread waits on, if `/proc` shows it in a futex wait (`seen`, when the dump read
/// it already).
fn futex_word(tid: i32, seen: Option<SyscallState>) -> Option<usize> {
    let state = match seen {
        Some(state @ SyscallState::InSyscall { .. }) => state,
        _ => procfs::thread_syscall(tid).ok()?,
    };
    match state {
        SyscallState::InSyscall { nr, args, .. }
            if nr == libc::SYS_futex && WAIT_OPS.contains(&(args[1] & OP_MASK)) =>
        {
            Some(args[0] as usize)
        }
        _ => None,
    }
}
