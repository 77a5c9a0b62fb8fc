//! One dump, on the dumping thread: list the threads, decide for each whether it may be
//! signalled (blocked signal, pending request, too little stack room), send the requests, copy
//! and unwind the dumping thread's own stack, collect and unwind the answers, say in a note why
//! any thread has no stack, and symbolize. The signal side is `handler`'s.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::dump::Outcome;
use super::handler::{self, Answer, SendError, StackImage};
use super::symbolize::{self, RawFrame, Symbolizer};
use super::unwind::{End, Unwinder, Unwound};
use super::waits;
use super::{
    CaptureMethod, DUMPED, DumpOptions, HARD_CAP, InCapture, StackDump, ThreadStack,
    forked_mid_dump,
};
use crate::procfs::{self, SyscallState, ThreadState};
use crate::{Error, ErrorKind, Result};

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
/// learnt for the next ([`Learned`]).
static DUMP_LOCK: Mutex<Learned> = Mutex::new(Learned {
    altstacks: BTreeMap::new(),
    stack_tops: BTreeMap::new(),
    parked: BTreeMap::new(),
});

/// Alternate signal stacks by thread id: (start, size).
type Altstacks = BTreeMap<i32, (usize, usize)>;

/// Where each thread's copy may end, by thread id (see `handler::window_len`).
type StackTops = BTreeMap<i32, StackTop>;

/// Where a thread's outermost frame ends, proven by unwinding a copy cut there
/// ([`proven_stack_top`]), for the thread that started at `started`.
#[derive(Debug, Clone, Copy)]
struct StackTop {
    started: u64,
    top: usize,
}

/// What one dump learnt for the next, kept under [`DUMP_LOCK`].
struct Learned {
    /// Each thread's alternate signal stack, as its handler found it.
    altstacks: Altstacks,
    /// Where each thread's copy may end.
    stack_tops: StackTops,
    /// The threads captured parked in a system call, whose stacks the next dumps may show again
    /// while they have not run.
    parked: ParkedStacks,
}

/// Parked threads' captures by thread id.
type ParkedStacks = BTreeMap<i32, Parked>;

/// A thread the dump signal captured while it was parked in a system call. Until it runs again
/// its registers and stack stay as they were, so a later dump shows this capture instead of
/// signalling it ([`reusable`]): no signal frame on its stack, no wake-up, no `EINTR`.
///
/// The proof is the kernel's count of the times the thread was put on a CPU
/// (`/proc/.../schedstat`), read just before the signal was sent: the signal's delivery puts
/// it on a CPU once, where it runs the handler and parks again. If, in a later dump, the count is
/// still that plus one and `/proc/.../syscall` (read before the count) shows the same system
/// call, arguments, stack pointer and program counter, the thread has not run since it parked
/// after the handler. It may have run code in that one slice (a sleep that returned `EINTR`
/// and was called again), so the stack words the unwinding read are compared with the live
/// stack too.
struct Parked {
    started: u64,
    in_kernel: SyscallState,
    /// The run count it must still have.
    runs: u64,
    frames: Vec<RawFrame>,
    truncated: bool,
    note: Option<String>,
    /// The stack words its unwinding read: `(address, value)`.
    words: Vec<(usize, u64)>,
}

