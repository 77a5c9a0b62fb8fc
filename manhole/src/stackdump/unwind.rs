//! Unwinding a copied stack ([`StackImage`]) into return addresses, on the dumping thread, with
//! `framehop` over DWARF CFI (`.eh_frame_hdr` + `.eh_frame`) of every loaded object.
//!
//! * **Tables parsed beforehand, outside any handler.** The loaded objects are listed with
//!   `dl_iterate_phdr` on the dumping thread before each unwind; an object seen for the first
//!   time has its `.eh_frame_hdr` and `.eh_frame` copied out of memory (with the non-faulting
//!   `process_vm_readv` copy, since a concurrent `dlclose` could unmap them) and becomes a
//!   framehop module. Modules that are gone are removed. The unwinder and its rule cache are kept
//!   across dumps, so a warm dump parses nothing.
//! * **The vDSO** is an object like the others (the loader lists it, with its own
//!   `PT_GNU_EH_FRAME`), so a thread interrupted in `clock_gettime` unwinds through it.
//! * **Signal frames.** The copy starts at the interrupted registers, so the dump handler's own
//!   frames and the kernel's signal frame are never part of a stack. A thread that was itself
//!   inside a signal handler of the application shows that handler's frames, then the signal
//!   trampoline (`__restore_rt`); framehop cannot follow the trampoline's hand-written CFI
//!   expression, so unwinding resumes from the `ucontext_t` the kernel left on the stack (see
//!   [`sigreturn_context`]) when it is inside the copied window.
//! * **Bounded reads.** The unwinder reads nothing but the copy: a read outside it ends the stack
//!   (marked truncated when the copy was cut by the window, not by the end of the stack).
//! * Code without CFI (JIT code) falls back to the frame pointer, as framehop does.

use std::collections::HashMap;
use std::ops::Range;

use framehop::{FrameAddress, Unwinder as _};
use parking_lot::Mutex;

use super::handler::StackImage;
use super::symbolize::RawFrame;
use crate::sys::memory;
use crate::sys::objects::{self, UnwindObject};

#[cfg(target_arch = "x86_64")]
type NativeUnwinder = framehop::x86_64::UnwinderX86_64<Vec<u8>>;
#[cfg(target_arch = "x86_64")]
type NativeCache = framehop::x86_64::CacheX86_64;
#[cfg(target_arch = "aarch64")]
type NativeUnwinder = framehop::aarch64::UnwinderAarch64<Vec<u8>>;
#[cfg(target_arch = "aarch64")]
type NativeCache = framehop::aarch64::CacheAarch64;

/// The unwinder and its cache, kept across dumps while a session is open (and shared with the
/// profiler); see [`hold_caches`](super::hold_caches).
static STATE: Mutex<Option<State>> = Mutex::new(None);

/// How unwinding one image ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// framehop found the outermost frame (or a null return address).
    Complete,
    /// The stack went on beyond the copied window.
    Window,
    /// `max_frames` were reached.
    MaxFrames,
    /// Unwinding could not go on (no CFI and no usable frame pointer, a corrupt stack, ...).
    Stopped(String),
    /// Nothing to unwind: no registers (unsupported architecture) or no stack copied.
    NoRegisters,
}

/// One unwound stack.
#[derive(Debug, Clone)]
pub(crate) struct Unwound {
    /// Innermost first: the interrupted instruction (exact), then return addresses.
    pub(crate) frames: Vec<RawFrame>,
    /// The stack pointer in each frame of `frames` (same length).
    pub(crate) stack_pointers: Vec<usize>,
    /// Every stack word the unwinding read, `(address, value)`: the same registers and these
    /// words unwind to the same frames (see `capture`'s reuse of a parked thread's stack).
    pub(crate) words: Vec<(usize, u64)>,
    pub(crate) end: End,
}

impl Unwound {
    /// Whether frames are missing at the outer end.
    pub(crate) fn truncated(&self) -> bool {
        matches!(self.end, End::Window | End::MaxFrames)
    }
}

/// No code is mapped in the lowest page (Linux's `mmap_min_addr` is at least one page).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const NO_CODE_BELOW: usize = 4096;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
struct State {
    unwinder: NativeUnwinder,
    cache: NativeCache,
    /// Modules added, by their start address, with what they were made from.
    modules: HashMap<usize, UnwindObject>,
    /// Return addresses seen, and whether each is the signal trampoline (so its code is read
    /// once, not once per frame).
    trampolines: HashMap<usize, bool>,
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
struct State;

/// Drops the unwinder and the unwind tables it copied (they are made again on the next use).
pub(super) fn release() {
    let dropped = STATE.lock().take();
    drop(dropped);
}

/// A handle on the shared unwinder, up to date with the loaded objects when made.
pub(crate) struct Unwinder {
    state: parking_lot::MutexGuard<'static, Option<State>>,
}

impl Unwinder {
    /// Locks the shared unwinder and brings its module list up to date (normal context only:
    /// this lists the loaded objects and may copy new unwind tables).
    pub(crate) fn current() -> Unwinder {
        let mut state = STATE.lock();
        refresh(&mut state);
        Unwinder { state }
    }

