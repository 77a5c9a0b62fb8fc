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
//! * **Symbols.** A module is loaded when the first frame in it is resolved. One with DWARF of
//!   its own (the application, its Rust libraries) is read in place by `addr2line`'s `Context`
//!   (gimli) from the mapped file: function names with inlined frames, file and line; names
//!   DWARF lacks (`main`, `_start`) come from its symbol table (DWARF split into `.dwo` files
//!   goes through `addr2line::Loader`, which finds them). One without (system libraries:
//!   libc, libgcc_s, ld.so) gets function names only, from a symbol table: the `.symtab` of its
//!   debug file installed apart (`libc6-dbg` and the like, found by build id or
//!   `.gnu_debuglink`), else its own `.symtab` or `.dynsym`. The DWARF of such a debug file is
//!   not read, by choice: libc's is compressed (4 MiB on disk, 13 MiB inflated on the heap) and
//!   inflating and indexing it took 90 to 105 ms of the first dump, for `start_thread`'s and
//!   `clone3`'s file and line in glibc's sources, which its symbol table names as well. Of the
//!   aliases at one address the public name is shown (`clock_nanosleep`, not
//!   `__GI___clock_nanosleep` or `clock_nanosleep@@GLIBC_2.17`). Off-by-one: a return address
//!   points after its call, so `offset - 1` is looked up; the interrupted program counter of a
//!   signalled thread is the exact instruction.
//! * **Memory.** Files are mapped, not read (file pages, not the host's heap); what the parsing
//!   allocates lives in one cache that is kept while any session is open
//!   ([`hold_caches`](super::hold_caches)) and for `CACHE_GRACE` (5 s) after the last one ends,
//!   so the next `manhole-cli` call finds it warm; then it is freed on a short-lived thread and
//!   the heap trimmed (right after a dump made outside a session). An idle manhole keeps nothing
//!   and has no timer. `addr2line::Loader` is not used for a module's own DWARF because of what
//!   it allocates: its `object` symbol map (a 3 MB buffer and a 2 MB map for the debug demo) is
//!   freed as mmapped chunks, which raises glibc's trim threshold for good, after which the next
//!   session's freed arena top (3.2 MiB) stayed resident; the e2e memory test caught it.
//! * **Short of memory.** Before loading a module's debug info the headroom is checked
//!   (`RLIMIT_AS` against `VmSize`, the cgroup's `memory.max`, `MemAvailable`): for DWARF, the
//!   file, a parse reserve and any compressed sections inflated; for a symbol table, the file and
//!   one 32-byte entry per symbol. When it is short
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

use addr2line::gimli;
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
    loader: Result<Symbols, String>,
    /// Sized data symbols (start, size, mangled name) by start; read on first use.
    data: Option<Vec<(u64, u64, Box<str>)>>,
}

/// Drops what symbolizing loaded (the caller then trims the heap).
pub(super) fn release() {
    let dropped = CACHE.lock().take();
    drop(dropped);
}