/// Room left above a thread's outermost frame's stack pointer when its stack top is learnt: that
/// frame's own saved registers and return address lie there.
const TOP_MARGIN: usize = 512;
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
    let mut learned = DUMP_LOCK.try_lock_for(LOCK_WAIT).ok_or_else(|| {
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

    let mut refusal = handler::check_ours(signal)
        .err()
        .map(|why| format!("not signalled: {why}"));
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
    let checks = Preflight {
        signal,
        need: handler::stack_needed(),
        settle_until: Instant::now() + SETTLE,
        altstacks: &learned.altstacks,
        parked: &learned.parked,
        reuse: !options.fresh,
    };
    // The sends wake this thread again and again (a handler wakes it when the window has
    // room); in SCHED_OTHER each wake-up could preempt a thread inside its handler, which then
    // waited out this thread's whole slice (2 to 3 ms seen at 1,000 threads).
    let no_preemption = crate::sys::without_wakeup_preemption();
    let mut threads = plan_and_send(
        &mut tasks,
        &tids,
        me,
        refusal.as_deref(),
        &checks,
        &learned.stack_tops,
        requests.as_mut(),
    );
    drop(tasks);
    let sent_at = Instant::now();
    let deadline = (sent_at + options.timeout.min(HARD_CAP)).min(started + HARD_CAP);
    // The other threads answer meanwhile.
    let mut unwinder = Unwinder::current();
    let own_stack = trace_self(&mut unwinder, here, max_frames);
    let answers = match requests {
        Some(requests) => requests.collect(deadline, GRACE, |image| {
            let unwound = unwinder.unwind(image, max_frames);
            let top = proven_stack_top(&mut unwinder, image, &unwound, max_frames);
            (unwound, top)
        }),
        None => Vec::new(),
    };
    drop(unwinder);
    drop(no_preemption);
    let mut answers = answers.into_iter();
    let waited = deadline.saturating_duration_since(sent_at);
    // Only this dump's threads keep a stack top: the map never outgrows the process.
    let mut stack_tops = StackTops::new();
    let mut parked = ParkedStacks::new();
    for thread in &mut threads {
        match thread.plan {
            Plan::Signal => {
                let answer = answers.next().unwrap_or(Answer::Silent { started: false });
                if let Answer::Captured {
                    tid,
                    altstack,
                    unwound: (_, proven_top),
                    ..
                } = &answer
                {
                    match altstack {
                        Some(altstack) => learned.altstacks.insert(*tid, *altstack),
                        None => learned.altstacks.remove(tid),
                    };
                    if let (Some(top), Some(started)) = (*proven_top, thread.started) {
                        stack_tops.insert(*tid, StackTop { started, top });
                    }
                }
                thread.take_answer(answer, signal, waited, max_frames);
                if let Some(capture) = thread.parked_capture() {
                    parked.insert(thread.tid, capture);
                }
            }
            Plan::Unchanged => {
                if let Some(capture) = learned.parked.remove(&thread.tid) {
                    parked.insert(thread.tid, capture);
                }
                // Still where its copies may end, when it is signalled again.
                if let Some(&top) = learned.stack_tops.get(&thread.tid) {
                    stack_tops.insert(thread.tid, top);
                }
            }
            Plan::Myself => thread.take_own_stack(&own_stack),
            Plan::Skip => {}
        }
        thread.read_proc_details();
    }
    learned.stack_tops = stack_tops;
    learned.parked = parked;
    let unchanged = threads.iter().filter(|t| t.plan == Plan::Unchanged).count();
    let capture_time = started.elapsed();
    DUMPED.store(true, Ordering::Relaxed);

    let symbolizing = Instant::now();
    let mut symbolizer = Symbolizer::new();
    let in_kernel: Vec<Option<SyscallState>> = threads.iter().map(|t| t.in_kernel).collect();
    let mut threads: Vec<ThreadStack> = threads
        .into_iter()
        .map(|t| t.finish(&mut symbolizer, max_frames))
        .collect();
    let mut notes = symbolizer.take_notes();
    if unchanged > 0 {
        notes.push(format!(
            "{unchanged} of {} threads have not run since an earlier dump captured them parked in \
             the same system call: that capture is shown, and they were not signalled again \
             (\"threads --fresh\" signals them)",
            threads.len()
        ));
    }
    let symbolize_time = symbolizing.elapsed();
    // Reading the futex words is `/proc` work: it counts as capture, not as symbolizing.
    let annotating = Instant::now();
    waits::annotate(&mut threads, &in_kernel, &symbolizer);
    drop(symbolizer);
    // The dump is over: the stack copies may go back now (see `release_copies_unless_dumping`).
    drop(learned);
    super::release_unheld_caches();
    Ok(StackDump {
        pid: std::process::id(),
        signal,
        taken_at,
        capture_time: capture_time + annotating.elapsed(),
        symbolize_time,
        ignored_signals: handler::ignored_signals(),
        threads,
        notes,
    })
}

/// Gives the stack copies' pages back to the kernel, and forgets the stack tops learnt, unless
/// a dump is running (it holds [`DUMP_LOCK`] while handlers write the copies and it unwinds
/// them; zeroed under it, a copy would unwind to garbage). Skipping is safe: a dump that nothing
/// holds the caches for ends by releasing them itself.
pub(super) fn release_copies_unless_dumping() {
    if let Some(mut learned) = DUMP_LOCK.try_lock() {
        handler::release_copies();
        // Learnt with the caches, and given back with them.
        learned.stack_tops = StackTops::new();
        learned.parked = ParkedStacks::new();
    }
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

/// Where the copy of this thread's stack may end in the next dumps, if that can be proven from
/// this one: its unwinding reached the outermost frame, and unwinding the copy cut
/// [`TOP_MARGIN`] above that frame's stack pointer gives the same frames to the end. A thread's
/// outermost frame stays where it is while the thread lives, so a later, shorter copy still
/// holds all it needs (see `handler::window_len`). A copy already cut there proves itself again.
fn proven_stack_top(
    unwinder: &mut Unwinder,
    image: &StackImage<'_>,
    unwound: &Unwound,
    max_frames: usize,
) -> Option<usize> {
    if unwound.end != End::Complete {
        return None;
    }
    let sp = image.registers.sp;
    let outermost = *unwound.stack_pointers.last()?;
    let span = outermost.checked_sub(sp)?.checked_add(TOP_MARGIN)?;
    if span >= image.bytes.len() {
        return Some(sp + image.bytes.len());
    }
    let cut = StackImage {
        registers: image.registers,
        bytes: image.bytes.get(..span)?,
        window_full: false,
    };
    let again = unwinder.unwind(&cut, max_frames);
    (again.end == End::Complete && again.frames == unwound.frames).then_some(sp + span)
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

/// How one thread is to be captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Send it the dump signal.
    Signal,
    /// It is the dumping thread: trace it directly.
    Myself,
    /// Do not signal it; `/proc` details only.
    Skip,
    /// It has not run since an earlier dump captured it parked: show that capture ([`Parked`]).
    Unchanged,
}

/// A thread during the capture, before symbolization.
struct Pending {
    tid: i32,
    /// When it started (`stat`), to tell it from a later thread with its tid.
    started: Option<u64>,
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
    /// `/proc/.../syscall` read just before the thread was signalled (for its stack pointer).
    in_kernel: Option<SyscallState>,
    handler_time: Option<Duration>,
    stack_copy: Option<(usize, usize)>,
    /// Its run count (`schedstat`), read just before it was signalled, when it was parked in a
    /// system call.
    runs: Option<u64>,
    /// The stack words its unwinding read, when it answered itself.
    words: Option<Vec<(usize, u64)>>,
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
    /// Parked threads' captures from earlier dumps.
    parked: &'a ParkedStacks,
    /// Whether those may be shown again (false: signal every thread).
    reuse: bool,
}

/// From this many threads on, a second thread reads `/proc` ahead ([`plan_and_send`]).
const SECOND_PLANNER_FROM: usize = 256;
/// How many threads the second planner may have read ahead of the dumping thread's sends: what
/// a check acts on is at most this many sends old.
const MOST_PLANNED_AHEAD: usize = 16;
/// Read-ahead slots, used in turn (more than [`MOST_PLANNED_AHEAD`], so the planner never
/// writes a slot the dumping thread has yet to read).
const READ_AHEAD_SLOTS: usize = 32;
/// How long the dumping thread waits for the read-ahead of the thread it is to send to next
/// before it reads `/proc` itself (two reads take 20 µs; the planner, in `SCHED_IDLE`, may be
/// kept off the CPU by a busy application).
const PLANNER_PATIENCE: Duration = Duration::from_micros(500);
/// The longest the second planner sleeps, ahead, before it looks again (it is woken sooner).
const PLANNER_NAP: Duration = Duration::from_millis(1);

/// One thread's `stat` and, when it was not running, `syscall`, read ahead by the second
/// planner into fixed buffers (it allocates nothing: see [`plan_and_send`]).
struct ReadAhead {
    /// The index in `tids` these bytes are for (`usize::MAX`: none yet).
    for_index: usize,
    stat: [u8; 1024],
    /// 0: not read (the dumping thread reads it itself).
    stat_len: usize,
    syscall: [u8; 256],
    /// 0: not read.
    syscall_len: usize,
    schedstat: [u8; SCHEDSTAT_BYTES],
    /// 0: not read.
    schedstat_len: usize,
}

/// Room for a `schedstat` line: three decimal numbers.
const SCHEDSTAT_BYTES: usize = 96;

impl ReadAhead {
    fn new() -> ReadAhead {
        ReadAhead {
            for_index: usize::MAX,
            stat: [0; 1024],
            stat_len: 0,
            syscall: [0; 256],
            syscall_len: 0,
            schedstat: [0; SCHEDSTAT_BYTES],
            schedstat_len: 0,
        }
    }

    /// Reads the files of `tid`, the thread at `index`: `stat`, and for a sleeping thread
    /// `syscall`, and for a thread in a system call `schedstat` (see [`Parked`]).
    fn read(&mut self, tasks: &procfs::TaskDir, tid: i32, index: usize) {
        self.stat_len = tasks.read_into(tid, "stat", &mut self.stat).unwrap_or(0);
        let stat = &self.stat[..self.stat_len];
        self.syscall_len = match procfs::stat_state_letter(stat) {
            Some(letter) if letter != b'R' => tasks
                .read_into(tid, "syscall", &mut self.syscall)
                .unwrap_or(0),
            _ => 0,
        };
        // A system call's line starts with its number; "running" and "-1" (not in one) do not.
        let in_syscall = self.syscall_len > 0 && self.syscall[0].is_ascii_digit();
        self.schedstat_len = match in_syscall {
            true => tasks
                .read_into(tid, "schedstat", &mut self.schedstat)
                .unwrap_or(0),
            false => 0,
        };
        self.for_index = index;
    }

    fn stat(&self) -> Option<&[u8]> {
        (self.stat_len > 0).then(|| &self.stat[..self.stat_len])
    }

    fn syscall(&self) -> Option<&[u8]> {
        (self.syscall_len > 0).then(|| &self.syscall[..self.syscall_len])
    }

    fn schedstat(&self) -> Option<&[u8]> {
        (self.schedstat_len > 0).then(|| &self.schedstat[..self.schedstat_len])
    }
}

/// Checks every thread ([`plan`]) and sends the dump signal to each one that may take it, in
/// `tids` order, right after its own checks.
///
/// The checks read two `/proc` files a thread (`stat`, and `syscall` for a sleeping one: 20 µs
/// together on a slow VM, two thirds of a 1,000-thread capture when one thread read them all
/// and sent too). From [`SECOND_PLANNER_FROM`] threads on, a second thread, `mh-dump-plan`,
/// started for the length of this call, reads them ahead into [`READ_AHEAD_SLOTS`] fixed
/// buffers, never more than [`MOST_PLANNED_AHEAD`] threads ahead; the dumping thread checks each
/// thread from what was read for it and sends its request. When it catches up with the planner
/// it reads the next thread's files itself. The planner allocates nothing: a thread that
/// allocates gets a glibc arena of its own, and the arenas of short-lived threads kept a few
/// hundred KiB more after every dump of 5,000 threads. If it cannot be started (no memory, a
/// thread limit), the dumping thread does all the reading.
fn plan_and_send(
    tasks: &mut procfs::TaskDir,
    tids: &[i32],
    me: i32,
    refusal: Option<&str>,
    checks: &Preflight<'_>,
    stack_tops: &StackTops,
    mut requests: Option<&mut handler::Requests>,
) -> Vec<Pending> {
    let mut threads = Vec::with_capacity(tids.len());
    let second = (tids.len() >= SECOND_PLANNER_FROM && checks.signal < 32)
        .then(procfs::TaskDir::open)
        .and_then(Result::ok);
    let slots: Vec<Mutex<ReadAhead>> = match second {
        Some(_) => (0..READ_AHEAD_SLOTS)
            .map(|_| Mutex::new(ReadAhead::new()))
            .collect(),
        None => Vec::new(),
    };
    let next_unread = AtomicUsize::new(0);
    let acted_on = AtomicUsize::new(0);
    let planner_waits = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let second_planner = second.as_ref().and_then(|planner_tasks| {
            crate::sys::threads::spawn_scoped(scope, "mh-dump-plan".into(), || {
                // Never in the way of the application, nor of the threads answering: it only
                // takes CPU time nobody else wants (the dumping thread reads for itself what it
                // is too slow to read).
                crate::sys::run_only_when_idle();
                loop {
                    let claimed = next_unread.load(Ordering::SeqCst);
                    if claimed >= tids.len() {
                        return;
                    }
                    let too_far_ahead = || {
                        claimed.saturating_sub(acted_on.load(Ordering::SeqCst))
                            >= MOST_PLANNED_AHEAD
                    };
                    if too_far_ahead() {
                        // Asleep, not yielding: the dumping thread is waiting for handlers to
                        // answer, and they need this CPU. It wakes us when it has caught up
                        // (the second look, after the flag is up, cannot miss that wake-up).
                        planner_waits.store(true, Ordering::SeqCst);
                        if too_far_ahead() {
                            std::thread::park_timeout(PLANNER_NAP);
                        }
                        planner_waits.store(false, Ordering::SeqCst);
                        continue;
                    }
                    if next_unread
                        .compare_exchange(claimed, claimed + 1, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                        && let (Some(&tid), Some(slot)) =
                            (tids.get(claimed), slots.get(claimed % READ_AHEAD_SLOTS))
                    {
                        slot.lock().read(planner_tasks, tid, claimed);
                    }
                }
            })
            .ok()
        });
        for (index, &tid) in tids.iter().enumerate() {
            let mut waiting_since = None;
            let thread = loop {
                // Read ahead for it? (A slot still locked holds an older thread's files.)
                if let Some(slot) = slots
                    .get(index % READ_AHEAD_SLOTS)
                    .and_then(|slot| slot.try_lock())
                    && slot.for_index == index
                {
                    break plan(tasks, tid, me, refusal, checks, Some(&slot));
                }
                // Not claimed by the planner: read it here.
                if next_unread
                    .compare_exchange(index, index + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    break plan(tasks, tid, me, refusal, checks, None);
                }
                // The planner is reading it: read ahead for a later thread meanwhile.
                let next = next_unread.load(Ordering::SeqCst);
                if next < tids.len()
                    && let Some(mut slot) = slots
                        .get(next % READ_AHEAD_SLOTS)
                        .and_then(|slot| slot.try_lock())
                    && next_unread
                        .compare_exchange(next, next + 1, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    slot.read(tasks, tids[next], next);
                    continue;
                }
                // Nothing left to read ahead: wait a little for the planner, unless it is gone
                // or kept off the CPU; then read it here too.
                let waited = waiting_since.get_or_insert_with(Instant::now).elapsed();
                match &second_planner {
                    Some(planner) if !planner.is_finished() && waited < PLANNER_PATIENCE => {
                        std::thread::yield_now()
                    }
                    _ => break plan(tasks, tid, me, refusal, checks, None),
                }
            };
            if thread.plan == Plan::Signal
                && let Some(requests) = requests.as_deref_mut()
            {
                let top = stack_tops
                    .get(&thread.tid)
                    .filter(|top| thread.started == Some(top.started))
                    .map_or(0, |top| top.top);
                requests.send(thread.tid, top);
            }
            threads.push(thread);
            acted_on.store(index + 1, Ordering::SeqCst);
            if planner_waits.load(Ordering::SeqCst)
                && let Some(planner) = &second_planner
            {
                planner.thread().unpark();
            }
        }
        // Joined here, not by the scope, so that a panic in it is not passed on.
        if let Some(planner) = second_planner {
            let _ = planner.join();
        }
    });
    threads
}

/// Checks one thread and decides how to capture it; `ahead` holds its `/proc` files if they
/// were read ahead ([`plan_and_send`]).
fn plan(
    tasks: &mut procfs::TaskDir,
    tid: i32,
    me: i32,
    refusal: Option<&str>,
    checks: &Preflight<'_>,
    ahead: Option<&ReadAhead>,
) -> Pending {
    let signal = checks.signal;
    let mut thread = Pending {
        tid,
        started: None,
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
        in_kernel: None,
        handler_time: None,
        stack_copy: None,
        runs: None,
        words: None,
    };
    let status = match ahead.and_then(ReadAhead::stat) {
        Some(stat) if signal < 32 => procfs::stat_status_from(stat),
        _ => read_status(tasks, tid, signal),
    };
    let mut status = match status {
        Ok(status) => status,
        Err(_) => {
            thread.outcome = Outcome::Exited;
            thread.note = Some("exited before it could be signalled".into());
            return thread;
        }
    };
    // The manhole's own threads keep the signal blocked, by design.
    let manhole_blocks =
        status.blocks(signal) && crate::threads::is_manhole_thread(tid, &status.name);
    if tid != me
        && status.blocks(signal)
        && !manhole_blocks
        && !status.state.is_gone()
        && refusal.is_none()
    {
        blocks_for_real(tasks, tid, &mut status, checks);
    }
    thread.name = status.name.clone();
    thread.started = status.started;
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
    } else if manhole_blocks {
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
    } else if let Some(short) = stack_too_short(
        tasks,
        tid,
        status.state,
        checks,
        ahead,
        &mut thread.in_kernel,
    ) {
        thread.note = Some(short);
    } else {
        thread.plan = Plan::Signal;
        // Read for a fresh dump too: its captures may be shown again by the next.
        if let Some(SyscallState::InSyscall { .. }) = thread.in_kernel {
            thread.runs = match ahead.and_then(ReadAhead::schedstat) {
                Some(bytes) => procfs::schedstat_runs(bytes),
                None => {
                    let mut bytes = [0u8; SCHEDSTAT_BYTES];
                    let read = tasks.read_into(tid, "schedstat", &mut bytes).unwrap_or(0);
                    procfs::schedstat_runs(&bytes[..read])
                }
            };
            if let Some(capture) = checks
                .reuse
                .then(|| reusable(checks.parked, &thread))
                .flatten()
            {
                thread.show_again(capture);
            }
        }
    }
    thread
}

