//! The loaded objects (the executable, shared libraries, the vDSO) as the dynamic loader lists
//! them with `dl_iterate_phdr`: their load bias, mapped segments and unwind-table location.
//!
//! Normal context only: `dl_iterate_phdr` takes the loader lock. The dump handler never calls
//! this; the dumper does, before it unwinds (and the symbolizer, to name modules).

#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_void};
use std::ops::Range;
use std::ptr;

/// One loaded object.
#[derive(Debug, Clone)]
pub(crate) struct LoadedObject {
    /// Its path as the loader knows it; empty for the main executable.
    pub(crate) path: String,
    /// The load bias: file virtual addresses are `address - base`.
    pub(crate) base: usize,
    /// Mapped `PT_LOAD` ranges `[start, end)` in process addresses.
    pub(crate) segments: Vec<(usize, usize)>,
}

/// What the unwinder needs of one loaded object, in file (stated) addresses unless noted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnwindObject {
    /// Its path as the loader knows it; empty for the main executable.
    pub(crate) path: String,
    /// The load bias (process address = file address + base).
    pub(crate) base: usize,
    /// All its `PT_LOAD` segments, in process addresses (lowest start to highest end).
    pub(crate) mapped: Range<usize>,
    /// Its executable segments' span, in file addresses.
    pub(crate) text: Option<Range<usize>>,
    /// `PT_GNU_EH_FRAME` (the `.eh_frame_hdr` section), in file addresses.
    pub(crate) eh_frame_hdr: Option<Range<usize>>,
    /// The `PT_LOAD` segment that contains `.eh_frame_hdr` (where `.eh_frame` lives too), in
    /// file addresses.
    pub(crate) eh_segment: Option<Range<usize>>,
}

struct Collected {
    loaded: Vec<LoadedObject>,
    unwind: Vec<UnwindObject>,
}

/// Lists the loaded objects.
pub(crate) fn loaded_objects() -> Vec<LoadedObject> {
    collect().loaded
}

/// Lists the loaded objects with their unwind-table locations.
pub(crate) fn unwind_objects() -> Vec<UnwindObject> {
    collect().unwind
}

fn collect() -> Collected {
    let mut collected = Collected {
        loaded: Vec::new(),
        unwind: Vec::new(),
    };
    // SAFETY: the callback matches the declared signature and only uses `data` as the
    // `Collected` we pass here, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(collect_object),
            ptr::from_mut(&mut collected).cast::<c_void>(),
        )
    };
    collected
}

/// `dl_iterate_phdr` callback: records one object; never panics (it would abort).
unsafe extern "C" fn collect_object(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    if info.is_null() || data.is_null() {
        return 0;
    }
    // SAFETY: `data` is the `&mut Collected` given to `dl_iterate_phdr` in `collect`,
    // exclusively ours for the duration of the call.
    let collected = unsafe { &mut *data.cast::<Collected>() };
    // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of the callback.
    let info = unsafe { &*info };
    let path = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: `dlpi_name` is a NUL-terminated string owned by the loader, valid during the
        // callback.
        unsafe { CStr::from_ptr(info.dlpi_name) }
            .to_string_lossy()
            .into_owned()
    };
    let headers = if info.dlpi_phdr.is_null() {
        &[][..]
    } else {
        // SAFETY: the loader guarantees `dlpi_phnum` program headers at `dlpi_phdr`.
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
    };
    let base = info.dlpi_addr as usize;
    let file_range = |header: &libc::Elf64_Phdr| {
        let start = header.p_vaddr as usize;
        start..start.wrapping_add(header.p_memsz as usize)
    };
    let loads: Vec<&libc::Elf64_Phdr> = headers
        .iter()
        .filter(|header| header.p_type == libc::PT_LOAD)
        .collect();
    let segments: Vec<(usize, usize)> = loads
        .iter()
        .map(|header| {
            let range = file_range(header);
            (base.wrapping_add(range.start), base.wrapping_add(range.end))
        })
        .collect();
    let eh_frame_hdr = headers
        .iter()
        .find(|header| header.p_type == libc::PT_GNU_EH_FRAME)
        .map(file_range);
    let eh_segment = eh_frame_hdr.as_ref().and_then(|hdr| {
        loads
            .iter()
            .map(|header| file_range(header))
            .find(|range| range.contains(&hdr.start))
    });
    let text = loads
        .iter()
        .filter(|header| header.p_flags & libc::PF_X != 0)
        .map(|header| file_range(header))
        .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end));
    let mapped = segments
        .iter()
        .map(|&(start, end)| start..end)
        .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end))
        .unwrap_or(0..0);
    collected.unwind.push(UnwindObject {
        path: path.clone(),
        base,
        mapped,
        text,
        eh_frame_hdr,
        eh_segment,
    });
    collected.loaded.push(LoadedObject {
        path,
        base,
        segments,
    });
    0
}

/// Maps `file` read-only, for reading its symbol table: file-backed pages, which the kernel can
/// drop and read again, not heap memory of the host's.
pub(crate) fn map_file(file: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is private and read-only; a loaded object's file is not rewritten in
    // place while it is mapped by the loader (installers replace files by rename), and every
    // reader of the bytes (`object`) checks offsets and sizes rather than trusting them.
    unsafe { memmap2::Mmap::map(file) }
}