/// A static (an ELF `STT_OBJECT` symbol) that a data address lies in.
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
/// `symbolizer` gives the loaded modules (one snapshot for all the words of a dump: taking one per
/// word cost 10 µs each, a tenth of a 1,000-thread capture whose threads each wait on their own).
pub(super) fn static_symbol_at(symbolizer: &Symbolizer, addr: usize) -> Option<StaticSymbol> {
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

/// Where a module's names, files and lines come from.
enum Symbols {
    /// Its own DWARF (and its symbol table where DWARF has no name): function names with
    /// inlined frames, file and line.
    Dwarf(Box<MappedDwarf>),
    /// Its own DWARF split into `.dwo` files, which `addr2line`'s loader finds.
    Split(Box<addr2line::Loader>),
    /// Function names only, from a symbol table: the `.symtab` of a debug file installed apart
    /// (its DWARF is not read), else the module's own `.symtab` or `.dynsym`.
    Table(SymbolTable),
}

/// Loads the debug info of `path`, if the host has room for it: its own DWARF if it has some,
/// else the symbol table of a debug file installed apart or its own (see [`Symbols`]).
fn load_module(path: &str, headroom: Headroom) -> Result<Symbols, String> {
    match debug_source(path) {
        DebugSource::OwnDwarf => load_dwarf(path, headroom),
        DebugSource::Table(table_path) => {
            load_table(table_path.as_deref().unwrap_or(path), headroom).map(Symbols::Table)
        }
    }
}

/// Checks `need` (bytes to map, bytes to allocate) against the headroom.
fn check_room(headroom: Headroom, map: u64, heap: u64) -> Result<(), String> {
    if let Some(left) = headroom.address_space
        && left < map + heap
    {
        return Err(format!(
            "not loaded: {} of address space left under RLIMIT_AS, its debug info needs about {}",
            Mib(left),
            Mib(map + heap),
        ));
    }
    if let Some(left) = headroom.memory
        && left < heap
    {
        return Err(format!(
            "not loaded: {} of memory left (cgroup memory.max or MemAvailable), its debug info needs about {}",
            Mib(left),
            Mib(heap),
        ));
    }
    Ok(())
}

/// DWARF read in place from a mapped file by `addr2line`, with the file's symbol table for
/// names it lacks.
struct MappedDwarf {
    /// Borrows `_inflated` and `table.map`: declared first, so dropped before them.
    context: addr2line::Context<Slice>,
    /// Compressed sections, inflated (the heap buffers never move once here).
    _inflated: Vec<Vec<u8>>,
    /// The symbol table, over the mapping the context reads.
    table: SymbolTable,
}

/// What the context reads: bytes of the mapped file or of an inflated section, valid as long as
/// the [`MappedDwarf`] that holds them (not `'static`: see [`MappedDwarf::load`]).
type Slice = gimli::EndianSlice<'static, gimli::RunTimeEndian>;

impl MappedDwarf {
    /// Reads the DWARF of the mapped file `table.map`. `Ok(None)` when it is split into `.dwo`
    /// files (the caller uses `addr2line`'s loader then).
    fn load(table: SymbolTable) -> Result<Option<MappedDwarf>, String> {
        let object =
            object::File::parse(&*table.map).map_err(|e| format!("cannot parse it: {e}"))?;
        let endian = if object.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let mut inflated: Vec<Vec<u8>> = Vec::new();
        let dwarf = gimli::Dwarf::load(|id| -> Result<Slice, String> {
            let data: &[u8] = match object.section_by_name(id.name()) {
                None => &[],
                Some(section) => match section
                    .uncompressed_data()
                    .map_err(|e| format!("cannot read its {}: {e}", id.name()))?
                {
                    Cow::Borrowed(data) => data,
                    Cow::Owned(data) => {
                        inflated.push(data);
                        inflated.last().map_or(&[][..], |data| &data[..])
                    }
                },
            };
            // SAFETY: the bytes lie in `table.map` (a mapping whose address stays the same
            // when the `Mmap` moves) or in a buffer of `inflated` (pushing more buffers moves
            // the outer vector, not the bytes). Both are moved into the `MappedDwarf` returned
            // below, whose `context` field, the only holder of these slices, is declared first
            // and so dropped before them. The `'static` never leaves this module's types.
            let data: &'static [u8] =
                unsafe { std::slice::from_raw_parts(data.as_ptr(), data.len()) };
            Ok(gimli::EndianSlice::new(data, endian))
        })?;
        drop(object);
        if is_split(&dwarf) {
            return Ok(None);
        }
        // Rust's units share abbreviation tables (one per crate): parse each once, not per unit.
        let mut dwarf = dwarf;
        dwarf.populate_abbreviations_cache(gimli::AbbreviationsCacheStrategy::Duplicates);
        let context = addr2line::Context::from_dwarf(dwarf)
            .map_err(|e| format!("cannot load its debug info: {e}"))?;
        Ok(Some(MappedDwarf {
            context,
            _inflated: inflated,
            table,
        }))
    }
}

/// Whether `dwarf` holds skeleton units whose DWARF lies in `.dwo` files.
fn is_split(dwarf: &gimli::Dwarf<Slice>) -> bool {
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        if matches!(header.type_(), gimli::UnitType::Skeleton(_)) {
            return true;
        }
        if let Ok(unit) = dwarf.unit(header) {
            // A DWARF 4 skeleton (GNU split DWARF) is a compile unit with a dwo id.
            return unit.dwo_id.is_some();
        }
    }
    false
}

/// Loads the DWARF of `path`, if the host has room for it.
fn load_dwarf(path: &str, headroom: Headroom) -> Result<Symbols, String> {
    let file_len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read it: {e}"))?
        .len();
    // Parsing allocates about a third of the file; compressed sections are inflated on the heap.
    let parse = PARSE_RESERVE.max(file_len) + inflated_size(path);
    check_room(headroom, file_len, parse)?;
    let table = load_table(path, headroom)?;
    match MappedDwarf::load(table)? {
        Some(dwarf) => Ok(Symbols::Dwarf(Box::new(dwarf))),
        None => addr2line::Loader::new(path)
            .map(|loader| Symbols::Split(Box::new(loader)))
            .map_err(|e| format!("cannot load its debug info: {e}")),
    }
}

