//! Talking to the server once connected, in one of three ways:
//!
//! * **one-shot** (`manhole-cli PID COMMAND...`): say `exec text` (or `exec data` with
//!   `--json`: the protocol's hello, asking only for the part that is printed), then the
//!   command, half-close; skip everything before the `exec` frame (a banner, a dump, prompts, if
//!   the hello came after the server's 200 ms window), then print the next frame's `text` (or
//!   `data` with `--json`). Exit 1 when the frame says `ok: false`.
//! * **piped** (stdin is not a terminal): one thread sends every stdin line and half-closes; the
//!   main thread copies everything the server sends to stdout until the server closes.
//! * **interactive** (stdin and stdout are terminals): rustyline reads lines with editing,
//!   history and Tab completion (command and registered names, fetched once per session over a
//!   second, exec-mode connection at the first Tab); a reader thread prints what the server
//!   sends. The protocol's prompt `>>> ` at the start of a line is recognised at once (live
//!   output may follow it in the same read); any other partial last line becomes the prompt
//!   once the server has been quiet for a moment. After each command the main thread waits for
//!   that prompt, however long the command takes (Ctrl-C stops waiting); after a typed `exec`
//!   the server sends frames and no prompt, so each frame line is an answer and the client
//!   shows its last prompt again. Output that arrives while the operator types goes through
//!   rustyline's external printer, which redraws the line being edited. When the server closes,
//!   the reader interrupts rustyline with SIGINT, repeated until the main thread notices, so the
//!   client exits at once and the terminal is restored.
//!
//! In every mode the first line is checked for the server's refusals (`manhole: access denied`,
//! `manhole: too many sessions`), which become errors with their own exit codes.
//!
//! Against a broken or hostile server every mode is bounded ([`Bounds`]): one-shot mode holds
//! at most `max_answer` bytes of one line (more is [`ErrorKind::TooLarge`]); piped and
//! interactive modes stream, and hold at most [`MAX_PARTIAL`] bytes of a line without a newline
//! (a longer one is printed in pieces, with one note). Every scan looks at new bytes only. In
//! one-shot and piped modes a server that owes an answer and stays silent for `wait` ends the
//! client with [`ErrorKind::TimedOut`] (nothing came) or [`ErrorKind::Stalled`] (it stopped
//! mid-answer), which also covers a dump that hangs in the host. On a terminal everything the
//! server sent is shown escaped (see `escape`) unless `--raw`.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rustyline::completion::{Completer, Pair};
use rustyline::config::{CompletionType, Config};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Editor, ExternalPrinter, Helper};
use serde_json::value::RawValue;

use crate::error::{Error, ErrorKind, Result, note};
use crate::escape::{Escaper, escape_bytes, escape_line};

/// How the session ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything went as asked.
    Success,
    /// The one-shot command ran and the server reported its failure.
    CommandFailed,
}

/// How what the server sent is shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct Show {
    /// Escape control characters in what goes to stdout (a terminal, without `--raw`).
    pub escape_stdout: bool,
    /// The same for stderr.
    pub escape_stderr: bool,
}

/// Limits against a server that floods or stalls.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The longest silence while the server owes an answer (one-shot and piped modes).
    pub wait: Duration,
    /// The largest line (one-shot: one frame) the client holds.
    pub max_answer: usize,
}

/// How long the server may stay silent while it answers `command`: a `profile SECONDS` answers
/// after its SECONDS (5 by default), so it gets them on top of `wait`.
pub fn answer_wait(command: Option<&str>, wait: Duration) -> Duration {
    let mut words = command.unwrap_or("").split_whitespace();
    if words.next() != Some("profile") {
        return wait;
    }
    let seconds = words
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(5.0)
        .min(60.0);
    wait + Duration::from_secs_f64(seconds)
}

/// The prefix of every refusal line the server sends before closing.
const REFUSAL_PREFIX: &str = "manhole: ";
/// How much of the server's first line is held to check for a refusal (a real one is short).
const MAX_REFUSAL: usize = 4096;

/// Classifies the server's first line: `Some` if it is a refusal.
pub fn refusal(line: &str) -> Option<Error> {
    let line = line.trim_end();
    let rest = line.strip_prefix(REFUSAL_PREFIX)?;
    let kind = if rest.starts_with("access denied") {
        ErrorKind::AccessDenied
    } else if rest.starts_with("too many sessions") {
        ErrorKind::TooManySessions
    } else {
        // An unknown refusal is still a refusal of this client.
        ErrorKind::AccessDenied
    };
    let shown: String = line.chars().take(MAX_REFUSAL).collect();
    Some(Error::new(
        kind,
        format!("the server refused the session: {}", escape_line(&shown)),
    ))
}

/// Whether `data` (the start of the server's output) could still turn out to be a refusal line.
fn may_be_refusal(data: &[u8]) -> bool {
    let prefix = REFUSAL_PREFIX.as_bytes();
    let n = data.len().min(prefix.len());
    data[..n] == prefix[..n] && !data.contains(&b'\n') && data.len() < MAX_REFUSAL
}

fn write_stdout(data: &[u8]) -> Result<()> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(data)
        .and_then(|()| stdout.flush())
        .map_err(|err| Error::stdout(&err))
}

fn server_closed_early() -> Error {
    Error::new(
        ErrorKind::ServerClosed,
        "the server closed the connection before answering",
    )
}

/// `64 MiB`, `512 KiB`: a limit as the operator reads it.
fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

pub fn too_large(max: usize) -> Error {
    Error::new(
        ErrorKind::TooLarge,
        format!(
            "the server sent a line larger than {}; stopped reading (--max-answer raises the limit)",
            size(max)
        ),
    )
}

