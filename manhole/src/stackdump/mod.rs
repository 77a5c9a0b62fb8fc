//! Every thread's backtrace, captured in-process: the public result types ([`StackDump`],
//! [`ThreadStack`], [`Frame`], [`FrameSymbol`]) and the orchestration of one dump.
//!
//! Rust has no runtime that knows every thread's stack, so each thread is asked to walk its own
//! stack in a signal handler (see the private `capture` module, the only `unsafe` code here).
//! One dump goes:
//!
//! 1. check that our handler still owns the dump signal (if not, no signal is sent: the
//!    application chose another disposition for it);
//! 2. list `/proc/self/task` and read each thread's name, state and signal masks; never signal a
//!    thread that blocks the signal or already has it pending, nor a zombie; signal every other
//!    thread right after reading its status (its handler runs while the next are read);
//! 3. capture the dumping thread directly, wait for the answers until the deadline (at most
//!    [`HARD_CAP`] in all);
//! 4. for threads that did not answer, read their wait channel and `/proc/.../syscall` (one
//!    program counter, no code run in the thread) and say why in a note;
//! 5. symbolize outside any handler (the private `symbolize` module), with a cache.
//!
//! No thread is ever left out silently: each one is listed with how it was captured
//! ([`CaptureMethod`]) and, when its stack is missing or partial, a note.
//!
//! # Accuracy
//!
//! * A frame whose code was inlined lists several [`FrameSymbol`]s, innermost first.
//! * Frames come from DWARF CFI unwinding (libgcc); code without unwind info ends the stack early.
//! * The stacks are not one atomic snapshot: each thread is captured when its handler runs, within
//!   microseconds to milliseconds of the others.
//! * Threads created during the dump are not in it; threads that exit during it are listed as
//!   exited.
//! * A signal can cut short a system call that is not restarted (`epoll_wait`, `nanosleep`, ...):
//!   code that does not retry on `EINTR` may see one.

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

pub use self::dump::{
    CaptureMethod, DumpCounts, Frame, FrameSymbol, FutexWait, StackDump, ThreadStack,
};
pub(crate) use self::format::{JsonEscaped, write_json_str};
pub use self::format::{MAX_LINE, TextLayout};
pub use self::group::ThreadGroup;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use self::dump::Outcome;
use self::handler::{Answer, Disposition, SendError, StackImage};
use self::symbolize::{RawFrame, Symbolizer};
use self::unwind::{End, Unwinder, Unwound};
use crate::procfs::{self, SyscallState, ThreadState};
use crate::{Error, ErrorKind, Result};

/// The longest one capture may take, whatever the timeout asks for.
pub const HARD_CAP: Duration = Duration::from_secs(2);
/// Extra wait for a handler that had started answering when the deadline passed.
const GRACE: Duration = Duration::from_millis(50);
/// The most frames per thread, whatever `max_frames` asks for.
const MAX_FRAMES_LIMIT: usize = 1024;
/// Room for the dump machinery's own frames above its caller, on the dumping thread.
const SELF_FRAMES: usize = 32;
/// How long `capture` waits for a dump already in progress.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// How long a dump waits, in all, for handlers of earlier dumps (or profile ticks) to return
/// before it trusts a thread's `SigBlk` (see [`blocks_for_real`]).
const SETTLE: Duration = Duration::from_millis(50);

/// Serializes dumps: they share the slot pool and the generation counter. Holds what one dump
/// learnt for the next: each thread's alternate signal stack, as its handler found it.
static DUMP_LOCK: Mutex<Altstacks> = Mutex::new(BTreeMap::new());

/// Alternate signal stacks by thread id: (start, size).
type Altstacks = BTreeMap<i32, (usize, usize)>;
/// Set by every dump, taken by [`release_dump_memory`].
static DUMPED: AtomicBool = AtomicBool::new(false);
/// Callers of [`capture`] between its start and its end (waiting for [`DUMP_LOCK`] included).
static IN_CAPTURE: AtomicUsize = AtomicUsize::new(0);
/// This process was forked while a thread of its parent was inside [`capture`]: the locks the
/// dump holds ([`DUMP_LOCK`], the symbol cache, the `backtrace` crate's own lock) may have been
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