/// Reads the function symbols of the file at `path`, if the host has room for them.
fn load_table(path: &str, headroom: Headroom) -> Result<SymbolTable, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let map = capture::map_file(&file).map_err(|e| format!("cannot map it: {e}"))?;
    drop(file);
    let object = object::File::parse(&*map).map_err(|e| format!("cannot parse it: {e}"))?;
    let table = object
        .symbol_table()
        .filter(|table| table.symbols().next().is_some())
        .or_else(|| object.dynamic_symbol_table());
    // At most one entry per symbol, nothing inflated.
    let entries = table.as_ref().map_or(0, |table| table.symbols().count());
    let heap = (entries * std::mem::size_of::<TableEntry>()) as u64;
    check_room(headroom, map.len() as u64, heap)?;
    let mut functions: Vec<TableEntry> = Vec::new();
    functions
        .try_reserve_exact(entries)
        .map_err(|_| "not loaded: no memory left for its symbol table".to_string())?;
    let base = map.as_ptr() as usize;
    if let Some(table) = table {
        for symbol in table.symbols() {
            if symbol.kind() != SymbolKind::Text || !symbol.is_definition() || symbol.address() == 0
            {
                continue;
            }
            let Ok(name) = symbol.name_bytes() else {
                continue;
            };
            // A debug file's `.symtab` keeps symbol versions in names (`clock_nanosleep@@GLIBC_2.17`).
            let name = name.split(|&b| b == b'@').next().unwrap_or(name);
            let (Ok(name_at), Ok(name_len)) = (
                u32::try_from((name.as_ptr() as usize).wrapping_sub(base)),
                u32::try_from(name.len()),
            ) else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            functions.push(TableEntry {
                start: symbol.address(),
                size: symbol.size(),
                name_at,
                name_len,
                rank: name_rank(symbol.is_global() || symbol.is_weak(), name),
            });
        }
    }
    drop(object);
    // Aliases share a start: keep the best name of each (sorted by start, then rank).
    functions.sort_unstable_by_key(|f| (f.start, f.rank));
    functions.dedup_by_key(|f| f.start);
    functions.shrink_to_fit();
    Ok(SymbolTable { map, functions })
}

/// How good a name is among the aliases at one address, lowest best: a global or weak symbol
/// before a local one (`__libc_start_main` before `__libc_start_main_impl`), then fewer leading
/// underscores (`poll` before `__poll` and `__GI___poll`), then shorter.
fn name_rank(global: bool, name: &[u8]) -> u32 {
    let underscores = name.iter().take_while(|&&b| b == b'_').count().min(15) as u32;
    let len = name.len().min(0xffff) as u32;
    (u32::from(!global) << 20) | (underscores << 16) | len
}

/// A module's function symbols, names read from its mapped file.
struct SymbolTable {
    /// The mapped file the names are read from (file pages, not heap).
    map: memmap2::Mmap,
    /// Sorted by start, one per start.
    functions: Vec<TableEntry>,
}

/// One function symbol of a [`SymbolTable`].
struct TableEntry {
    start: u64,
    /// 0 when the symbol table does not say.
    size: u64,
    /// Where its name lies in the mapped file.
    name_at: u32,
    name_len: u32,
    /// Used while building: see [`name_rank`].
    rank: u32,
}

impl SymbolTable {
    /// The name of the function `probe` (a file address) lies in: the nearest symbol at or
    /// before it, unless that symbol's size says it ends before `probe`.
    fn find(&self, probe: u64) -> Option<&str> {
        let after = self.functions.partition_point(|f| f.start <= probe);
        let function = self.functions.get(after.checked_sub(1)?)?;
        if function.size != 0 && probe - function.start >= function.size {
            return None;
        }
        let at = function.name_at as usize;
        let name = self.map.get(at..at + function.name_len as usize)?;
        std::str::from_utf8(name).ok()
    }
}

