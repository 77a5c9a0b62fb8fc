//! Turning raw return addresses into [`Frame`]s: module and offset, then function, file and line.
//!
//! This runs after the capture, on the dumping thread, in normal context: resolving allocates,
//! takes the `backtrace` crate's lock and parses debug info, none of which a signal handler may do.
//!
//! * **Off-by-one.** `backtrace::resolve` subtracts one from every address, because a return
//!   address points *after* the call. The interrupted program counter of a signalled thread is
//!   the exact instruction, so it is resolved as `pc + 1`.
//! * **Modules.** Every frame gets the object it lies in and its offset from the object's load
//!   bias (what `addr2line -e <module>` expects), from a `dl_iterate_phdr` snapshot taken per
//!   dump, so a frame without symbols (stripped code, the vDSO, a library `dlopen`ed after the
//!   symbolizer first ran) can still be symbolized offline.
//! * **Cache.** Resolved addresses are kept across dumps (up to [`CACHE_LIMIT`] entries, then the
//!   cache starts over), so a second dump of a mostly unchanged process costs little more than
//!   its capture. The first resolve parses the executable's debug info: tens of milliseconds and
//!   tens of MiB that the `backtrace` crate keeps.
//! * **Budget.** Once the first address is resolved (which loads the debug info, however long
//!   that takes), at most [`TIME_BUDGET`] more is spent; the remaining frames then get no symbols
//!   (module and offset only) rather than keeping the caller waiting.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Frame, FrameSymbol};
use crate::sys::objects::{self as capture, LoadedObject};

/// Most cached addresses before the cache is cleared.
pub(super) const CACHE_LIMIT: usize = 64 * 1024;
/// Longest time spent resolving for one dump.
pub(super) const TIME_BUDGET: Duration = Duration::from_secs(5);

/// Resolved symbols by the address handed to `backtrace::resolve`.
static CACHE: Mutex<Option<HashMap<usize, Arc<[FrameSymbol]>>>> = Mutex::new(None);

/// A raw address to symbolize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawFrame {
    /// The address as captured.
    pub(super) ip: usize,
    /// True for an interrupted program counter (the exact instruction), false for a return
    /// address (the instruction after a call).
    pub(super) exact: bool,
}

/// Symbolizes batches of frames for one dump with one module snapshot and one time budget.
pub(super) struct Symbolizer {
    /// Mapped segments `(start, end, object index)`, sorted by start.
    segments: Vec<(usize, usize, usize)>,
    objects: Vec<(Arc<str>, usize)>,
    /// Set once the first address was resolved (the debug info is loaded by then).
    deadline: Option<Instant>,
}

impl Symbolizer {
    /// Takes the module snapshot.
    pub(super) fn new() -> Symbolizer {
        let exe: Arc<str> = std::fs::read_link("/proc/self/exe")
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "<main program>".to_string())
            .into();
        let mut objects = Vec::new();
        let mut segments = Vec::new();
        for (
            index,
            LoadedObject {
                path,
                base,
                segments: ranges,
            },
        ) in capture::loaded_objects().into_iter().enumerate()
        {
            let name: Arc<str> = if path.is_empty() {
                exe.clone()
            } else {
                path.into()
            };
            objects.push((name, base));
            segments.extend(
                ranges
                    .into_iter()
                    .filter(|(start, end)| start < end)
                    .map(|(s, e)| (s, e, index)),
            );
        }
        segments.sort_unstable();
        Symbolizer {
            segments,
            objects,
            deadline: None,
        }
    }

    /// The object containing `ip` and `ip`'s offset from its load bias.
    fn module_of(&self, ip: usize) -> Option<(Arc<str>, usize)> {
        let after = self.segments.partition_point(|&(start, _, _)| start <= ip);
        let &(_, end, index) = self.segments.get(after.checked_sub(1)?)?;
        if ip >= end {
            return None;
        }
        let (name, base) = self.objects.get(index)?;
        Some((name.clone(), ip.wrapping_sub(*base)))
    }

    /// Symbolizes `frames`, innermost first.
    pub(super) fn frames(&mut self, frames: &[RawFrame]) -> Vec<Frame> {
        let mut cache = CACHE.lock();
        let cache = cache.get_or_insert_with(HashMap::new);
        frames
            .iter()
            .map(|raw| {
                let (module, module_offset) = match self.module_of(raw.ip) {
                    Some((module, offset)) => (Some(module), Some(offset)),
                    None => (None, None),
                };
                let symbols = self.symbols(cache, raw);
                Frame {
                    ip: raw.ip,
                    module,
                    module_offset,
                    symbols,
                }
            })
            .collect()
    }

    fn symbols(
        &mut self,
        cache: &mut HashMap<usize, Arc<[FrameSymbol]>>,
        raw: &RawFrame,
    ) -> Arc<[FrameSymbol]> {
        // `resolve` looks at `addr - 1`: right for return addresses, one short for an exact PC.
        let addr = if raw.exact {
            raw.ip.wrapping_add(1)
        } else {
            raw.ip
        };
        if let Some(known) = cache.get(&addr) {
            return known.clone();
        }
        if raw.ip == 0
            || self
                .deadline
                .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return Arc::from([]);
        }
        let mut symbols = Vec::new();
        backtrace::resolve(addr as *mut c_void, |symbol| {
            symbols.push(FrameSymbol {
                name: symbol.name().map(|name| format!("{name:#}")),
                file: symbol.filename().map(short_path),
                line: symbol.lineno(),
            });
        });
        self.deadline
            .get_or_insert_with(|| Instant::now() + TIME_BUDGET);
        let symbols: Arc<[FrameSymbol]> = symbols.into();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(addr, symbols.clone());
        symbols
    }
}

