//! Open a live debugging session into a running Rust process.
//!
//! An application links this crate and calls [`install`] (or, with the `MANHOLE` environment
//! variable, gets it installed before `main`). The manhole then listens on a unix socket,
//! `/tmp/manhole-<pid>` by default. An operator connects with `manhole-cli <pid>`, `socat
//! readline unix-connect:/tmp/manhole-<pid>` or `nc -U`, and gets:
//!
//! - a banner naming the process, then a **symbolized backtrace of every thread**;
//! - a `>>> ` prompt for commands: `threads`, `info`, `locals`, `get NAME`, `set NAME VALUE`,
//!   and the commands the application registered.
//!
//! It is a Rust port, and a stricter version, of Python's `manhole`: same option names, several
//! sessions at once, a JSON form for every answer, and a stack dump that costs the process
//! microseconds per thread instead of stopping it under a debugger.
//!
//! # Quickstart
//!
//! ```no_run
//! use std::sync::{Arc, atomic::AtomicU64};
//! use manhole::{Local, Options};
//!
//! let requests = Arc::new(AtomicU64::new(0));
//! let max_batch = Arc::new(AtomicU64::new(64));
//! let manhole = manhole::install(
//!     Options::new()
//!         .local("requests", Local::atomic(requests.clone()))
//!         .local("max_batch", Local::settable_atomic(max_batch.clone()))
//!         .command("echo", "print the arguments back", |args| Ok(args.join(" "))),
//! )?;
//! println!("manhole listening on {}", manhole.socket_path().unwrap().display());
//! # Ok::<(), manhole::Error>(())
//! ```
//!
//! Then `manhole-cli <pid>` opens a session, and `manhole-cli <pid> get requests` prints one value
//! for a script. The protocol is in [docs/protocol.md].
//!
//! The guides ship in the crate: [docs/options.md] (every option), [docs/protocol.md],
//! [docs/security.md], [docs/async.md] (tokio), [docs/design.md], [docs/benchmarks.md].
//!
//! # Anatomy
//!
//! The source tree is layered, bottom up; a module uses only its own layer and those below it:
//! `sys/` (the `unsafe` libc wrappers, the manhole's threads, `poll` waits, `/proc` readers, the
//! event log), then `stackdump/` (capture, unwind, symbolize, format), then `profile/` (CPU
//! profiles on the dump's signal and symbolizer), then `registry/` and
//! `server/` (what the application registers; the socket, listener, peer check, sessions and
//! commands), then `lifecycle/` (installation, the `MANHOLE` variable, signals, `fork`, exit).
//! `options` and `error` are plain data that every layer shares; `runtime/` is the tokio support.
//!
//! - `lifecycle`: the one installation per process, [`install`], the [`Manhole`] handle,
//!   uninstall, and the exit hook that removes the socket file.
//! - `options`: [`Options`], every setting with its default.
//! - `socket`: creates the socket file 0600 with no window where it is more open, replaces only a
//!   stale socket of ours, never follows or deletes anything else, removes only its own inode.
//! - `listener`: the `mh-listener` thread. It sleeps in `poll` (no CPU, no wake-ups while
//!   idle), checks each peer's `SO_PEERCRED`, caps the number of sessions.
//! - `credentials`: the peer check (the process's effective uid, root, or the allow-lists) and
//!   the read-only policy.
//! - `session`: one `mh-session-<n>` thread per client: bounded line reading, writes with
//!   `MSG_NOSIGNAL` that give up after `write_timeout` without progress, idle timeout, the `exec`
//!   hello.
//! - `commands`: the command language; every answer as text and as JSON.
//! - `local` and `registry`: what the application registers ([`Local`], [`register`],
//!   [`register_command`]) and the process-wide table of names; `logfilter` (features `tracing`
//!   and `log`) makes the application's log filter one of those values.
//! - `threads`: manhole threads block the application's signals; application callbacks run on
//!   bounded `mh-worker-<n>` threads, never on a session thread.
//! - [`stackdump`]: every thread's backtrace. Capture is the dump signal (`SIGURG`) sent to each
//!   thread; its handler only copies its registers and up to 64 KiB of its stack into memory
//!   allocated beforehand (`process_vm_readv` on our own pid, which cannot fault). Unwinding
//!   (framehop) and symbolization happen afterwards on the session thread, with a cache. The text
//!   groups threads with identical stacks and folds std's start-up frames; threads asleep on one
//!   futex word are grouped by it (the JSON keeps every thread and adds the groups).
//! - `signals`: `activate_on`, `oneshot_on`, `dump_on` and the opt-in SIGTERM cleanup. Handlers
//!   are chained through signal-hook and only set a bit and write a byte to a self-pipe; the
//!   `mh-signal` thread does the work.
//! - `sys::dying`: SIGTERM, SIGINT and SIGHUP at `SIG_DFL` get a handler that unlinks our socket
//!   and activation file (paths prepared beforehand) and re-raises the signal with `SIG_DFL`; when
//!   a later handler chains to it, it does nothing. Once a session has teed stdout/stderr, the
//!   fatal signals get a chained handler that lets the tee's pumps copy the last output first.
//! - `fork`: `pthread_atfork` hooks. No manhole lock is held across `fork`; in the child the
//!   inherited installation is forgotten (never its parent's socket), no thread is started and
//!   nothing allocated; the child brings the manhole back with [`reinstall_after_fork`] (at
//!   `/tmp/manhole-<childpid>` for the default pid path), or on its own after `reinstall_delay`
//!   with `Options::reinstall_at_fork`.
//! - `tee`: `redirect_stderr` and `redirect_stdout`, a tee of fd 2 and fd 1 into the open
//!   sessions while any is open.
//! - `envvar`: the `MANHOLE` environment variable, parsed (never evaluated) and installed before
//!   `main`.
//! - `runtime` (feature `tokio`): the attached tokio runtime, its `runtime` and `tasks` commands,
//!   and async registered commands and values cancelled on timeout.
//! - [`procfs`]: what `/proc` says about the process and its threads.
//! - `log`: one line per event, `Manhole[<pid>:<time>]: ...`, written with a raw `write(2)` that
//!   never blocks and never raises SIGPIPE (`sys::output`); a line that does not fit is dropped
//!   and counted.
//! - `profile`: the `profile [SECONDS]` command. Per-thread CPU-time timers (so sleeping threads
//!   are never sampled) deliver the dump signal marked as a profile tick; the handler copies the
//!   registers and a bounded stack window into a preallocated ring, and the session thread
//!   unwinds the copies with framehop, symbolizes them and aggregates folded stacks.
//! - `sys`: the thin `unsafe` wrappers over libc. Only `sys`, `stackdump` and `profile/sampler`
//!   contain `unsafe`.
//!
//! # Safety model
//!
//! The manhole runs inside someone else's production process, so it holds itself to these rules:
//!
//! - Who gets in: the socket file is 0600 and owned by the effective uid from the moment it
//!   appears; every connection is checked again with `SO_PEERCRED` (same euid, root, or an
//!   `allowed_uids`/`allowed_gids` entry). Accepted and refused connections, every `set` and
//!   every registered command run are logged with the peer's pid, uid and gid; `read_only(true)`
//!   refuses `set` and commands not registered as queries. See [docs/security.md].
//! - No SIGPIPE death (every write uses `MSG_NOSIGNAL`), no signals stolen (manhole threads block
//!   the application's signals and the dump signal), no lock or allocation in a signal handler,
//!   no panic across FFI, no fault signal ever blocked (a stack overflow in a registered command
//!   gets Rust's own "has overflowed its stack" report).
//! - A slow, silent or hostile client costs one session, never the listener or the process:
//!   lines are capped at 64 KiB, writes time out, idle sessions are closed, sessions are capped.
//! - Application code (value reads, registered commands) runs on a worker thread with a timeout;
//!   a panic is reported to the client and the process goes on. Reading a value behind a lock
//!   gives up after `lock_timeout` instead of hanging.
//! - Nothing is deleted that the manhole did not create.
//!
//! # The dump signal
//!
//! A dump asks each thread for its stack with a signal, `SIGURG` by default. It was chosen, as
//! Go's runtime chose it for preemption, because its default action is to ignore it: a request
//! that reaches a thread late (still queued across `exec`, after a library added `SA_RESETHAND`,
//! after the application reset the signal to `SIG_DFL`) can never kill or stop the process.
//! Real-time signals, the previous default, terminate the process by default, and did, in those
//! cases. [`install`] therefore accepts only `SIGURG` and `SIGWINCH` as `dump_signal`, and
//! refuses every other signal with a one-line [`ErrorKind::Signal`] error: real-time signals,
//! `SIGTERM`, `SIGUSR1`, `SIGPIPE` (terminate), `SIGTSTP`, `SIGTTIN`, `SIGTTOU` (stop),
//! `SIGCHLD`, `SIGCONT` (sent by the kernel, with meanings of their own), the fault signals.
//! The signals `activate_on`, `oneshot_on` and `dump_on` are not limited this way: they are sent
//! on purpose by an operator, their handlers stay for the life of the process, and python-manhole
//! uses `SIGUSR1`/`SIGUSR2` for them.
//!
//! The manhole's own threads always block the dump signal, so a process-directed `SIGURG` sent
//! by someone else goes to an application thread, as it would without the manhole, or stays
//! pending for an application that reads it through a `signalfd`. They are listed in dumps from
//! `/proc`; the thread that runs the dump copies its own stack. The handler tells its own
//! requests (`SI_QUEUE` from our pid, carrying the current dump's generation) from anybody
//! else's and does nothing with the others: `SIGURG`'s default action is to ignore it, so that
//! is what the application would have seen.
//!
//! # Stack dump accuracy
//!
//! A backtrace from inside a running process is a best effort. It can be off, or incomplete,
//! for these reasons:
//!
//! - **Threads that block the dump signal** (the whole mask, as some runtimes and `sigwait`
//!   users do) are never signalled: they are listed with their `/proc` state, `wchan` and the
//!   program counter from `/proc/self/task/<tid>/syscall`, and a note saying why.
//! - **Threads that cannot run a handler in time** (stopped, traced, in an uninterruptible
//!   sleep) are listed the same way after the dump timeout (1 s by default; a dump waits only as long as the slowest thread).
//! - **What is copied.** The dump handler copies only the interrupted registers (from the
//!   `ucontext`) and a window of at most 64 KiB of the thread's stack, from its stack pointer up,
//!   with `process_vm_readv` on its own process (a guard page ends the copy, it never faults).
//!   No unwinder runs in the handler; the dumping thread unwinds the copies afterwards with
//!   framehop over the unwind tables of every loaded object, the vDSO included, so a thread
//!   interrupted in `clock_gettime` unwinds through it. The kernel's signal frame and the dump
//!   handler's own frames are never part of a stack; a thread that was inside a signal handler of
//!   the application shows that handler, then the signal trampoline, then the interrupted code,
//!   as long as that is inside the window.
//! - **The copy ends at the thread's outermost frame once that is known.** When a dump unwinds a
//!   thread to its outermost frame (`start_thread`, `_start`), it checks that the copy cut 512
//!   bytes above that frame's stack pointer unwinds to the same frames, and if so the thread's
//!   later copies (in the same session, the caches' lifetime) end there: that frame stays put
//!   for the thread's life, so a thread that has gone deeper is still copied whole, and a thread
//!   running on another stack (an alternate signal stack, a coroutine's) gets the whole window.
//!   Thread id and start time name the thread, so a reused tid starts afresh. What this skips is
//!   the thread's TLS and `struct pthread` above its frames and, for the main thread, its
//!   arguments and environment: the demo's copies went from 5.8 KiB (64 KiB for the main thread)
//!   to 1.5 KiB (3.7 KiB), and a handler's time roughly halved.
//! - **A thread that has not run since an earlier dump is shown from that dump.** When the
//!   kernel's count of the times it was put on a CPU (`/proc/.../schedstat`) is still the one read
//!   just before the earlier signal plus the one run that took it, `/proc/.../syscall` shows the
//!   same system call, arguments, stack pointer and program counter, and every stack word the
//!   unwinding read still holds its value, the earlier capture is exactly what a new signal would
//!   find: it is shown ([`stackdump::ThreadStack::unchanged`]), with a note giving the count, and
//!   the thread is not signalled. [`dump_threads_fresh`] and `threads --fresh` signal every
//!   thread.
//! - **Stacks deeper than the window are truncated**: the frames beyond the 64 KiB copied are
//!   missing, and the thread says so in a note (`stack deeper than the 64 KiB copied: outer
//!   frames are missing`) and is marked truncated. In the example applications (`demo`, `bare`,
//!   `tokio_app`, `faults`) none of 360 stacks in 80 dumps reached the window, nor any of the
//!   benchmark's parked threads (`bench --dumps` measures both: docs/benchmarks.md).
//! - **Threads with too little stack are not signalled.** Delivering the dump signal needs, below
//!   the interrupted stack pointer, the kernel's signal frame (`AT_MINSIGSTKSZ`, 3,376 bytes on an
//!   x86_64 CPU with AVX-512, 11,952 on one with AMX, whose tile state a process may enable at
//!   any time; plus the 128-byte red zone) and 2 KiB for the handler (measured:
//!   520 bytes in a release build, 1,337 in a debug build; the kernel's frame took 3,032 to
//!   3,432 bytes, the most on an AMX CPU); [`stackdump::signal_stack_needed`] gives the sum on this machine. A thread
//!   blocked in the kernel with less room below its stack pointer (its pointer is in
//!   `/proc/self/task/<tid>/syscall`; a guard page or the end of a known alternate signal stack
//!   ends the room) is listed from `/proc` with its state and PC and a note instead. A *running*
//!   thread cannot be checked from outside (`/proc` has no stack pointer for it): it is signalled.
//!   The handler's first act is to ask `sigaltstack` whether it runs on the alternate signal
//!   stack; with less than 2 KiB left there it copies the registers only (a note says so). What
//!   stays unchecked: a thread first seen while already deep in an `SA_ONSTACK` handler, with
//!   room for the kernel's frame but not for the handler's first frame; the alternate stacks the
//!   dumps learn make the next dump check it.
//! - **The unwinder needs unwind tables.** Rust keeps `.eh_frame` by default; C code built
//!   without them, or a corrupt stack, ends a backtrace early. Frames the symbolizer cannot name
//!   are printed as `module+offset`, so they can be symbolized offline.
//! - **Symbols need debug info** for file and line (`debug = "line-tables-only"` in release is
//!   enough); a stripped binary shows function names from the symbol table only, or none.
//! - **Inlined functions** are shown as extra frames when the debug info describes them.
//! - **The interrupted instruction** is resolved exactly; the return addresses of the frames above
//!   it are resolved one byte back, inside the call instruction, as debuggers do.
//! - **It is not an atomic snapshot.** Each thread records its own stack when the signal arrives;
//!   the threads are signalled together, so the picture spans microseconds, not one instant.
//! - **Side effects on the application**: see the next section. Under a debugger, the dump
//!   signal must be passed to the program: gdb does so for `SIGURG` by default
//!   (`nostop noprint pass`).
//! - **Platform**: Linux, x86_64 tested (aarch64 has the code, untested), glibc. No unwinder runs
//!   in the signal handler, so the dump does not depend on the glibc or libgcc version.
//!
//! # What your application may notice
//!
//! A dump runs a signal handler once on every application thread that does not block the dump
//! signal. The handler is installed with `SA_RESTART`, so system calls the kernel restarts are
//! not disturbed, but the ones it never restarts after a handler return early, exactly as for
//! any other signal. Measured on Linux 6.18, glibc 2.36, one dump while each of these waited
//! for 3 s (the `what_a_dump_interrupts_is_exactly_what_the_docs_list` scenario in
//! `manhole/tests/stackdump.rs`):
//!
//! - `UnixStream::read` on a socket with a read timeout returns `Err(e)` with
//!   `e.kind() == ErrorKind::Interrupted` at once: std does not retry it, and
//!   `stream.read(&mut buf)?` passes it up.
//! - `epoll_wait` and `sem_timedwait` fail with `EINTR`.
//! - `libc::sleep(10)` returns `9` (the unslept seconds) at once.
//! - `std::thread::sleep` and `Condvar::wait_timeout` are unaffected: std retries them, and they
//!   returned after the full 3 s.
//!
//! By `signal(7)`, the other calls the kernel never restarts after a handler (`poll`, `select`,
//! `nanosleep`, `sigtimedwait`, `io_getevents`...) fail with `EINTR` the same way (not measured
//! here). Code that retries on `EINTR`, as it
//! must for any signal, notices nothing. A thread parked since the last dump is not signalled
//! again (see "Stack dump accuracy"), so a thread that waits sees this once, not once a dump. Threads that block the dump signal are not signalled
//! at all. Instances of the signal sent by anyone else reach the application as before (see
//! "The dump signal").
//!
//! Two more things a dump does, both for its own length only:
//!
//! - In a process of 256 threads or more, one more thread, `mh-dump-plan`, exists while the
//!   requests are sent (it shares the `/proc` reads). It runs in `SCHED_IDLE`, so it only takes
//!   CPU time no thread of the machine wants, and it blocks every signal but the fault signals,
//!   like every manhole thread.
//! - The dumping thread runs in `SCHED_BATCH` while it sends and collects (the same share of the
//!   CPU, but its wake-ups do not preempt the threads answering). When an application thread
//!   calls [`dump_threads`] itself, it gets `SCHED_OTHER` back afterwards; a thread in any other
//!   class (real-time, idle, batch) is left as it is.
//!
//! # Features
//!
//! - `env` (on by default): a constructor installs the manhole before `main` when `MANHOLE` is
//!   set. Without it nothing of the manhole runs before `main`; [`install_from_env`] does the
//!   same on demand.
//! - `tokio` (off by default): attach a tokio runtime (picked up automatically when `install` runs
//!   inside one), the `runtime` command (stable runtime metrics), the `tasks` command (every task's
//!   async backtrace, in applications built with `--cfg tokio_unstable`), and async registered
//!   commands and values (`Options::async_command`, `Local::from_async_fn`). Without the feature
//!   tokio is not compiled. See [docs/async.md].
//! - `tracing` (off by default): `Local::log_filter` and `register_log_filter`, a `log_filter`
//!   value over a `tracing-subscriber` reload handle to an `EnvFilter`, changed live by `set`.
//! - `log` (off by default): `Local::log_level` and `register_log_level`, a `log_level` value
//!   over `log::set_max_level`.
//!
//! # Limitations
//!
//! - Linux only (`/proc`, `SO_PEERCRED`, `rt_tgsigqueueinfo`).
//! - One manhole per process; a second [`install`] fails unless `strict(false)`.
//! - The dump signal (default `SIGURG`; `SIGWINCH` is the only alternative) must be free: install
//!   fails if it has a handler, and refuses every signal whose default action can kill or stop
//!   the process (see "The dump signal" above).
//!
//! [docs/options.md]: https://docs.rs/crate/manhole/latest/source/docs/options.md
//! [docs/protocol.md]: https://docs.rs/crate/manhole/latest/source/docs/protocol.md
//! [docs/security.md]: https://docs.rs/crate/manhole/latest/source/docs/security.md
//! [docs/async.md]: https://docs.rs/crate/manhole/latest/source/docs/async.md
//! [docs/design.md]: https://docs.rs/crate/manhole/latest/source/docs/design.md
//! [docs/benchmarks.md]: https://docs.rs/crate/manhole/latest/source/docs/benchmarks.md
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[doc(hidden)]
#[path = "fuzzing.rs"]
pub mod __fuzz;

