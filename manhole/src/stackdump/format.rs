//! The two forms of a [`StackDump`], both streamed into any `fmt::Write`: the text a session
//! prints, and the JSON of `format json` and the exec protocol.
//!
//! The text comes in the layouts of [`TextLayout`]. The default is short, as `RUST_BACKTRACE=1`
//! is: threads with identical stacks are one group with a count ([`ThreadGroup`]), the
//! start-up scaffolding of std and libc (everything outside `__rust_begin_short_backtrace`,
//! `lang_start`, `catch_unwind`, `start_thread`, ...) is folded into one line saying how many
//! frames it hides, long generic arguments are elided, no line is longer than
//! [`MAX_LINE`] characters, and the manhole's own threads take one line each. `every_frame`
//! shows everything, as before. The JSON always has every thread and every frame with full
//! names, and the groups besides.
//!
//! [`ThreadGroup`]: super::ThreadGroup

use std::fmt::{self, Write as _};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::dump::{FutexWait, StackDump, ThreadStack};
use super::group::{ThreadGroup, compress_names, join_limited, ranges};
use super::{Frame, FrameSymbol};
use crate::procfs::SyscallState;

/// The longest line of the short layouts, in characters.
pub const MAX_LINE: usize = 200;
/// Generic argument lists longer than this are shown as `<…>` in the short layouts.
const MAX_GENERICS: usize = 30;
/// How many characters of names and of tids a group's header shows.
const HEADER_NAMES: usize = 80;
const HEADER_TIDS: usize = 40;

/// How the text of a [`StackDump`] is laid out (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextLayout {
    every_thread: bool,
    every_frame: bool,
}

impl TextLayout {
    /// The default: identical stacks grouped, start-up frames folded, names shortened, the
    /// manhole's threads on one line each.
    pub fn short() -> TextLayout {
        TextLayout::default()
    }

    /// Everything: each thread on its own, every frame, full names (`threads --full`).
    pub fn full() -> TextLayout {
        TextLayout {
            every_thread: true,
            every_frame: true,
        }
    }

    /// Each thread on its own, with its own header, instead of groups (`threads --all`).
    pub fn every_thread(self, yes: bool) -> TextLayout {
        TextLayout {
            every_thread: yes,
            ..self
        }
    }

    /// Every frame with its full name, the manhole's threads included (part of `--full`).
    pub fn every_frame(self, yes: bool) -> TextLayout {
        TextLayout {
            every_frame: yes,
            ..self
        }
    }
}

impl StackDump {
    /// The dump as text in the short layout, as the REPL shows it (see
    /// [docs/protocol.md](https://docs.rs/crate/manhole/latest/source/docs/protocol.md)).
    ///
    /// The header's "without answer" counts every thread with no captured stack that was not
    /// blocked, exited ones included; [`DumpCounts`](super::DumpCounts) and the JSON tell them
    /// apart.
    pub fn to_text(&self) -> String {
        self.to_text_with(TextLayout::short())
    }

    /// The dump as text in `layout`.
    pub fn to_text_with(&self, layout: TextLayout) -> String {
        let mut text = String::new();
        let _ = self.write_text(layout, &mut text);
        text
    }

