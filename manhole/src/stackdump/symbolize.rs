//! Turning raw return addresses into [`Frame`]s: module and offset, then function, file and line;
//! and data addresses into the static they lie in ([`static_symbol_at`]).
//!
//! This runs after the capture, on the dumping thread, in normal context: resolving maps files,
//! allocates and parses debug info, none of which a signal handler may do.
//!
//! * **Modules.** Every frame gets the object it lies in and its offset from the object's load
//!   bias (what `addr2line -e <module>` expects), from a `dl_iterate_phdr` snapshot taken per
//!   dump, so a frame without symbols (stripped code, the vDSO, a module whose debug info could
//!   not be loaded) can still be symbolized offline.
//! * **Symbols.** Per module, `addr2line` (gimli) reads the DWARF of the mapped file: function
//!   names with inlined frames, file and line. A module without DWARF gets its ELF symbol table's
//!   function name. Off-by-one: a return address points after its call, so `offset - 1` is
//!   looked up; the interrupted program counter of a signalled thread is the exact instruction.
//! * **Memory.** Files are mapped, not read (file pages, not the host's heap); what the parsing
//!   allocates lives in one cache that is kept while any session is open
//!   ([`hold_caches`](super::hold_caches)) and for `CACHE_GRACE` (5 s) after the last one ends,
//!   so the next `manhole-cli` call finds it warm; then it is freed on a short-lived thread and
//!   the heap trimmed (right after a dump made outside a session). An idle manhole keeps nothing
//!   and has no timer.
//! * **Short of memory.** Before loading a module's debug info the headroom is checked
//!   (`RLIMIT_AS` against `VmSize`, the cgroup's `memory.max`, `MemAvailable`). When it is short
//!   the module's frames get module and offset only, and the dump carries a note saying why
//!   ([`StackDump::notes`](super::StackDump::notes)) instead of the host being aborted by a
//!   failed allocation.
//! * **Budget.** Once the first address is resolved (which loads the debug info, however long
//!   that takes), at most [`TIME_BUDGET`] more is spent; the remaining frames then get no symbols
//!   (module and offset only) rather than keeping the caller waiting.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object::{Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, SymbolKind};
use parking_lot::Mutex;

use super::{Frame, FrameSymbol};
use crate::sys::objects::{self as capture, LoadedObject};
use crate::sys::procfs::{self, Headroom};

/// Most cached addresses before the address cache is cleared.
pub(super) const CACHE_LIMIT: usize = 64 * 1024;
/// Longest time spent resolving for one dump.
pub(super) const TIME_BUDGET: Duration = Duration::from_secs(5);
/// What parsing one module's debug info may allocate at least, on top of mapping its file
/// (measured: about a third of the file for the example apps; see docs/benchmarks.md).
const PARSE_RESERVE: u64 = 16 << 20;

/// What symbolizing has loaded: kept while a session is open, dropped after
/// ([`hold_caches`](super::hold_caches)).
static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
#[derive(Default)]
struct Cache {
    /// Debug info by module path.
    modules: HashMap<Arc<str>, ModuleDebug>,
    /// Resolved symbols by process address (as looked up: return addresses already minus one).
    resolved: HashMap<usize, Arc<[FrameSymbol]>>,
}

/// One module's debug info, or why it has none.
struct ModuleDebug {
    loader: Result<addr2line::Loader, String>,
    /// Sized data symbols (start, size, mangled name) by start; read on first use.
    data: Option<Vec<(u64, u64, Box<str>)>>,
}

/// Drops what symbolizing loaded (the caller then trims the heap).
pub(super) fn release() {
    let dropped = CACHE.lock().take();
    drop(dropped);
}

/// A static (an ELF `STT_OBJECT` symbol) that a data address lies in.
#[allow(
    dead_code,
    reason = "for the lock-wait grouping of #12 (futex address -> static)"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StaticSymbol {
    /// Its demangled name, without the hash (`app::SHARED_LOCK`).
    pub(crate) name: String,
    /// How far into it the address lies.
    pub(crate) offset: usize,
    /// The module it belongs to.
    pub(crate) module: Arc<str>,
}