/// Where a module's symbols are read from.
enum DebugSource {
    /// Its own DWARF.
    OwnDwarf,
    /// A symbol table: of the debug file installed apart at this path, or of the module itself.
    Table(Option<String>),
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

/// Where the symbols of the module at `path` come from: its own DWARF if it has some, else the
/// symbol table of its debug file installed apart ([`separate_debug_file`]) or its own.
fn debug_source(path: &str) -> DebugSource {
    let Ok(file) = std::fs::File::open(path) else {
        return DebugSource::OwnDwarf;
    };
    let Ok(map) = capture::map_file(&file) else {
        return DebugSource::OwnDwarf;
    };
    let Ok(object) = object::File::parse(&*map) else {
        return DebugSource::OwnDwarf;
    };
    if object.section_by_name(".debug_info").is_some() {
        return DebugSource::OwnDwarf;
    }
    DebugSource::Table(separate_debug_file(path, &object))
}

/// Where the debug file of a module without DWARF (`object`, mapped from `path`) lives, if it
/// was installed apart (`libc6-dbg` and the like): by build id under `/usr/lib/debug/.build-id/`,
/// else by `.gnu_debuglink` next to the module, in its `.debug/` or under `/usr/lib/debug` (gdb's
/// search order).
fn separate_debug_file(path: &str, object: &object::File<'_>) -> Option<String> {
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
        let symbols = match &debug.loader {
            Ok(symbols) => symbols,
            Err(why) => {
                let note =
                    format!("no symbols for {module}: {why}; its frames show module + offset only");
                self.note(note);
                return Arc::from([]);
            }
        };
        let symbols: Arc<[FrameSymbol]> = match symbols {
            Symbols::Dwarf(dwarf) => {
                resolve(dwarf.context.find_frames(probe).skip_all_loads(), || {
                    dwarf.table.find(probe)
                })
                .into()
            }
            Symbols::Split(loader) => {
                resolve(loader.find_frames(probe), || loader.find_symbol(probe)).into()
            }
            Symbols::Table(table) => table
                .find(probe)
                .map(|name| FrameSymbol {
                    name: Some(addr2line::demangle_auto(Cow::from(name), None).into_owned()),
                    file: None,
                    line: None,
                })
                .into_iter()
                .collect(),
        };
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
fn resolve<'a, R: gimli::Reader, E>(
    frames: Result<addr2line::FrameIter<'_, R>, E>,
    symbol: impl FnOnce() -> Option<&'a str>,
) -> Vec<FrameSymbol> {
    let mut symbols = Vec::new();
    if let Ok(mut frames) = frames {
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
    if !outer_named && let Some(name) = symbol() {
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
        let found = static_symbol_at(&Symbolizer::new(), start + 8).expect("the static's symbol");
        assert!(found.name.ends_with("SYMBOLIZE_TEST_STATIC"), "{found:?}");
        assert_eq!(found.offset, 8);
        let on_stack = 0u64;
        assert_eq!(
            static_symbol_at(&Symbolizer::new(), std::ptr::from_ref(&on_stack) as usize),
            None
        );
        let on_heap = Box::new(0u64);
        assert_eq!(
            static_symbol_at(&Symbolizer::new(), std::ptr::from_ref(&*on_heap) as usize),
            None
        );
    }

    #[test]
    fn aliases_give_the_public_name() {
        let rank = |global, name: &str| name_rank(global, name.as_bytes());
        assert!(rank(true, "__libc_start_main") < rank(false, "__libc_start_main_impl"));
        assert!(rank(true, "poll") < rank(true, "__poll"));
        assert!(rank(false, "__poll") < rank(false, "__GI___poll"));
        assert!(rank(false, "clone3") < rank(false, "__clone3"));
        assert!(rank(true, "ab") < rank(true, "abc"));
    }

    #[test]
    fn a_libc_function_is_named_from_a_symbol_table() {
        // SAFETY: a NUL-terminated name; the default handle searches the loaded objects.
        let address =
            unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"clock_nanosleep".as_ptr()) } as usize;
        assert_ne!(address, 0);
        let mut symbolizer = Symbolizer::new();
        let frames = symbolizer.frames(&[RawFrame {
            ip: address + 4,
            exact: true,
        }]);
        let module = frames[0].module.as_deref().unwrap_or_default();
        assert!(module.contains("libc.so"), "{module}");
        assert_eq!(
            frames[0]
                .symbols
                .iter()
                .map(|s| s.name.as_deref())
                .collect::<Vec<_>>(),
            [Some("clock_nanosleep")],
            "{frames:?}"
        );
        let room = Headroom::default();
        assert!(matches!(load_module(module, room), Ok(Symbols::Table(_))));
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
