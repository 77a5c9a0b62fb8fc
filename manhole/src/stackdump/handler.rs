//! The signal side of the stack dump: installing the handler, asking each thread for a copy of
//! its registers and stack, and the handler itself. With `sys/`, the only `unsafe` code of the
//! dump. Unwinding the copies is `unwind`'s job, on the dumping thread.
//!
//! # How a thread is asked
//!
//! The dumper (a normal thread) prepares one *slot* per thread in a pool of preallocated memory,
//! bumps the dump *generation*, and sends each thread the dump signal with
//! `rt_tgsigqueueinfo(getpid(), tid, signal, info)`, where `info` has `si_code = SI_QUEUE`, our pid
//! and uid, and the value `(generation << 20) | slot_index`. It sends each thread its signal as
//! soon as it has read that thread's status, so the first handlers run while the later statuses
//! are read, and waits only after the last send. At most four requests per CPU are in flight at
//! once (the next is sent as answers come in), so a thousand woken threads do not preempt each
//! other inside their handlers. Every wait sleeps on a futex word that every handler bumps when
//! it is done; it never polls.
//!
//! # What the handler does: copies, nothing else
//!
//! [`on_dump_signal`] runs on an arbitrary thread at an arbitrary instruction. It does not
//! unwind. It copies
//!
//! * the interrupted registers an unwinder starts from (program counter, stack pointer, frame
//!   pointer, and the link register on aarch64) out of the kernel's `ucontext_t`, and
//! * a window of at most [`WINDOW`] bytes of the stack, from the interrupted stack pointer
//!   upwards, with `process_vm_readv` on our own pid (`sys::memory`): the kernel checks every
//!   page, so the copy ends early at an unmapped or guard page instead of faulting,
//!
//! into the slot's preallocated buffer. Then it stores `DONE` and wakes the dumper. Nothing else
//! runs in it: no unwinder (libgcc's or any other), no `dl_iterate_phdr`, no allocation, no lock,
//! no `std::io`, no formatting, no lazily initialised `thread_local!`, no panic (every index is a
//! `get`), only raw syscalls (`sigaltstack`, `gettid`, `process_vm_readv`, and `futex` when the
//! dumper sleeps) and
//! `clock_gettime` (vDSO) to time itself; `errno` is saved and restored ([`ErrnoGuard`]). Its
//! safety therefore depends on no glibc or libgcc version. The dumping thread then unwinds the
//! copy with `framehop` over unwind tables parsed outside any handler.
//!
//! It writes only into a slot that it first claimed with a compare-exchange from *sent in this
//! generation* to *running*, so a late or foreign signal can never write anywhere: anything that
//! is not `SI_QUEUE` from our own pid with the current generation is counted and ignored.
//!
//! Pools are grow-only and never freed (an outgrown pool is leaked; its stack buffers are given
//! back to the kernel with `MADV_DONTNEED` when the dump caches go, at the end of a dump made
//! outside a session or after the last session, and a late write survives that), so a
//! handler that runs late, after the dumper gave up on it, still writes into live memory. The
//! dumper gives up on a slot by moving it from *sent* to *abandoned*; a handler already
//! *running* gets a short grace period.
//!
//! The handler runs on the thread's own stack (no `SA_ONSTACK`), with `SA_RESTART`, and blocks
//! nothing but the dump signal itself while it runs (`sa_mask` is empty: a fault in it, were
//! there one, would get the application's fault handler, never a blocked synchronous signal).
//!
//! # Stack room
//!
//! Its first act, before any deeper call, is `sigaltstack(NULL, &current)`: when the thread runs
//! on its alternate signal stack (inside an `SA_ONSTACK` handler of the application) with less
//! than [`HANDLER_STACK`] left below the handler, it takes the registers only and returns. Each
//! answer records the thread's alternate stack, so the dumper knows it next time and does not
//! signal a thread whose alternate stack is too full (see [`stack_needed`]). The handler counts
//! itself in and out of a counter ([`handlers_inside`]), so the dumper can tell a thread that
//! blocks the signal from one still inside a handler of ours.
//!
//! # A second kind of request: profiler samples
//!
//! The copy is not tied to dumps. [`copy_interrupted`] takes the handler's `ucontext_t` and a
//! [`StackBuffer`] and fills in a [`CopiedRegisters`] and the window; a profiler's handler (for a
//! per-thread CPU-time timer delivering `SI_TIMER` with a value it chose) claims one of its own
//! preallocated sample slots the same way (compare-exchange on a state word), calls
//! [`copy_interrupted`], and publishes the slot with a release store. Its thread then hands the
//! registers and bytes, as a [`StackImage`], to `unwind::Unwinder` exactly as the dumper does.

use crate::sys::{monotonic_nanos, raw_gettid};
use std::ffi::{c_int, c_void};
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::sys::memory;
use crate::{Error, ErrorKind, Result};

/// The most bytes of a thread's stack one request copies, from its stack pointer upwards. A
/// deeper stack is unwound as far as the copy reaches and shown truncated, with a note.
pub(crate) const WINDOW: usize = 64 * 1024;

/// The registers an unwinder starts from, as the interrupted code had them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CopiedRegisters {
    /// The program counter: the exact instruction that was interrupted.
    pub(crate) pc: usize,
    /// The stack pointer.
    pub(crate) sp: usize,
    /// The frame pointer (`rbp`, `x29`).
    pub(crate) fp: usize,
    /// The link register (`x30` on aarch64; 0 elsewhere).
    pub(crate) lr: usize,
}

/// A thread's registers and the copy of its stack from `registers.sp` upwards: what the unwinder
/// works on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StackImage<'a> {
    pub(crate) registers: CopiedRegisters,
    /// The copied bytes; `bytes[0]` is the byte at `registers.sp`.
    pub(crate) bytes: &'a [u8],
    /// Whether the copy stopped at [`WINDOW`] rather than at unreadable memory (the stack may go
    /// on beyond it).
    pub(crate) window_full: bool,
}

/// Preallocated, writable memory that a handler copies a stack window into.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StackBuffer {
    start: *mut u8,
    len: usize,
}

// SAFETY: a `StackBuffer` is an address range in a leaked mapping; who writes it and when is
// governed by the slot state word that owns it (claim, then publish with release, read after
// acquire), never by the pointer itself.
unsafe impl Send for StackBuffer {}
// SAFETY: as above.
unsafe impl Sync for StackBuffer {}