/// The static that `addr` lies in, from the symbol table of the module mapped there; `None` for
/// the heap, stacks, or an address no sized data symbol covers. Normal context only.
pub(crate) fn static_symbol_at(addr: usize) -> Option<StaticSymbol> {
    let symbolizer = Symbolizer::new();
    let (module, offset) = symbolizer.module_of(addr)?;
    let mut guard = CACHE.lock();
    let cache = guard.get_or_insert_with(Cache::default);
    let debug = symbolizer.module_debug(cache, &module)?;
    let data = debug
        .data
        .get_or_insert_with(|| data_symbols(&open_path(&module)));
    let offset = offset as u64;
    let after = data.partition_point(|&(start, _, _)| start <= offset);
    let (start, size, name) = data.get(after.checked_sub(1)?)?;
    if offset >= start + size {
        return None;
    }
    Some(StaticSymbol {
        name: addr2line::demangle_auto(Cow::from(&**name), None).into_owned(),
        offset: (offset - start) as usize,
        module,
    })
}

/// The sized data symbols of the file at `path`, sorted by address.
fn data_symbols(path: &str) -> Vec<(u64, u64, Box<str>)> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let Ok(map) = capture::map_file(&file) else {
        return Vec::new();
    };
    let Ok(object) = object::File::parse(&*map) else {
        return Vec::new();
    };
    let mut symbols: Vec<(u64, u64, Box<str>)> = object
        .symbol_table()
        .or_else(|| object.dynamic_symbol_table())
        .map(|table| {
            table
                .symbols()
                .filter(|s| s.kind() == SymbolKind::Data && s.is_definition() && s.size() > 0)
                .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.into())))
                .collect()
        })
        .unwrap_or_default();
    symbols.sort_unstable_by_key(|&(start, _, _)| start);
    symbols
}

/// The path to open for a module: the main program through `/proc/self/exe` (right even if the
/// file was replaced or deleted since).
fn open_path(module: &str) -> Cow<'_, str> {
    if module == MAIN_PROGRAM || module.ends_with(" (deleted)") {
        Cow::Borrowed("/proc/self/exe")
    } else {
        Cow::Borrowed(module)
    }
}

/// What `dl_iterate_phdr` calls the main program (an empty path) is named by this until
/// `/proc/self/exe` gives its real path.
const MAIN_PROGRAM: &str = "<main program>";

/// Loads the debug info of `path`, if the host has room for it.
fn load_module(path: &str, headroom: Headroom) -> Result<addr2line::Loader, String> {
    let path = &separate_debug_file(path).unwrap_or_else(|| path.to_string());
    let file_len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read it: {e}"))?
        .len();
    // Parsing allocates about a third of the file; compressed sections are inflated on the heap.
    let parse = PARSE_RESERVE.max(file_len) + inflated_size(path);
    if let Some(left) = headroom.address_space
        && left < file_len + parse
    {
        return Err(format!(
            "not loaded: {} of address space left under RLIMIT_AS, its debug info needs about {}",
            Mib(left),
            Mib(file_len + parse),
        ));
    }
    if let Some(left) = headroom.memory
        && left < parse
    {
        return Err(format!(
            "not loaded: {} of memory left (cgroup memory.max or MemAvailable), its debug info needs about {}",
            Mib(left),
            Mib(parse),
        ));
    }
    addr2line::Loader::new(path).map_err(|e| format!("cannot load its debug info: {e}"))
}

/// What the compressed sections of the file at `path` take once inflated (0 if it cannot be
/// read: then loading it fails too).
fn inflated_size(path: &str) -> u64 {
    let Ok(file) = std::fs::File::open(path) else {
        return 0;
    };
    let Ok(map) = capture::map_file(&file) else {
        return 0;
    };
    let Ok(object) = object::File::parse(&*map) else {
        return 0;
    };
    object
        .sections()
        .filter_map(|section| section.compressed_file_range().ok())
        .filter(|range| range.format != object::CompressionFormat::None)
        .map(|range| range.uncompressed_size)
        .sum()
}

