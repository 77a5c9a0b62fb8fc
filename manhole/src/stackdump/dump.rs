//! The result of a dump, [`StackDump`] and the types inside it ([`ThreadStack`], [`Frame`],
//! [`FrameSymbol`], [`CaptureMethod`]), and their two forms: the text a session prints and the
//! JSON of `format json` and the exec protocol, both streamed into any `fmt::Write`.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::procfs::{SyscallState, ThreadState};

/// What became of one thread, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Captured,
    Blocked,
    NoAnswer,
    Exited,
}

/// A symbolized backtrace of every thread of the process at one moment.
#[derive(Debug, Clone)]
pub struct StackDump {
    pub(super) pid: u32,
    pub(super) signal: libc::c_int,
    pub(super) taken_at: SystemTime,
    pub(super) capture_time: Duration,
    pub(super) symbolize_time: Duration,
    pub(super) ignored_signals: u64,
    pub(super) threads: Vec<ThreadStack>,
}

/// How many threads a dump saw, and what became of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DumpCounts {
    pub(super) threads: usize,
    pub(super) captured: usize,
    pub(super) blocked: usize,
    pub(super) no_answer: usize,
    pub(super) exited: usize,
}

impl DumpCounts {
    /// Every thread listed.
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// Threads whose stack was captured (by signal or, for the dumping thread, directly).
    pub fn captured(&self) -> usize {
        self.captured
    }
    /// Threads that block the dump signal, so they were not asked.
    pub fn blocked(&self) -> usize {
        self.blocked
    }
    /// Threads that did not answer in time, could not be signalled, or were not asked because
    /// the signal was already pending or no longer ours.
    pub fn no_answer(&self) -> usize {
        self.no_answer
    }
    /// Threads that exited during the dump.
    pub fn exited(&self) -> usize {
        self.exited
    }
}

impl StackDump {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The signal used to ask the threads.
    pub fn signal(&self) -> libc::c_int {
        self.signal
    }

    /// When the dump started.
    pub fn taken_at(&self) -> SystemTime {
        self.taken_at
    }

    /// How long capturing took (signals sent, answers collected, `/proc` read).
    pub fn capture_time(&self) -> Duration {
        self.capture_time
    }

    /// How long symbolizing took.
    pub fn symbolize_time(&self) -> Duration {
        self.symbolize_time
    }

    /// Dump signals ignored since the process started, as of this dump: sent by someone else,
    /// or answers that came after their dump had given up on them.
    pub fn ignored_signals(&self) -> u64 {
        self.ignored_signals
    }

    /// Every thread, in `/proc/self/task` order (the main thread first).
    pub fn threads(&self) -> &[ThreadStack] {
        &self.threads
    }

    /// The counts of threads by outcome.
    pub fn counts(&self) -> DumpCounts {
        let mut counts = DumpCounts {
            threads: self.threads.len(),
            ..DumpCounts::default()
        };
        for thread in &self.threads {
            match thread.outcome {
                Outcome::Captured => counts.captured += 1,
                Outcome::Blocked => counts.blocked += 1,
                Outcome::NoAnswer => counts.no_answer += 1,
                Outcome::Exited => counts.exited += 1,
            }
        }
        counts
    }