/// Anonymous memory for `count` buffers of [`WINDOW`] bytes each, reserved lazily (pages exist
/// only once written) and never unmapped.
fn map_buffers(count: usize) -> io::Result<Vec<StackBuffer>> {
    let len = count
        .checked_mul(WINDOW)
        .ok_or_else(|| io::Error::other("too many stack buffers"))?;
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let start = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if start == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok((0..count)
        .map(|i| StackBuffer {
            // SAFETY: `i * WINDOW < len`, inside the mapping just made.
            start: unsafe { start.cast::<u8>().add(i * WINDOW) },
            len: WINDOW,
        })
        .collect())
}

/// Gives the pages of `buffers` (one contiguous mapping, as made by [`map_buffers`]) back to the
/// kernel. A handler that still writes into one later gets fresh zero pages; nothing breaks.
fn release_buffers(buffers: &[StackBuffer]) {
    if let (Some(first), Some(last)) = (buffers.first(), buffers.last()) {
        let len = (last.start as usize + last.len).saturating_sub(first.start as usize);
        // SAFETY: the range is exactly our own mapping; MADV_DONTNEED on private anonymous
        // memory only drops its pages (they read back as zeros).
        unsafe { libc::madvise(first.start.cast(), len, libc::MADV_DONTNEED) };
    }
}

/// Copies the interrupted registers out of a signal handler's `context` and the stack window
/// above the interrupted stack pointer into `buffer`; returns the registers and how many bytes
/// were copied. The window ends at `stack_top` when that is known (not 0) and lies less than
/// the buffer above the stack pointer (see [`window_len`]). Async-signal-safe: two loads from
/// the context and one `process_vm_readv`.
///
/// # Safety
///
/// `context` must be the third argument of an `SA_SIGINFO` handler (or null), and the caller
/// must have exclusive use of `buffer` (a slot it claimed, which also means that `OUR_PID`
/// is this process's pid: the request came from our own dumper).
pub(crate) unsafe fn copy_interrupted(
    context: *const c_void,
    buffer: StackBuffer,
    stack_top: usize,
) -> (CopiedRegisters, usize) {
    let registers = context_registers(context);
    if registers.sp == 0 {
        return (registers, 0);
    }
    let pid = OUR_PID.load(Ordering::Acquire);
    let len = window_len(registers.sp, stack_top, buffer.len);
    // SAFETY: the caller owns `buffer`, which is `buffer.len` writable bytes of our mapping, and
    // `len <= buffer.len`; `pid` is ours (set by this process's dumper before it sent the
    // request being answered).
    let copied = unsafe { memory::copy_own_as(pid, registers.sp, buffer.start, len) };
    (registers, copied)
}

/// How much of the stack above `sp` a handler copies: up to `stack_top` (where an earlier
/// dump found the thread's outermost frame to end, proven there; 0 when not known) when that
/// lies above `sp` and less than `window` away, else the whole `window`. A thread's outermost
/// frame (`start_thread`, `_start`) stays where it is for the thread's life, so for a thread on
/// its own stack nothing it needs lies above it; on any other stack (an alternate signal stack,
/// a coroutine's) `sp` is not within `window` below it, and the whole window is copied. The main
/// thread gains most: above its outermost frame lie its arguments and environment, 64 KiB of
/// copy in every dump otherwise. Pure arithmetic, async-signal-safe.
#[inline(always)]
pub(super) fn window_len(sp: usize, stack_top: usize, window: usize) -> usize {
    match stack_top.checked_sub(sp) {
        Some(span) if span > 0 && span < window => span,
        _ => window,
    }
}

/// The calling thread's own registers and stack, for the dumping thread (which cannot signal
/// itself: it may block the signal). Copies from its own stack pointer upwards into `buffer`;
/// the image starts inside this function, so the caller trims the frames it does not want.
#[inline(never)]
pub(crate) fn copy_own_stack(buffer: &mut [u8]) -> (CopiedRegisters, usize) {
    let registers = own_registers();
    // SAFETY: `buffer` is an exclusively borrowed, writable slice of `buffer.len()` bytes.
    let copied = unsafe { memory::copy_own(registers.sp, buffer.as_mut_ptr(), buffer.len()) };
    (registers, copied)
}

/// This thread's registers at this point of this function.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn own_registers() -> CopiedRegisters {
    let (pc, sp, fp): (usize, usize, usize);
    // SAFETY: reads rip (via lea), rsp and rbp into general registers; touches no memory and
    // no flags.
    unsafe {
        std::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {fp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            options(nomem, nostack, preserves_flags)
        );
    }
    CopiedRegisters { pc, sp, fp, lr: 0 }
}

/// This thread's registers at this point of this function.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn own_registers() -> CopiedRegisters {
    let (pc, sp, fp, lr): (usize, usize, usize, usize);
    // SAFETY: reads pc (via adr), sp, x29 and x30 into general registers; touches no memory.
    unsafe {
        std::arch::asm!(
            "adr {pc}, .",
            "mov {sp}, sp",
            "mov {fp}, x29",
            "mov {lr}, x30",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            lr = out(reg) lr,
            options(nomem, nostack, preserves_flags)
        );
    }
    CopiedRegisters { pc, sp, fp, lr }
}

/// Other architectures: no registers, so no stack.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn own_registers() -> CopiedRegisters {
    CopiedRegisters::default()
}

/// Bits of the signal value that carry the slot index; the rest carry the generation.
const INDEX_BITS: u32 = 20;
/// The most slots a pool can have (one per thread).
const MAX_SLOTS: usize = 1 << INDEX_BITS;
/// Generations are kept below this so that they fit both the signal value and a slot's state
/// word next to the state bits.
const GENERATION_LIMIT: usize = 1 << (usize::BITS - INDEX_BITS);

/// Slot states, in the low bits of the state word; the generation is in the high bits.
const STATE_BITS: u32 = 3;
const STATE_MASK: usize = (1 << STATE_BITS) - 1;
const IDLE: usize = 0;
const SENT: usize = 1;
const RUNNING: usize = 2;
const DONE: usize = 3;
const ABANDONED: usize = 4;

const fn state_word(generation: usize, state: usize) -> usize {
    (generation << STATE_BITS) | state
}

/// One thread's answer: written by the handler, read by the dumper after it sees `DONE`.
struct Slot {
    /// `state_word(generation, state)`; the handler claims it `SENT -> RUNNING`.
    state: AtomicUsize,
    /// The tid the handler ran on.
    tid: AtomicI32,
    /// The interrupted registers: pc, sp, fp, lr.
    registers: [AtomicUsize; 4],
    /// Bytes of the stack window copied into `stack`.
    copied: AtomicUsize,
    /// Nanoseconds from handler entry to just before the final `DONE` store (and futex wake).
    nanos: AtomicU64,
    /// Bytes from the interrupted stack pointer down to a local of the handler: the kernel's
    /// signal frame plus the handler's own frame.
    stack_below: AtomicUsize,
    /// The thread's alternate signal stack as the handler found it: start and size (0, 0: none).
    altstack: [AtomicUsize; 2],
    /// Bytes left on the alternate stack below the handler when it ran on one with less than
    /// [`HANDLER_STACK`] left, so it copied nothing (0: it copied normally).
    altstack_short: AtomicUsize,
    /// Where the window copied may end (see [`window_len`]); 0: not known. Set by the dumper
    /// before it sends the request.
    stack_top: AtomicUsize,
    /// Where the stack window goes.
    stack: StackBuffer,
}

