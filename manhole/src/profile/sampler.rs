//! The signal side of a profile: per-thread CPU-time timers, the tick handler and the sample
//! ring it writes into. This is the only file of the profiler with `unsafe` code.
//!
//! # Timers
//!
//! Each sampled thread gets one POSIX timer on *its own* CPU clock (the clock id the kernel
//! builds from a tid, what `pthread_getcpuclockid` returns: the `CLOCK_THREAD_CPUTIME_ID` of
//! that thread), with `SIGEV_THREAD_ID` naming that thread and the dump signal as the signal.
//! The timer fires after every `1/profile_hz` seconds of CPU the thread *used*, so a thread
//! that sleeps is never signalled, and the signal lands on the thread while it runs. The value
//! carried in `si_value` is [`MARKER`] with the profile's generation in the low 32 bits, and
//! the kernel marks the signal `SI_TIMER`: a dump request (`SI_QUEUE`) can never be taken for
//! a tick, nor a tick of an older profile for one of this profile.
//!
//! The timers are raw `timer_create`/`timer_settime`/`timer_delete` syscalls (kernel timer ids,
//! not glibc's `timer_t` wrappers). They belong to the process, not to the thread: a thread that
//! exits leaves a timer that never fires again, deleted with the others at the end.
//! `fork` does not copy POSIX timers.
//!
//! # The tick handler
//!
//! [`on_tick`] is called by the dump signal handler (`stackdump/capture.rs`) first; it returns
//! `false` for anything that is not a tick of the current profile, and the dump handler then
//! goes on as before. In the handler it only:
//!
//! * reads `getpid`/`gettid`, the vDSO clock (to time itself) and the interrupted registers
//!   from the `ucontext` (program counter, stack pointer, frame pointer, and the link register
//!   on aarch64);
//! * claims a free slot of the ring with a compare-exchange (none free: the sample is counted
//!   as lost);
//! * copies at most [`WINDOW`] bytes of the stack above the interrupted stack pointer with
//!   `process_vm_readv` on its own pid: a system call that returns `EFAULT` for memory that is
//!   not mapped instead of faulting, copying page by page so that a copy that runs off the top
//!   of the stack keeps every readable page below it;
//! * publishes the slot (`READY`).
//!
//! No allocation, no lock, no unwinder, no formatting, no panic (every index is checked):
//! unwinding happens later, on the profiler's thread, with `framehop` over the copy.
//!
//! # Lifetime of the ring
//!
//! The ring is one anonymous `mmap`, created when a profile starts and unmapped when it ends.
//! A tick can still arrive after the timers are deleted (one already queued), so the handler
//! announces itself in [`IN_HANDLER`] before it loads [`RING`], and the profiler, after taking
//! the ring out of [`RING`], waits for [`IN_HANDLER`] to drop to zero before it unmaps it. A
//! forked child gets the ring's pages copied: [`forget_in_child`] unmaps them (async-signal-safe).

use crate::sys::{monotonic_nanos, raw_gettid};
use std::ffi::{c_int, c_void};
use std::io;
use std::mem::size_of;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The high 32 bits of a tick's `si_value`: "PROF".
pub(super) const MARKER: u64 = 0x5052_4F46 << 32;
/// Bytes of stack copied per sample, from the interrupted stack pointer up.
pub(super) const WINDOW: usize = 32 * 1024;
/// Page size the window copy is cut at (the smallest Linux page on the supported targets).
const PAGE: usize = 4096;

const FREE: u32 = 0;
const WRITING: u32 = 1;
const READY: u32 = 2;

/// One sample, as the handler wrote it.
#[repr(C)]
struct SlotHeader {
    state: AtomicU32,
    tid: AtomicI32,
    pc: AtomicU64,
    sp: AtomicU64,
    fp: AtomicU64,
    lr: AtomicU64,
    /// Bytes of the window that were copied.
    len: AtomicUsize,
    /// Nanoseconds from handler entry to publication.
    nanos: AtomicU64,
}