/// The error for a server that owes an answer and has been silent for `wait`.
fn silent(wait: Duration, received: bool) -> Error {
    if received {
        Error::new(
            ErrorKind::Stalled,
            format!(
                "the server stalled in the middle of its answer: nothing for {}s (-t sets the wait)",
                wait.as_secs_f64()
            ),
        )
    } else {
        Error::new(
            ErrorKind::TimedOut,
            format!(
                "the server did not answer within {}s (-t sets the wait)",
                wait.as_secs_f64()
            ),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// One-shot

/// The answer to one exec-mode command, borrowed from its line: `data` is kept as the JSON
/// text the server sent (a dump's is megabytes), not parsed into a tree.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    pub ok: bool,
    pub command: String,
    pub text: String,
    /// `data` as sent; `None` when the frame has none.
    pub data: Option<&'a RawValue>,
    pub error: String,
    /// The frame as the server sent it.
    pub raw: &'a str,
}

impl<'a> Frame<'a> {
    /// Parses one frame line (a JSON object); `None` if it is not one.
    pub fn parse(line: &'a str) -> Option<Frame<'a>> {
        let raw = line.trim();
        // The fields as JSON text: the line is checked in full, but no tree is built.
        let object: BTreeMap<String, &'a RawValue> = serde_json::from_str(raw).ok()?;
        let text_of = |key: &str| {
            object
                .get(key)
                .and_then(|value| serde_json::from_str::<String>(value.get()).ok())
                .unwrap_or_default()
        };
        Some(Frame {
            ok: serde_json::from_str::<bool>(object.get("ok")?.get()).ok()?,
            command: text_of("command"),
            text: text_of("text"),
            error: text_of("error"),
            data: object.get("data").copied(),
            raw,
        })
    }
}

/// Finds the `exec` frame in a line of output: the frame may follow a prompt on the same line
/// when the hello came too late and the session started as a REPL.
pub fn exec_frame(line: &str) -> Option<Frame<'_>> {
    if !line.contains("exec") {
        return None;
    }
    let frame = Frame::parse(&line[line.find('{')?..])?;
    (frame.command == "exec").then_some(frame)
}

/// What one-shot mode prints for `frame`, and whether it goes to stdout.
pub fn render_frame(frame: &Frame<'_>, json: bool) -> (String, bool) {
    let with_newline = |mut text: String| {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text
    };
    match (frame.ok, json) {
        (true, false) => (with_newline(frame.text.clone()), true),
        (true, true) => (
            format!("{}\n", frame.data.map_or("null", RawValue::get)),
            true,
        ),
        (false, false) => (format!("error: {}\n", frame.error), false),
        (false, true) => (format!("{}\n", frame.raw), true),
    }
}

/// How much of an exec answer is read from the socket at once.
const ANSWER_READ_BUFFER: usize = 256 * 1024;

/// Runs one command in exec mode and prints its answer.
pub fn one_shot(
    stream: UnixStream,
    command: &str,
    json: bool,
    bounds: Bounds,
    show: Show,
) -> Result<Outcome> {
    // Only the part of the answer that is printed: a dump's JSON is several times its text.
    let hello = if json { "exec data" } else { "exec text" };
    let request = format!("{hello}\n{command}\n");
    send_request(&stream, &request, bounds.wait)?;
    // A 1,000-thread dump's JSON is one line of about 5 MB: read it in big pieces (an 8 KiB
    // buffer made 600 reads of it).
    let mut reader = BufReader::with_capacity(ANSWER_READ_BUFFER, &stream);
    let mut received = false;
    let mut read_line = |line: &mut Vec<u8>| -> Result<bool> {
        line.clear();
        // At most one byte over the limit is read: that is how an over-long line is told.
        let limit = bounds.max_answer as u64 + 1;
        let result = (&mut reader).take(limit).read_until(b'\n', line);
        let got = received || !line.is_empty();
        received = got;
        match result {
            Ok(0) => Ok(false),
            Ok(_) if line.len() > bounds.max_answer => Err(too_large(bounds.max_answer)),
            Ok(_) => Ok(true),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(silent(bounds.wait, got))
            }
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => Ok(false),
            Err(err) => Err(Error::io("reading from the server", &err)),
        }
    };

    let mut line = Vec::new();
    let mut first = true;
    // What comes before the exec frame (a banner and a dump, if the hello was late) is skipped,
    // but not without end.
    let mut skipped = 0usize;
    loop {
        if !read_line(&mut line)? {
            return Err(server_closed_early());
        }
        let text = String::from_utf8_lossy(&line);
        if first {
            if let Some(err) = refusal(&text) {
                return Err(err);
            }
            first = false;
        }
        if let Some(frame) = exec_frame(&text) {
            if !frame.ok {
                return Err(Error::new(
                    ErrorKind::Other,
                    format!(
                        "the server refused exec mode: {}",
                        escape_line(&frame.error)
                    ),
                ));
            }
            break;
        }
        skipped += line.len();
        if skipped > bounds.max_answer {
            return Err(too_large(bounds.max_answer));
        }
    }
    loop {
        if !read_line(&mut line)? {
            return Err(Error::new(
                ErrorKind::ServerClosed,
                "the server closed the connection before answering the command",
            ));
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        let Some(frame) = Frame::parse(&text) else {
            let shown: String = text.trim_end().chars().take(200).collect();
            return Err(Error::new(
                ErrorKind::Other,
                format!("unexpected answer from the server: {}", escape_line(&shown)),
            ));
        };
        let (output, to_stdout) = render_frame(&frame, json);
        if to_stdout {
            if show.escape_stdout {
                write_stdout(escape_bytes(output.as_bytes()).as_bytes())?;
            } else {
                write_stdout(output.as_bytes())?;
            }
        } else {
            let output = if show.escape_stderr {
                escape_bytes(output.as_bytes())
            } else {
                output
            };
            // `output` ends with its newline; a stderr nobody reads is not worth a panic.
            let _ = io::stderr().write_all(output.as_bytes());
        }
        return Ok(if frame.ok {
            Outcome::Success
        } else {
            Outcome::CommandFailed
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Piped

/// What the stdin thread has done, for the relay's stall clock.
#[derive(Debug, Default)]
struct Sent {
    lines: AtomicU64,
    done: AtomicBool,
    /// For each line sent, how much longer than `Bounds::wait` its answer may take (a
    /// `profile 30` is silent for 30 s).
    extra_waits: Mutex<Vec<Duration>>,
}

/// Sends stdin's lines, half-closes, and copies the server's output to stdout until it closes.
pub fn piped(stream: UnixStream, bounds: Bounds, show: Show) -> Result<Outcome> {
    let writer = stream
        .try_clone()
        .map_err(|err| Error::io("duplicating the socket", &err))?;
    let sent = Arc::new(Sent::default());
    let progress = Arc::clone(&sent);
    // Not joined: when the server closes first, the client exits without waiting for more stdin.
    thread::spawn(move || forward_stdin(writer, &progress));
    relay(stream, bounds, show, &sent)
}

/// Sends every stdin line (a last line without `\n` gets one), then half-closes.
fn forward_stdin(mut socket: UnixStream, sent: &Sent) {
    let mut stdin = io::stdin().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                let extra = answer_wait(Some(&String::from_utf8_lossy(&line)), Duration::ZERO);
                sent.extra_waits
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(extra);
                sent.lines.fetch_add(1, Ordering::SeqCst);
                if socket.write_all(&line).is_err() {
                    break;
                }
            }
        }
    }
    let _ = socket.shutdown(Shutdown::Write);
    sent.done.store(true, Ordering::SeqCst);
}

/// Counts the REPL's prompts (`>>> ` at the start of a line) in a stream cut anywhere.
#[derive(Debug)]
struct PromptCounter {
    /// How much of the prompt the current line has matched so far; `None`: this line is text.
    matched: Option<usize>,
    prompts: u64,
}

impl Default for PromptCounter {
    fn default() -> PromptCounter {
        PromptCounter {
            matched: Some(0),
            prompts: 0,
        }
    }
}

impl PromptCounter {
    fn feed(&mut self, bytes: &[u8]) {
        let prompt = REPL_PROMPT.as_bytes();
        for &byte in bytes {
            self.matched = match self.matched {
                _ if byte == b'\n' => Some(0),
                Some(k) if byte == prompt[k] => {
                    if k + 1 == prompt.len() {
                        self.prompts += 1;
                        // Live output, or another prompt, may follow on the same line.
                        Some(0)
                    } else {
                        Some(k + 1)
                    }
                }
                _ => None,
            };
        }
    }
}

/// How often the relay looks at its stall clock.
const RELAY_TICK: Duration = Duration::from_millis(100);

/// Copies the server's output to stdout until the server closes; gives up when the server owes
/// an answer and says nothing for `bounds.wait`. The server owes one while it has not sent a
/// prompt for every line sent (and one for its greeting), or once stdin is done (it then
/// answers the rest and closes). Waiting for stdin at a prompt is not a stall.
fn relay(mut stream: UnixStream, bounds: Bounds, show: Show, sent: &Sent) -> Result<Outcome> {
    stream
        .set_read_timeout(Some(RELAY_TICK))
        .map_err(|err| Error::io("setting a timeout", &err))?;
    let mut buf = vec![0; 64 * 1024];
    let mut head = Vec::new();
    let mut checked = false;
    let mut escaper = show.escape_stdout.then(Escaper::default);
    let mut prompts = PromptCounter::default();
    let mut received = false;
    let mut last_activity = Instant::now();
    let mut lines_seen = 0;
    let mut out = String::new();
    let mut emit = |data: &[u8], escaper: &mut Option<Escaper>| -> Result<()> {
        match escaper {
            Some(escaper) => {
                out.clear();
                escaper.push(data, &mut out);
                write_stdout(out.as_bytes())
            }
            None => write_stdout(data),
        }
    };
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let now = Instant::now();
                let lines = sent.lines.load(Ordering::SeqCst);
                if lines != lines_seen {
                    // A line just went out: the server's time to answer starts now.
                    lines_seen = lines;
                    last_activity = now;
                }
                let owed = sent.done.load(Ordering::SeqCst) || lines + 1 > prompts.prompts;
                // The first prompt answers the greeting, each later one a line: the line being
                // answered now is the one after the prompts seen, less the greeting's.
                let answering = prompts.prompts.saturating_sub(1) as usize;
                let wait = bounds.wait
                    + sent
                        .extra_waits
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .get(answering)
                        .copied()
                        .unwrap_or_default();
                if !owed {
                    last_activity = now;
                } else if now.duration_since(last_activity) >= wait {
                    return Err(silent(wait, received));
                }
                continue;
            }
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(err) => return Err(Error::io("reading from the server", &err)),
        };
        last_activity = Instant::now();
        received |= n > 0;
        prompts.feed(&buf[..n]);
        if !checked {
            head.extend_from_slice(&buf[..n]);
            if n > 0 && may_be_refusal(&head) {
                continue;
            }
            if head.is_empty() {
                return Err(server_closed_early());
            }
            if let Some(err) = refusal(&String::from_utf8_lossy(&head)) {
                return Err(err);
            }
            checked = true;
            emit(&head, &mut escaper)?;
            head = Vec::new();
            if n == 0 {
                break;
            }
            continue;
        }
        if n == 0 {
            break;
        }
        emit(&buf[..n], &mut escaper)?;
    }
    if let Some(escaper) = &mut escaper {
        let mut rest = String::new();
        escaper.finish(&mut rest);
        write_stdout(rest.as_bytes())?;
    }
    Ok(Outcome::Success)
}