    /// Unwinds `image`, at most `max_frames` frames.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub(crate) fn unwind(&mut self, image: &StackImage<'_>, max_frames: usize) -> Unwound {
        let mut unwound = Unwound {
            frames: Vec::new(),
            stack_pointers: Vec::new(),
            words: Vec::new(),
            end: End::Complete,
        };
        let registers = image.registers;
        let Some(state) = self.state.as_mut() else {
            unwound.end = End::NoRegisters;
            return unwound;
        };
        if registers.pc == 0 || registers.sp == 0 {
            unwound.end = End::NoRegisters;
            return unwound;
        }
        let window = registers.sp..registers.sp + image.bytes.len();
        let mut beyond_window = false;
        let words = std::cell::RefCell::new(Vec::new());
        let mut read_stack = |address: u64| -> Result<u64, ()> {
            let address = usize::try_from(address).map_err(|_| ())?;
            match read_word(image.bytes, &window, address) {
                Some(word) => {
                    words.borrow_mut().push((address, word));
                    Ok(word)
                }
                None => {
                    if address >= window.end && image.window_full {
                        beyond_window = true;
                    }
                    Err(())
                }
            }
        };
        let mut regs = native_registers(image);
        let mut address = FrameAddress::from_instruction_pointer(registers.pc as u64);
        unwound.frames.reserve(max_frames.min(64));
        unwound.frames.push(RawFrame {
            ip: registers.pc,
            exact: true,
        });
        unwound.stack_pointers.push(registers.sp);
        loop {
            if unwound.frames.len() >= max_frames {
                unwound.end = End::MaxFrames;
                break;
            }
            let step =
                state
                    .unwinder
                    .unwind_frame(address, &mut regs, &mut state.cache, &mut read_stack);
            match step {
                Ok(Some(return_address)) => {
                    let Some(next) = FrameAddress::from_return_address(return_address) else {
                        break;
                    };
                    let ip = return_address as usize;
                    if ip < NO_CODE_BELOW {
                        // A guess gone wrong (the frame-pointer fallback through code whose CFI
                        // framehop cannot follow, e.g. inside libgcc's `_Unwind_RaiseException`):
                        // nothing is mapped there, so the stack ends instead of going on from it.
                        unwound.end =
                            End::Stopped(format!("return address {ip:#x} cannot be code"));
                        break;
                    }
                    let trampoline = *state
                        .trampolines
                        .entry(ip)
                        .or_insert_with(|| is_trampoline(ip));
                    if let Some(resumed) = trampoline
                        .then(|| sigreturn_context(image, &window, regs_sp(&regs)))
                        .flatten()
                    {
                        // The trampoline itself is not a frame anyone called: skip to the
                        // instruction the application's handler interrupted.
                        words
                            .borrow_mut()
                            .extend(sigreturn_words(regs_sp(&regs), &resumed));
                        regs = native_registers(&StackImage {
                            registers: resumed,
                            ..*image
                        });
                        address = FrameAddress::from_instruction_pointer(resumed.pc as u64);
                        unwound.frames.push(RawFrame {
                            ip: resumed.pc,
                            exact: true,
                        });
                        unwound.stack_pointers.push(resumed.sp);
                        continue;
                    }
                    unwound.frames.push(RawFrame { ip, exact: false });
                    unwound.stack_pointers.push(regs_sp(&regs));
                    address = next;
                }
                Ok(None) => break,
                Err(error) => {
                    unwound.end = if beyond_window {
                        End::Window
                    } else {
                        End::Stopped(error.to_string())
                    };
                    break;
                }
            }
        }
        if unwound.end == End::Complete && beyond_window {
            unwound.end = End::Window;
        }
        unwound.words = words.into_inner();
        unwound
    }

    /// Unsupported architecture: no unwinding.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub(crate) fn unwind(&mut self, _image: &StackImage<'_>, _max_frames: usize) -> Unwound {
        Unwound {
            frames: Vec::new(),
            stack_pointers: Vec::new(),
            words: Vec::new(),
            end: End::NoRegisters,
        }
    }
}

/// The little-endian word at `address`, if all of it lies in the copy.
fn read_word(bytes: &[u8], window: &Range<usize>, address: usize) -> Option<u64> {
    let offset = address.checked_sub(window.start)?;
    let word = bytes.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(word.try_into().ok()?))
}