/// Makes a source path readable: the Rust standard library as `library/...` (dropping
/// `/rustc/<commit>/`), registry crates as `<crate>-<version>/...`, and files under the current
/// directory relative to it. Anything else stays as it is.
pub(crate) fn short_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    if let Some(rest) = text.strip_prefix("/rustc/")
        && let Some((_commit, inside)) = rest.split_once('/')
    {
        return inside.to_string();
    }
    if let Some(at) = text.find("/registry/src/")
        && let Some((_index, inside)) = text[at + "/registry/src/".len()..].split_once('/')
    {
        return inside.to_string();
    }
    if let Ok(cwd) = std::env::current_dir()
        && let Ok(inside) = path.strip_prefix(&cwd)
    {
        return inside.display().to_string();
    }
    text.into_owned()
}

/// Whether a resolved frame belongs to the dump machinery (`manhole::stackdump` or the
/// `backtrace` crate) rather than to the application. Only a fallback for when frames cannot be
/// told apart by stack address: names from line-tables-only debug info can be unqualified. The
/// frame's function is its outermost symbol; symbols inlined into it do not count.
pub(super) fn is_machinery(frame: &Frame) -> bool {
    frame
        .symbols
        .last()
        .and_then(|symbol| symbol.name.as_deref())
        .is_some_and(|name| {
            let name = name.trim_start_matches('<');
            name.starts_with("manhole::stackdump::") || name.starts_with("backtrace::")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_shortened_only_where_known() {
        assert_eq!(
            short_path(Path::new(
                "/rustc/0123456789abcdef/library/std/src/thread/mod.rs"
            )),
            "library/std/src/thread/mod.rs"
        );
        assert_eq!(
            short_path(Path::new(
                "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libc-0.2.1/src/lib.rs"
            )),
            "libc-0.2.1/src/lib.rs"
        );
        assert_eq!(short_path(Path::new("/elsewhere/x.rs")), "/elsewhere/x.rs");
    }

    #[inline(never)]
    fn marker_for_symbolize_test() -> usize {
        marker_for_symbolize_test as *const () as usize
    }

    #[test]
    fn an_exact_pc_resolves_to_its_own_function() {
        let start = marker_for_symbolize_test();
        let mut symbolizer = Symbolizer::new();
        // The first instruction of a function, as an exact PC, must not resolve to whatever
        // precedes it in the binary.
        let frames = symbolizer.frames(&[RawFrame {
            ip: start,
            exact: true,
        }]);
        let name = frames[0]
            .symbols
            .first()
            .and_then(|s| s.name.clone())
            .unwrap_or_default();
        assert!(name.ends_with("marker_for_symbolize_test"), "{name}");
        assert!(frames[0].module.is_some() && frames[0].module_offset.is_some());
    }
}