/// Bytes per slot: the header, padded to 64, then the window.
const HEADER_BYTES: usize = 64;
const SLOT_BYTES: usize = HEADER_BYTES + WINDOW;
const _: () = assert!(size_of::<SlotHeader>() <= HEADER_BYTES);

/// The ring's shared description, at the start of its mapping.
#[repr(C)]
struct RingHeader {
    /// The profile generation whose ticks this ring takes.
    generation: AtomicU32,
    slots: AtomicUsize,
    /// Where the next handler starts looking for a free slot.
    cursor: AtomicUsize,
    /// Ticks that found no free slot.
    lost: AtomicU64,
    /// Ticks whose stack copy failed outright (no byte copied).
    copy_failed: AtomicU64,
}

const _: () = assert!(size_of::<RingHeader>() <= HEADER_BYTES);

/// The ring the handler writes into (null: no profile).
static RING: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
/// Mapping length of the ring in [`RING`].
static RING_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Handlers between their announcement and their last access to the ring.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// A sample copied out of the ring, for the unwinder.
pub(super) struct RawSample {
    pub tid: i32,
    pub pc: u64,
    pub sp: u64,
    pub fp: u64,
    /// The link register (aarch64; 0 on x86_64).
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    pub lr: u64,
    pub stack: Vec<u8>,
    pub handler_nanos: u64,
}

/// Counters of the ring at the end of a profile.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RingCounts {
    pub lost: u64,
    pub copy_failed: u64,
}

/// The ring of a profile in progress; unmapped on drop (after late handlers are done).
pub(super) struct Ring {
    base: *mut u8,
    bytes: usize,
    slots: usize,
}

// SAFETY: the ring is only shared through atomics and the slot protocol (a slot's window is
// touched by one side at a time: the handler between FREE->WRITING and READY, the drainer
// between READY and FREE).
unsafe impl Send for Ring {}

impl Ring {
    /// Maps a ring of `slots` slots for ticks of `generation` and publishes it to the handler.
    pub(super) fn create(slots: usize, generation: u32) -> io::Result<Ring> {
        let bytes = HEADER_BYTES + slots * SLOT_BYTES;
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring = Ring {
            base: base.cast(),
            bytes,
            slots,
        };
        // Zeroed pages: every slot is FREE, the counters are 0.
        ring.header()
            .generation
            .store(generation, Ordering::Relaxed);
        ring.header().slots.store(slots, Ordering::Relaxed);
        RING_BYTES.store(bytes, Ordering::SeqCst);
        RING.store(ring.base, Ordering::SeqCst);
        Ok(ring)
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: the mapping starts with a zero-initialised RingHeader (page aligned) and
        // lives as long as `self`; every field is atomic.
        unsafe { &*self.base.cast::<RingHeader>() }
    }

    fn slot(&self, index: usize) -> (&SlotHeader, *const u8) {
        debug_assert!(index < self.slots);
        // SAFETY: `index < slots`, so the slot lies inside the mapping; headers are 64-byte
        // aligned inside a page-aligned mapping.
        unsafe {
            let at = self.base.add(HEADER_BYTES + index * SLOT_BYTES);
            (&*at.cast::<SlotHeader>(), at.add(HEADER_BYTES))
        }
    }

    /// Moves every published sample into `out`; returns how many.
    pub(super) fn drain(&self, out: &mut Vec<RawSample>) -> usize {
        let mut taken = 0;
        for index in 0..self.slots {
            let (slot, window) = self.slot(index);
            if slot.state.load(Ordering::Acquire) != READY {
                continue;
            }
            let len = slot.len.load(Ordering::Relaxed).min(WINDOW);
            // SAFETY: the slot is READY: the handler finished writing `len` bytes of the window
            // (Release on READY, Acquire above) and nothing writes it until we store FREE.
            let stack = unsafe { std::slice::from_raw_parts(window, len) }.to_vec();
            out.push(RawSample {
                tid: slot.tid.load(Ordering::Relaxed),
                pc: slot.pc.load(Ordering::Relaxed),
                sp: slot.sp.load(Ordering::Relaxed),
                fp: slot.fp.load(Ordering::Relaxed),
                lr: slot.lr.load(Ordering::Relaxed),
                stack,
                handler_nanos: slot.nanos.load(Ordering::Relaxed),
            });
            slot.state.store(FREE, Ordering::Release);
            taken += 1;
        }
        taken
    }