impl Slot {
    fn new(stack: StackBuffer) -> Slot {
        Slot {
            state: AtomicUsize::new(IDLE),
            tid: AtomicI32::new(0),
            registers: Default::default(),
            copied: AtomicUsize::new(0),
            nanos: AtomicU64::new(0),
            stack_below: AtomicUsize::new(0),
            altstack: Default::default(),
            altstack_short: AtomicUsize::new(0),
            stack_top: AtomicUsize::new(0),
            stack,
        }
    }
}

/// A set of slots. Leaked on creation: it lives as long as the process.
struct Pool {
    slots: Box<[Slot]>,
    /// The slots' stack buffers, in order (one mapping).
    buffers: Vec<StackBuffer>,
}

/// The pool the handler writes into.
static POOL: AtomicPtr<Pool> = AtomicPtr::new(ptr::null_mut());
/// The generation of the dump in progress (0: none yet).
static GENERATION: AtomicUsize = AtomicUsize::new(0);
/// Futex word: bumped by every handler that finished a slot.
static WAKE: AtomicU32 = AtomicU32::new(0);
/// Dumpers asleep on [`WAKE`] (or about to be): a handler makes the `futex` wake call only then,
/// one system call fewer in the application's thread while the dumper is busy reading `/proc`.
static WAKE_WAITERS: AtomicU32 = AtomicU32::new(0);
/// Our pid, as the dumper last saw it (`start`, each dump; a forked child's first dump sets
/// its own): what a request's sender must be. Saves the handler a `getpid` call.
static OUR_PID: AtomicI32 = AtomicI32::new(0);
/// Dump signals that were not ours or came too late.
static IGNORED: AtomicUsize = AtomicUsize::new(0);
/// Handlers between their first and their last instruction, of every kind (dump requests,
/// profile ticks, foreign signals). While one runs, the kernel blocks the dump signal in its
/// thread, so `SigBlk` says "blocked" although the thread's own mask does not block it.
static INSIDE: AtomicUsize = AtomicUsize::new(0);
/// Requests in flight (sent, not yet answered) per CPU.
const WINDOW_PER_CPU: usize = 4;
/// How long the dumper waits for room in the window of requests in flight before it widens it.
const WINDOW_STALL: Duration = Duration::from_millis(2);
/// Serializes `install` so two callers cannot both see `SIG_DFL` and race.
static INSTALL_LOCK: Mutex<()> = Mutex::new(());

/// The leading fields of the kernel's `siginfo_t` for a queued signal (`_sifields._rt`). The union
/// holds pointers, so it starts at pointer alignment: offset 16 on 64-bit targets, 12 on 32-bit.
#[repr(C)]
struct QueuedInfo {
    signo: c_int,
    errno: c_int,
    code: c_int,
    rt: QueuedFields,
}

#[repr(C)]
struct QueuedFields {
    pid: libc::pid_t,
    uid: libc::uid_t,
    /// `sigval`: we use the whole pointer-sized value.
    value: usize,
}

const _: () = assert!(std::mem::size_of::<QueuedInfo>() <= std::mem::size_of::<libc::siginfo_t>());
const _: () =
    assert!(std::mem::align_of::<QueuedInfo>() <= std::mem::align_of::<libc::siginfo_t>());

/// Saves `errno` on creation and puts it back on drop, so the interrupted code never sees ours.
struct ErrnoGuard(c_int);

impl ErrnoGuard {
    fn save() -> ErrnoGuard {
        // SAFETY: `__errno_location` returns the calling thread's errno slot, valid for the
        // thread's lifetime; reading an int from it is async-signal-safe.
        ErrnoGuard(unsafe { *libc::__errno_location() })
    }
}

impl Drop for ErrnoGuard {
    fn drop(&mut self) {
        // SAFETY: as in `save`; writing the saved value back is what signal handlers must do.
        unsafe { *libc::__errno_location() = self.0 };
    }
}

/// A handler for the profiler's ticks on the dump signal: returns true if the signal was one
/// (and was handled); it must follow the same rules as the dump handler.
pub(super) type TickHandler = fn(*const libc::siginfo_t, *const c_void) -> bool;

/// The [`TickHandler`] called first by the dump handler (null: none). Set by the profiler, a
/// layer above, so the dump layer does not depend on it.
static TICK_HANDLER: AtomicPtr<()> = AtomicPtr::new(ptr::null_mut());

/// Registers the profiler's tick handler (idempotent).
pub(super) fn set_tick_handler(handler: TickHandler) {
    TICK_HANDLER.store(handler as *mut (), Ordering::Release);
}

/// The dump signal handler. See the module docs for what it may do.
extern "C" fn on_dump_signal(_signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    INSIDE.fetch_add(1, Ordering::AcqRel);
    handle(info, context);
    // The last store of the handler: after it only its return and the kernel's sigreturn run,
    // which restores the thread's own mask (see `handlers_inside`).
    INSIDE.fetch_sub(1, Ordering::AcqRel);
}