#[cfg(target_arch = "x86_64")]
fn native_registers(image: &StackImage<'_>) -> framehop::x86_64::UnwindRegsX86_64 {
    let r = image.registers;
    framehop::x86_64::UnwindRegsX86_64::new(r.pc as u64, r.sp as u64, r.fp as u64)
}

#[cfg(target_arch = "x86_64")]
fn regs_sp(regs: &framehop::x86_64::UnwindRegsX86_64) -> usize {
    regs.sp() as usize
}

#[cfg(target_arch = "aarch64")]
fn native_registers(image: &StackImage<'_>) -> framehop::aarch64::UnwindRegsAarch64 {
    let r = image.registers;
    framehop::aarch64::UnwindRegsAarch64::new(r.lr as u64, r.sp as u64, r.fp as u64)
}

#[cfg(target_arch = "aarch64")]
fn regs_sp(regs: &framehop::aarch64::UnwindRegsAarch64) -> usize {
    regs.sp() as usize
}

/// Whether the code at `return_address` is the signal trampoline (x86_64 `__restore_rt`:
/// `mov $15, %rax; syscall`), read with the non-faulting copy.
#[cfg(target_arch = "x86_64")]
fn is_trampoline(return_address: usize) -> bool {
    // `mov $0xf, %rax` (48 c7 c0 0f 00 00 00), `syscall` (0f 05).
    const RESTORE_RT: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
    memory::read_own(return_address, RESTORE_RT.len()) == RESTORE_RT
}

/// The registers of the code an application's signal handler interrupted, read from the
/// `ucontext_t` that `sp` (the stack pointer once the handler returned into the trampoline)
/// points at. Only from the copy, so a wrong guess reads nothing outside it.
#[cfg(target_arch = "x86_64")]
fn sigreturn_context(
    image: &StackImage<'_>,
    window: &Range<usize>,
    sp: usize,
) -> Option<super::handler::CopiedRegisters> {
    // `struct rt_sigframe` after `ret` popped `pretcode`: `sp` is the `ucontext_t`, whose
    // `uc_mcontext.gregs` start 40 bytes in; rbp, rsp and rip are gregs 10, 15 and 16.
    let greg = |index: usize| read_word(image.bytes, window, sp + 40 + 8 * index);
    Some(super::handler::CopiedRegisters {
        pc: greg(16)? as usize,
        sp: greg(15)? as usize,
        fp: greg(10)? as usize,
        lr: 0,
    })
}

/// The stack words [`sigreturn_context`] read at `sp` to give `resumed`, as `(address, value)`.
#[cfg(target_arch = "x86_64")]
fn sigreturn_words(sp: usize, resumed: &super::handler::CopiedRegisters) -> [(usize, u64); 3] {
    let at = |index: usize| sp + 40 + 8 * index;
    [
        (at(16), resumed.pc as u64),
        (at(15), resumed.sp as u64),
        (at(10), resumed.fp as u64),
    ]
}

#[cfg(not(target_arch = "x86_64"))]
fn sigreturn_words(_sp: usize, _resumed: &super::handler::CopiedRegisters) -> [(usize, u64); 0] {
    []
}

/// aarch64: the trampoline is left to framehop's own CFI handling.
#[cfg(not(target_arch = "x86_64"))]
fn is_trampoline(_return_address: usize) -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn sigreturn_context(
    _image: &StackImage<'_>,
    _window: &Range<usize>,
    _sp: usize,
) -> Option<super::handler::CopiedRegisters> {
    None
}

/// Adds the objects loaded since the last call and removes those that are gone.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn refresh(state: &mut Option<State>) {
    let state = state.get_or_insert_with(|| State {
        unwinder: NativeUnwinder::new(),
        cache: NativeCache::new(),
        modules: HashMap::new(),
        trampolines: HashMap::new(),
    });
    let current = objects::unwind_objects();
    let mut seen: HashMap<usize, ()> = HashMap::with_capacity(current.len());
    for object in current {
        if object.mapped.is_empty() {
            continue;
        }
        let start = object.mapped.start;
        seen.insert(start, ());
        match state.modules.get(&start) {
            Some(known) if *known == object => continue,
            Some(_) => state.unwinder.remove_module(start as u64),
            None => {}
        }
        state.unwinder.add_module(module_for(&object));
        state.modules.insert(start, object);
    }
    let gone: Vec<usize> = state
        .modules
        .keys()
        .copied()
        .filter(|start| !seen.contains_key(start))
        .collect();
    for start in &gone {
        state.unwinder.remove_module(*start as u64);
        state.modules.remove(start);
    }
    if !gone.is_empty() || state.trampolines.len() > 64 * 1024 {
        state.trampolines.clear();
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn refresh(state: &mut Option<State>) {
    *state = Some(State);
}

/// A framehop module for `object`, its unwind tables copied out of memory.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn module_for(object: &UnwindObject) -> framehop::Module<Vec<u8>> {
    let mut info = framehop::ExplicitModuleSectionInfo::<Vec<u8>> {
        base_svma: 0,
        text_svma: object.text.as_ref().map(to_u64_range),
        ..Default::default()
    };
    if let (Some(hdr), Some(segment)) = (&object.eh_frame_hdr, &object.eh_segment) {
        let hdr_bytes = memory::read_own(object.base.wrapping_add(hdr.start), hdr.len());
        if let Some(eh_frame) = eh_frame_address(&hdr_bytes, hdr.start)
            && eh_frame >= segment.start
            && eh_frame < segment.end
        {
            let mut eh_frame_bytes =
                memory::read_own(object.base.wrapping_add(eh_frame), segment.end - eh_frame);
            eh_frame_bytes.truncate(eh_frame_len(&eh_frame_bytes));
            info.eh_frame_svma = Some(eh_frame as u64..(eh_frame + eh_frame_bytes.len()) as u64);
            info.eh_frame = Some(eh_frame_bytes);
            info.eh_frame_hdr_svma = Some(to_u64_range(hdr));
            info.eh_frame_hdr = Some(hdr_bytes);
        }
    }
    let name = if object.path.is_empty() {
        "<main program>".to_string()
    } else {
        object.path.clone()
    };
    framehop::Module::new(name, to_u64_range(&object.mapped), object.base as u64, info)
}