/// Options for one capture.
#[derive(Debug, Clone)]
pub(crate) struct DumpOptions {
    /// The signal used to ask each thread for its stack (already resolved to a number).
    pub signal: libc::c_int,
    /// How long to wait for all threads to answer after the last signal was sent.
    pub timeout: Duration,
    /// The most frames recorded per thread.
    pub max_frames: usize,
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

/// Whether the dump handler still owns `signal` (the profiler checks before arming its timers
/// and while they run: a tick delivered to `SIG_DFL` would kill the process).
pub(crate) fn handler_owns_signal(signal: libc::c_int) -> bool {
    matches!(handler::disposition(signal), Ok(Disposition::Ours))
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
    Symbolizer::new().frames(&raw)
}

/// Captures and symbolizes the stack of every thread of the process.
///
/// One dump runs at a time (a second caller waits up to 10 s, then gets an error). It never
/// hangs: the wait for answers ends `options.timeout` after the signals are sent and at most
/// [`HARD_CAP`] after the dump started (plus 50 ms for a handler caught mid-answer); resolving
/// symbols stops after five seconds. If our handler no longer owns the signal, no signal is sent
/// and the threads are listed from `/proc` only, each with a note. Fails only when
/// `/proc/self/task` cannot be read or another dump holds the lock too long.
// Never inlined: the dumping thread's stack is cut at this function's frame (see `trace_self`).
#[inline(never)]
pub(crate) fn capture(options: &DumpOptions) -> Result<StackDump> {
    if forked_mid_dump() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "no stack dumps in this process: it was forked while its parent was taking one, so \
             the dump's locks may be held by a thread that does not exist here",
        ));
    }
    let _counted = InCapture::enter();
    let mut altstacks = DUMP_LOCK.try_lock_for(LOCK_WAIT).ok_or_else(|| {
        Error::new(
            ErrorKind::Io,
            "another stack dump has been running for more than 10 s",
        )
    })?;
    // Marks this function's frame on the stack, to cut the dumping thread's own stack here.
    let anchor = 0u8;
    let here = std::hint::black_box(&anchor) as *const u8 as usize;
    let started = Instant::now();
    let taken_at = SystemTime::now();
    let max_frames = options.max_frames.clamp(1, MAX_FRAMES_LIMIT);
    let signal = options.signal;
    let me = nix::unistd::gettid().as_raw();

    let mut refusal = match handler::disposition(signal) {
        Ok(Disposition::Ours) => None,
        Ok(other) => Some(format!(
            "not signalled: signal {signal} is now handled by {}, not by manhole",
            other.describe()
        )),
        Err(e) => Some(format!(
            "not signalled: cannot read the disposition of signal {signal}: {e}"
        )),
    };
    let cannot_list = |e| {
        Error::with_source(
            ErrorKind::Unsupported,
            "cannot list the threads in /proc/self/task",
            e,
        )
    };
    let mut tasks = procfs::TaskDir::open().map_err(cannot_list)?;
    let tids = tasks.thread_ids().map_err(cannot_list)?;
    // Each thread is signalled right after its status is read: its handler runs while the
    // dumper reads the next statuses.
    let mut requests = match handler::start(signal, tids.len()) {
        Ok(requests) => Some(requests),
        Err(e) => {
            refusal.get_or_insert(format!(
                "not signalled: no memory for the stack copies ({e})"
            ));
            None
        }
    };
    let mut threads: Vec<Pending> = Vec::with_capacity(tids.len());
    let mut checks = Preflight {
        signal,
        need: handler::stack_needed(),
        settle_until: Instant::now() + SETTLE,
        altstacks: &altstacks,
    };
    for &tid in &tids {
        let thread = plan(&mut tasks, tid, me, refusal.as_deref(), &mut checks);
        if thread.plan == Plan::Signal
            && let Some(requests) = requests.as_mut()
        {
            requests.send(tid);
        }
        threads.push(thread);
    }
    drop(tasks);
    let sent_at = Instant::now();
    let deadline = (sent_at + options.timeout.min(HARD_CAP)).min(started + HARD_CAP);
    // The other threads answer meanwhile.
    let mut unwinder = Unwinder::current();
    let own_stack = trace_self(&mut unwinder, here, max_frames);
    let answers = match requests {
        Some(requests) => {
            requests.collect(deadline, GRACE, |image| unwinder.unwind(image, max_frames))
        }
        None => Vec::new(),
    };
    drop(unwinder);
    let mut answers = answers.into_iter();
    let waited = deadline.saturating_duration_since(sent_at);
    for thread in &mut threads {
        match thread.plan {
            Plan::Signal => {
                let answer = answers.next().unwrap_or(Answer::Silent { started: false });
                if let Answer::Captured { tid, altstack, .. } = &answer {
                    match altstack {
                        Some(altstack) => altstacks.insert(*tid, *altstack),
                        None => altstacks.remove(tid),
                    };
                }
                thread.take_answer(answer, signal, waited, max_frames);
            }
            Plan::Myself => thread.take_own_stack(&own_stack),
            Plan::Skip => {}
        }
        thread.read_proc_details();
    }
    let capture_time = started.elapsed();
    DUMPED.store(true, Ordering::Relaxed);

    let symbolizing = Instant::now();
    let mut symbolizer = Symbolizer::new();
    let mut threads: Vec<ThreadStack> = threads
        .into_iter()
        .map(|t| t.finish(&mut symbolizer, max_frames))
        .collect();
    let symbolize_time = symbolizing.elapsed();
    // Reading the futex words is `/proc` work: it counts as capture, not as symbolizing.
    let annotating = Instant::now();
    waits::annotate(&mut threads);
    Ok(StackDump {
        pid: std::process::id(),
        signal,
        taken_at,
        capture_time: capture_time + annotating.elapsed(),
        symbolize_time,
        ignored_signals: handler::ignored_signals(),
        threads,
    })
}