/// What [`on_dump_signal`] does between counting itself in and out of [`INSIDE`].
#[inline(always)]
fn handle(info: *mut libc::siginfo_t, context: *mut c_void) {
    let _errno = ErrnoGuard::save();
    // First of all, before any deeper call: on an alternate signal stack with too little room
    // left, copy the registers only (no call but the final wake) and return.
    let altstack = current_altstack();
    if let Some(short) = altstack.short_of(HANDLER_STACK) {
        if !answer_short(info, context, altstack, short) {
            IGNORED.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    // A second kind of request on this signal: a profile tick (`SI_TIMER` with the profiler's
    // marker), taken by the profiler's own async-signal-safe copy (see `profile/sampler.rs`).
    let tick = TICK_HANDLER.load(Ordering::Acquire);
    if !tick.is_null() {
        // SAFETY: TICK_HANDLER only ever holds a `TickHandler` stored by `set_tick_handler`.
        let tick: TickHandler = unsafe { std::mem::transmute::<*mut (), TickHandler>(tick) };
        if tick(info, context) {
            return;
        }
    }
    let entered = monotonic_nanos();
    if !answer(info, context, entered, altstack) {
        IGNORED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The most stack the handler uses below its own first frame (measured by painting a parked
/// thread's stack: see the crate docs' "stack dump accuracy"), with room to spare. On top of
/// this the kernel pushes its signal frame ([`kernel_frame_bytes`]).
pub(crate) const HANDLER_STACK: usize = 2048;

/// The stack a dump signal needs below the interrupted stack pointer: the kernel's signal frame
/// (including the 128-byte red zone on x86_64) plus [`HANDLER_STACK`]. A thread known to have
/// less is not signalled.
pub(crate) fn stack_needed() -> usize {
    kernel_frame_bytes() + HANDLER_STACK
}

/// The most the kernel writes below the interrupted stack pointer to deliver a signal: its
/// signal frame with the CPU's extended register state, as `AT_MINSIGSTKSZ` reports it (Linux
/// 5.14+ on x86_64, 4.18+ on arm64), plus the red zone it skips on x86_64. Without the auxv
/// entry: the frame of the largest x86 register state (AVX-512) or arm64's `SIGSTKSZ`.
pub(crate) fn kernel_frame_bytes() -> usize {
    const RED_ZONE: usize = if cfg!(target_arch = "x86_64") { 128 } else { 0 };
    // SAFETY: getauxval only reads the auxiliary vector; an absent entry returns 0.
    let reported = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) } as usize;
    let frame = if reported > 0 { reported } else { 4096 };
    frame + RED_ZONE
}

/// The calling thread's alternate signal stack and whether it runs on it now.
#[derive(Debug, Clone, Copy)]
struct Altstack {
    start: usize,
    size: usize,
    on_it: bool,
}

impl Altstack {
    /// When the thread runs on its alternate stack with fewer than `need` bytes left below
    /// the caller's frame: how many are left.
    #[inline(always)]
    fn short_of(self, need: usize) -> Option<usize> {
        if !self.on_it {
            return None;
        }
        let marker = 0u8;
        let here = std::hint::black_box(&marker) as *const u8 as usize;
        let left = here.saturating_sub(self.start);
        (left < need).then_some(left)
    }
}

/// `sigaltstack(NULL, &current)`: one raw syscall, async-signal-safe.
#[inline(always)]
fn current_altstack() -> Altstack {
    // SAFETY: an all-zero `stack_t` is valid plain data for the kernel to overwrite.
    let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new stack only queries; `current` is a live, writable `stack_t`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sigaltstack,
            ptr::null::<libc::stack_t>(),
            &mut current as *mut libc::stack_t,
        )
    };
    if rc != 0 || current.ss_flags & libc::SS_DISABLE != 0 {
        return Altstack {
            start: 0,
            size: 0,
            on_it: false,
        };
    }
    Altstack {
        start: current.ss_sp as usize,
        size: current.ss_size,
        on_it: current.ss_flags & libc::SS_ONSTACK != 0,
    }
}

/// Claims the slot `info` names for the current generation (`SENT -> RUNNING`); None if the
/// signal is not a current request of ours or the dumper gave up on it.
#[inline(always)]
fn claim(info: *const libc::siginfo_t) -> Option<(&'static Slot, usize)> {
    if info.is_null() {
        return None;
    }
    // SAFETY: with SA_SIGINFO the kernel passes a pointer to a complete `siginfo_t` that stays
    // valid for the whole handler; `QueuedInfo` is a prefix of it with no stricter alignment
    // (checked at compile time), and every field is plain data, so any bit pattern is valid.
    let request = unsafe { &*info.cast::<QueuedInfo>() };
    let pid = OUR_PID.load(Ordering::Acquire);
    if request.code != libc::SI_QUEUE || pid == 0 || request.rt.pid != pid {
        return None;
    }
    let generation = request.rt.value >> INDEX_BITS;
    let index = request.rt.value & (MAX_SLOTS - 1);
    if generation == 0 || generation != GENERATION.load(Ordering::Acquire) {
        return None;
    }
    let pool = POOL.load(Ordering::Acquire);
    if pool.is_null() {
        return None;
    }
    // SAFETY: pools are created with `Box::leak` and never freed, so a non-null pointer loaded
    // from POOL is valid for the rest of the process; the handler only reads and atomically
    // writes through the shared reference.
    let pool: &'static Pool = unsafe { &*pool };
    let slot = pool.slots.get(index)?;
    slot.state
        .compare_exchange(
            state_word(generation, SENT),
            state_word(generation, RUNNING),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .ok()?;
    Some((slot, generation))
}

/// Stores the registers, the thread and its alternate stack into a claimed slot.
#[inline(always)]
fn record(slot: &Slot, registers: CopiedRegisters, altstack: Altstack) {
    slot.tid.store(raw_gettid(), Ordering::Relaxed);
    let [pc, sp, fp, lr] = &slot.registers;
    pc.store(registers.pc, Ordering::Relaxed);
    sp.store(registers.sp, Ordering::Relaxed);
    fp.store(registers.fp, Ordering::Relaxed);
    lr.store(registers.lr, Ordering::Relaxed);
    let [start, size] = &slot.altstack;
    start.store(altstack.start, Ordering::Relaxed);
    size.store(altstack.size, Ordering::Relaxed);
}

/// Publishes a filled slot and wakes the dumper.
#[inline(always)]
fn publish(slot: &Slot, generation: usize) {
    slot.state
        .store(state_word(generation, DONE), Ordering::Release);
    // SeqCst with the dumper's `WAKE_WAITERS` store and its futex's own check of `WAKE` (see
    // `sleep_on_wake`): either it sees the new count and does not sleep, or we see it waiting.
    WAKE.fetch_add(1, Ordering::SeqCst);
    if WAKE_WAITERS.load(Ordering::SeqCst) > 0 {
        futex_wake(&WAKE);
    }
}

/// Sleeps on [`WAKE`] while it still holds `seen`, at most `timeout`, announced in
/// [`WAKE_WAITERS`] so that handlers make the wake call.
fn sleep_on_wake(seen: u32, timeout: Duration) {
    WAKE_WAITERS.fetch_add(1, Ordering::SeqCst);
    futex_wait(&WAKE, seen, timeout);
    WAKE_WAITERS.fetch_sub(1, Ordering::SeqCst);
}

/// The answer of a handler on an alternate stack with only `left` bytes left: registers only,
/// no stack copy (whose call would go deeper). Returns false if the signal was not a current
/// request of ours.
fn answer_short(
    info: *const libc::siginfo_t,
    context: *const c_void,
    altstack: Altstack,
    left: usize,
) -> bool {
    let Some((slot, generation)) = claim(info) else {
        return false;
    };
    record(slot, context_registers(context), altstack);
    slot.copied.store(0, Ordering::Relaxed);
    slot.stack_below.store(0, Ordering::Relaxed);
    slot.nanos.store(0, Ordering::Relaxed);
    slot.altstack_short.store(left.max(1), Ordering::Relaxed);
    publish(slot, generation);
    true
}

/// Records this thread's stack into the slot the signal names, and how long the handler took
/// since `entered`. Returns false if the signal was not a current request of ours (or the
/// dumper gave up on it).
fn answer(
    info: *const libc::siginfo_t,
    context: *const c_void,
    entered: u64,
    altstack: Altstack,
) -> bool {
    let Some((slot, generation)) = claim(info) else {
        return false;
    };
    let marker = 0u8;
    // SAFETY: the kernel passed `context` to this SA_SIGINFO handler, and the slot is ours
    // alone since the claim above.
    let (registers, copied) =
        unsafe { copy_interrupted(context, slot.stack, slot.stack_top.load(Ordering::Relaxed)) };
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    record(slot, registers, altstack);
    slot.copied.store(copied, Ordering::Relaxed);
    slot.altstack_short.store(0, Ordering::Relaxed);
    slot.stack_below
        .store(registers.sp.saturating_sub(here), Ordering::Relaxed);
    slot.nanos
        .store(monotonic_nanos().saturating_sub(entered), Ordering::Relaxed);
    publish(slot, generation);
    true
}

/// The interrupted registers from the handler's `ucontext_t`.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn context_registers(context: *const c_void) -> CopiedRegisters {
    if context.is_null() {
        return CopiedRegisters::default();
    }
    // SAFETY: with SA_SIGINFO the third handler argument points to the kernel-built
    // `ucontext_t` of the interrupted code, valid while the handler runs.
    let context = unsafe { &*context.cast::<libc::ucontext_t>() };
    let gregs = &context.uc_mcontext.gregs;
    let register = |index: c_int| {
        usize::try_from(index)
            .ok()
            .and_then(|i| gregs.get(i))
            .map_or(0, |&value| value as usize)
    };
    CopiedRegisters {
        pc: register(libc::REG_RIP),
        sp: register(libc::REG_RSP),
        fp: register(libc::REG_RBP),
        lr: 0,
    }
}

/// The interrupted registers from the handler's `ucontext_t`.
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn context_registers(context: *const c_void) -> CopiedRegisters {
    if context.is_null() {
        return CopiedRegisters::default();
    }
    // SAFETY: with SA_SIGINFO the third handler argument points to the kernel-built
    // `ucontext_t` of the interrupted code, valid while the handler runs.
    let context = unsafe { &*context.cast::<libc::ucontext_t>() };
    let mcontext = &context.uc_mcontext;
    let register = |index: usize| mcontext.regs.get(index).map_or(0, |&value| value as usize);
    CopiedRegisters {
        pc: mcontext.pc as usize,
        sp: mcontext.sp as usize,
        fp: register(29),
        lr: register(30),
    }
}

/// Other architectures: no registers, so no stack (the thread is listed with a note).
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn context_registers(_context: *const c_void) -> CopiedRegisters {
    CopiedRegisters::default()
}

/// Wakes every waiter on `word`.
fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; `word` is a live, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

/// Sleeps until `word` is woken, no longer holds `expected`, or `timeout` passes.
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned u32 and `timeout` a valid relative timespec on our
    // stack; the kernel only reads them. Every outcome (woken, EAGAIN, EINTR, ETIMEDOUT) is
    // handled by the caller re-checking the slots.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &timeout as *const libc::timespec,
        );
    }
}

