//! Talking to the server once connected, in one of three ways:
//!
//! * **one-shot** (`manhole-cli PID COMMAND...`): say `exec text` (or `exec data` with
//!   `--json`: the protocol's hello, asking only for the part that is printed), then the
//!   command, half-close; skip everything before the `exec` frame (a banner, a dump, prompts, if
//!   the hello came after the server's 200 ms window), then print the next frame's `text` (or
//!   `data` with `--json`). Exit 1 when the frame says `ok: false`.
//! * **piped** (stdin is not a terminal): one thread sends every stdin line and half-closes; the
//!   main thread copies everything the server sends to stdout until the server closes.
//! * **interactive** (stdin and stdout are terminals): rustyline reads lines with editing and
//!   history; a reader thread prints what the server sends. The protocol's prompt `>>> ` at the
//!   start of a line is recognised at once (live output may follow it in the same read); any
//!   other partial last line becomes the prompt once the server has been quiet for a moment.
//!   After each command the main thread waits for that prompt, however long the command takes
//!   (Ctrl-C stops waiting; a server that sends no prompt, in exec mode, is done when it goes
//!   quiet). Output that
//!   arrives while the operator types goes through rustyline's external printer, which redraws
//!   the line being edited. When the server closes, the reader interrupts rustyline with SIGINT,
//!   repeated until the main thread notices, so the client exits at once and the terminal is
//!   restored.
//!
//! In every mode the first line is checked for the server's refusals (`manhole: access denied`,
//! `manhole: too many sessions`), which become errors with their own exit codes.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rustyline::config::Config;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{DefaultEditor, Editor, ExternalPrinter};
use serde_json::value::RawValue;

use crate::error::{Error, ErrorKind, Result, note};

/// How the session ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything went as asked.
    Success,
    /// The one-shot command ran and the server reported its failure.
    CommandFailed,
}

/// The prefix of every refusal line the server sends before closing.
const REFUSAL_PREFIX: &str = "manhole: ";

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
    Some(Error::new(
        kind,
        format!("the server refused the session: {line}"),
    ))
}

/// Whether `data` (the start of the server's output) could still turn out to be a refusal line.
fn may_be_refusal(data: &[u8]) -> bool {
    let prefix = REFUSAL_PREFIX.as_bytes();
    let n = data.len().min(prefix.len());
    data[..n] == prefix[..n] && !data.contains(&b'\n')
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

/// Runs one command in exec mode and prints its answer.
pub fn one_shot(
    stream: UnixStream,
    command: &str,
    json: bool,
    answer_timeout: Duration,
) -> Result<Outcome> {
    // Only the part of the answer that is printed: a dump's JSON is several times its text.
    let hello = if json { "exec data" } else { "exec text" };
    let request = format!("{hello}\n{command}\n");
    match (&stream).write_all(request.as_bytes()) {
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
    stream
        .set_read_timeout(Some(answer_timeout))
        .map_err(|err| Error::io("setting a timeout", &err))?;
    let mut reader = BufReader::new(&stream);
    let timed_out = || {
        Error::new(
            ErrorKind::TimedOut,
            format!(
                "the server did not answer within {}s",
                answer_timeout.as_secs_f64()
            ),
        )
    };
    let read_line = |reader: &mut BufReader<&UnixStream>, line: &mut Vec<u8>| -> Result<bool> {
        line.clear();
        match reader.read_until(b'\n', line) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(timed_out())
            }
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => Ok(false),
            Err(err) => Err(Error::io("reading from the server", &err)),
        }
    };

    let mut line = Vec::new();
    let mut first = true;
    loop {
        if !read_line(&mut reader, &mut line)? {
            return Err(server_closed_early());
        }
        let text = String::from_utf8_lossy(&line);
        if first {
            if let Some(err) = refusal(&text) {
                return Err(err);
            }
            // The server is alive: if the hello missed its window, a banner and a stack dump
            // come first, and a dump may take long on a loaded machine. Wait as long as it takes.
            stream
                .set_read_timeout(None)
                .map_err(|err| Error::io("clearing the timeout", &err))?;
            first = false;
        }
        if let Some(frame) = exec_frame(&text) {
            if !frame.ok {
                return Err(Error::new(
                    ErrorKind::Other,
                    format!("the server refused exec mode: {}", frame.error),
                ));
            }
            break;
        }
    }
    // The command may take as long as it takes (a registered command may be slow).
    loop {
        if !read_line(&mut reader, &mut line)? {
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
                format!("unexpected answer from the server: {shown}"),
            ));
        };
        let (output, to_stdout) = render_frame(&frame, json);
        if to_stdout {
            write_stdout(output.as_bytes())?;
        } else {
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

/// Sends stdin's lines, half-closes, and copies the server's output to stdout until it closes.
pub fn piped(stream: UnixStream) -> Result<Outcome> {
    let writer = stream
        .try_clone()
        .map_err(|err| Error::io("duplicating the socket", &err))?;
    // Not joined: when the server closes first, the client exits without waiting for more stdin.
    thread::spawn(move || forward_stdin(writer));
    relay(stream)
}

/// Sends every stdin line (a last line without `\n` gets one), then half-closes.
fn forward_stdin(mut socket: UnixStream) {
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
                if socket.write_all(&line).is_err() {
                    return;
                }
            }
        }
    }
    let _ = socket.shutdown(Shutdown::Write);
}