/// The dumping thread's own stack, raw.
struct OwnStack {
    /// Return addresses, innermost first.
    ips: Vec<usize>,
    /// Whether there were more frames than kept.
    truncated: bool,
    /// Why unwinding stopped early, if it did.
    stopped: Option<String>,
}

/// The dumping thread's stack, raw: its registers and stack copied here (it cannot signal
/// itself, it may block the signal) and unwound like the others, from the caller of
/// [`capture()`] outwards, at most `limit` frames. `here` is the address of a local of `capture`.
///
/// The dump machinery's own frames are left out by stack address, not by name (inlining and
/// line-tables-only debug info make names unreliable): after each unwound frame the unwinder
/// knows the caller's stack pointer; for `capture` and everything it calls that is at or below
/// `here`, for `capture`'s caller it is above. Stacks grow down on every Linux target Rust
/// supports.
#[inline(never)]
fn trace_self(unwinder: &mut Unwinder, here: usize, limit: usize) -> OwnStack {
    let mut buffer = vec![0u8; handler::WINDOW];
    let (registers, copied) = handler::copy_own_stack(&mut buffer);
    let image = StackImage {
        registers,
        bytes: &buffer[..copied],
        window_full: copied == buffer.len(),
    };
    let unwound = unwinder.unwind(&image, limit + SELF_FRAMES);
    let caller = unwound
        .stack_pointers
        .iter()
        .position(|&sp| sp > here)
        .unwrap_or(unwound.frames.len());
    let mut ips: Vec<usize> = unwound.frames[caller..].iter().map(|f| f.ip).collect();
    let mut truncated = unwound.truncated();
    if ips.len() > limit {
        ips.truncate(limit);
        truncated = true;
    }
    OwnStack {
        ips,
        truncated,
        stopped: stop_note(&unwound),
    }
}

/// The note for a stack whose unwinding ended early, if it did.
fn stop_note(unwound: &Unwound) -> Option<String> {
    match &unwound.end {
        End::Complete | End::MaxFrames => None,
        End::Window => Some(format!(
            "stack deeper than the {} KiB copied: outer frames are missing",
            handler::WINDOW / 1024
        )),
        End::Stopped(why) => Some(format!(
            "unwinding stopped early ({why}): outer frames may be missing"
        )),
        End::NoRegisters => {
            Some("no registers from the signal context (unsupported architecture): no stack".into())
        }
    }
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

/// How one thread is to be captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Send it the dump signal.
    Signal,
    /// It is the dumping thread: trace it directly.
    Myself,
    /// Do not signal it; `/proc` details only.
    Skip,
}

/// A thread during the capture, before symbolization.
struct Pending {
    tid: i32,
    name: String,
    state: ThreadState,
    plan: Plan,
    method: CaptureMethod,
    outcome: Outcome,
    note: Option<String>,
    raw: Vec<RawFrame>,
    truncated: bool,
    /// Drop leading frames of the dump machinery once symbolized (the dumping thread).
    trim_machinery: bool,
    wchan: Option<String>,
    syscall: Option<SyscallState>,
    handler_time: Option<Duration>,
    stack_copy: Option<(usize, usize)>,
}

/// What [`plan`] checks before a thread is signalled, for one dump.
struct Preflight<'a> {
    signal: libc::c_int,
    /// Stack a dump signal needs below the interrupted stack pointer.
    need: usize,
    /// Until when [`blocks_for_real`] may wait for handlers to return.
    settle_until: Instant,
    /// Alternate signal stacks the last dumps found.
    altstacks: &'a Altstacks,
}