// ---------------------------------------------------------------------------------------------
// Interactive

/// How long the server must be quiet after a partial line before it counts as the prompt.
const PROMPT_QUIET: Duration = Duration::from_millis(25);
/// How long the server must be quiet after a complete line before the client stops waiting for a
/// prompt (a server in exec mode sends none).
const ANSWER_QUIET: Duration = Duration::from_millis(300);
/// How long to wait for the server's first byte after connecting before showing a prompt anyway
/// (a server in exec mode sends nothing until asked).
const FIRST_BYTE_WAIT: Duration = Duration::from_secs(2);
/// How often a waiting main thread looks at Ctrl-C.
const WAIT_TICK: Duration = Duration::from_millis(50);

/// How the server side of the session ended.
#[derive(Debug)]
enum Closed {
    /// End of stream.
    Eof,
    /// The first line was a refusal.
    Refused(Error),
    /// A read failed.
    Failed(Error),
}

#[derive(Debug, Default)]
struct State {
    /// The server's current prompt (its last partial line).
    prompt: String,
    /// Incremented each time a partial line became the prompt.
    prompt_count: u64,
    /// Incremented each time the server goes quiet (for servers that send no prompt at all).
    quiet_count: u64,
    /// Bytes received so far.
    received: u64,
    /// The session switched to exec framing (a typed `exec`): no more prompts, one frame line
    /// per answer.
    exec_mode: bool,
    /// Frame lines received in exec framing.
    answers: u64,
    closed: Option<Closed>,
    /// The main thread is (about to be) blocked in rustyline.
    in_readline: bool,
    /// The main thread saw `closed` and is leaving.
    main_done: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `done` holds, Ctrl-C is pressed, or `give_up` holds. A Ctrl-C pressed since
    /// the flag was last cleared (when rustyline last started reading) counts too, so one that
    /// lands just before the wait begins is not lost.
    fn wait_until(
        &self,
        interrupted: &AtomicBool,
        mut give_up: impl FnMut(&State) -> bool,
        mut done: impl FnMut(&State) -> bool,
    ) -> Wait {
        let mut state = self.lock();
        loop {
            if done(&state) {
                return Wait::Done;
            }
            if interrupted.swap(false, Ordering::SeqCst) {
                return Wait::Interrupted;
            }
            if give_up(&state) {
                return Wait::GaveUp;
            }
            state = self
                .changed
                .wait_timeout(state, WAIT_TICK)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// How the server's side ended, once it has, with the number of bytes it had sent.
    fn take_end(&self) -> Option<(Closed, u64)> {
        let mut state = self.lock();
        let received = state.received;
        state.closed.take().map(|closed| (closed, received))
    }
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Done,
    Interrupted,
    GaveUp,
}

/// Splits what the server sent into what to print now and what to keep: complete lines are
/// printed; the REPL's prompt (`>>> `) at the start of a line is taken out and counted, whatever
/// follows it (live output may come right after a prompt, before the operator typed anything);
/// the partial last line stays in `pending`. The first `scanned` bytes of `pending` are known to
/// hold no newline (they were there before the last read), so they are not searched again.
/// Returns the text to print and the prompts seen.
fn split_output(pending: &mut Vec<u8>, scanned: usize) -> (Vec<u8>, usize) {
    let prompt = REPL_PROMPT.as_bytes();
    let mut print = Vec::new();
    let mut prompts = 0;
    let mut at = 0;
    while at < pending.len() {
        if pending[at..].starts_with(prompt) {
            prompts += 1;
            at += prompt.len();
            continue;
        }
        let from = at.max(scanned);
        match pending[from..].iter().position(|b| *b == b'\n') {
            Some(end) => {
                print.extend_from_slice(&pending[at..=from + end]);
                at = from + end + 1;
            }
            None => break,
        }
    }
    pending.drain(..at);
    (print, prompts)
}

/// The prompt the protocol's REPL sends.
const REPL_PROMPT: &str = ">>> ";

/// The longest partial line the interactive client holds: a longer one cannot be a prompt and is
/// printed in pieces.
pub const MAX_PARTIAL: usize = 64 * 1024;

/// The server has gone quiet, or sent the REPL's prompt: the partial line it left, if any, is
/// its prompt (shown escaped on the terminal, as everything the server sends).
fn declare_prompt(shared: &Shared, pending: &mut Vec<u8>, show: Show) {
    let mut state = shared.lock();
    // In exec framing there is no prompt: a partial line is a frame still on its way.
    if !pending.is_empty() && !state.exec_mode {
        let prompt = std::mem::take(pending);
        state.prompt = if show.escape_stdout {
            escape_bytes(&prompt)
        } else {
            String::from_utf8_lossy(&prompt).into_owned()
        };
        state.prompt_count += 1;
    }
    state.quiet_count += 1;
    shared.changed.notify_all();
}

/// Whether `line` is the frame that switches the session to exec framing.
fn is_exec_switch(line: &[u8]) -> bool {
    line.starts_with(b"{")
        && std::str::from_utf8(line)
            .ok()
            .and_then(Frame::parse)
            .is_some_and(|frame| frame.ok && frame.command == "exec")
}

/// The reader thread: prints the server's output, tracks its prompt, notices the end.
fn read_server<P: ExternalPrinter>(
    mut stream: UnixStream,
    shared: Arc<Shared>,
    mut printer: P,
    show: Show,
) {
    let mut buf = vec![0; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut checked = false;
    let mut broke_a_line = false;
    let shown = |bytes: &[u8]| {
        if show.escape_stdout {
            escape_bytes(bytes)
        } else {
            String::from_utf8_lossy(bytes).into_owned()
        }
    };
    // Whether the server has been quiet since it last sent something.
    let mut quiet = true;
    let closed = loop {
        let timeout = if !pending.is_empty() {
            Some(PROMPT_QUIET)
        } else if !quiet {
            Some(ANSWER_QUIET)
        } else {
            None
        };
        if stream.set_read_timeout(timeout).is_err() {
            break Closed::Eof;
        }
        match stream.read(&mut buf) {
            Ok(0) => break Closed::Eof,
            Ok(n) => {
                let scanned = pending.len();
                pending.extend_from_slice(&buf[..n]);
                quiet = false;
                shared.lock().received += n as u64;
                if !checked {
                    if may_be_refusal(&pending) {
                        continue;
                    }
                    checked = true;
                    if let Some(err) = refusal(&String::from_utf8_lossy(&pending)) {
                        break Closed::Refused(err);
                    }
                }
                let (mut lines, prompts) = split_output(&mut pending, scanned);
                if pending.len() > MAX_PARTIAL {
                    // No prompt is this long: print it, broken, and say so once.
                    lines.append(&mut pending);
                    lines.push(b'\n');
                    if !broke_a_line {
                        broke_a_line = true;
                        lines.extend_from_slice(
                            format!(
                                "manhole-cli: the server sent a line longer than {}; it is shown in pieces\n",
                                size(MAX_PARTIAL)
                            )
                            .as_bytes(),
                        );
                    }
                }
                let mut answers = 0;
                let mut switched = false;
                if !lines.is_empty() {
                    let exec_mode = shared.lock().exec_mode;
                    for line in lines.split_inclusive(|b| *b == b'\n') {
                        if exec_mode || switched {
                            answers += 1;
                        } else if is_exec_switch(line) {
                            switched = true;
                            answers += 1;
                        }
                    }
                    let _ = printer.print(shown(&lines));
                }
                // The protocol's own prompt needs no quiet moment to be recognised.
                if prompts > 0 || answers > 0 {
                    let mut state = shared.lock();
                    if prompts > 0 {
                        state.prompt = REPL_PROMPT.to_owned();
                        state.prompt_count += prompts as u64;
                    }
                    state.exec_mode |= switched;
                    state.answers += answers;
                    shared.changed.notify_all();
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if !checked {
                    // A lone partial line that looks like the start of a refusal: it is not one.
                    checked = true;
                }
                quiet = true;
                declare_prompt(&shared, &mut pending, show);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => break Closed::Eof,
            Err(err) => break Closed::Failed(Error::io("reading from the server", &err)),
        }
    };
    if !pending.is_empty() && !matches!(closed, Closed::Refused(_)) {
        let mut text = shown(&pending);
        text.push('\n');
        let _ = printer.print(text);
    }
    let mut state = shared.lock();
    state.closed = Some(closed);
    shared.changed.notify_all();
    // Wake the main thread out of rustyline: SIGINT makes readline return `Interrupted`. Repeat
    // until it has noticed, in case the signal landed just before rustyline took it over.
    while !state.main_done {
        if state.in_readline {
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGINT);
        }
        state = shared
            .changed
            .wait_timeout(state, Duration::from_millis(100))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// `~/.manhole_history`, if there is a home.
fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(|home| PathBuf::from(home).join(".manhole_history"))
}

// ---------------------------------------------------------------------------------------------
// Tab completion

/// Where to fetch the names to complete from: the same socket, checked against the same pid.
#[derive(Debug, Clone)]
pub struct NameSource {
    pub path: PathBuf,
    pub pid: Option<i32>,
}

/// The words Tab completes, fetched once per session.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Vocabulary {
    /// Built-in and registered command names.
    pub commands: Vec<String>,
    /// Registered value names.
    pub values: Vec<String>,
}

/// The built-in commands, for a server that cannot be asked (a one-shot manhole, a full one).
const BUILTIN_WORDS: [&str; 13] = [
    "help", "threads", "bt", "locals", "get", "set", "info", "format", "exec", "runtime", "tasks",
    "exit", "quit",
];

impl Vocabulary {
    /// The built-in commands only.
    fn builtin() -> Vocabulary {
        Vocabulary {
            commands: BUILTIN_WORDS.iter().map(|w| w.to_string()).collect(),
            values: Vec::new(),
        }
    }

    /// Reads the `data` of `help` and `locals` exec frames.
    fn add_frame(&mut self, frame: &serde_json::Value) {
        let names = |list: &serde_json::Value| -> Vec<(String, String)> {
            list.as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|item| {
                            let name = item["name"].as_str()?.to_owned();
                            let kind = item["kind"].as_str().unwrap_or("command").to_owned();
                            Some((name, kind))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let data = &frame["data"];
        match frame["command"].as_str() {
            Some("help") => {
                for (name, _) in names(&data["commands"])
                    .into_iter()
                    .chain(names(&data["registered"]))
                {
                    self.commands.push(name);
                }
            }
            Some("locals") => {
                for (name, kind) in names(&data["locals"]) {
                    if kind == "value" {
                        self.values.push(name);
                    } else {
                        self.commands.push(name);
                    }
                }
            }
            _ => {}
        }
    }

    fn tidy(&mut self) {
        for list in [&mut self.commands, &mut self.values] {
            list.retain(|name| !name.is_empty() && !name.contains(|c: char| c.is_control()));
            list.sort();
            list.dedup();
        }
    }
}

/// How long the names may take to come (the operator is waiting on a Tab).
const VOCABULARY_WAIT: Duration = Duration::from_secs(2);
/// A `help` and a `locals` answer are small; more is not believed.
const MAX_VOCABULARY: u64 = 1 << 20;

/// Asks the server for its names over a second, exec-mode connection: `help` and `locals`.
pub fn fetch_vocabulary(source: &NameSource) -> Option<Vocabulary> {
    let stream = crate::connect::try_connect(&source.path).ok()?;
    if let Some(pid) = source.pid {
        crate::connect::check_peer(&stream, &source.path, pid).ok()?;
    }
    stream.set_read_timeout(Some(VOCABULARY_WAIT)).ok()?;
    stream.set_write_timeout(Some(VOCABULARY_WAIT)).ok()?;
    (&stream).write_all(b"exec data\nhelp\nlocals\n").ok()?;
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + VOCABULARY_WAIT;
    let mut vocabulary = Vocabulary::builtin();
    let mut reader = BufReader::new((&stream).take(MAX_VOCABULARY));
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if let Ok(frame) = serde_json::from_str::<serde_json::Value>(line.trim()) {
                    vocabulary.add_frame(&frame);
                }
            }
        }
    }
    vocabulary.tidy();
    Some(vocabulary)
}

/// rustyline's helper: completes command names and registered names.
pub struct Completion {
    source: Option<NameSource>,
    vocabulary: OnceCell<Vocabulary>,
}

impl Completion {
    fn new(source: Option<NameSource>) -> Completion {
        Completion {
            source,
            vocabulary: OnceCell::new(),
        }
    }

    fn vocabulary(&self) -> &Vocabulary {
        self.vocabulary.get_or_init(|| {
            let mut fetched = self
                .source
                .as_ref()
                .and_then(fetch_vocabulary)
                .unwrap_or_else(Vocabulary::builtin);
            fetched.tidy();
            fetched
        })
    }
}

/// The candidates for the word being typed at `pos` in `line`: (where it starts, the words).
pub fn candidates(vocabulary: &Vocabulary, line: &str, pos: usize) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before.rfind(char::is_whitespace).map_or(0, |at| {
        at + before[at..].chars().next().map_or(1, char::len_utf8)
    });
    let word = &before[start..];
    let earlier: Vec<&str> = before[..start].split_whitespace().collect();
    let fixed = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let pool: Vec<String> = match earlier.as_slice() {
        [] => vocabulary
            .commands
            .iter()
            .chain(&vocabulary.values)
            .cloned()
            .collect(),
        ["get" | "set"] => vocabulary.values.clone(),
        ["format"] => fixed(&["json", "text"]),
        ["exec"] => fixed(&["text", "data"]),
        ["threads" | "bt", flags @ ..] if flags.iter().all(|w| w.starts_with("--")) => {
            ["--all", "--full"]
                .iter()
                .filter(|flag| !flags.contains(flag))
                .map(|flag| flag.to_string())
                .collect()
        }
        _ => Vec::new(),
    };
    let mut found: Vec<String> = pool
        .into_iter()
        .filter(|name| name.starts_with(word))
        .collect();
    found.sort();
    found.dedup();
    (start, found)
}

impl Completer for Completion {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, found) = candidates(self.vocabulary(), line, pos);
        Ok((
            start,
            found
                .into_iter()
                .map(|name| Pair {
                    display: name.clone(),
                    replacement: name,
                })
                .collect(),
        ))
    }
}