    pub(super) fn counts(&self) -> RingCounts {
        RingCounts {
            lost: self.header().lost.load(Ordering::Relaxed),
            copy_failed: self.header().copy_failed.load(Ordering::Relaxed),
        }
    }

    /// Takes the ring away from the handler and waits until no handler uses it any more.
    /// Returns false if a handler stayed in for `patience` (the mapping is then leaked, never
    /// unmapped under a running handler).
    fn retire(&self, patience: Duration) -> bool {
        let _ = RING.compare_exchange(
            self.base,
            ptr::null_mut(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        let deadline = std::time::Instant::now() + patience;
        while IN_HANDLER.load(Ordering::SeqCst) != 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.retire(Duration::from_secs(1)) {
            // SAFETY: our own mapping, no longer published and no handler inside it.
            unsafe { libc::munmap(self.base.cast(), self.bytes) };
        }
    }
}

/// In a forked child: the parent's ring (if a profile was running) is a private copy here that
/// nothing will drain; unmap it. Async-signal-safe (atomics and `munmap`).
pub(super) fn forget_in_child() {
    let base = RING.swap(ptr::null_mut(), Ordering::SeqCst);
    let bytes = RING_BYTES.load(Ordering::SeqCst);
    if !base.is_null() && bytes != 0 {
        // SAFETY: the mapping was made by the parent's profiler and copied into this process by
        // `fork`; only the forking thread exists here and it is not inside the handler.
        unsafe { libc::munmap(base.cast(), bytes) };
    }
}

/// Called first by the dump signal handler. Returns true if the signal was a tick of the
/// current profile (recorded or counted lost), false to let the dump handler see it.
pub(crate) fn on_tick(info: *const libc::siginfo_t, context: *const c_void) -> bool {
    if info.is_null() || context.is_null() {
        return false;
    }
    // SAFETY: with SA_SIGINFO the kernel passes a complete `siginfo_t`, valid during the
    // handler; `si_code` is a plain field.
    let code = unsafe { (*info).si_code };
    if code != libc::SI_TIMER {
        return false;
    }
    // SAFETY: for SI_TIMER the union holds the timer fields, whose `sigval` sits where
    // `si_value()` reads it (offset 8 of the union, like the queued-signal fields).
    let value = unsafe { (*info).si_value().sival_ptr } as u64;
    if value & 0xFFFF_FFFF_0000_0000 != MARKER {
        return false;
    }
    let entered = monotonic_nanos();
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    let ring = RING.load(Ordering::SeqCst);
    if !ring.is_null() {
        // SAFETY: a non-null RING is a live mapping: the profiler unmaps it only after taking it
        // out of RING and seeing IN_HANDLER at zero, and we announced ourselves before loading.
        unsafe { record(ring, value as u32, context, entered) };
    }
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    true
}

/// Writes one sample into a free slot of `ring`, if the tick is of its generation.
///
/// # Safety
/// `ring` must be a live ring mapping for the whole call; `context` the handler's `ucontext_t`.
unsafe fn record(ring: *mut u8, generation: u32, context: *const c_void, entered: u64) {
    // SAFETY: the caller guarantees the mapping; its header is a RingHeader of atomics.
    let header = unsafe { &*ring.cast::<RingHeader>() };
    if header.generation.load(Ordering::Relaxed) != generation {
        return;
    }
    let slots = header.slots.load(Ordering::Relaxed);
    if slots == 0 {
        return;
    }
    let start = header.cursor.fetch_add(1, Ordering::Relaxed);
    for step in 0..slots {
        let index = start.wrapping_add(step) % slots;
        // SAFETY: `index < slots`: inside the mapping, 64-byte aligned.
        let at = unsafe { ring.add(HEADER_BYTES + index * SLOT_BYTES) };
        // SAFETY: as above; the header is all atomics.
        let slot = unsafe { &*at.cast::<SlotHeader>() };
        if slot
            .state
            .compare_exchange(FREE, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let regs = Registers::from_context(context);
        slot.tid.store(raw_gettid(), Ordering::Relaxed);
        slot.pc.store(regs.pc, Ordering::Relaxed);
        slot.sp.store(regs.sp, Ordering::Relaxed);
        slot.fp.store(regs.fp, Ordering::Relaxed);
        slot.lr.store(regs.lr, Ordering::Relaxed);
        // SAFETY: the window follows the slot header inside the mapping, WINDOW bytes long,
        // and is ours between the claim above and READY below.
        let copied = unsafe { copy_stack(regs.sp as usize, at.add(HEADER_BYTES)) };
        if copied == 0 {
            header.copy_failed.fetch_add(1, Ordering::Relaxed);
        }
        slot.len.store(copied, Ordering::Relaxed);
        slot.nanos
            .store(monotonic_nanos().saturating_sub(entered), Ordering::Relaxed);
        slot.state.store(READY, Ordering::Release);
        return;
    }
    header.lost.fetch_add(1, Ordering::Relaxed);
}

/// Copies up to [`WINDOW`] bytes from `sp` up into `dest` with `process_vm_readv` on our own
/// pid, one page per `iovec` so that a copy stopped by an unmapped page keeps what came before
/// it. Returns the bytes copied. Async-signal-safe: one system call, no fault possible.
///
/// # Safety
/// `dest` must be valid for writes of [`WINDOW`] bytes.
unsafe fn copy_stack(sp: usize, dest: *mut u8) -> usize {
    if sp == 0 {
        return 0;
    }
    const PIECES: usize = WINDOW / PAGE + 1;
    let mut local = [libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }; 1];
    let mut remote = [libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }; PIECES];
    let mut pieces = 0;
    let mut at = sp;
    let end = sp.saturating_add(WINDOW);
    while at < end && pieces < PIECES {
        let page_end = (at / PAGE + 1).saturating_mul(PAGE).min(end);
        if let Some(piece) = remote.get_mut(pieces) {
            piece.iov_base = at as *mut c_void;
            piece.iov_len = page_end - at;
        }
        pieces += 1;
        at = page_end;
    }
    if let Some(first) = local.first_mut() {
        first.iov_base = dest.cast();
        first.iov_len = end - sp;
    }
    // SAFETY: reading our own memory through the kernel: an unmapped remote page ends the
    // copy with a short count or EFAULT instead of a fault; `local` covers `dest`, which the
    // caller guarantees for WINDOW bytes (`end - sp <= WINDOW`).
    let copied = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            libc::getpid(),
            local.as_ptr(),
            1usize,
            remote.as_ptr(),
            pieces,
            0usize,
        )
    };
    if copied < 0 { 0 } else { copied as usize }
}