fn plan(
    tasks: &mut procfs::TaskDir,
    tid: i32,
    me: i32,
    refusal: Option<&str>,
    checks: &mut Preflight<'_>,
) -> Pending {
    let signal = checks.signal;
    let mut thread = Pending {
        tid,
        name: String::new(),
        state: ThreadState::from_letter('?'),
        plan: Plan::Skip,
        method: CaptureMethod::Proc,
        outcome: Outcome::NoAnswer,
        note: None,
        raw: Vec::new(),
        truncated: false,
        trim_machinery: false,
        wchan: None,
        syscall: None,
        handler_time: None,
        stack_copy: None,
    };
    let mut status = match tasks.status(tid) {
        Ok(status) => status,
        Err(_) => {
            thread.outcome = Outcome::Exited;
            thread.note = Some("exited before it could be signalled".into());
            return thread;
        }
    };
    if tid != me && status.blocks(signal) && !status.state.is_gone() && refusal.is_none() {
        blocks_for_real(tasks, tid, &mut status, checks);
    }
    thread.name = status.name.clone();
    thread.state = status.state;
    if tid == me {
        thread.plan = Plan::Myself;
        thread.method = CaptureMethod::SelfThread;
        thread.outcome = Outcome::Captured;
    } else if status.state.is_gone() {
        thread.outcome = Outcome::Exited;
        thread.note = Some(format!("exited ({})", status.state.name()));
    } else if let Some(refusal) = refusal {
        thread.note = Some(refusal.to_string());
    } else if status.blocks(signal) && crate::threads::is_manhole_thread(tid, &status.name) {
        thread.outcome = Outcome::Blocked;
        thread.note = Some(format!(
            "signal blocked: a manhole thread keeps signal {signal} blocked, so it never takes \
             the application's instances of it; listed from /proc"
        ));
    } else if status.blocks(signal) {
        thread.outcome = Outcome::Blocked;
        thread.note = Some(format!(
            "signal blocked: the thread blocks signal {signal}, so it was not sent"
        ));
    } else if status.has_pending(signal) {
        thread.note = Some(format!(
            "signal already pending: an earlier request (signal {signal}) was never handled, none sent"
        ));
    } else if let Some(short) = stack_too_short(tasks, tid, status.state, checks) {
        thread.note = Some(short);
    } else {
        thread.plan = Plan::Signal;
    }
    thread
}

/// `status` says the thread blocks the signal. While any handler of ours runs, the kernel
/// blocks the signal in its thread until the handler's sigreturn, so a thread still inside the
/// handler of the previous dump (or a profile tick) looks blocked. Waits, within the dump's
/// settle budget, until no handler is inside and then reads the status again: the thread that
/// still blocks the signal then blocks it itself. Updates `status`.
///
/// What is left: a handler that has counted itself out but not yet made its sigreturn (two
/// instructions) and was preempted right there. Such a thread is running or runnable, so a
/// thread that still blocks the signal in that state gets one more read after a yield.
fn blocks_for_real(
    tasks: &mut procfs::TaskDir,
    tid: i32,
    status: &mut procfs::ThreadStatus,
    checks: &Preflight<'_>,
) {
    let mut rereads = 0;
    while status.blocks(checks.signal) && rereads < 2 {
        if handler::handlers_inside() > 0 {
            if Instant::now() >= checks.settle_until {
                return;
            }
            std::thread::yield_now();
            continue;
        }
        if rereads == 1 {
            if status.state.letter() != 'R' {
                return;
            }
            std::thread::yield_now();
        }
        match tasks.status(tid) {
            Ok(now) => *status = now,
            Err(_) => return,
        }
        rereads += 1;
    }
}

/// For a thread blocked in the kernel (whose stack pointer `/proc/.../syscall` gives): a note
/// if its stack has less room below the stack pointer than a dump signal needs, so that it must
/// not be signalled. The room is the readable memory below the stack pointer (a guard page or
/// unmapped memory ends it), and no more than what is left of the alternate signal stack when
/// the stack pointer is on it. A running thread cannot be checked: it is signalled.
fn stack_too_short(
    tasks: &mut procfs::TaskDir,
    tid: i32,
    state: ThreadState,
    checks: &Preflight<'_>,
) -> Option<String> {
    if state.letter() == 'R' {
        return None;
    }
    let sp = usize::try_from(tasks.syscall(tid).ok()?.sp()?).ok()?;
    let mut room = crate::sys::memory::readable_below(sp, checks.need);
    let mut on_altstack = false;
    if let Some(&(start, size)) = checks.altstacks.get(&tid)
        && sp > start
        && sp <= start.saturating_add(size)
    {
        room = room.min(sp - start);
        on_altstack = true;
    }
    (room < checks.need).then(|| {
        format!(
            "not signalled: {room} bytes left below its stack pointer {sp:#x}{}, and a dump signal \
             needs {} (the kernel's signal frame {} + the handler {})",
            if on_altstack {
                " on its alternate signal stack"
            } else {
                ""
            },
            checks.need,
            handler::kernel_frame_bytes(),
            handler::HANDLER_STACK
        )
    })
}