impl Hinter for Completion {
    type Hint = String;
}

impl Highlighter for Completion {}

impl Validator for Completion {}

impl Helper for Completion {}

fn new_editor(source: Option<NameSource>) -> Result<Editor<Completion, DefaultHistory>> {
    let config = Config::builder()
        .max_history_size(1000)
        .map_err(readline_error)?
        .auto_add_history(false)
        .completion_type(CompletionType::List)
        .build();
    let mut editor = Editor::with_config(config).map_err(readline_error)?;
    editor.set_helper(Some(Completion::new(source)));
    Ok(editor)
}

fn readline_error(err: ReadlineError) -> Error {
    match err {
        ReadlineError::Io(err) => Error::io("terminal", &err),
        other => Error::new(ErrorKind::Other, format!("terminal: {other}")),
    }
}

/// An interactive session on a terminal.
pub fn interactive(stream: UnixStream, show: Show, names: Option<NameSource>) -> Result<Outcome> {
    // SIGINT outside rustyline (while waiting for an answer) only sets this flag; inside
    // rustyline, Ctrl-C is a key and the reader's SIGINT is rustyline's to handle.
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted))
        .map_err(|err| Error::io("installing the Ctrl-C handler", &err))?;

    let mut editor = new_editor(names)?;
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    let printer = editor.create_external_printer().map_err(readline_error)?;
    let shared = Arc::new(Shared::default());
    let reader_stream = stream
        .try_clone()
        .map_err(|err| Error::io("duplicating the socket", &err))?;
    let reader_shared = Arc::clone(&shared);
    // Not joined at the end: it may be blocked handing a line to rustyline's printer, and the
    // process exits when this thread returns anyway.
    thread::spawn(move || read_server(reader_stream, reader_shared, printer, show));

    let result = converse(
        &stream,
        &shared,
        &mut editor,
        &interrupted,
        history.as_deref(),
    );

    shared.lock().main_done = true;
    shared.changed.notify_all();
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    let _ = stream.shutdown(Shutdown::Both);
    result
}