fn to_u64_range(range: &Range<usize>) -> Range<u64> {
    range.start as u64..range.end as u64
}

/// The file address of `.eh_frame` from the `.eh_frame_hdr` at file address `hdr_address`:
/// its `eh_frame_ptr` field, in the encodings linkers use.
fn eh_frame_address(hdr: &[u8], hdr_address: usize) -> Option<usize> {
    let (&version, rest) = hdr.split_first()?;
    let &encoding = rest.first()?;
    if version != 1 {
        return None;
    }
    let field = hdr.get(4..)?;
    let value: i64 = match encoding & 0x0f {
        0x03 => i64::from(u32::from_le_bytes(field.get(..4)?.try_into().ok()?)),
        0x0b => i64::from(i32::from_le_bytes(field.get(..4)?.try_into().ok()?)),
        0x04 | 0x0c => i64::from_le_bytes(field.get(..8)?.try_into().ok()?),
        _ => return None,
    };
    let base = match encoding & 0x70 {
        0x00 => 0,
        0x10 => hdr_address as i64 + 4,
        0x30 => hdr_address as i64,
        _ => return None,
    };
    usize::try_from(base.checked_add(value)?).ok()
}

/// The length of the `.eh_frame` records at the start of `bytes`, up to and including the zero
/// terminator (or as far as whole records go).
fn eh_frame_len(bytes: &[u8]) -> usize {
    let mut at = 0usize;
    loop {
        let Some(length) = bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
        else {
            return at.min(bytes.len());
        };
        let next = match length {
            0 => return at + 4,
            0xffff_ffff => {
                let Some(long) = bytes
                    .get(at + 4..at + 12)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
                else {
                    return at;
                };
                usize::try_from(long)
                    .ok()
                    .and_then(|long| (at + 12).checked_add(long))
            }
            short => (at + 4).checked_add(short as usize),
        };
        match next {
            Some(next) if next <= bytes.len() => at = next,
            _ => return at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eh_frame_records_end_at_the_terminator() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(&[1; 8]);
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&[0xee; 32]);
        assert_eq!(eh_frame_len(&bytes), 16);
        assert_eq!(eh_frame_len(&bytes[..10]), 0);
    }

    #[test]
    fn eh_frame_pointer_is_pc_relative() {
        // version 1, pcrel|sdata4, then -0x100 relative to the field at hdr + 4.
        let mut hdr = vec![1, 0x1b, 0x03, 0x3b];
        hdr.extend_from_slice(&(-0x100i32).to_le_bytes());
        assert_eq!(eh_frame_address(&hdr, 0x2000), Some(0x2000 + 4 - 0x100));
        hdr[1] = 0x03;
        hdr[4..8].copy_from_slice(&0x1234u32.to_le_bytes());
        assert_eq!(eh_frame_address(&hdr, 0x2000), Some(0x1234));
    }

    #[test]
    fn own_stack_unwinds_to_main_frames() {
        let mut buffer = vec![0u8; super::super::handler::WINDOW];
        let (registers, copied) = super::super::handler::copy_own_stack(&mut buffer);
        let image = StackImage {
            registers,
            bytes: &buffer[..copied],
            window_full: copied == buffer.len(),
        };
        let unwound = Unwinder::current().unwind(&image, 128);
        assert!(
            unwound.frames.len() > 5,
            "{unwound:?} from {registers:x?}, {copied} bytes"
        );
    }
}