/// Who currently handles a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disposition {
    /// Our dump handler.
    Ours,
    /// `SIG_DFL` (for the dump signals we accept: ignore it).
    Default,
    /// `SIG_IGN`.
    Ignored,
    /// Somebody else's handler.
    Other,
}

impl Disposition {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Disposition::Ours => "the manhole dump handler",
            Disposition::Default => "the default action (SIG_DFL)",
            Disposition::Ignored => "SIG_IGN",
            Disposition::Other => "another handler",
        }
    }
}

fn our_handler() -> libc::sighandler_t {
    on_dump_signal as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) as libc::sighandler_t
}

/// Reads the current disposition of `signal` without changing it.
pub(super) fn disposition(signal: c_int) -> io::Result<Disposition> {
    // SAFETY: an all-zero `sigaction` is a valid value for the kernel to overwrite.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null `act` only queries; `old` is a valid, writable `sigaction`.
    if unsafe { libc::sigaction(signal, ptr::null(), &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(classify(&old))
}

fn classify(action: &libc::sigaction) -> Disposition {
    match action.sa_sigaction {
        libc::SIG_DFL => Disposition::Default,
        libc::SIG_IGN => Disposition::Ignored,
        handler if handler == our_handler() => Disposition::Ours,
        _ => Disposition::Other,
    }
}

/// The disposition `install` put in place, as `sigaction` reads it back (the C library may add
/// `SA_RESTORER` and its restorer): flags, and the handler's mask as a bit set (bit `n - 1` for
/// signal `n`). Compared in full before and during every dump ([`check_ours`]).
static INSTALLED_FLAGS: AtomicI32 = AtomicI32::new(0);
static INSTALLED_MASK: AtomicU64 = AtomicU64::new(0);

/// The flags [`check_ours`] names when they change, with their names.
const NAMED_FLAGS: [(c_int, &str); 6] = [
    (libc::SA_SIGINFO, "SA_SIGINFO"),
    (libc::SA_RESETHAND, "SA_RESETHAND"),
    (libc::SA_NODEFER, "SA_NODEFER"),
    (libc::SA_ONSTACK, "SA_ONSTACK"),
    (libc::SA_RESTART, "SA_RESTART"),
    (libc::SA_NOCLDSTOP, "SA_NOCLDSTOP"),
];

/// `sa_mask` as a bit set (bit `n - 1` for signal `n`).
fn mask_bits(action: &libc::sigaction) -> u64 {
    (1..=64).fold(0u64, |bits, signal| {
        // SAFETY: `sa_mask` is an initialised `sigset_t` (filled in by the kernel or by us);
        // `sigismember` only reads it and returns -1 for numbers it does not know.
        if unsafe { libc::sigismember(&action.sa_mask, signal) } == 1 {
            bits | (1u64 << (signal - 1))
        } else {
            bits
        }
    })
}

/// Reads the whole current action for `signal`.
fn current_action(signal: c_int) -> io::Result<libc::sigaction> {
    // SAFETY: an all-zero `sigaction` is a valid value for the kernel to overwrite.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null `act` only queries; `action` is a valid, writable `sigaction`.
    if unsafe { libc::sigaction(signal, ptr::null(), &mut action) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(action)
}

/// Whether `signal` still has exactly the disposition `install` gave it: our handler, the same
/// flags, the same mask. Otherwise why not, as a sentence: a request could then meet another
/// handler, or ours called without `SA_SIGINFO`, or the default action after `SA_RESETHAND`.
pub(super) fn check_ours(signal: c_int) -> std::result::Result<(), String> {
    let action = current_action(signal)
        .map_err(|e| format!("cannot read the disposition of signal {signal}: {e}"))?;
    let disposition = classify(&action);
    if disposition != Disposition::Ours {
        return Err(format!(
            "signal {signal} is now handled by {}, not by manhole",
            disposition.describe()
        ));
    }
    let installed = INSTALLED_FLAGS.load(Ordering::Acquire);
    let flags = action.sa_flags;
    if flags != installed {
        let changes: Vec<String> = NAMED_FLAGS
            .iter()
            .filter(|(bit, _)| (flags ^ installed) & bit != 0)
            .map(|(bit, name)| {
                let how = if flags & bit != 0 { "added" } else { "removed" };
                format!("{name} {how}")
            })
            .collect();
        let changes = if changes.is_empty() {
            format!("{installed:#x} -> {flags:#x}")
        } else {
            changes.join(", ")
        };
        return Err(format!(
            "the flags of the dump handler on signal {signal} were changed ({changes})"
        ));
    }
    if mask_bits(&action) != INSTALLED_MASK.load(Ordering::Acquire) {
        return Err(format!(
            "the mask of the dump handler on signal {signal} was changed"
        ));
    }
    Ok(())
}

/// The signals that may carry dump requests: those whose default action is to ignore them and
/// that neither the kernel nor the C library gives a meaning of their own. A request that arrives
/// late, after `SA_RESETHAND` or a reset to `SIG_DFL`, or that stays queued across `exec`, then
/// meets "ignore" and can never kill or stop the process. `SIGURG` is the default, as in Go's
/// runtime (its preemption signal, chosen for the same reason); `SIGWINCH` is the alternative.
pub(crate) const SAFE_DUMP_SIGNALS: [c_int; 2] = [libc::SIGURG, libc::SIGWINCH];

/// Checks that `signal` can carry dump requests without ever harming the process.
pub(crate) fn check_signal(signal: c_int) -> Result<()> {
    if SAFE_DUMP_SIGNALS.contains(&signal) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Signal,
        format!(
            "signal {signal} cannot be the dump signal: {}; use SIGURG (the default) or SIGWINCH, whose default action is to ignore them",
            why_unsafe(signal)
        ),
    ))
}

/// Why `signal` would harm the process as the dump signal, for [`check_signal`]'s error.
fn why_unsafe(signal: c_int) -> &'static str {
    match signal {
        libc::SIGKILL | libc::SIGSTOP => "it cannot be caught",
        libc::SIGSEGV
        | libc::SIGBUS
        | libc::SIGILL
        | libc::SIGFPE
        | libc::SIGTRAP
        | libc::SIGSYS => {
            "it reports faults, and its handler belongs to the application and the Rust runtime"
        }
        libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => {
            "its default action stops the process, so a late or stray delivery would stop it"
        }
        libc::SIGCHLD => {
            "the kernel sends it when a child exits, and waiting for children depends on its disposition"
        }
        libc::SIGCONT => "its default action resumes a stopped process, and the kernel sends it",
        libc::SIGPIPE => {
            "its default action terminates the process, and the kernel sends it on every write to a closed pipe"
        }
        n if n > 31 && n < libc::SIGRTMIN() => "the C library reserves it",
        n if n < 1 || n > libc::SIGRTMAX() => "there is no such signal",
        _ => {
            "its default action terminates the process, so a late delivery (after exec, SA_RESETHAND or a reset to SIG_DFL) would kill it"
        }
    }
}