/// The read-send-wait loop of an interactive session.
fn converse(
    stream: &UnixStream,
    shared: &Shared,
    editor: &mut Editor<Completion, DefaultHistory>,
    interrupted: &AtomicBool,
    history: Option<&Path>,
) -> Result<Outcome> {
    // Wait for the banner, the dump and the first prompt. The dump may take seconds to come
    // (symbolizing), so only the prompt, the end or Ctrl-C ends this wait, or, for a server
    // that says nothing before it is asked (exec mode), a first byte that does not come.
    let started = Instant::now();
    let first = shared.wait_until(
        interrupted,
        |state| state.received == 0 && started.elapsed() >= FIRST_BYTE_WAIT,
        |state| state.prompt_count > 0 || state.closed.is_some(),
    );
    if first == Wait::Interrupted {
        let _ = writeln!(io::stdout());
    }
    loop {
        let prompt = {
            let mut state = shared.lock();
            if state.closed.is_some() {
                drop(state);
                return finish(shared.take_end());
            }
            state.in_readline = true;
            state.prompt.clone()
        };
        // Inside rustyline Ctrl-C is a key; a SIGINT seen before now is spent.
        interrupted.store(false, Ordering::SeqCst);
        let line = editor.readline(&prompt);
        shared.lock().in_readline = false;
        match line {
            Ok(line) => {
                if line.trim().is_empty() || shared.lock().closed.is_some() {
                    continue;
                }
                let _ = editor.add_history_entry(line.as_str());
                // Saved at once, so a closed terminal (SIGHUP) or a kill loses nothing typed.
                if let Some(path) = history {
                    let _ = editor.save_history(path);
                }
                let (prompts_before, quiet_before, answers_before) = {
                    let state = shared.lock();
                    (state.prompt_count, state.quiet_count, state.answers)
                };
                let mut request = line.into_bytes();
                request.push(b'\n');
                if (&*stream).write_all(&request).is_err() {
                    // The server is gone; the reader reports how.
                    shared.wait_until(interrupted, |_| false, |state| state.closed.is_some());
                    continue;
                }
                // The answer is complete when the next prompt comes, or in exec framing its frame
                // (a server that never sent a prompt is done when it goes quiet). A slow command
                // is waited for as long as it takes; Ctrl-C gives the prompt back at once.
                let waited = shared.wait_until(
                    interrupted,
                    |_| false,
                    |state| {
                        state.prompt_count > prompts_before
                            || state.answers > answers_before
                            || (state.prompt_count == 0 && state.quiet_count > quiet_before)
                            || state.closed.is_some()
                    },
                );
                if waited == Wait::Interrupted {
                    // The terminal echoed ^C; the answer, if it comes, is printed above the prompt.
                    let _ = writeln!(io::stdout());
                }
            }
            Err(ReadlineError::Interrupted) => {
                // Ctrl-C clears the line; the reader's SIGINT means the server closed.
                if let Some(end) = shared.take_end() {
                    note!("manhole-cli: the server closed the session");
                    return finish(Some(end));
                }
            }
            Err(ReadlineError::Eof) => {
                // Ctrl-D: end of input; the server ends the session after its last answers.
                let _ = stream.shutdown(Shutdown::Write);
                shared.wait_until(interrupted, |_| false, |state| state.closed.is_some());
                return match shared.take_end() {
                    Some(end) => finish(Some(end)),
                    None => Ok(Outcome::Success),
                };
            }
            Err(err) => return Err(readline_error(err)),
        }
    }
}