    /// Writes [`to_text_with`](StackDump::to_text_with) into `out` piece by piece (a session
    /// streams a big dump to its client instead of building megabytes of text first). It always
    /// ends with a newline.
    pub(crate) fn write_text<W: fmt::Write>(&self, layout: TextLayout, out: &mut W) -> fmt::Result {
        let counts = self.counts();
        writeln!(
            out,
            "Threads: {} ({} captured, {} blocked, {} without answer) in {} capture + {} symbolize",
            counts.threads(),
            counts.captured(),
            counts.blocked(),
            counts.no_answer() + counts.exited(),
            HumanDuration(self.capture_time),
            HumanDuration(self.symbolize_time),
        )?;
        for note in &self.notes {
            writeln!(out, "Note: {note}")?;
        }
        let groups = if layout.every_thread {
            self.threads
                .iter()
                .enumerate()
                .map(|(at, thread)| ThreadGroup::of(vec![at], vec![thread.tid]))
                .collect()
        } else {
            self.groups()
        };
        match (layout.every_thread, layout.every_frame) {
            (false, _) => writeln!(
                out,
                "{} distinct stacks; \"threads --all\" lists each thread, \"threads --full\" shows every frame",
                groups.len()
            )?,
            (true, false) => writeln!(
                out,
                "Start-up frames folded; \"threads --full\" shows every frame"
            )?,
            (true, true) => {}
        }
        for group in &groups {
            out.write_char('\n')?;
            self.write_group(group, layout, out)?;
        }
        Ok(())
    }

    fn write_group<W: fmt::Write>(
        &self,
        group: &ThreadGroup,
        layout: TextLayout,
        out: &mut W,
    ) -> fmt::Result {
        let first = &self.threads[group.members()[0]];
        let state = first.state;
        let mut header = if group.len() == 1 {
            format!(
                "Thread {} \"{}\" ({} {}) [{}]",
                first.tid,
                first.name,
                state.letter(),
                state.name(),
                first.method
            )
        } else {
            let names = compress_names(group.members().iter().map(|&i| &*self.threads[i].name));
            let mut tids: Vec<u64> = group.tids().iter().map(|&t| t as u64).collect();
            tids.sort_unstable();
            let tids: Vec<String> = ranges(&tids).split(',').map(str::to_string).collect();
            format!(
                "{} threads \"{}\" ({} {}) [{}], tids {}",
                group.len(),
                join_limited(&names, HEADER_NAMES, "names"),
                state.letter(),
                state.name(),
                first.method,
                join_limited(&tids, HEADER_TIDS, "ranges")
            )
        };
        let own_line = first.manhole && !layout.every_frame;
        if own_line {
            let own = if group.len() == 1 {
                "the manhole's own thread"
            } else {
                "the manhole's own threads"
            };
            let frames = first.frames.len();
            let plural = if frames == 1 { "" } else { "s" };
            header.push_str(&format!(": {own}, {frames} frame{plural} hidden"));
        }
        if !layout.every_frame && header.chars().count() > MAX_LINE {
            header = header.chars().take(MAX_LINE - 1).collect();
            header.push('…');
        }
        writeln!(out, "{header}")?;
        if own_line {
            return Ok(());
        }
        first.write_details(out)?;
        if let Some(futex) = common_futex(self, group) {
            let count = if group.len() > 1 {
                format!("{} ", group.len())
            } else {
                String::new()
            };
            match &futex.static_name {
                Some(name) => writeln!(
                    out,
                    "  {count}waiting on {name} (futex {:#x}, in a static)",
                    futex.address
                )?,
                None => writeln!(out, "  {count}waiting on futex {:#x}", futex.address)?,
            }
        }
        if layout.every_frame {
            for (index, frame) in first.frames.iter().enumerate() {
                frame.write_text(index, out)?;
            }
        } else {
            let hidden = startup_frames(&first.frames);
            let shown = first.frames.len() - hidden;
            let mut line = String::new();
            for (index, frame) in first.frames[..shown].iter().enumerate() {
                frame.write_short_text(index, &mut line);
                out.write_str(&line)?;
                line.clear();
            }
            if hidden > 0 {
                let plural = if hidden == 1 { "" } else { "s" };
                writeln!(
                    out,
                    "  ... {hidden} start-up frame{plural} hidden (std runtime, libc)"
                )?;
            }
        }
        if first.truncated {
            writeln!(out, "  [truncated after {} frames]", first.frames.len())?;
        }
        Ok(())
    }