/// Entry points for the preload library (`manhole-preload`), which gives any dynamically linked
/// program a manhole from `MANHOLE`. Not part of the API; hidden from the docs.
#[doc(hidden)]
pub mod __preload {
    /// Installs from `MANHOLE` if it is set, once per process: what the library's own
    /// constructor does (whichever runs first installs, the other does nothing). A bad value
    /// or a failed install is one line on stderr.
    pub fn install_from_env() {
        let _ = crate::envvar::install_from_env();
    }

    /// Parses options written as a `MANHOLE` value (`activate_on=USR2, verbose=false`).
    pub fn parse_options(text: &str) -> crate::Result<crate::Options> {
        crate::envvar::parse(text)
    }
}
mod error;
mod lifecycle;
mod options;
mod profile;
mod registry;
mod runtime;
mod server;
#[allow(unsafe_code)]
pub mod stackdump;
mod sys;

// Short paths (`crate::session`, `crate::log`, ...) to the modules inside the layers.
use lifecycle::{envvar, signals};
use registry::local;
use server::{commands, credentials, listener, session, socket, tee};
use sys::{log, threads, wait};

pub use credentials::PeerCred;
pub use envvar::install_from_env;
pub use error::{Error, ErrorKind, Result};
pub use lifecycle::{Manhole, dump_threads, dump_threads_fresh, install, reinstall_after_fork};
pub use local::{Atomic, Local, Lock};
pub use options::{ConnectionHandler, Options, default_socket_path, parse_signal};
#[cfg(feature = "tracing")]
pub use registry::register_log_filter;
#[cfg(feature = "log")]
pub use registry::register_log_level;
pub use registry::{Registration, register, register_command, register_query};
#[cfg(feature = "tokio")]
pub use runtime::{TaskName, name_task, register_async_command};
pub use signals::SignalSpec;
pub use stackdump::StackDump;
pub use sys::procfs;