/// Whether `process_vm_readv` on our own pid works here (a seccomp profile may refuse it).
pub(super) fn stack_copy_works() -> io::Result<()> {
    let mut probe = [0u8; WINDOW];
    let marker = [0x5au8; 64];
    let sp = std::hint::black_box(&marker) as *const _ as usize;
    // SAFETY: `probe` is WINDOW bytes on our stack.
    let copied = unsafe { copy_stack(sp, probe.as_mut_ptr()) };
    if copied >= marker.len() && probe[..marker.len()] == marker {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The registers the unwinder needs.
#[derive(Default)]
struct Registers {
    pc: u64,
    sp: u64,
    fp: u64,
    lr: u64,
}

impl Registers {
    #[cfg(target_arch = "x86_64")]
    fn from_context(context: *const c_void) -> Registers {
        // SAFETY: the kernel-built `ucontext_t` of the interrupted code, valid in the handler
        // (checked non-null by `on_tick`).
        let context = unsafe { &*context.cast::<libc::ucontext_t>() };
        let gregs = &context.uc_mcontext.gregs;
        let reg = |i: c_int| gregs.get(i as usize).map_or(0, |&v| v as u64);
        Registers {
            pc: reg(libc::REG_RIP),
            sp: reg(libc::REG_RSP),
            fp: reg(libc::REG_RBP),
            lr: 0,
        }
    }

    #[cfg(target_arch = "aarch64")]
    fn from_context(context: *const c_void) -> Registers {
        // SAFETY: as for x86_64.
        let context = unsafe { &*context.cast::<libc::ucontext_t>() };
        let m = &context.uc_mcontext;
        Registers {
            pc: m.pc,
            sp: m.sp,
            fp: m.regs.get(29).copied().unwrap_or(0),
            lr: m.regs.get(30).copied().unwrap_or(0),
        }
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn from_context(_context: *const c_void) -> Registers {
        Registers::default()
    }
}

/// The kernel's `struct sigevent` for `SIGEV_THREAD_ID` (64 bytes on every Linux ABI we build).
#[repr(C)]
struct KernelSigevent {
    value: u64,
    signo: c_int,
    notify: c_int,
    tid: c_int,
    pad: [c_int; 11],
}

const _: () = assert!(size_of::<KernelSigevent>() == 64);

/// `SIGEV_THREAD_ID` (Linux): deliver to the thread in `tid`.
const SIGEV_THREAD_ID: c_int = 4;

/// One armed CPU-time timer.
#[derive(Debug)]
pub(super) struct ThreadTimer {
    id: c_int,
}

/// The CPU-time clock of thread `tid` (the kernel's `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`).
fn thread_cpu_clock(tid: i32) -> libc::clockid_t {
    ((!tid) << 3) | 6
}

impl ThreadTimer {
    /// Creates and arms a timer on `tid`'s CPU clock that sends `signal` to `tid` with `value`
    /// every `period` of CPU time the thread uses.
    pub(super) fn arm(
        tid: i32,
        signal: c_int,
        value: u64,
        period: Duration,
    ) -> io::Result<ThreadTimer> {
        let event = KernelSigevent {
            value,
            signo: signal,
            notify: libc::SIGEV_SIGNAL | SIGEV_THREAD_ID,
            tid,
            pad: [0; 11],
        };
        let mut id: c_int = 0;
        // SAFETY: valid pointers to a kernel sigevent and an int for the new id.
        let created = unsafe {
            libc::syscall(
                libc::SYS_timer_create,
                thread_cpu_clock(tid),
                &event as *const KernelSigevent,
                &mut id as *mut c_int,
            )
        };
        if created != 0 {
            return Err(io::Error::last_os_error());
        }
        let timer = ThreadTimer { id };
        let spec = libc::itimerspec {
            it_interval: timespec(period),
            it_value: timespec(period),
        };
        // SAFETY: a timer id we own and a valid itimerspec; no old value wanted.
        let armed = unsafe {
            libc::syscall(
                libc::SYS_timer_settime,
                timer.id,
                0,
                &spec as *const libc::itimerspec,
                ptr::null_mut::<libc::itimerspec>(),
            )
        };
        if armed != 0 {
            // `timer` is deleted by its drop.
            return Err(io::Error::last_os_error());
        }
        Ok(timer)
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: deleting a timer id this process created; nothing else uses it.
        unsafe { libc::syscall(libc::SYS_timer_delete, self.id) };
    }
}

fn timespec(duration: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: duration.as_secs() as libc::time_t,
        tv_nsec: duration.subsec_nanos() as libc::c_long,
    }
}