    /// The dump as JSON (see [docs/protocol.md](https://docs.rs/crate/manhole/latest/source/docs/protocol.md), "The stack dump as data"); the same document as
    /// [`to_json_string`](StackDump::to_json_string), parsed.
    pub fn to_json(&self) -> Value {
        serde_json::from_str(&self.to_json_string()).unwrap_or(Value::Null)
    }

    /// The dump as one line of JSON text (see [docs/protocol.md](https://docs.rs/crate/manhole/latest/source/docs/protocol.md), "The stack dump as data").
    ///
    /// Written straight into one string: a `serde_json::Value` of a big dump (a map per frame
    /// and per symbol) costs more to build, serialize and drop than the capture itself.
    pub fn to_json_string(&self) -> String {
        let mut out = String::with_capacity(256 + self.threads.len() * 2048);
        let _ = self.write_json(&mut out);
        out
    }

    /// Writes [`to_json_string`](StackDump::to_json_string) into `out` piece by piece.
    pub(crate) fn write_json<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        let counts = self.counts();
        let taken_at_ms = self
            .taken_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        write!(
            out,
            "{{\"pid\":{},\"taken_at_unix_ms\":{taken_at_ms},\"signal\":{},\"capture_micros\":{},\"symbolize_micros\":{},\"counts\":{{\"threads\":{},\"captured\":{},\"blocked\":{},\"no_answer\":{},\"exited\":{}}},\"notes\":[",
            self.pid,
            self.signal,
            self.capture_time.as_micros() as u64,
            self.symbolize_time.as_micros() as u64,
            counts.threads(),
            counts.captured(),
            counts.blocked(),
            counts.no_answer(),
            counts.exited(),
        )?;
        for (i, note) in self.notes.iter().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            write_json_str(out, note)?;
        }
        out.write_str("],\"threads\":[")?;
        for (i, thread) in self.threads.iter().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            thread.write_json(out)?;
        }
        out.write_str("],\"groups\":[")?;
        for (i, group) in self.groups().iter().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            self.write_group_json(group, out)?;
        }
        out.write_str("]}")
    }

    fn write_group_json<W: fmt::Write>(&self, group: &ThreadGroup, out: &mut W) -> fmt::Result {
        let first = &self.threads[group.members()[0]];
        write!(out, "{{\"count\":{},\"tids\":[", group.len())?;
        for (i, tid) in group.tids().iter().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            write!(out, "{tid}")?;
        }
        out.write_str("],\"names\":")?;
        let names = compress_names(group.members().iter().map(|&i| &*self.threads[i].name));
        write_json_str(out, &names.join(", "))?;
        write!(
            out,
            ",\"state\":\"{}\",\"method\":\"{}\",\"manhole\":{},\"frames\":{},\"startup_frames\":{},\"futex\":",
            first.state.letter(),
            first.method.as_str(),
            first.manhole,
            first.frames.len(),
            startup_frames(&first.frames),
        )?;
        write_futex_json(common_futex(self, group), out)?;
        out.write_char('}')
    }
}

/// The futex word every member of `group` waits on, if they all wait on one.
fn common_futex<'a>(dump: &'a StackDump, group: &ThreadGroup) -> Option<&'a FutexWait> {
    let mut members = group
        .members()
        .iter()
        .map(|&i| dump.threads[i].futex.as_ref());
    let first = members.next()??;
    members
        .all(|f| f.is_some_and(|f| f.address == first.address))
        .then_some(first)
}

fn write_futex_json<W: fmt::Write>(futex: Option<&FutexWait>, out: &mut W) -> fmt::Result {
    match futex {
        Some(futex) => {
            write!(out, "{{\"address\":\"{:#x}\",\"static\":", futex.address)?;
            write_json_opt(out, futex.static_name.as_deref())?;
            out.write_char('}')
        }
        None => out.write_str("null"),
    }
}