/// Installs the dump handler for `signal`. Idempotent while our handler is in place; refuses when
/// anything but `SIG_DFL` is there.
pub(super) fn install(signal: c_int) -> Result<()> {
    check_signal(signal)?;
    let _serial = INSTALL_LOCK.lock();
    let cannot_read = |e| {
        Error::with_source(
            ErrorKind::Signal,
            format!("cannot read the disposition of signal {signal}"),
            e,
        )
    };
    match disposition(signal).map_err(cannot_read)? {
        Disposition::Ours => return Ok(()),
        Disposition::Default => {}
        other => {
            return Err(Error::new(
                ErrorKind::Signal,
                format!(
                    "signal {signal} is already handled by {} and manhole will not replace it; choose another dump signal",
                    other.describe()
                ),
            ));
        }
    }
    // SAFETY: an all-zero `sigaction` is valid; we fill in every field we rely on below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = our_handler();
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // Nothing else is blocked while the handler runs (the signal itself is, as always without
    // SA_NODEFER): above all never a fault signal.
    // SAFETY: `sa_mask` is a valid `sigset_t` inside `action`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: an all-zero `sigaction` is a valid value for the kernel to overwrite.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `action` is fully initialised and `on_dump_signal` is an `extern "C"` function
    // with the SA_SIGINFO signature that lives for the whole program; `old` is writable.
    if unsafe { libc::sigaction(signal, &action, &mut old) } != 0 {
        return Err(Error::with_source(
            ErrorKind::Signal,
            format!("cannot install the dump handler for signal {signal}"),
            io::Error::last_os_error(),
        ));
    }
    match current_action(signal) {
        Ok(installed) => {
            INSTALLED_FLAGS.store(installed.sa_flags, Ordering::Release);
            INSTALLED_MASK.store(mask_bits(&installed), Ordering::Release);
        }
        Err(e) => {
            // SAFETY: as below: `old` is what the kernel returned.
            unsafe { libc::sigaction(signal, &old, ptr::null_mut()) };
            return Err(Error::with_source(
                ErrorKind::Signal,
                format!("cannot read back the dump handler of signal {signal}"),
                e,
            ));
        }
    }
    let previous = classify(&old);
    if previous != Disposition::Default && previous != Disposition::Ours {
        // Someone installed a handler between our check and ours: give theirs back.
        // SAFETY: `old` is exactly what the kernel returned, so it is a valid action to restore.
        unsafe { libc::sigaction(signal, &old, ptr::null_mut()) };
        return Err(Error::new(
            ErrorKind::Signal,
            format!(
                "signal {signal} got {} while manhole was installing; left it alone",
                previous.describe()
            ),
        ));
    }
    Ok(())
}

/// Dump signals ignored since the process started: foreign senders, other `si_code`s, stale
/// generations, and late answers the dumper had given up on.
pub(super) fn ignored_signals() -> u64 {
    IGNORED.load(Ordering::Relaxed) as u64
}