/// Where the DWARF of a module without any lives, if it was installed apart (`libc6-dbg` and
/// the like): by build id under `/usr/lib/debug/.build-id/`, else by `.gnu_debuglink` next to the
/// module, in its `.debug/` or under `/usr/lib/debug` (gdb's search order).
fn separate_debug_file(path: &str) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let map = capture::map_file(&file).ok()?;
    let object = object::File::parse(&*map).ok()?;
    if object.section_by_name(".debug_info").is_some() {
        return None;
    }
    let mut candidates = Vec::new();
    if let Ok(Some(id)) = object.build_id()
        && let [first, rest @ ..] = id
    {
        let hex: String = rest.iter().map(|b| format!("{b:02x}")).collect();
        candidates.push(format!("/usr/lib/debug/.build-id/{first:02x}/{hex}.debug"));
    }
    if let Ok(Some((name, _crc))) = object.gnu_debuglink()
        && let Ok(name) = std::str::from_utf8(name)
    {
        let real = std::fs::canonicalize(path).ok()?;
        let dir = real.parent()?.display().to_string();
        candidates.push(format!("{dir}/{name}"));
        candidates.push(format!("{dir}/.debug/{name}"));
        candidates.push(format!("/usr/lib/debug{dir}/{name}"));
    }
    candidates
        .into_iter()
        .find(|candidate| candidate != path && Path::new(candidate).is_file())
}

/// Bytes shown in MiB.
struct Mib(u64);

impl std::fmt::Display for Mib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} MiB", self.0 as f64 / (1 << 20) as f64)
    }
}

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
    /// Why some frames have no symbols, once each.
    notes: Vec<String>,
}

impl Symbolizer {
    /// Takes the module snapshot.
    pub(super) fn new() -> Symbolizer {
        let exe: Arc<str> = std::fs::read_link("/proc/self/exe")
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| MAIN_PROGRAM.to_string())
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
            notes: Vec::new(),
        }
    }

    /// Why some frames got no symbols (each reason once).
    pub(super) fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
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

    /// The cached debug info of `module`, loading it first if it is not cached yet. `None` for
    /// what is not a file (the vDSO).
    fn module_debug<'c>(
        &self,
        cache: &'c mut Cache,
        module: &Arc<str>,
    ) -> Option<&'c mut ModuleDebug> {
        if module.starts_with("linux-vdso") || module.starts_with("linux-gate") {
            return None;
        }
        if !cache.modules.contains_key(module) {
            let loader = load_module(&open_path(module), procfs::memory_headroom());
            cache.modules.try_reserve(1).ok()?;
            cache
                .modules
                .insert(module.clone(), ModuleDebug { loader, data: None });
        }
        cache.modules.get_mut(module)
    }

    /// Symbolizes `frames`, innermost first.
    pub(super) fn frames(&mut self, frames: &[RawFrame]) -> Vec<Frame> {
        let mut guard = CACHE.lock();
        let cache = guard.get_or_insert_with(Cache::default);
        let mut out = Vec::new();
        if out.try_reserve_exact(frames.len()).is_err() {
            self.note("no memory left to symbolize; frames show module + offset only".into());
        }
        for raw in frames {
            let (module, module_offset) = match self.module_of(raw.ip) {
                Some((module, offset)) => (Some(module), Some(offset)),
                None => (None, None),
            };
            let symbols = match (&module, module_offset) {
                (Some(module), Some(offset)) => self.symbols(cache, raw, module, offset),
                _ => Arc::from([]),
            };
            out.push(Frame {
                ip: raw.ip,
                module,
                module_offset,
                symbols,
            });
        }
        out
    }

    fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    fn symbols(
        &mut self,
        cache: &mut Cache,
        raw: &RawFrame,
        module: &Arc<str>,
        offset: usize,
    ) -> Arc<[FrameSymbol]> {
        // A return address is one past its call: look up the call itself.
        let back = usize::from(!raw.exact);
        let (addr, probe) = (raw.ip.wrapping_sub(back), offset.wrapping_sub(back) as u64);
        if let Some(known) = cache.resolved.get(&addr) {
            return known.clone();
        }
        if raw.ip == 0
            || self
                .deadline
                .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return Arc::from([]);
        }
        let Some(debug) = self.module_debug(cache, module) else {
            return Arc::from([]);
        };
        let loader = match &debug.loader {
            Ok(loader) => loader,
            Err(why) => {
                let note =
                    format!("no symbols for {module}: {why}; its frames show module + offset only");
                self.note(note);
                return Arc::from([]);
            }
        };
        let symbols: Arc<[FrameSymbol]> = resolve(loader, probe).into();
        self.deadline
            .get_or_insert_with(|| Instant::now() + TIME_BUDGET);
        if cache.resolved.len() >= CACHE_LIMIT {
            cache.resolved.clear();
        }
        if cache.resolved.try_reserve(1).is_ok() {
            cache.resolved.insert(addr, symbols.clone());
        }
        symbols
    }
}