/// Whether a symbol is std's or libc's thread and program start-up: what `RUST_BACKTRACE=1`
/// leaves out (everything outside `__rust_begin_short_backtrace`), told by name and, for names
/// debug info gives unqualified (`do_call<...>`, `{closure#0}<()>`), by std's source file.
fn is_startup_symbol(symbol: &FrameSymbol) -> bool {
    const NAMES: &[&str] = &[
        "__rust_begin_short_backtrace",
        "__rust_end_short_backtrace",
        "lang_start",
        "catch_unwind",
        "do_call",
        "__rust_try",
        "spawn_unchecked",
        "thread_start",
        "start_thread",
        "clone3",
        "__libc_start_main",
        "__libc_start_call_main",
        "call_once{{vtable.shim}}",
    ];
    const WHOLE_NAMES: &[&str] = &["_start", "clone", "__clone", "__clone_internal"];
    const FILES: &[&str] = &[
        "library/std/src/rt.rs",
        "library/std/src/panicking.rs",
        "library/std/src/panic.rs",
        "library/std/src/thread/lifecycle.rs",
        "library/std/src/sys/backtrace.rs",
        "library/core/src/panic/unwind_safe.rs",
        "library/core/src/ops/function.rs",
    ];
    let name = symbol.name.as_deref().unwrap_or("");
    NAMES.iter().any(|n| name.contains(n))
        || WHOLE_NAMES.contains(&name)
        || symbol
            .file
            .as_deref()
            .is_some_and(|file| FILES.iter().any(|f| file.starts_with(f)))
        || (name.contains("call_once")
            && symbol
                .file
                .as_deref()
                .is_some_and(|f| f.starts_with("library/alloc/src/boxed.rs")))
}

/// How many of the outermost frames are start-up scaffolding, folded in the short layout:
/// `__rust_begin_short_backtrace` and everything outside it, plus the call shims just inside
/// it; without that marker (a thread started from C), the outermost run of start-up frames
/// (`start_thread`, `clone3`, `__libc_start_main`, `_start`). The innermost frame always shows.
pub(crate) fn startup_frames(frames: &[Frame]) -> usize {
    let is_startup =
        |frame: &Frame| !frame.symbols.is_empty() && frame.symbols.iter().all(is_startup_symbol);
    let mut start = frames
        .iter()
        .position(|f| {
            f.symbols.iter().any(|s| {
                s.name
                    .as_deref()
                    .is_some_and(|n| n.contains("__rust_begin_short_backtrace"))
            })
        })
        .unwrap_or(frames.len());
    while start > 0 && is_startup(&frames[start - 1]) {
        start -= 1;
    }
    frames.len() - start.max(1).min(frames.len())
}

/// `name` with every generic argument list longer than [`MAX_GENERICS`] characters shown as
/// `<…>` (`catch_unwind<…>`); the `<Type as Trait>` of a qualified path stays, its own long
/// arguments elided.
pub(crate) fn elide_generics(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = String::with_capacity(name.len().min(160));
    let mut at = 0;
    while at < name.len() {
        let Some(open) = name[at..].find('<').map(|i| at + i) else {
            out.push_str(&name[at..]);
            break;
        };
        out.push_str(&name[at..open]);
        let close = matching_close(bytes, open);
        let inner = &name[open + 1..close.min(name.len())];
        let generic_args = open > 0
            && (bytes[open - 1].is_ascii_alphanumeric() || b"_:}>)".contains(&bytes[open - 1]));
        if generic_args && inner.chars().count() > MAX_GENERICS {
            out.push_str("<…>");
        } else {
            out.push('<');
            out.push_str(&elide_generics(inner));
            if close < name.len() {
                out.push('>');
            }
        }
        at = close + 1;
    }
    out
}

/// The index of the `>` that closes the `<` at `open` (`->` does not close), or the length.
fn matching_close(bytes: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'<' => depth += 1,
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b'>' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    bytes.len()
}

/// The last `keep` characters of `text` after `…`, or `text` if it is short enough.
fn tail(text: &str, keep: usize) -> String {
    let count = text.chars().count();
    if count <= keep {
        return text.to_string();
    }
    let skip = count - keep.saturating_sub(1);
    let mut out = String::from("…");
    out.extend(text.chars().skip(skip));
    out
}

