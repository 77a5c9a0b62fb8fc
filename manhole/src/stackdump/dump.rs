//! The result of a dump, [`StackDump`] and the types inside it ([`ThreadStack`], [`Frame`],
//! [`FrameSymbol`], [`CaptureMethod`]), with their accessors and the `threads NAME` filter. Their
//! text and JSON forms are in `format`, the grouping of identical stacks in `group`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::procfs::{SyscallState, ThreadState};

/// What became of one thread, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Captured,
    Blocked,
    NoAnswer,
    Exited,
}

/// A symbolized backtrace of every thread of the process at one moment.
#[derive(Debug, Clone)]
pub struct StackDump {
    pub(super) pid: u32,
    pub(super) signal: libc::c_int,
    pub(super) taken_at: SystemTime,
    pub(super) capture_time: Duration,
    pub(super) symbolize_time: Duration,
    pub(super) ignored_signals: u64,
    pub(super) threads: Vec<ThreadStack>,
    pub(super) notes: Vec<String>,
}

/// How many threads a dump saw, and what became of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DumpCounts {
    pub(super) threads: usize,
    pub(super) captured: usize,
    pub(super) blocked: usize,
    pub(super) no_answer: usize,
    pub(super) exited: usize,
}

impl DumpCounts {
    /// Every thread listed.
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// Threads whose stack was captured (by signal or, for the dumping thread, directly).
    pub fn captured(&self) -> usize {
        self.captured
    }
    /// Threads that block the dump signal, so they were not asked.
    pub fn blocked(&self) -> usize {
        self.blocked
    }
    /// Threads that did not answer in time, could not be signalled, or were not asked because
    /// the signal was already pending or no longer ours.
    pub fn no_answer(&self) -> usize {
        self.no_answer
    }
    /// Threads that exited during the dump.
    pub fn exited(&self) -> usize {
        self.exited
    }
}

impl StackDump {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The signal used to ask the threads.
    pub fn signal(&self) -> libc::c_int {
        self.signal
    }

    /// When the dump started.
    pub fn taken_at(&self) -> SystemTime {
        self.taken_at
    }

    /// How long capturing took (signals sent, answers collected, `/proc` read).
    pub fn capture_time(&self) -> Duration {
        self.capture_time
    }

    /// How long symbolizing took.
    pub fn symbolize_time(&self) -> Duration {
        self.symbolize_time
    }

    /// Dump signals ignored since the process started, as of this dump: sent by someone else,
    /// or answers that came after their dump had given up on them.
    pub fn ignored_signals(&self) -> u64 {
        self.ignored_signals
    }

    /// Why the dump is less than it could be, if it is: e.g. a module whose debug info was not
    /// loaded because the host is short of memory (its frames then show module + offset only).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Every thread, in `/proc/self/task` order (the main thread first).
    pub fn threads(&self) -> &[ThreadStack] {
        &self.threads
    }

    /// The counts of threads by outcome.
    pub fn counts(&self) -> DumpCounts {
        let mut counts = DumpCounts {
            threads: self.threads.len(),
            ..DumpCounts::default()
        };
        for thread in &self.threads {
            match thread.outcome {
                Outcome::Captured => counts.captured += 1,
                Outcome::Blocked => counts.blocked += 1,
                Outcome::NoAnswer => counts.no_answer += 1,
                Outcome::Exited => counts.exited += 1,
            }
        }
        counts
    }

    /// Only the threads `filter` names: those whose tid or whole name equals it, or, when no
    /// thread does, those whose name contains it (so `sleeper-99` is one thread, not
    /// `sleeper-990` to `sleeper-999` as well). The counts follow the threads kept; the times
    /// stay those of the whole dump.
    pub fn filtered(&self, filter: &str) -> StackDump {
        let tid = filter.trim().parse::<i32>().ok();
        let exact = |t: &&ThreadStack| Some(t.tid) == tid || t.name == filter;
        let mut threads: Vec<ThreadStack> = self.threads.iter().filter(exact).cloned().collect();
        if threads.is_empty() {
            threads = self
                .threads
                .iter()
                .filter(|t| t.name.contains(filter))
                .cloned()
                .collect();
        }
        StackDump {
            threads,
            ..self.clone_without_threads()
        }
    }

    pub(super) fn clone_without_threads(&self) -> StackDump {
        StackDump {
            pid: self.pid,
            signal: self.signal,
            taken_at: self.taken_at,
            capture_time: self.capture_time,
            symbolize_time: self.symbolize_time,
            ignored_signals: self.ignored_signals,
            threads: Vec::new(),
            notes: self.notes.clone(),
        }
    }
}

/// How a thread's stack was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaptureMethod {
    /// The thread walked its own stack in the dump signal handler.
    Signal,
    /// The thread is the one that took the dump; it walked its stack directly.
    SelfThread,
    /// The thread did not answer (or was not asked): at most the program counter from
    /// `/proc/self/task/<tid>/syscall`, and a note saying why.
    Proc,
}

impl CaptureMethod {
    /// `signal`, `self` or `proc`, as in the text and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMethod::Signal => "signal",
            CaptureMethod::SelfThread => "self",
            CaptureMethod::Proc => "proc",
        }
    }
}