/// The function, file and line at `probe` (a file address), inlined frames first; from the
/// symbol table when there is no DWARF for it.
fn resolve(loader: &addr2line::Loader, probe: u64) -> Vec<FrameSymbol> {
    let mut symbols = Vec::new();
    if let Ok(mut frames) = loader.find_frames(probe) {
        while let Ok(Some(frame)) = frames.next() {
            let name = frame
                .function
                .as_ref()
                .and_then(|f| f.demangle().ok())
                .map(Cow::into_owned);
            let (file, line) = match frame.location {
                Some(location) => (
                    location.file.map(|f| short_path(Path::new(f))),
                    location.line,
                ),
                None => (None, None),
            };
            symbols.push(FrameSymbol { name, file, line });
        }
    }
    let outer_named = symbols.last().is_some_and(|s| s.name.is_some());
    if !outer_named && let Some(name) = loader.find_symbol(probe) {
        let name = addr2line::demangle_auto(Cow::from(name), None).into_owned();
        match symbols.last_mut() {
            Some(last) => last.name = Some(name),
            None => symbols.push(FrameSymbol {
                name: Some(name),
                file: None,
                line: None,
            }),
        }
    }
    symbols
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

/// Whether a resolved frame belongs to the dump machinery (`manhole::stackdump`) rather than to the application. Only a fallback for when frames cannot be
/// told apart by stack address: names from line-tables-only debug info can be unqualified. The
/// frame's function is its outermost symbol; symbols inlined into it do not count.
pub(super) fn is_machinery(frame: &Frame) -> bool {
    frame
        .symbols
        .last()
        .and_then(|symbol| symbol.name.as_deref())
        .is_some_and(|name| {
            let name = name.trim_start_matches('<');
            name.starts_with("manhole::stackdump::")
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

    static SYMBOLIZE_TEST_STATIC: std::sync::Mutex<[u8; 64]> = std::sync::Mutex::new([0; 64]);

    #[test]
    fn a_static_is_found_by_an_address_inside_it() {
        let start = std::ptr::from_ref(&SYMBOLIZE_TEST_STATIC) as usize;
        let found = static_symbol_at(start + 8).expect("the static's symbol");
        assert!(found.name.ends_with("SYMBOLIZE_TEST_STATIC"), "{found:?}");
        assert_eq!(found.offset, 8);
        let on_stack = 0u64;
        assert_eq!(
            static_symbol_at(std::ptr::from_ref(&on_stack) as usize),
            None
        );
        let on_heap = Box::new(0u64);
        assert_eq!(
            static_symbol_at(std::ptr::from_ref(&*on_heap) as usize),
            None
        );
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
