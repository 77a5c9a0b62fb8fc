//! Unwinding a sample's copy on the profiler's thread, with `framehop`.
//!
//! The unwind tables of every loaded object (`.eh_frame_hdr` and `.eh_frame`, the vDSO's
//! included) are copied out of memory once per profile, before the first timer is armed, and
//! handed to framehop. A sample is then unwound from its registers over its stack window: a read
//! outside the window ends the stack, and the sample is counted as truncated. framehop falls
//! back to frame pointers where an address has no unwind information.

use std::ops::Range;

use framehop::{
    CacheNative, FrameAddress, MayAllocateDuringUnwind, UnwindRegsNative, Unwinder, UnwinderNative,
};

use super::sampler::RawSample;
use crate::stackdump;
use crate::sys::objects;

/// The most frames kept per sample.
pub(super) const MAX_FRAMES: usize = 256;

/// A sample's frames, innermost first: `(address, exact)`, where `exact` marks the interrupted
/// instruction and the others are return addresses.
pub(super) struct Unwound {
    pub frames: Vec<(usize, bool)>,
    /// The unwinder stopped early (a read outside the window, or no rule found).
    pub truncated: bool,
}

/// The process's modules, ready to unwind samples.
pub(super) struct SampleUnwinder {
    unwinder: UnwinderNative<Vec<u8>, MayAllocateDuringUnwind>,
    cache: CacheNative<MayAllocateDuringUnwind>,
    /// Actual ranges of the known modules, to tell a return address from stack garbage.
    ranges: Vec<Range<u64>>,
}

impl SampleUnwinder {
    /// Reads the unwind tables of every loaded object.
    pub(super) fn new() -> SampleUnwinder {
        let mut unwinder = UnwinderNative::new();
        let mut ranges = Vec::new();
        for object in objects::unwind_objects() {
            if object.mapped.is_empty() {
                continue;
            }
            ranges.push(object.mapped.start as u64..object.mapped.end as u64);
            unwinder.add_module(stackdump::unwind_module(&object));
        }
        SampleUnwinder {
            unwinder,
            cache: CacheNative::new(),
            ranges,
        }
    }

    /// How many modules have unwind tables.
    pub(super) fn modules(&self) -> usize {
        self.ranges.len()
    }

    /// Unwinds one sample over its stack window.
    pub(super) fn unwind(&mut self, sample: &RawSample) -> Unwound {
        let stack = &sample.stack;
        let base = sample.sp;
        let mut read_stack = |address: u64| -> Result<u64, ()> {
            let offset = address.checked_sub(base).ok_or(())? as usize;
            let bytes = stack
                .get(offset..offset.checked_add(8).ok_or(())?)
                .ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let regs = native_regs(sample);
        let mut frames = Vec::new();
        let mut truncated = false;
        let mut iter = self
            .unwinder
            .iter_frames(sample.pc, regs, &mut self.cache, &mut read_stack);
        loop {
            match iter.next() {
                Ok(Some(frame)) => {
                    if frames.len() == MAX_FRAMES {
                        truncated = true;
                        break;
                    }
                    let exact = matches!(frame, FrameAddress::InstructionPointer(_));
                    frames.push((frame.address() as usize, exact));
                }
                Ok(None) => break,
                Err(_) => {
                    truncated = true;
                    break;
                }
            }
        }
        // A last "frame" outside every module is what a frame-pointer fallback read off the
        // end of a stack, not code.
        while frames.len() > 1
            && frames.last().is_some_and(|&(address, _)| {
                !self.ranges.iter().any(|r| r.contains(&(address as u64)))
            })
        {
            frames.pop();
        }
        Unwound { frames, truncated }
    }
}

#[cfg(target_arch = "x86_64")]
fn native_regs(sample: &RawSample) -> UnwindRegsNative {
    UnwindRegsNative::new(sample.pc, sample.sp, sample.fp)
}

#[cfg(target_arch = "aarch64")]
fn native_regs(sample: &RawSample) -> UnwindRegsNative {
    UnwindRegsNative::new(sample.lr, sample.sp, sample.fp)
}