impl ThreadStack {
    /// The note, and where `/proc` says a thread without a stack is.
    fn write_details<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        if let Some(note) = &self.note {
            writeln!(out, "  note: {note}")?;
        }
        match self.syscall {
            Some(SyscallState::InSyscall { nr, .. }) => writeln!(
                out,
                "  in system call {nr}{}",
                wchan_suffix(self.wchan.as_deref())
            ),
            Some(SyscallState::Blocked { .. }) => writeln!(
                out,
                "  blocked outside a system call{}",
                wchan_suffix(self.wchan.as_deref())
            ),
            Some(SyscallState::Running) => {
                writeln!(out, "  running on a CPU (no registers available)")
            }
            None => Ok(()),
        }
    }

    fn write_json<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        write!(out, "{{\"tid\":{},\"name\":", self.tid)?;
        write_json_str(out, &self.name)?;
        write!(
            out,
            ",\"state\":\"{}\",\"state_name\":\"{}\",\"method\":\"{}\",\"unchanged\":{},\"manhole\":{},\"note\":",
            self.state.letter(),
            self.state.name(),
            self.method.as_str(),
            self.unchanged,
            self.manhole,
        )?;
        write_json_opt(out, self.note.as_deref())?;
        write!(out, ",\"truncated\":{},\"wchan\":", self.truncated)?;
        write_json_opt(out, self.wchan.as_deref())?;
        out.write_str(",\"syscall\":")?;
        match self.syscall {
            Some(state) => out.write_str(&syscall_json(state).to_string())?,
            None => out.write_str("null")?,
        }
        out.write_str(",\"futex\":")?;
        write_futex_json(self.futex.as_ref(), out)?;
        match self.handler_time {
            Some(time) => write!(out, ",\"handler_nanos\":{}", time.as_nanos() as u64)?,
            None => out.write_str(",\"handler_nanos\":null")?,
        }
        match self.stack_copy {
            Some((copied, below)) => write!(
                out,
                ",\"stack_copy_bytes\":{copied},\"handler_stack_bytes\":{below}"
            )?,
            None => out.write_str(",\"stack_copy_bytes\":null,\"handler_stack_bytes\":null")?,
        }
        out.write_str(",\"frames\":[")?;
        for (i, frame) in self.frames.iter().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            frame.write_json(out)?;
        }
        out.write_str("]}")
    }
}

impl Frame {
    /// The frame in full: every name whole, however long.
    fn write_text<W: fmt::Write>(&self, index: usize, out: &mut W) -> fmt::Result {
        // Formatted straight into `out`: a dump of 1,000 threads has tens of thousands of frames.
        let number = FrameNumber(index);
        let location = Location(self);
        if self.symbols.is_empty() {
            return writeln!(out, "  {number:<3} {:#018x} {location}", self.ip);
        }
        let last = self.symbols.len() - 1;
        for (i, symbol) in self.symbols.iter().enumerate() {
            let name = symbol.name.as_deref().unwrap_or("??");
            let place = Place(symbol, location);
            let inlined = if i < last { " (inlined)" } else { "" };
            if i == 0 {
                writeln!(
                    out,
                    "  {number:<3} {:#018x} {name} ({place}){inlined}",
                    self.ip
                )?;
            } else {
                writeln!(out, "  {:<3} {:18} {name} ({place}){inlined}", "", "")?;
            }
        }
        Ok(())
    }