    /// The dump as text, as the REPL shows it (see [docs/protocol.md](https://docs.rs/crate/manhole/latest/source/docs/protocol.md)).
    ///
    /// The header's "without answer" counts every thread with no captured stack that was not
    /// blocked, exited ones included; [`DumpCounts`] and the JSON tell them apart.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let _ = self.write_text(&mut text);
        text
    }

    /// Writes [`to_text`](StackDump::to_text) into `out` piece by piece (a session streams a
    /// big dump to its client instead of building megabytes of text first). It always ends with
    /// a newline.
    pub(crate) fn write_text<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        let counts = self.counts();
        writeln!(
            out,
            "Threads: {} ({} captured, {} blocked, {} without answer) in {} capture + {} symbolize",
            counts.threads,
            counts.captured,
            counts.blocked,
            counts.no_answer + counts.exited,
            HumanDuration(self.capture_time),
            HumanDuration(self.symbolize_time),
        )?;
        for thread in &self.threads {
            out.write_char('\n')?;
            thread.write_text(out);
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
            "{{\"pid\":{},\"taken_at_unix_ms\":{taken_at_ms},\"signal\":{},\"capture_micros\":{},\"symbolize_micros\":{},\"counts\":{{\"threads\":{},\"captured\":{},\"blocked\":{},\"no_answer\":{},\"exited\":{}}},\"threads\":[",
            self.pid,
            self.signal,
            self.capture_time.as_micros() as u64,
            self.symbolize_time.as_micros() as u64,
            counts.threads,
            counts.captured,
            counts.blocked,
            counts.no_answer,
            counts.exited,
        )?;
        for (i, thread) in self.threads.iter().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            thread.write_json(out);
        }
        out.write_str("]}")
    }

    /// Only the threads whose tid equals `filter` or whose name contains it. The counts follow
    /// the threads kept; the times stay those of the whole dump.
    pub fn filtered(&self, filter: &str) -> StackDump {
        let tid = filter.trim().parse::<i32>().ok();
        StackDump {
            threads: self
                .threads
                .iter()
                .filter(|t| Some(t.tid) == tid || t.name.contains(filter))
                .cloned()
                .collect(),
            ..self.clone_without_threads()
        }
    }

    pub(super) fn clone_without_threads(&self) -> StackDump {
        StackDump {
            pid: self.pid,
            signal: self.signal,
            taken_at: self.taken_at,
            capture_time: self.capture_time,
            symbolize_time: self.symbolize_time,
            ignored_signals: self.ignored_signals,
            threads: Vec::new(),
        }
    }
}

impl fmt::Display for StackDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// How a thread's stack was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaptureMethod {
    /// The thread walked its own stack in the dump signal handler.
    Signal,
    /// The thread is the one that took the dump; it walked its stack directly.
    SelfThread,
    /// The thread did not answer (or was not asked): at most the program counter from
    /// `/proc/self/task/<tid>/syscall`, and a note saying why.
    Proc,
}

impl CaptureMethod {
    /// `signal`, `self` or `proc`, as in the text and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMethod::Signal => "signal",
            CaptureMethod::SelfThread => "self",
            CaptureMethod::Proc => "proc",
        }
    }
}

impl fmt::Display for CaptureMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thread of a [`StackDump`].
#[derive(Debug, Clone)]
pub struct ThreadStack {
    pub(super) tid: i32,
    pub(super) name: String,
    pub(super) state: ThreadState,
    pub(super) method: CaptureMethod,
    pub(super) outcome: Outcome,
    pub(super) note: Option<String>,
    pub(super) frames: Vec<Frame>,
    pub(super) truncated: bool,
    pub(super) wchan: Option<String>,
    pub(super) syscall: Option<SyscallState>,
    pub(super) handler_time: Option<Duration>,
    /// For a thread captured by the signal: bytes of stack the handler copied, and bytes of
    /// stack the kernel's signal frame and the handler used below the interrupted stack pointer.
    pub(super) stack_copy: Option<(usize, usize)>,
}

impl ThreadStack {
    /// The kernel thread id.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The thread name as the kernel knows it (at most 15 bytes; the main thread's is the
    /// program name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The scheduler state when the dump started.
    pub fn state(&self) -> ThreadState {
        self.state
    }

    /// How the stack was obtained.
    pub fn method(&self) -> CaptureMethod {
        self.method
    }

    /// Why the stack is missing or partial, if it is.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// The frames, innermost first.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// Whether the stack had more frames than were kept.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The kernel function the thread sleeps in, for a thread without a captured stack.
    pub fn wchan(&self) -> Option<&str> {
        self.wchan.as_deref()
    }

    /// For a thread without a captured stack: where `/proc` says it is blocked.
    pub fn syscall(&self) -> Option<SyscallState> {
        self.syscall
    }

    /// For a thread captured by the signal: how long it spent in the dump handler, from entry
    /// to its last store (the final futex wake, about a microsecond, is not included). This is
    /// how long the dump kept the thread from its own work.
    pub fn handler_time(&self) -> Option<Duration> {
        self.handler_time
    }

    /// For a thread captured by the signal: how many bytes of its stack the handler copied
    /// (from the interrupted stack pointer up, at most the copy window).
    pub fn stack_copy_bytes(&self) -> Option<usize> {
        self.stack_copy.map(|(copied, _)| copied)
    }