/// Turns the server's end into the session's result.
fn finish(end: Option<(Closed, u64)>) -> Result<Outcome> {
    match end {
        Some((Closed::Refused(err) | Closed::Failed(err), _)) => Err(err),
        Some((Closed::Eof, 0)) => Err(server_closed_early()),
        Some((Closed::Eof, _)) | None => Ok(Outcome::Success),
    }
}

/// Sends a one-shot request (the exec hello and the command), then ends the input, and makes
/// every later read wait at most `wait`.
pub(crate) fn send_request(stream: &UnixStream, request: &str, wait: Duration) -> Result<()> {
    match (&*stream).write_all(request.as_bytes()) {
        // A server that refuses the session writes its one line and closes, possibly before
        // the request arrives: the line is still there to read.
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        Err(err) => return Err(Error::io("sending the command", &err)),
        // End of input: the server ends the session after answering.
        Ok(()) => {
            let _ = stream.shutdown(Shutdown::Write);
        }
    }
    // Every read waits at most `wait`: a server that goes silent (a dump hanging in the host, a
    // stalled answer) ends the client instead of holding it for ever.
    stream
        .set_read_timeout(Some(wait))
        .map_err(|err| Error::io("setting a timeout", &err))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn a_profile_gets_its_seconds_on_top_of_the_wait() {
        let wait = Duration::from_secs(10);
        assert_eq!(
            answer_wait(Some("profile 30"), wait),
            Duration::from_secs(40)
        );
        assert_eq!(answer_wait(Some("profile"), wait), Duration::from_secs(15));
        assert_eq!(
            answer_wait(Some("profile 600"), wait),
            Duration::from_secs(70)
        );
        assert_eq!(
            answer_wait(Some("profile soon"), wait),
            Duration::from_secs(15)
        );
        assert_eq!(answer_wait(Some("threads"), wait), wait);
        assert_eq!(answer_wait(None, wait), wait);
    }

    #[test]
    fn refusals_are_recognised() {
        let err =
            refusal("manhole: access denied: peer uid 1000 is not allowed (pid 4242, gid 1000)\n")
                .unwrap();
        assert_eq!(err.kind(), ErrorKind::AccessDenied);
        assert_eq!(err.exit_code(), 6);
        assert!(err.message().ends_with(
            "manhole: access denied: peer uid 1000 is not allowed (pid 4242, gid 1000)"
        ));
        let err = refusal("manhole: too many sessions (8 open), try again later\n").unwrap();
        assert_eq!(err.kind(), ErrorKind::TooManySessions);
        assert_eq!(err.exit_code(), 7);
        assert!(
            refusal(
                "Manhole 0.1.0 in pid 4242 (/usr/bin/demo), uid 0; type \"help\" for the commands."
            )
            .is_none()
        );
        assert!(refusal(">>> ").is_none());
    }

    #[test]
    fn refusal_prefix_is_awaited() {
        assert!(may_be_refusal(b""));
        assert!(may_be_refusal(b"man"));
        assert!(may_be_refusal(b"manhole: acc"));
        assert!(!may_be_refusal(b"manhole: access denied\n"));
        assert!(!may_be_refusal(b"Manhole 0.1.0"));
        assert!(!may_be_refusal(b">>> "));
    }

    #[test]
    fn frames_are_parsed() {
        let frame = Frame::parse(
            r#"{"ok":true,"command":"get","text":"requests = 42","data":{"name":"requests","value":"42"}}"#,
        )
        .unwrap();
        assert!(frame.ok);
        assert_eq!(frame.command, "get");
        assert_eq!(frame.text, "requests = 42");
        let data: Value = serde_json::from_str(frame.data.unwrap().get()).unwrap();
        assert_eq!(data, json!({"name": "requests", "value": "42"}));
        let frame =
            Frame::parse(r#"{"ok":false,"command":"get","error":"no local named \"x\""}"#).unwrap();
        assert!(!frame.ok);
        assert_eq!(frame.error, "no local named \"x\"");
        assert!(frame.data.is_none());
        assert_eq!(render_frame(&frame, true).0, format!("{}\n", frame.raw));
        assert!(Frame::parse(">>> ").is_none());
        assert!(Frame::parse("[1]").is_none());
        assert!(Frame::parse(r#"{"command":"x"}"#).is_none());
    }

    #[test]
    fn the_exec_frame_is_found_after_a_prompt() {
        let hello = r#"{"ok":true,"command":"exec","text":"","data":{"protocol":1,"pid":4242}}"#;
        assert!(exec_frame(hello).is_some());
        assert!(exec_frame(r#"{"command": "exec", "ok": true, "data": {}}"#).is_some());
        assert!(exec_frame(&format!(">>> {hello}\n")).is_some());
        assert!(exec_frame("Thread 1 \"exec\"").is_none());
        assert!(
            exec_frame(r#"{"ok":true,"command":"get","text":"\"command\":\"exec\""}"#).is_none()
        );
    }

    #[test]
    fn frames_render_for_text_and_json() {
        let ok = Frame::parse(
            r#"{"ok":true,"command":"get","text":"requests = 42","data":{"value":"42"}}"#,
        )
        .unwrap();
        assert_eq!(
            render_frame(&ok, false),
            ("requests = 42\n".to_owned(), true)
        );
        assert_eq!(
            render_frame(&ok, true),
            ("{\"value\":\"42\"}\n".to_owned(), true)
        );
        let empty = Frame::parse(r#"{"ok":true,"command":"exit","text":"","data":{}}"#).unwrap();
        assert_eq!(render_frame(&empty, false), (String::new(), true));
        let failed =
            Frame::parse(r#"{"ok":false,"command":"nosuch","error":"unknown command"}"#).unwrap();
        assert_eq!(
            render_frame(&failed, false),
            ("error: unknown command\n".to_owned(), false)
        );
        let (json_out, to_stdout) = render_frame(&failed, true);
        assert!(to_stdout);
        assert_eq!(
            serde_json::from_str::<Value>(&json_out).unwrap()["error"],
            "unknown command"
        );
    }

    fn split(text: &str) -> (String, usize, String) {
        let mut pending = text.as_bytes().to_vec();
        let (print, prompts) = split_output(&mut pending, 0);
        (
            String::from_utf8(print).unwrap(),
            prompts,
            String::from_utf8(pending).unwrap(),
        )
    }

    #[test]
    fn output_is_split_into_lines_prompts_and_the_rest() {
        let owned = |(a, n, b): (&str, usize, &str)| (a.to_owned(), n, b.to_owned());
        assert_eq!(
            split("line 1\nline 2\n>>> "),
            owned(("line 1\nline 2\n", 1, ""))
        );
        assert_eq!(split("all\n"), owned(("all\n", 0, "")));
        assert_eq!(split("partial"), owned(("", 0, "partial")));
        assert_eq!(split("done\n$ "), owned(("done\n", 0, "$ ")));
        // Live output right after the prompt: the prompt is taken out, the text printed.
        assert_eq!(
            split(">>> tick 1\ntick 2\n"),
            owned(("tick 1\ntick 2\n", 1, ""))
        );
        assert_eq!(split("ok\n>>> tick 3"), owned(("ok\n", 1, "tick 3")));
        // A prompt split across reads is kept until it is whole.
        assert_eq!(split("ok\n>>"), owned(("ok\n", 0, ">>")));
        // `>>> ` inside a line (a symbol name in a dump) is text.
        assert_eq!(
            split("  #6 <F as Fn<()>>> (x.rs:1)\n"),
            owned(("  #6 <F as Fn<()>>> (x.rs:1)\n", 0, ""))
        );
        assert_eq!(split(">>> >>> "), owned(("", 2, "")));
    }

    fn bounds(seconds: u64) -> Bounds {
        Bounds {
            wait: Duration::from_secs(seconds),
            max_answer: 1 << 20,
        }
    }

    fn done() -> Sent {
        let sent = Sent::default();
        sent.done.store(true, Ordering::SeqCst);
        sent
    }

    /// A fake server on a socket pair, for the one-shot and piped paths.
    fn serve(script: &'static [u8]) -> UnixStream {
        let (client, mut server) = UnixStream::pair().unwrap();
        thread::spawn(move || {
            let _ = server.write_all(script);
        });
        client
    }

    #[test]
    fn one_shot_skips_a_banner_and_reports_failure() {
        let client = serve(
            b"Manhole 0.1.0 in pid 1\n>>> {\"ok\":true,\"command\":\"exec\",\"text\":\"\",\"data\":{}}\n\
              {\"ok\":false,\"command\":\"nosuch\",\"error\":\"unknown command\"}\n",
        );
        let outcome = one_shot(client, "nosuch", false, bounds(5), Show::default()).unwrap();
        assert_eq!(outcome, Outcome::CommandFailed);
    }

    #[test]
    fn one_shot_reads_a_refusal_that_raced_its_request() {
        let (client, mut server) = UnixStream::pair().unwrap();
        server
            .write_all(b"manhole: access denied: peer uid 1 is not allowed\n")
            .unwrap();
        drop(server);
        let err = one_shot(client, "info", false, bounds(5), Show::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err}");
    }

    #[test]
    fn one_shot_errors() {
        let refused = serve(b"manhole: too many sessions (8 open), try again later\n");
        assert_eq!(
            one_shot(refused, "x", false, bounds(5), Show::default())
                .unwrap_err()
                .exit_code(),
            7
        );
        let closed = serve(b"");
        assert_eq!(
            one_shot(closed, "x", false, bounds(5), Show::default())
                .unwrap_err()
                .kind(),
            ErrorKind::ServerClosed
        );
        let half = serve(b"{\"ok\":true,\"command\":\"exec\",\"text\":\"\",\"data\":{}}\n");
        assert_eq!(
            one_shot(half, "x", false, bounds(5), Show::default())
                .unwrap_err()
                .kind(),
            ErrorKind::ServerClosed
        );
        let garbage = serve(b"{\"ok\":true,\"command\":\"exec\"}\nwhat\n");
        assert_eq!(
            one_shot(garbage, "x", false, bounds(5), Show::default())
                .unwrap_err()
                .kind(),
            ErrorKind::Other
        );
        let (silent, _server) = UnixStream::pair().unwrap();
        let err = one_shot(
            silent,
            "x",
            false,
            Bounds {
                wait: Duration::from_millis(100),
                max_answer: 1 << 20,
            },
            Show::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
    }

    #[test]
    fn relay_reports_refusals_and_silence() {
        let refused = serve(b"manhole: access denied: peer uid 1000 is not allowed\n");
        assert_eq!(
            relay(refused, bounds(5), Show::default(), &done())
                .unwrap_err()
                .kind(),
            ErrorKind::AccessDenied
        );
        let closed = serve(b"");
        assert_eq!(
            relay(closed, bounds(5), Show::default(), &done())
                .unwrap_err()
                .kind(),
            ErrorKind::ServerClosed
        );
    }

    #[test]
    fn one_shot_caps_a_line_and_tells_silence_from_a_stall() {
        let flood = serve(&[b'x'; 4096]);
        let bounds = Bounds {
            wait: Duration::from_secs(5),
            max_answer: 1000,
        };
        let err = one_shot(flood, "x", false, bounds, Show::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
        assert!(err.to_string().contains("larger than 1000 bytes"), "{err}");

        let (client, mut server) = UnixStream::pair().unwrap();
        server.write_all(b"Manhole 0.1.0\npartial").unwrap();
        let quick = Bounds {
            wait: Duration::from_millis(100),
            max_answer: 1 << 20,
        };
        let err = one_shot(client, "x", false, quick, Show::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Stalled, "{err}");
        assert_eq!(err.exit_code(), 13);
        drop(server);
    }

    #[test]
    fn prompts_are_counted_however_the_stream_is_cut() {
        let stream = b"Manhole\n>>> ok\n>>> >>> x >>> \n>>";
        for cut in 0..stream.len() {
            let mut counter = PromptCounter::default();
            counter.feed(&stream[..cut]);
            counter.feed(&stream[cut..]);
            assert_eq!(counter.prompts, 3, "cut at {cut}");
        }
    }

    #[test]
    fn split_output_skips_what_it_scanned_before() {
        let mut pending = b"abc".to_vec();
        assert_eq!(split_output(&mut pending, 0), (Vec::new(), 0));
        pending.extend_from_slice(b"def\nrest");
        assert_eq!(split_output(&mut pending, 3), (b"abcdef\n".to_vec(), 0));
        assert_eq!(pending, b"rest");
    }

    #[test]
    fn completion_offers_commands_then_values() {
        let mut vocabulary = Vocabulary::builtin();
        vocabulary.add_frame(&json!({"command": "help", "data": {
            "commands": [{"name": "help"}], "registered": [{"name": "echo"}]}}));
        vocabulary.add_frame(&json!({"command": "locals", "data": {"locals": [
            {"name": "log_filter", "kind": "value"}, {"name": "echo", "kind": "command"}]}}));
        vocabulary.tidy();
        assert_eq!(
            candidates(&vocabulary, "loc", 3),
            (0, vec!["locals".to_owned()])
        );
        assert_eq!(
            candidates(&vocabulary, "e", 1),
            (
                0,
                vec!["echo".to_owned(), "exec".to_owned(), "exit".to_owned()]
            )
        );
        assert_eq!(
            candidates(&vocabulary, "get log", 7),
            (4, vec!["log_filter".to_owned()])
        );
        assert_eq!(
            candidates(&vocabulary, "format j", 8),
            (7, vec!["json".to_owned()])
        );
        assert_eq!(
            candidates(&vocabulary, "threads -", 9),
            (8, vec!["--all".to_owned(), "--full".to_owned()])
        );
        assert_eq!(
            candidates(&vocabulary, "bt --full --", 12),
            (10, vec!["--all".to_owned()])
        );
        assert_eq!(
            candidates(&vocabulary, "threads sleeper-1 ", 18).1,
            Vec::<String>::new()
        );
        assert_eq!(
            candidates(&vocabulary, "echo a b", 8).1,
            Vec::<String>::new()
        );
        assert!(
            candidates(&vocabulary, "", 0)
                .1
                .contains(&"log_filter".to_owned())
        );
    }

    #[test]
    fn relay_escapes_for_a_terminal_only() {
        let script: &'static [u8] = b"Manhole\n\x1b]0;x\x07 \xc2\x9b2J\n>>> ";
        let show = Show {
            escape_stdout: true,
            escape_stderr: true,
        };
        // Written to the test's stdout; what matters is that it ends well.
        assert_eq!(
            relay(serve(script), bounds(5), show, &done()).unwrap(),
            Outcome::Success
        );
        assert_eq!(
            escape_bytes(script),
            "Manhole\n\\x1b]0;x\\x07 \\u{9b}2J\n>>> "
        );
    }
}