    /// The frame in the short layouts, appended to `out`: long generic arguments elided, and
    /// each line cut to [`MAX_LINE`] characters (the end of a name, the function, is kept).
    fn write_short_text(&self, index: usize, out: &mut String) {
        let number = FrameNumber(index);
        let location = Location(self);
        if self.symbols.is_empty() {
            let lead = format!("  {number:<3} {:#018x} ", self.ip);
            push_line(out, &lead, &location.to_string(), "");
            return;
        }
        let last = self.symbols.len() - 1;
        for (i, symbol) in self.symbols.iter().enumerate() {
            let name = elide_generics(symbol.name.as_deref().unwrap_or("??"));
            let place = Place(symbol, location).to_string();
            let inlined = if i < last { " (inlined)" } else { "" };
            let lead = if i == 0 {
                format!("  {number:<3} {:#018x} ", self.ip)
            } else {
                format!("  {:<3} {:18} ", "", "")
            };
            push_line(out, &lead, &name, &format!(" ({place}){inlined}"));
        }
    }

    fn write_json<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        write!(out, "{{\"ip\":\"{:#x}\",\"module\":", self.ip)?;
        write_json_opt(out, self.module.as_deref())?;
        match self.module_offset {
            Some(offset) => write!(out, ",\"module_offset\":\"{offset:#x}\"")?,
            None => out.write_str(",\"module_offset\":null")?,
        }
        out.write_str(",\"symbols\":[")?;
        for (i, symbol) in self.symbols.iter().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            out.write_str("{\"name\":")?;
            write_json_opt(out, symbol.name.as_deref())?;
            out.write_str(",\"file\":")?;
            write_json_opt(out, symbol.file.as_deref())?;
            match symbol.line {
                Some(line) => write!(out, ",\"line\":{line}}}")?,
                None => out.write_str(",\"line\":null}")?,
            }
        }
        out.write_str("]}")
    }
}

/// Appends `lead + name + rest` and a newline, cutting the name's start (then the rest's) so
/// the line has at most [`MAX_LINE`] characters.
fn push_line(out: &mut String, lead: &str, name: &str, rest: &str) {
    let fixed = lead.chars().count() + rest.chars().count();
    let name = tail(name, MAX_LINE.saturating_sub(fixed).max(40));
    let room = MAX_LINE.saturating_sub(lead.chars().count() + name.chars().count());
    out.push_str(lead);
    out.push_str(&name);
    if rest.chars().count() > room {
        out.push_str(&tail(rest, room));
    } else {
        out.push_str(rest);
    }
    out.push('\n');
}

/// Writes `text` as a JSON string literal.
pub(crate) fn write_json_str<W: fmt::Write>(out: &mut W, text: &str) -> fmt::Result {
    out.write_char('"')?;
    JsonEscaped(out).write_str(text)?;
    out.write_char('"')
}

/// Writes `text` as a JSON string literal, or `null`.
fn write_json_opt<W: fmt::Write>(out: &mut W, text: Option<&str>) -> fmt::Result {
    match text {
        Some(text) => write_json_str(out, text),
        None => out.write_str("null"),
    }
}

/// Writes what it is given escaped for the inside of a JSON string literal (the quotes are the
/// caller's), so text can be streamed into a JSON document without being built first.
pub(crate) struct JsonEscaped<'a, W: fmt::Write>(pub &'a mut W);

impl<W: fmt::Write> fmt::Write for JsonEscaped<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&text[plain..at])?;
            if escaped.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escaped)?;
            }
            plain = at + 1;
        }
        self.0.write_str(&text[plain..])
    }
}

fn wchan_suffix(wchan: Option<&str>) -> String {
    wchan.map(|w| format!(" (wchan {w})")).unwrap_or_default()
}

fn syscall_json(state: SyscallState) -> Value {
    match state {
        SyscallState::Running => {
            json!({"running": true, "nr": null, "args": null, "sp": null, "pc": null})
        }
        SyscallState::Blocked { sp, pc } => {
            json!({"running": false, "nr": null, "args": null, "sp": hex(sp as usize), "pc": hex(pc as usize)})
        }
        SyscallState::InSyscall { nr, args, sp, pc } => json!({
            "running": false,
            "nr": nr,
            "args": args.iter().map(|&a| hex(a as usize)).collect::<Vec<_>>(),
            "sp": hex(sp as usize),
            "pc": hex(pc as usize),
        }),
    }
}