    /// For a thread captured by the signal: how many bytes below the interrupted stack pointer
    /// the kernel's signal frame and the dump handler used.
    pub fn handler_stack_bytes(&self) -> Option<usize> {
        self.stack_copy.map(|(_, below)| below)
    }

    pub(super) fn write_text<W: fmt::Write>(&self, out: &mut W) {
        let _ = writeln!(
            out,
            "Thread {} \"{}\" ({} {}) [{}]",
            self.tid,
            self.name,
            self.state.letter(),
            self.state.name(),
            self.method
        );
        if let Some(note) = &self.note {
            let _ = writeln!(out, "  note: {note}");
        }
        match self.syscall {
            Some(SyscallState::InSyscall { nr, .. }) => {
                let _ = writeln!(
                    out,
                    "  in system call {nr}{}",
                    wchan_suffix(self.wchan.as_deref())
                );
            }
            Some(SyscallState::Blocked { .. }) => {
                let _ = writeln!(
                    out,
                    "  blocked outside a system call{}",
                    wchan_suffix(self.wchan.as_deref())
                );
            }
            Some(SyscallState::Running) => {
                let _ = writeln!(out, "  running on a CPU (no registers available)");
            }
            None => {}
        }
        for (index, frame) in self.frames.iter().enumerate() {
            frame.write_text(index, out);
        }
        if self.truncated {
            let _ = writeln!(out, "  [truncated after {} frames]", self.frames.len());
        }
    }

    pub(super) fn write_json<W: fmt::Write>(&self, out: &mut W) {
        let _ = write!(out, "{{\"tid\":{},\"name\":", self.tid);
        push_json_str(out, &self.name);
        let _ = write!(
            out,
            ",\"state\":\"{}\",\"state_name\":\"{}\",\"method\":\"{}\",\"note\":",
            self.state.letter(),
            self.state.name(),
            self.method.as_str()
        );
        push_json_opt(out, self.note.as_deref());
        let _ = write!(out, ",\"truncated\":{},\"wchan\":", self.truncated);
        push_json_opt(out, self.wchan.as_deref());
        let _ = out.write_str(",\"syscall\":");
        match self.syscall {
            Some(state) => {
                let _ = out.write_str(&syscall_json(state).to_string());
            }
            None => {
                let _ = out.write_str("null");
            }
        }
        match self.handler_time {
            Some(time) => {
                let _ = write!(out, ",\"handler_nanos\":{}", time.as_nanos() as u64);
            }
            None => {
                let _ = out.write_str(",\"handler_nanos\":null");
            }
        }
        match self.stack_copy {
            Some((copied, below)) => {
                let _ = write!(
                    out,
                    ",\"stack_copy_bytes\":{copied},\"handler_stack_bytes\":{below}"
                );
            }
            None => {
                let _ = out.write_str(",\"stack_copy_bytes\":null,\"handler_stack_bytes\":null");
            }
        }
        let _ = out.write_str(",\"frames\":[");
        for (i, frame) in self.frames.iter().enumerate() {
            if i > 0 {
                let _ = out.write_char(',');
            }
            frame.write_json(out);
        }
        let _ = out.write_str("]}");
    }
}

/// Appends `text` as a JSON string literal.
pub(super) fn push_json_str<W: fmt::Write>(out: &mut W, text: &str) {
    let _ = write_json_str(out, text);
}