impl Pending {
    fn take_answer(
        &mut self,
        answer: Answer<Unwound>,
        signal: libc::c_int,
        waited: Duration,
        max_frames: usize,
    ) {
        match answer {
            Answer::Captured {
                tid,
                unwound,
                handler_nanos,
                copied,
                stack_below,
                altstack: _,
                altstack_short,
            } => {
                self.stack_copy = Some((copied, stack_below));
                self.method = CaptureMethod::Signal;
                self.outcome = Outcome::Captured;
                self.handler_time = Some(Duration::from_nanos(handler_nanos));
                self.truncated = unwound.truncated();
                if tid != self.tid {
                    self.note = Some(format!("answered from tid {tid}"));
                }
                if let Some(left) = altstack_short {
                    self.note = Some(format!(
                        "on its alternate signal stack with {left} bytes left: registers only, \
                         the stack copy needs {}",
                        handler::HANDLER_STACK
                    ));
                }
                self.note = self.note.take().or_else(|| stop_note(&unwound));
                self.raw = unwound.frames;
                if self.raw.len() > max_frames {
                    self.raw.truncate(max_frames);
                    self.truncated = true;
                }
            }
            Answer::NotSent(SendError::Exited) => {
                self.outcome = Outcome::Exited;
                self.note = Some("exited before the signal reached it".into());
            }
            Answer::NotSent(SendError::QueueFull) => {
                self.note = Some(
                    "signal queue full: too many pending real-time signals (RLIMIT_SIGPENDING)"
                        .into(),
                );
            }
            Answer::NotSent(SendError::Other(e)) => {
                self.note = Some(format!("could not be signalled: {e}"));
            }
            Answer::Silent { started } => {
                let millis = waited.as_millis();
                self.note = Some(match procfs::thread_status(self.tid) {
                    Err(_) => {
                        self.outcome = Outcome::Exited;
                        "exited while the dump waited for it".to_string()
                    }
                    Ok(_) if started => {
                        format!("started answering but did not finish within {millis} ms")
                    }
                    Ok(now) if now.blocks(signal) => {
                        self.outcome = Outcome::Blocked;
                        format!(
                            "signal blocked: the thread blocked signal {signal} before it arrived"
                        )
                    }
                    Ok(now) if matches!(now.state.letter(), 'T' | 't' | 'D') => {
                        format!(
                            "no answer within {millis} ms: the thread is {}",
                            now.state.name()
                        )
                    }
                    Ok(_) => format!("no answer within {millis} ms"),
                });
            }
        }
    }

    fn take_own_stack(&mut self, own: &OwnStack) {
        self.raw = own
            .ips
            .iter()
            .filter(|&&ip| ip != 0)
            .map(|&ip| RawFrame { ip, exact: false })
            .collect();
        self.truncated = own.truncated;
        self.note = own.stopped.clone();
    }

    /// Wait channel and `/proc/.../syscall` for a live thread without a stack. A captured stack
    /// says more than the wait channel, and reading it for every thread would cost a third of
    /// a big dump.
    fn read_proc_details(&mut self) {
        if self.outcome == Outcome::Exited || self.outcome == Outcome::Captured {
            return;
        }
        self.wchan = procfs::thread_wchan(self.tid).ok().flatten();
        self.syscall = procfs::thread_syscall(self.tid).ok();
        if let Some(pc) = self.syscall.and_then(|s| s.pc()).filter(|&pc| pc != 0) {
            self.raw = vec![RawFrame {
                ip: pc as usize,
                exact: false,
            }];
        }
    }