fn hex(value: usize) -> String {
    format!("{value:#x}")
}

/// `#N`, padded to the width asked for (`{:<3}`) without building a string.
struct FrameNumber(usize);

impl fmt::Display for FrameNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)?;
        let digits = self.0.checked_ilog10().unwrap_or(0) as usize + 1;
        for _ in 1 + digits..f.width().unwrap_or(0) {
            f.write_char(' ')?;
        }
        Ok(())
    }
}

/// `module+0xoffset`, or `??`.
#[derive(Clone, Copy)]
struct Location<'a>(&'a Frame);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.0.module, self.0.module_offset) {
            (Some(module), Some(offset)) => write!(f, "{module}+{offset:#x}"),
            _ => f.write_str("??"),
        }
    }
}

/// `file:line`, `file`, or the frame's [`Location`].
struct Place<'a>(&'a FrameSymbol, Location<'a>);

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.0.file, self.0.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}"),
            (Some(file), None) => f.write_str(file),
            _ => self.1.fmt(f),
        }
    }
}

/// `812 µs`, `1.2 ms`, `1.23 s`.
pub(super) struct HumanDuration(pub(super) Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.as_micros();
        if micros < 1000 {
            write!(f, "{micros} µs")
        } else if micros < 1_000_000 {
            write!(f, "{:.1} ms", micros as f64 / 1000.0)
        } else {
            write!(f, "{:.2} s", self.0.as_secs_f64())
        }
    }
}

impl fmt::Display for StackDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_text(TextLayout::short(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_generic_arguments_are_elided() {
        assert_eq!(
            elide_generics(
                "catch_unwind<!, core::panic::unwind_safe::AssertUnwindSafe<std::thread::lifecycle::spawn_unchecked::{closure#1}::{closure_env#0}<demo::main::{closure_env#0}, !>>>"
            ),
            "catch_unwind<…>"
        );
        assert_eq!(
            elide_generics(
                "<alloc::boxed::Box<dyn core::ops::function::FnOnce<(), Output = ()> + core::marker::Send> as core::ops::function::FnOnce<()>>::call_once"
            ),
            "<alloc::boxed::Box<…> as core::ops::function::FnOnce<()>>::call_once"
        );
        assert_eq!(
            elide_generics("poll<nix::poll_timeout::PollTimeout>"),
            "poll<nix::poll_timeout::PollTimeout>"
        );
        assert_eq!(
            elide_generics("f<dyn Fn(&str) -> Result<(), std::io::Error> + Send + Sync>"),
            "f<…>"
        );
        assert_eq!(elide_generics("a<b"), "a<b");
        assert_eq!(elide_generics("plain::name"), "plain::name");
    }

    #[test]
    fn a_long_line_keeps_its_end_and_fits() {
        let mut out = String::new();
        let name = format!("{}::the_function", "x".repeat(300));
        push_line(
            &mut out,
            "  #1  0x0000000000001000 ",
            &name,
            " (src/main.rs:3)",
        );
        let line = out.trim_end();
        assert_eq!(line.chars().count(), MAX_LINE, "{line}");
        assert!(line.ends_with("x::the_function (src/main.rs:3)"), "{line}");

        // A frame without symbols in a deeply nested module keeps the end: the offset.
        let frame = Frame {
            ip: 0x1000,
            module: Some(format!("/nix/store/{}/lib/libx.so", "a".repeat(300)).into()),
            module_offset: Some(0x123),
            symbols: std::sync::Arc::from([]),
        };
        let mut out = String::new();
        frame.write_short_text(0, &mut out);
        let line = out.trim_end();
        assert_eq!(line.chars().count(), MAX_LINE, "{line}");
        assert!(line.ends_with("aaa/lib/libx.so+0x123"), "{line}");
    }
}