/// The capture of `thread` that an earlier dump took, if it may be shown again: the thread has
/// not run since (see [`Parked`] for the proof).
fn reusable<'a>(parked: &'a ParkedStacks, thread: &Pending) -> Option<&'a Parked> {
    let capture = parked.get(&thread.tid)?;
    let same = Some(capture.started) == thread.started
        && Some(capture.in_kernel) == thread.in_kernel
        && Some(capture.runs) == thread.runs;
    (same && words_unchanged(&capture.words)).then_some(capture)
}

/// Whether every `(address, value)` still holds that value. The words lie in one stack copy
/// (at most `handler::WINDOW` bytes), read again here in pieces into a buffer on the stack, by
/// calls that cannot fault. Nothing is allocated: a dump runs on a session thread, and what it
/// allocates stays in that thread's malloc arena.
fn words_unchanged(words: &[(usize, u64)]) -> bool {
    const PIECE: usize = 4096;
    let (Some(low), Some(high)) = (
        words.iter().map(|&(at, _)| at).min(),
        words.iter().map(|&(at, _)| at).max(),
    ) else {
        return true;
    };
    let end = high + 8;
    if end - low > handler::WINDOW {
        return false;
    }
    // Pieces overlap by a word, so every word lies whole in one of them.
    let mut buffer = [0u8; PIECE];
    let mut start = low;
    loop {
        let len = PIECE.min(end - start);
        if crate::sys::memory::read_own_into(start, &mut buffer[..len]) < len {
            return false;
        }
        let piece = &buffer[..len];
        let changed = words.iter().any(|&(at, value)| {
            at >= start
                && at + 8 <= start + len
                && piece[at - start..at - start + 8] != value.to_le_bytes()
        });
        if changed {
            return false;
        }
        if start + len >= end {
            return true;
        }
        start += PIECE - 8;
    }
}