    fn finish(self, symbolizer: &mut Symbolizer, max_frames: usize) -> ThreadStack {
        let mut frames = symbolizer.frames(&self.raw);
        let mut truncated = self.truncated;
        if self.trim_machinery {
            let machinery = frames
                .iter()
                .take_while(|f| symbolize::is_machinery(f))
                .count();
            // If everything looks like machinery, symbols are missing: keep the frames.
            if machinery < frames.len() {
                frames.drain(..machinery);
            }
            if frames.len() > max_frames {
                frames.truncate(max_frames);
                truncated = true;
            }
        }
        ThreadStack {
            tid: self.tid,
            name: self.name,
            state: self.state,
            method: self.method,
            outcome: self.outcome,
            note: self.note,
            frames,
            truncated,
            wchan: self.wchan,
            syscall: self.syscall,
            handler_time: self.handler_time,
            stack_copy: self.stack_copy,
            futex: None,
            manhole: false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use serde_json::{Value, json};

    use super::dump::*;
    use super::*;

    /// [`sample`] with its first thread named `name`.
    pub(crate) fn sample_named(name: &str) -> StackDump {
        let mut dump = sample();
        dump.threads[0].name = name.into();
        dump
    }

    /// A small dump of two threads, for the tests of what renders one.
    pub(crate) fn sample() -> StackDump {
        let symbol = FrameSymbol {
            name: Some("demo::worker".into()),
            file: Some("src/demo.rs".into()),
            line: Some(40),
        };
        let inlined = FrameSymbol {
            name: Some("demo::inner".into()),
            file: Some("src/demo.rs".into()),
            line: Some(12),
        };
        let frame = Frame {
            ip: 0x5581_f0a1_b2c3,
            module: Some("/usr/bin/demo".into()),
            module_offset: Some(0x1b2c3),
            symbols: vec![inlined, symbol].into(),
        };
        let bare = Frame {
            ip: 0x7f00_0000_1000,
            module: Some("/lib/libc.so.6".into()),
            module_offset: Some(0x1000),
            symbols: Arc::from([]),
        };
        let thread = |tid, name: &str, outcome, method| ThreadStack {
            tid,
            name: name.into(),
            state: ThreadState::from_letter('S'),
            method,
            outcome,
            note: None,
            frames: vec![frame.clone(), bare.clone()],
            truncated: false,
            wchan: Some("futex_wait_queue".into()),
            syscall: None,
            handler_time: Some(Duration::from_nanos(5300)),
            stack_copy: Some((2048, 3200)),
            futex: None,
            manhole: false,
        };
        StackDump {
            pid: 4242,
            signal: 41,
            taken_at: UNIX_EPOCH + Duration::from_millis(1_760_000_000_000),
            capture_time: Duration::from_micros(812),
            symbolize_time: Duration::from_micros(3400),
            ignored_signals: 0,
            threads: vec![
                thread(4242, "demo", Outcome::Captured, CaptureMethod::Signal),
                thread(4243, "worker-1", Outcome::Blocked, CaptureMethod::Proc),
            ],
        }
    }

    #[test]
    fn full_text_matches_the_protocol_shape() {
        let text = sample().to_text_with(TextLayout::full());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "Threads: 2 (1 captured, 1 blocked, 0 without answer) in 812 µs capture + 3.4 ms symbolize"
        );
        assert_eq!(lines[2], "Thread 4242 \"demo\" (S sleeping) [signal]");
        assert_eq!(
            lines[3],
            "  #0  0x00005581f0a1b2c3 demo::inner (src/demo.rs:12) (inlined)"
        );
        assert_eq!(
            lines[4],
            "                         demo::worker (src/demo.rs:40)"
        );
        assert_eq!(lines[5], "  #1  0x00007f0000001000 /lib/libc.so.6+0x1000");

        // Two-digit numbers fill the column; a symbol without a file shows the module+offset.
        let mut dump = sample();
        let frames = &mut dump.threads[0].frames;
        let nameless = Frame {
            symbols: vec![FrameSymbol {
                name: Some("stripped".into()),
                file: None,
                line: None,
            }]
            .into(),
            ..frames[1].clone()
        };
        frames.resize(10, frames[1].clone());
        frames.push(nameless);
        let text = dump.to_text_with(TextLayout::full());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[13], "  #9  0x00007f0000001000 /lib/libc.so.6+0x1000");
        assert_eq!(
            lines[14],
            "  #10 0x00007f0000001000 stripped (/lib/libc.so.6+0x1000)"
        );
    }

    #[test]
    fn json_matches_the_protocol_shape() {
        let json = sample().to_json();
        assert_eq!(
            json["counts"],
            json!({"threads": 2, "captured": 1, "blocked": 1, "no_answer": 0, "exited": 0})
        );
        assert_eq!(json["capture_micros"], 812);
        let thread = &json["threads"][0];
        assert_eq!(thread["state"], "S");
        assert_eq!(thread["method"], "signal");
        assert_eq!(thread["handler_nanos"], 5300);
        assert_eq!(thread["note"], Value::Null);
        assert_eq!(thread["frames"][0]["ip"], "0x5581f0a1b2c3");
        assert_eq!(thread["frames"][0]["module_offset"], "0x1b2c3");
        assert_eq!(
            thread["frames"][0]["symbols"][1],
            json!({"name": "demo::worker", "file": "src/demo.rs", "line": 40})
        );
        assert_eq!(thread["frames"][1]["symbols"], json!([]));
    }