/// Copies the server's output to stdout until the server closes.
fn relay(mut stream: UnixStream) -> Result<Outcome> {
    let mut buf = vec![0; 64 * 1024];
    let mut head = Vec::new();
    let mut checked = false;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(err) => return Err(Error::io("reading from the server", &err)),
        };
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
            write_stdout(&head)?;
            if n == 0 {
                return Ok(Outcome::Success);
            }
            continue;
        }
        if n == 0 {
            return Ok(Outcome::Success);
        }
        write_stdout(&buf[..n])?;
    }
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
/// the partial last line stays in `pending`. Returns the text to print and the prompts seen.
fn split_output(pending: &mut Vec<u8>) -> (Vec<u8>, usize) {
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
        match pending[at..].iter().position(|b| *b == b'\n') {
            Some(end) => {
                print.extend_from_slice(&pending[at..=at + end]);
                at += end + 1;
            }
            None => break,
        }
    }
    pending.drain(..at);
    (print, prompts)
}

/// The prompt the protocol's REPL sends.
const REPL_PROMPT: &str = ">>> ";

/// The server has gone quiet, or sent the REPL's prompt: the partial line it left, if any, is
/// its prompt.
fn declare_prompt(shared: &Shared, pending: &mut Vec<u8>) {
    let mut state = shared.lock();
    if !pending.is_empty() {
        state.prompt = String::from_utf8_lossy(&std::mem::take(pending)).into_owned();
        state.prompt_count += 1;
    }
    state.quiet_count += 1;
    shared.changed.notify_all();
}