/// Why a request could not be sent.
#[derive(Debug)]
pub(super) enum SendError {
    /// `ESRCH`: the thread is gone.
    Exited,
    /// `EAGAIN`: the per-user queue of pending real-time signals is full.
    QueueFull,
    /// Anything else (e.g. `EPERM` from a seccomp filter).
    Other(io::Error),
    /// Not sent: the dump stopped sending when it found the disposition changed (why).
    Stopped(String),
}

/// What came of asking one thread; `T` is what the dumper made of the copy (the unwound frames).
#[derive(Debug)]
pub(super) enum Answer<T> {
    /// The handler ran and copied the thread's registers and stack.
    Captured {
        tid: i32,
        /// What the dumper's callback made of the copy.
        unwound: T,
        /// Time spent in the handler, entry to the last store.
        handler_nanos: u64,
        /// Bytes of stack copied.
        copied: usize,
        /// Stack used below the interrupted stack pointer by the kernel's frame and the handler.
        stack_below: usize,
        /// The thread's alternate signal stack (start, size), if it has one.
        altstack: Option<(usize, usize)>,
        /// Bytes left when the handler ran on the alternate stack with too little room to copy
        /// the stack: then only the registers were taken.
        altstack_short: Option<usize>,
    },
    /// The signal could not be sent.
    NotSent(SendError),
    /// No answer in time; `started` when the handler had begun but not finished.
    Silent { started: bool },
}

/// Requests sent in one generation, waiting for their answers.
pub(super) struct Requests {
    pool: &'static Pool,
    generation: usize,
    signal: c_int,
    /// Per requested thread: the slot index, or the send failure.
    requests: Vec<std::result::Result<usize, SendError>>,
    /// Signals sent successfully so far.
    sent: u32,
    /// `WAKE` when the generation started: `WAKE - wake_base` handlers have finished since.
    wake_base: u32,
    /// The most requests that may be sent but unanswered at once.
    window: u32,
    /// Requests made since the disposition was last checked.
    since_check: u32,
    /// How many requests go out between two checks: the window as it started (it widens on
    /// stalls).
    batch: u32,
    /// Why the dump stopped sending, once [`check_ours`] failed during it.
    stopped: Option<String>,
}

/// Starts a dump generation for up to `threads` threads.
/// [`Requests::send`] then asks one thread at a time (the dumper sends each thread its signal
/// right after reading its status, so handlers run while the other statuses are read), keeping
/// at most [`WINDOW_PER_CPU`] requests per CPU unanswered, and [`Requests::collect`] waits for
/// the answers.
pub(super) fn start(signal: c_int, threads: usize) -> io::Result<Requests> {
    let pool = pool_for(threads)?;
    // SAFETY: `getpid` has no preconditions.
    OUR_PID.store(unsafe { libc::getpid() }, Ordering::Release);
    let generation = next_generation();
    // Wake at most four threads per CPU at a time: with all of them woken at once, a handler
    // of a few microseconds was preempted for up to tens of milliseconds (1,000 threads on 2
    // CPUs); with the window the longest handler was under 0.1 ms and the dump no slower.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let window = u32::try_from(cpus.saturating_mul(WINDOW_PER_CPU)).unwrap_or(u32::MAX);
    Ok(Requests {
        pool,
        generation,
        signal,
        requests: Vec::with_capacity(threads),
        sent: 0,
        wake_base: WAKE.load(Ordering::Acquire),
        window,
        since_check: 0,
        batch: window,
        stopped: None,
    })
}

impl Requests {
    /// Sends the dump request to `tid`. Its answer is the next one in [`Requests::collect`]'s
    /// list. Before each batch of requests (as many as the window held at the start) and after
    /// every stall, the whole disposition is checked again ([`check_ours`]; the caller checked
    /// before the first request); once it has changed, nothing more is sent in this dump. A
    /// check is one `sigaction` call. `stack_top` (0: not known) bounds the thread's copy
    /// ([`window_len`]).
    pub(super) fn send(&mut self, tid: i32, stack_top: usize) {
        let index = self.requests.len();
        let Some(slot) = self.pool.slots.get(index) else {
            self.requests.push(Err(SendError::Other(io::Error::other(
                "too many threads for one dump",
            ))));
            return;
        };
        let stalled = self.wait_for_room();
        if self.stopped.is_none() && (stalled || self.since_check >= self.batch) {
            self.since_check = 0;
            self.stopped = check_ours(self.signal).err();
        }
        if let Some(reason) = &self.stopped {
            self.requests.push(Err(SendError::Stopped(reason.clone())));
            return;
        }
        self.since_check += 1;
        let generation = self.generation;
        slot.copied.store(0, Ordering::Relaxed);
        slot.stack_top.store(stack_top, Ordering::Relaxed);
        slot.state
            .store(state_word(generation, SENT), Ordering::Release);
        let sent = queue_signal(tid, self.signal, (generation << INDEX_BITS) | index);
        self.requests.push(match sent {
            Ok(()) => {
                self.sent += 1;
                Ok(index)
            }
            Err(error) => {
                // Nobody will answer this slot; make sure a stray signal cannot claim it.
                slot.state
                    .store(state_word(generation, ABANDONED), Ordering::Release);
                Err(match error.raw_os_error() {
                    Some(libc::ESRCH) => SendError::Exited,
                    Some(libc::EAGAIN) => SendError::QueueFull,
                    _ => SendError::Other(error),
                })
            }
        });
    }

    /// Waits while `window` requests are in flight (sent, not answered). A wait that sees no
    /// answer for [`WINDOW_STALL`] widens the window by one instead, so a thread that never
    /// answers (stopped by a debugger) costs the dump one stall, not a hang. Returns whether it
    /// stalled (no answer came: one reason can be that requests now meet another disposition).
    fn wait_for_room(&mut self) -> bool {
        let mut stalled = false;
        loop {
            let seen = WAKE.load(Ordering::Acquire);
            let answered = seen.wrapping_sub(self.wake_base);
            if self.sent.saturating_sub(answered) < self.window {
                return stalled;
            }
            sleep_on_wake(seen, WINDOW_STALL);
            if WAKE.load(Ordering::Acquire) == seen {
                self.window = self.window.saturating_add(1);
                stalled = true;
            }
        }
    }
}