    #[test]
    fn json_text_escapes_like_serde_json() {
        let mut dump = sample();
        dump.threads[0].name = "quote\" back\\ nl\n tab\t bell\u{7} é ∑".into();
        dump.threads[0].note = Some("line\r\nend".into());
        let text = dump.to_json_string();
        assert!(!text.contains('\n'), "one line: {text}");
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["threads"][0]["name"], json!(dump.threads[0].name));
        assert_eq!(parsed["threads"][0]["note"], json!("line\r\nend"));
        assert_eq!(parsed, dump.to_json());
    }

    #[test]
    fn filter_by_tid_or_name_substring() {
        let dump = sample();
        assert_eq!(dump.filtered("4243").threads().len(), 1);
        assert_eq!(dump.filtered("work").threads()[0].tid(), 4243);
        assert_eq!(dump.filtered("de").counts().threads(), 1);
        assert!(dump.filtered("nothing").threads().is_empty());
    }

    #[test]
    fn a_whole_name_wins_over_substrings() {
        let mut dump = sample();
        let worker = dump.threads[1].clone();
        dump.threads = [9, 99, 990, 999]
            .iter()
            .map(|&i| ThreadStack {
                tid: 5000 + i,
                name: format!("sleeper-{i}"),
                ..worker.clone()
            })
            .collect();
        let names = |filter: &str| -> Vec<String> {
            let kept = dump.filtered(filter);
            kept.threads()
                .iter()
                .map(|t| t.name().to_string())
                .collect()
        };
        assert_eq!(names("sleeper-99"), ["sleeper-99"]);
        assert_eq!(names("sleeper-9"), ["sleeper-9"]);
        assert_eq!(names("sleeper-99 "), Vec::<String>::new());
        assert_eq!(
            names("per-99"),
            ["sleeper-99", "sleeper-990", "sleeper-999"]
        );
        assert_eq!(names("5099"), ["sleeper-99"]);
    }

    fn symbol(name: &str, file: &str) -> FrameSymbol {
        FrameSymbol {
            name: Some(name.into()),
            file: Some(file.into()),
            line: Some(1),
        }
    }

    fn frame(ip: usize, symbols: Vec<FrameSymbol>) -> Frame {
        Frame {
            ip,
            module: Some("/usr/bin/demo".into()),
            module_offset: Some(ip - 0x1000),
            symbols: symbols.into(),
        }
    }

    fn moved_by_two(stack: &[Frame]) -> Vec<Frame> {
        let mut moved = stack.to_vec();
        moved[0].ip += 2;
        moved
    }

    /// Three workers with one stack (their loop, then std's and libc's start-up), one alone on
    /// another, and a manhole thread.
    fn grouped_sample() -> StackDump {
        let mut dump = sample();
        let template = dump.threads[0].clone();
        let stack = vec![
            frame(0x2000, vec![symbol("demo::worker_loop", "src/demo.rs")]),
            frame(
                0x3000,
                vec![symbol(
                    "std::sys::backtrace::__rust_begin_short_backtrace<demo::main::{closure_env#0}, ()>",
                    "library/std/src/sys/backtrace.rs",
                )],
            ),
            frame(
                0x4000,
                vec![
                    symbol(
                        "catch_unwind<(), core::panic::unwind_safe::AssertUnwindSafe<std::thread::lifecycle::spawn_unchecked::{closure#1}::{closure_env#0}<demo::main::{closure_env#0}, ()>>>",
                        "library/std/src/panicking.rs",
                    ),
                    symbol(
                        "{closure#1}<demo::main::{closure_env#0}, ()>",
                        "library/std/src/thread/lifecycle.rs",
                    ),
                ],
            ),
            frame(
                0x5000,
                vec![symbol("start_thread", "./nptl/pthread_create.c")],
            ),
            frame(0x6000, vec![symbol("clone3", "./misc/clone3.S")]),
        ];
        let thread = |tid: i32, name: &str, frames: Vec<Frame>, manhole: bool| ThreadStack {
            tid,
            name: name.into(),
            frames,
            manhole,
            ..template.clone()
        };
        dump.threads = vec![
            thread(10, "worker-1", stack.clone(), false),
            thread(11, "worker-2", stack.clone(), false),
            thread(12, "other", stack[1..].to_vec(), false),
            // Stopped two bytes further on, at the same line: the same place.
            thread(13, "worker-3", moved_by_two(&stack), false),
            thread(14, "mh-listener", stack.clone(), true),
        ];
        dump
    }

    #[test]
    fn short_text_groups_identical_stacks_and_folds_the_start_up() {
        let dump = grouped_sample();
        let groups = dump.groups();
        assert_eq!(
            groups.iter().map(|g| g.tids().to_vec()).collect::<Vec<_>>(),
            [vec![10, 11, 13], vec![12], vec![14]]
        );
        let text = dump.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "3 distinct stacks; \"threads --all\" lists each thread, \"threads --full\" shows every frame"
        );
        assert_eq!(
            lines[3],
            "3 threads \"worker-1..3\" (S sleeping) [signal], tids 10..11, 13"
        );
        assert_eq!(
            lines[4],
            "  #0  0x0000000000002000 demo::worker_loop (src/demo.rs:1)"
        );
        assert_eq!(
            lines[5],
            "  ... 4 start-up frames hidden (std runtime, libc)"
        );
        // A stack of start-up frames only keeps its innermost frame.
        assert_eq!(lines[7], "Thread 12 \"other\" (S sleeping) [signal]");
        assert!(
            lines[8].starts_with(
                "  #0  0x0000000000003000 std::sys::backtrace::__rust_begin_short_backtrace<…> ("
            ),
            "{text}"
        );
        assert_eq!(
            lines[9],
            "  ... 3 start-up frames hidden (std runtime, libc)"
        );
        assert_eq!(
            lines[11],
            "Thread 14 \"mh-listener\" (S sleeping) [signal]: the manhole's own thread, 5 frames hidden"
        );
        assert_eq!(lines.len(), 12, "{text}");

        // Each thread on its own, still short.
        let each = dump.to_text_with(TextLayout::short().every_thread(true));
        assert_eq!(each.matches("\nThread ").count(), 5, "{each}");
        assert_eq!(each.matches("start-up frames hidden").count(), 4, "{each}");
        // Everything: every frame and the full names.
        let full = dump.to_text_with(TextLayout::full());
        assert!(!full.contains("hidden"), "{full}");
        assert!(full.contains("catch_unwind<(), core::panic"), "{full}");
        assert_eq!(full.matches(" clone3 (").count(), 5, "{full}");
    }

    #[test]
    fn a_group_of_scattered_names_and_tids_fits_in_a_line() {
        let mut dump = grouped_sample();
        let template = dump.threads[0].clone();
        dump.threads = (0..600)
            .map(|i| ThreadStack {
                tid: 10 + 3 * i,
                name: format!("a-rather-long-name-{}", 2 * i),
                ..template.clone()
            })
            .chain([ThreadStack {
                name: "mh-worker-1".into(),
                manhole: true,
                ..template.clone()
            }])
            .collect();
        let text = dump.to_text();
        let header = text.lines().nth(3).unwrap();
        assert!(
            header.starts_with("600 threads \"a-rather-long-name-0,2,4,"),
            "{header}"
        );
        assert!(
            text.lines().all(|l| l.chars().count() <= MAX_LINE),
            "{text}"
        );
        let json = dump.to_json();
        assert_eq!(json["groups"][0]["tids"].as_array().unwrap().len(), 600);
    }

    #[test]
    fn json_keeps_every_thread_and_adds_the_groups() {
        let dump = grouped_sample();
        let json = dump.to_json();
        assert_eq!(json["threads"].as_array().unwrap().len(), 5);
        assert_eq!(json["threads"][4]["manhole"], true);
        assert_eq!(json["threads"][0]["futex"], Value::Null);
        let groups = json["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 3);
        assert_eq!(
            groups[0],
            json!({"count": 3, "tids": [10, 11, 13], "names": "worker-1..3", "state": "S",
                   "method": "signal", "manhole": false, "frames": 5, "startup_frames": 4,
                   "futex": null})
        );
        assert_eq!(groups[2]["manhole"], true);
    }

    #[test]
    fn threads_waiting_on_one_futex_are_grouped_by_it() {
        let mut dump = grouped_sample();
        let lock = |address, static_name: Option<&str>| {
            Some(FutexWait {
                address,
                static_name: static_name.map(Into::into),
            })
        };
        dump.threads[0].futex = lock(0x1234, Some("app::SHARED_LOCK"));
        dump.threads[1].futex = lock(0x1234, Some("app::SHARED_LOCK"));
        // Alone on its word (a parked thread's own): grouped by its stack only.
        dump.threads[3].futex = lock(0x9999, None);
        let groups = dump.groups();
        assert_eq!(groups[0].tids(), [10, 11]);
        assert_eq!(groups[2].tids(), [13]);
        let text = dump.to_text();
        assert!(
            text.contains("2 threads \"worker-1..2\" (S sleeping) [signal], tids 10..11\n  2 waiting on app::SHARED_LOCK (futex 0x1234, in a static)\n"),
            "{text}"
        );
        assert!(text.contains("\n  waiting on futex 0x9999\n"), "{text}");
        let json = dump.to_json();
        assert_eq!(
            json["groups"][0]["futex"],
            json!({"address": "0x1234", "static": "app::SHARED_LOCK"})
        );
        assert_eq!(
            json["threads"][3]["futex"],
            json!({"address": "0x9999", "static": null})
        );
    }
}