/// The thread's name, state and masks, from the cheaper `stat` when `signal` is below 32 (the
/// only kind `install` accepts) and from `status` otherwise.
fn read_status(
    tasks: &mut procfs::TaskDir,
    tid: i32,
    signal: libc::c_int,
) -> std::io::Result<procfs::ThreadStatus> {
    if signal < 32 {
        tasks.status_low_signals(tid)
    } else {
        tasks.status(tid)
    }
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
        match read_status(tasks, tid, checks.signal) {
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
/// What it read from `/proc` is left in `seen`.
fn stack_too_short(
    tasks: &mut procfs::TaskDir,
    tid: i32,
    state: ThreadState,
    checks: &Preflight<'_>,
    ahead: Option<&ReadAhead>,
    seen: &mut Option<SyscallState>,
) -> Option<String> {
    if state.letter() == 'R' {
        return None;
    }
    *seen = match ahead.and_then(ReadAhead::syscall) {
        Some(syscall) => procfs::syscall_from(syscall),
        None => tasks.syscall(tid),
    }
    .ok();
    let sp = usize::try_from(seen.as_ref()?.sp()?).ok()?;
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
        answer: Answer<(Unwound, Option<usize>)>,
        signal: libc::c_int,
        waited: Duration,
        max_frames: usize,
    ) {
        match answer {
            Answer::Captured {
                tid,
                unwound: (unwound, _),
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
                if tid == self.tid {
                    self.words = Some(unwound.words);
                }
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
            Answer::NotSent(SendError::Stopped(why)) => {
                self.note = Some(format!(
                    "not signalled: the dump stopped sending when it found that {why}"
                ));
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

    /// Shows an earlier dump's capture of this thread, which has not run since.
    fn show_again(&mut self, capture: &Parked) {
        self.plan = Plan::Unchanged;
        self.method = CaptureMethod::Signal;
        self.outcome = Outcome::Captured;
        self.raw = capture.frames.clone();
        self.truncated = capture.truncated;
        self.note = capture.note.clone();
    }

    /// What a later dump needs to show this capture again, if this thread answered the signal
    /// while parked in a system call with its run count read just before.
    fn parked_capture(&mut self) -> Option<Parked> {
        let in_kernel = self
            .in_kernel
            .filter(|s| matches!(s, SyscallState::InSyscall { .. }))?;
        if self.outcome != Outcome::Captured {
            return None;
        }
        Some(Parked {
            started: self.started?,
            in_kernel,
            // The one time the signal's delivery put it on a CPU.
            runs: self.runs?.checked_add(1)?,
            frames: self.raw.clone(),
            truncated: self.truncated,
            note: self.note.clone(),
            words: self.words.take()?,
        })
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
            unchanged: self.plan == Plan::Unchanged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::words_unchanged;

    #[test]
    fn words_are_compared_across_pieces_and_a_changed_one_is_seen() {
        let mut memory = vec![0u8; 10_000];
        for (i, byte) in memory.iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        let base = memory.as_ptr() as usize;
        let word = |memory: &[u8], offset: usize| {
            u64::from_le_bytes(memory[offset..offset + 8].try_into().unwrap())
        };
        // One at the start, one across the first piece's end, one far beyond.
        let offsets = [0, 4092, 9_000];
        let words: Vec<(usize, u64)> = offsets
            .iter()
            .map(|&offset| (base + offset, word(&memory, offset)))
            .collect();
        assert!(words_unchanged(&words));
        assert!(words_unchanged(&[]));
        for &offset in &offsets {
            memory[offset + 5] ^= 0xff;
            assert!(!words_unchanged(&words), "a change at {offset} is seen");
            memory[offset + 5] ^= 0xff;
        }
        assert!(words_unchanged(&words));
        // Too far apart to be one stack copy.
        assert!(!words_unchanged(&[(base, 0), (base + (1 << 20), 0)]));
    }
}