impl Requests {
    /// Waits until every request is answered or `deadline` passes, gives up on the rest, and
    /// waits up to `grace` more for handlers that had already started. One answer per
    /// [`Requests::send`], in the order they were sent; `unwind` turns each copy into `T`.
    /// The copies' pages stay for the next dump while the caches are held
    /// ([`release_copies`] gives them back).
    pub(super) fn collect<T>(
        self,
        deadline: Instant,
        grace: Duration,
        mut unwind: impl FnMut(&StackImage<'_>) -> T,
    ) -> Vec<Answer<T>> {
        let sent: Vec<usize> = self
            .requests
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        let done = state_word(self.generation, DONE);
        self.wait_for(&sent, done, deadline);
        let mut started = Vec::new();
        for &index in &sent {
            let slot = &self.pool.slots[index];
            let gave_up = slot.state.compare_exchange(
                state_word(self.generation, SENT),
                state_word(self.generation, ABANDONED),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if gave_up == Err(state_word(self.generation, RUNNING)) {
                started.push(index);
            }
        }
        if !started.is_empty() {
            self.wait_for(&started, done, Instant::now() + grace);
        }
        let generation = self.generation;
        let pool = self.pool;
        self.requests
            .into_iter()
            .map(|request| match request {
                Err(error) => Answer::NotSent(error),
                Ok(index) => read_slot(&pool.slots[index], generation, &mut unwind),
            })
            .collect()
    }

    /// Sleeps on the futex word until every slot of `indices` is `done` or `deadline` passes.
    fn wait_for(&self, indices: &[usize], done: usize, deadline: Instant) {
        let mut next = 0;
        loop {
            let seen = WAKE.load(Ordering::Acquire);
            while next < indices.len()
                && self.pool.slots[indices[next]].state.load(Ordering::Acquire) == done
            {
                next += 1;
            }
            let now = Instant::now();
            if next == indices.len() || now >= deadline {
                return;
            }
            sleep_on_wake(seen, deadline - now);
        }
    }
}

fn read_slot<T>(
    slot: &Slot,
    generation: usize,
    unwind: &mut impl FnMut(&StackImage<'_>) -> T,
) -> Answer<T> {
    let state = slot.state.load(Ordering::Acquire);
    if state != state_word(generation, DONE) {
        return Answer::Silent {
            started: state == state_word(generation, RUNNING),
        };
    }
    let [pc, sp, fp, lr] = &slot.registers;
    let registers = CopiedRegisters {
        pc: pc.load(Ordering::Relaxed),
        sp: sp.load(Ordering::Relaxed),
        fp: fp.load(Ordering::Relaxed),
        lr: lr.load(Ordering::Relaxed),
    };
    let copied = slot.copied.load(Ordering::Relaxed).min(slot.stack.len);
    // SAFETY: the handler published these `copied` bytes with its release store of DONE, which
    // the acquire load above saw; nobody writes the buffer again until the slot is sent anew,
    // which only this dumper does, after it is done with the image.
    let bytes = unsafe { std::slice::from_raw_parts(slot.stack.start, copied) };
    let image = StackImage {
        registers,
        bytes,
        window_full: copied
            == window_len(
                registers.sp,
                slot.stack_top.load(Ordering::Relaxed),
                slot.stack.len,
            ),
    };
    Answer::Captured {
        tid: slot.tid.load(Ordering::Relaxed),
        unwound: unwind(&image),
        handler_nanos: slot.nanos.load(Ordering::Relaxed),
        copied,
        stack_below: slot.stack_below.load(Ordering::Relaxed),
        altstack: match [&slot.altstack[0], &slot.altstack[1]].map(|a| a.load(Ordering::Relaxed)) {
            [_, 0] => None,
            [start, size] => Some((start, size)),
        },
        altstack_short: match slot.altstack_short.load(Ordering::Relaxed) {
            0 => None,
            left => Some(left),
        },
    }
}

/// Gives the pages of the stack copies back to the kernel. The dump caches' release calls it:
/// kept between the dumps of a session, the pages need not be faulted in again by the next
/// dump's handlers (a fault each page, inside the application's threads).
pub(super) fn release_copies() {
    let pool = POOL.load(Ordering::Acquire);
    if !pool.is_null() {
        // SAFETY: pools are leaked and never freed (see `pool_for`).
        let pool: &'static Pool = unsafe { &*pool };
        release_buffers(&pool.buffers);
    }
}

/// Handlers running right now, on any thread (see [`INSIDE`]).
pub(super) fn handlers_inside() -> usize {
    INSIDE.load(Ordering::Acquire)
}

/// The pool for a dump of `threads` threads: the current one if it is big enough and no
/// handler is still writing into it, else a new, bigger one (the old one is leaked, never freed,
/// so a late handler writes into live memory).
fn pool_for(threads: usize) -> io::Result<&'static Pool> {
    let current = POOL.load(Ordering::Acquire);
    if !current.is_null() {
        // SAFETY: pools are leaked and never freed (see `answer`).
        let pool: &'static Pool = unsafe { &*current };
        let busy = pool
            .slots
            .iter()
            .any(|s| s.state.load(Ordering::Acquire) & STATE_MASK == RUNNING);
        if pool.slots.len() >= threads && !busy {
            return Ok(pool);
        }
        // Replaced (and leaked, see above): its pages go back now.
        release_buffers(&pool.buffers);
    }
    let count = (threads + threads / 4).clamp(16, MAX_SLOTS);
    let buffers = map_buffers(count)?;
    let pool: &'static Pool = Box::leak(Box::new(Pool {
        slots: buffers.iter().map(|&buffer| Slot::new(buffer)).collect(),
        buffers,
    }));
    POOL.store(ptr::from_ref(pool).cast_mut(), Ordering::Release);
    Ok(pool)
}

/// Starts a new generation (never 0, always below `GENERATION_LIMIT`).
fn next_generation() -> usize {
    let next = match GENERATION.load(Ordering::Relaxed) + 1 {
        n if n >= GENERATION_LIMIT => 1,
        n => n,
    };
    GENERATION.store(next, Ordering::Release);
    next
}

/// `rt_tgsigqueueinfo(getpid(), tid, signal, {SI_QUEUE, our pid and uid, value})`.
fn queue_signal(tid: i32, signal: c_int, value: usize) -> io::Result<()> {
    // SAFETY: an all-zero `siginfo_t` is valid plain data.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `getpid` and `getuid` have no preconditions.
    let (pid, uid) = unsafe { (libc::getpid(), libc::getuid()) };
    let queued = QueuedInfo {
        signo: signal,
        errno: 0,
        code: libc::SI_QUEUE,
        rt: QueuedFields { pid, uid, value },
    };
    // SAFETY: `QueuedInfo` is a prefix of `siginfo_t` (size and alignment checked at compile
    // time) and `info` is a live local, so writing it at the start of `info` stays in bounds.
    unsafe { ptr::write(ptr::from_mut(&mut info).cast::<QueuedInfo>(), queued) };
    // SAFETY: the syscall reads one `siginfo_t` from a valid pointer; the other arguments are
    // plain integers. Sending to a thread of our own process with SI_QUEUE needs no privilege.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            pid,
            tid,
            signal,
            &info as *const libc::siginfo_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