/// The reader thread: prints the server's output, tracks its prompt, notices the end.
fn read_server<P: ExternalPrinter>(mut stream: UnixStream, shared: Arc<Shared>, mut printer: P) {
    let mut buf = vec![0; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut checked = false;
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
                pending.extend_from_slice(&buf[..n]);
                quiet = false;
                {
                    let mut state = shared.lock();
                    state.received += n as u64;
                }
                if !checked {
                    if may_be_refusal(&pending) {
                        continue;
                    }
                    checked = true;
                    if let Some(err) = refusal(&String::from_utf8_lossy(&pending)) {
                        break Closed::Refused(err);
                    }
                }
                let (lines, prompts) = split_output(&mut pending);
                if !lines.is_empty() {
                    let _ = printer.print(String::from_utf8_lossy(&lines).into_owned());
                }
                // The protocol's own prompt needs no quiet moment to be recognised.
                if prompts > 0 {
                    let mut state = shared.lock();
                    state.prompt = REPL_PROMPT.to_owned();
                    state.prompt_count += prompts as u64;
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
                declare_prompt(&shared, &mut pending);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => break Closed::Eof,
            Err(err) => break Closed::Failed(Error::io("reading from the server", &err)),
        }
    };
    if !pending.is_empty() && !matches!(closed, Closed::Refused(_)) {
        let mut text = String::from_utf8_lossy(&pending).into_owned();
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

fn new_editor() -> Result<Editor<(), DefaultHistory>> {
    let config = Config::builder()
        .max_history_size(1000)
        .map_err(readline_error)?
        .auto_add_history(false)
        .build();
    DefaultEditor::with_config(config).map_err(readline_error)
}

fn readline_error(err: ReadlineError) -> Error {
    match err {
        ReadlineError::Io(err) => Error::io("terminal", &err),
        other => Error::new(ErrorKind::Other, format!("terminal: {other}")),
    }
}

/// An interactive session on a terminal.
pub fn interactive(stream: UnixStream) -> Result<Outcome> {
    // SIGINT outside rustyline (while waiting for an answer) only sets this flag; inside
    // rustyline, Ctrl-C is a key and the reader's SIGINT is rustyline's to handle.
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted))
        .map_err(|err| Error::io("installing the Ctrl-C handler", &err))?;

    let mut editor = new_editor()?;
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
    thread::spawn(move || read_server(reader_stream, reader_shared, printer));

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
    editor: &mut Editor<(), DefaultHistory>,
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
                let (prompts_before, quiet_before) = {
                    let state = shared.lock();
                    (state.prompt_count, state.quiet_count)
                };
                let mut request = line.into_bytes();
                request.push(b'\n');
                if (&*stream).write_all(&request).is_err() {
                    // The server is gone; the reader reports how.
                    shared.wait_until(interrupted, |_| false, |state| state.closed.is_some());
                    continue;
                }
                // The answer is complete when the next prompt comes (a server that never sent a
                // prompt, in exec mode, is done when it goes quiet). A slow command is waited for
                // as long as it takes; Ctrl-C gives the prompt back at once.
                let waited = shared.wait_until(
                    interrupted,
                    |_| false,
                    |state| {
                        state.prompt_count > prompts_before
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

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
        let (print, prompts) = split_output(&mut pending);
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
        let outcome = one_shot(client, "nosuch", false, Duration::from_secs(5)).unwrap();
        assert_eq!(outcome, Outcome::CommandFailed);
    }

    #[test]
    fn one_shot_reads_a_refusal_that_raced_its_request() {
        let (client, mut server) = UnixStream::pair().unwrap();
        server
            .write_all(b"manhole: access denied: peer uid 1 is not allowed\n")
            .unwrap();
        drop(server);
        let err = one_shot(client, "info", false, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err}");
    }

    #[test]
    fn one_shot_errors() {
        let refused = serve(b"manhole: too many sessions (8 open), try again later\n");
        assert_eq!(
            one_shot(refused, "x", false, Duration::from_secs(5))
                .unwrap_err()
                .exit_code(),
            7
        );
        let closed = serve(b"");
        assert_eq!(
            one_shot(closed, "x", false, Duration::from_secs(5))
                .unwrap_err()
                .kind(),
            ErrorKind::ServerClosed
        );
        let half = serve(b"{\"ok\":true,\"command\":\"exec\",\"text\":\"\",\"data\":{}}\n");
        assert_eq!(
            one_shot(half, "x", false, Duration::from_secs(5))
                .unwrap_err()
                .kind(),
            ErrorKind::ServerClosed
        );
        let garbage = serve(b"{\"ok\":true,\"command\":\"exec\"}\nwhat\n");
        assert_eq!(
            one_shot(garbage, "x", false, Duration::from_secs(5))
                .unwrap_err()
                .kind(),
            ErrorKind::Other
        );
        let (silent, _server) = UnixStream::pair().unwrap();
        let err = one_shot(silent, "x", false, Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
    }

    #[test]
    fn relay_reports_refusals_and_silence() {
        let refused = serve(b"manhole: access denied: peer uid 1000 is not allowed\n");
        assert_eq!(relay(refused).unwrap_err().kind(), ErrorKind::AccessDenied);
        let closed = serve(b"");
        assert_eq!(relay(closed).unwrap_err().kind(), ErrorKind::ServerClosed);
    }
}