/// Writes `text` as a JSON string literal.
pub(crate) fn write_json_str<W: fmt::Write>(out: &mut W, text: &str) -> fmt::Result {
    out.write_char('"')?;
    JsonEscaped(out).write_str(text)?;
    out.write_char('"')
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

/// Appends `text` as a JSON string literal, or `null`.
pub(super) fn push_json_opt<W: fmt::Write>(out: &mut W, text: Option<&str>) {
    match text {
        Some(text) => push_json_str(out, text),
        None => {
            let _ = out.write_str("null");
        }
    }
}

pub(super) fn wchan_suffix(wchan: Option<&str>) -> String {
    wchan.map(|w| format!(" (wchan {w})")).unwrap_or_default()
}

pub(super) fn syscall_json(state: SyscallState) -> Value {
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

pub(super) fn hex(value: usize) -> String {
    format!("{value:#x}")
}

/// One stack frame: an address, where it lies, and what it resolves to.
#[derive(Debug, Clone)]
pub struct Frame {
    pub(super) ip: usize,
    pub(super) module: Option<Arc<str>>,
    pub(super) module_offset: Option<usize>,
    pub(super) symbols: Arc<[FrameSymbol]>,
}

impl Frame {
    /// The instruction address: the interrupted instruction for a signalled thread's first
    /// frame, a return address for the others.
    pub fn ip(&self) -> usize {
        self.ip
    }

    /// The path of the loaded object (executable, library, vDSO) that contains the address.
    pub fn module(&self) -> Option<&str> {
        self.module.as_deref()
    }

    /// The address relative to the module's load bias, for offline symbolization
    /// (`addr2line -e <module> <offset>`).
    pub fn module_offset(&self) -> Option<usize> {
        self.module_offset
    }

    /// The functions at this address, innermost first: more than one when code was inlined,
    /// none when nothing was found.
    pub fn symbols(&self) -> &[FrameSymbol] {
        &self.symbols
    }

    pub(super) fn write_text<W: fmt::Write>(&self, index: usize, out: &mut W) {
        // Formatted straight into `out`: a dump of 1,000 threads has tens of thousands of frames.
        let number = FrameNumber(index);
        let location = Location(self);
        if self.symbols.is_empty() {
            let _ = writeln!(out, "  {number:<3} {:#018x} {location}", self.ip);
            return;
        }
        let last = self.symbols.len() - 1;
        for (i, symbol) in self.symbols.iter().enumerate() {
            let name = symbol.name.as_deref().unwrap_or("??");
            let place = Place(symbol, location);
            let inlined = if i < last { " (inlined)" } else { "" };
            if i == 0 {
                let _ = writeln!(
                    out,
                    "  {number:<3} {:#018x} {name} ({place}){inlined}",
                    self.ip
                );
            } else {
                let _ = writeln!(out, "  {:<3} {:18} {name} ({place}){inlined}", "", "");
            }
        }
    }

    pub(super) fn write_json<W: fmt::Write>(&self, out: &mut W) {
        let _ = write!(out, "{{\"ip\":\"{:#x}\",\"module\":", self.ip);
        push_json_opt(out, self.module.as_deref());
        match self.module_offset {
            Some(offset) => {
                let _ = write!(out, ",\"module_offset\":\"{offset:#x}\"");
            }
            None => {
                let _ = out.write_str(",\"module_offset\":null");
            }
        }
        let _ = out.write_str(",\"symbols\":[");
        for (i, symbol) in self.symbols.iter().enumerate() {
            if i > 0 {
                let _ = out.write_char(',');
            }
            let _ = out.write_str("{\"name\":");
            push_json_opt(out, symbol.name.as_deref());
            let _ = out.write_str(",\"file\":");
            push_json_opt(out, symbol.file.as_deref());
            match symbol.line {
                Some(line) => {
                    let _ = write!(out, ",\"line\":{line}}}");
                }
                None => {
                    let _ = out.write_str(",\"line\":null}");
                }
            }
        }
        let _ = out.write_str("]}");
    }
}

/// `#N`, padded to the width asked for (`{:<3}`) without building a string.
pub(super) struct FrameNumber(usize);

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
pub(super) struct Location<'a>(&'a Frame);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.0.module, self.0.module_offset) {
            (Some(module), Some(offset)) => write!(f, "{module}+{offset:#x}"),
            _ => f.write_str("??"),
        }
    }
}

/// `file:line`, `file`, or the frame's [`Location`].
pub(super) struct Place<'a>(&'a FrameSymbol, Location<'a>);

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.0.file, self.0.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}"),
            (Some(file), None) => f.write_str(file),
            _ => self.1.fmt(f),
        }
    }
}

/// A function a [`Frame`] resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSymbol {
    pub(super) name: Option<String>,
    pub(super) file: Option<String>,
    pub(super) line: Option<u32>,
}

impl FrameSymbol {
    /// The demangled function name, without the hash suffix.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The source file, shortened where its prefix is known (see the `symbolize` docs).
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// The source line.
    pub fn line(&self) -> Option<u32> {
        self.line
    }
}

/// `812 µs`, `1.2 ms`, `1.23 s`.
pub(super) struct HumanDuration(Duration);

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