impl fmt::Display for CaptureMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thread of a [`StackDump`].
#[derive(Debug, Clone)]
pub struct ThreadStack {
    pub(super) tid: i32,
    pub(super) name: String,
    pub(super) state: ThreadState,
    pub(super) method: CaptureMethod,
    pub(super) outcome: Outcome,
    pub(super) note: Option<String>,
    pub(super) frames: Vec<Frame>,
    pub(super) truncated: bool,
    pub(super) wchan: Option<String>,
    pub(super) syscall: Option<SyscallState>,
    pub(super) handler_time: Option<Duration>,
    /// For a thread captured by the signal: bytes of stack the handler copied, and bytes of
    /// stack the kernel's signal frame and the handler used below the interrupted stack pointer.
    pub(super) stack_copy: Option<(usize, usize)>,
    /// The futex word the thread sleeps on, and the static it lies in, if it is in one.
    pub(super) futex: Option<FutexWait>,
    /// One of the manhole's own threads (listener, sessions, workers, signal thread).
    pub(super) manhole: bool,
    /// The stack is an earlier dump's: the thread has not run since (see [`ThreadStack::unchanged`]).
    pub(super) unchanged: bool,
}

/// Where a thread sleeps in a `futex` wait (a lock, a condition variable, a parked thread), from
/// `/proc/self/task/<tid>/syscall` read after the thread's stack was captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FutexWait {
    pub(super) address: usize,
    pub(super) static_name: Option<Arc<str>>,
}

impl FutexWait {
    /// The address of the futex word (the first argument of the system call).
    pub fn address(&self) -> usize {
        self.address
    }

    /// The static the word lies in (e.g. `app::SHARED_LOCK` for a `static Mutex`); `None` for a
    /// lock on the heap or on a stack.
    pub fn static_name(&self) -> Option<&str> {
        self.static_name.as_deref()
    }
}

impl ThreadStack {
    /// The kernel thread id.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The thread name as the kernel knows it (at most 15 bytes; the main thread's is the
    /// program name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The scheduler state when the dump started.
    pub fn state(&self) -> ThreadState {
        self.state
    }

    /// How the stack was obtained.
    pub fn method(&self) -> CaptureMethod {
        self.method
    }

    /// Why the stack is missing or partial, if it is.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// The frames, innermost first.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// Whether the stack had more frames than were kept.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The kernel function the thread sleeps in, for a thread without a captured stack.
    pub fn wchan(&self) -> Option<&str> {
        self.wchan.as_deref()
    }

    /// For a thread without a captured stack: where `/proc` says it is blocked.
    pub fn syscall(&self) -> Option<SyscallState> {
        self.syscall
    }

    /// For a thread captured by the signal: how long it spent in the dump handler, from entry
    /// to its last store (the final futex wake, about a microsecond, is not included). This is
    /// how long the dump kept the thread from its own work.
    pub fn handler_time(&self) -> Option<Duration> {
        self.handler_time
    }

    /// Whether this stack is the one an earlier dump captured by signal, shown again without a
    /// new signal because the thread has not run since: the kernel's count of the times it was
    /// put on a CPU has not moved since that signal, it is parked in the same system call with
    /// the same arguments, stack pointer and program counter, and every stack word the unwinding
    /// read still holds the same value. Such a thread has no [`handler_time`](Self::handler_time).
    pub fn unchanged(&self) -> bool {
        self.unchanged
    }

    /// For a thread captured by the signal: how many bytes of its stack the handler copied
    /// (from the interrupted stack pointer up, at most the copy window).
    pub fn stack_copy_bytes(&self) -> Option<usize> {
        self.stack_copy.map(|(copied, _)| copied)
    }

    /// Whether this is one of the manhole's own threads (`mh-listener`, `mh-session-<n>`, ...).
    pub fn is_manhole_thread(&self) -> bool {
        self.manhole
    }

    /// For a thread captured by the signal that sleeps in a `futex` wait: the word it waits on.
    pub fn futex_wait(&self) -> Option<&FutexWait> {
        self.futex.as_ref()
    }

    /// For a thread captured by the signal: how many bytes below the interrupted stack pointer
    /// the kernel's signal frame and the dump handler used.
    pub fn handler_stack_bytes(&self) -> Option<usize> {
        self.stack_copy.map(|(_, below)| below)
    }
}

/// One stack frame: an address, where it lies, and what it resolves to.
#[derive(Debug, Clone)]
pub struct Frame {
    pub(super) ip: usize,
    pub(super) module: Option<Arc<str>>,
    pub(super) module_offset: Option<usize>,
    pub(super) symbols: Arc<[FrameSymbol]>,
}

impl Frame {
    /// The instruction address: the interrupted instruction for a signalled thread's first
    /// frame, a return address for the others.
    pub fn ip(&self) -> usize {
        self.ip
    }

    /// The path of the loaded object (executable, library, vDSO) that contains the address.
    pub fn module(&self) -> Option<&str> {
        self.module.as_deref()
    }

    /// The address relative to the module's load bias, for offline symbolization
    /// (`addr2line -e <module> <offset>`).
    pub fn module_offset(&self) -> Option<usize> {
        self.module_offset
    }

    /// The functions at this address, innermost first: more than one when code was inlined,
    /// none when nothing was found.
    pub fn symbols(&self) -> &[FrameSymbol] {
        &self.symbols
    }
}

/// A function a [`Frame`] resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FrameSymbol {
    pub(super) name: Option<String>,
    pub(super) file: Option<String>,
    pub(super) line: Option<u32>,
}

impl FrameSymbol {
    /// The demangled function name, without the hash suffix.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The source file, shortened where its prefix is known (see the `symbolize` docs).
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// The source line.
    pub fn line(&self) -> Option<u32> {
        self.line
    }
}
