//! One client connection: greeting, reading lines, running commands, writing answers.
//!
//! A session runs on its own `mh-session-<n>` thread. It never blocks for ever: reads wait
//! in `poll` together with the installation's stop pipe (so uninstall ends every session) and an
//! idle timeout; writes use non-blocking `send(MSG_NOSIGNAL)` (a vanished client is an `EPIPE`
//! error, never a SIGPIPE) and wait in `poll` at most the write timeout for the client to read
//! more, so a client that stops reading costs one session, not the process. Input is cut into
//! lines of at most [`MAX_LINE`] bytes; a longer line is answered with an error and skipped, so
//! memory stays bounded whatever a client sends. Answers are streamed to the socket in pieces
//! ([`Sink`]): a stack dump is never built whole.

use std::fmt::{self, Write as _};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, recv, send};

use crate::commands::{self, Action, Forms, Reply};
use crate::credentials::PeerCred;
use crate::log::log_event;
use crate::options::ConnectionHandler;
use crate::stackdump::DumpOptions;
use crate::tee;

/// The longest command line accepted.
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// How long a new session waits for an `exec` hello before greeting (see `docs/protocol.md`).
pub(crate) const HELLO_WINDOW: Duration = Duration::from_millis(200);
/// The REPL prompt.
pub(crate) const PROMPT: &str = ">>> ";

/// What a session needs from the installation's options.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub handler: ConnectionHandler,
    pub lock_timeout: Duration,
    pub command_timeout: Duration,
    /// Whether `tasks` may ask tokio for a task dump (`Options::task_dumps`).
    pub task_dumps: bool,
    pub write_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub dump: DumpOptions,
    /// What `profile` samples with (`Options::profile_hz`, the dump signal).
    pub profile: crate::profile::ProfileOptions,
    /// Show what the process writes to fd 2 in REPL sessions, live (`Options::redirect_stderr`).
    pub redirect_stderr: bool,
    /// Show what the process writes to fd 1 in REPL sessions, live (`Options::redirect_stdout`).
    pub redirect_stdout: bool,
    /// The application's extra greeting text (`Options::banner`), possibly empty.
    pub banner: String,
    /// The tokio runtime the installation is attached to, if any.
    pub runtime: crate::runtime::Attached,
    /// Who may connect (`Options::allowed_uids`/`allowed_gids`) and whether state may be
    /// changed (`Options::read_only`).
    pub policy: crate::credentials::Policy,
}

/// Why reading the next line stopped.
#[derive(Debug)]
enum Input {
    Line(String),
    TooLong,
    /// The client closed its side (or half-closed it).
    End,
    /// The installation is being uninstalled.
    Stopped,
    Idle,
}

/// Cuts the byte stream into lines, bounded in memory.
#[derive(Debug, Default)]
struct LineReader {
    buffer: Vec<u8>,
    /// Set while skipping the rest of an over-long line.
    discarding: bool,
    eof: bool,
}

impl LineReader {
    /// Takes the next complete line out of the buffer, if there is one.
    fn take_line(&mut self) -> Option<Input> {
        loop {
            if let Some(pos) = self.buffer.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.buffer.drain(..=pos).collect();
                if self.discarding {
                    self.discarding = false;
                    continue;
                }
                if pos > MAX_LINE {
                    return Some(Input::TooLong);
                }
                return Some(Input::Line(clean_line(&raw[..raw.len() - 1])));
            }
            if self.buffer.len() > MAX_LINE {
                self.buffer.clear();
                if !self.discarding {
                    self.discarding = true;
                    return Some(Input::TooLong);
                }
                continue;
            }
            if self.eof {
                if self.buffer.is_empty() || self.discarding {
                    self.buffer.clear();
                    return Some(Input::End);
                }
                // A last line without its newline is still a command (`printf info | nc -U`).
                let raw = std::mem::take(&mut self.buffer);
                return Some(Input::Line(clean_line(&raw)));
            }
            return None;
        }
    }
}

/// Feeds `chunks` to a line reader one after the other, then ends the input; returns what it
/// yields: each line, or `None` for an over-long one. For `crate::__fuzz`.
pub(crate) fn read_lines(chunks: &[&[u8]]) -> Vec<Option<String>> {
    let mut reader = LineReader::default();
    let mut out = Vec::new();
    let drain = |reader: &mut LineReader, out: &mut Vec<Option<String>>| {
        while let Some(input) = reader.take_line() {
            match input {
                Input::Line(line) => out.push(Some(line)),
                Input::TooLong => out.push(None),
                _ => return true,
            }
        }
        false
    };
    for chunk in chunks {
        reader.buffer.extend_from_slice(chunk);
        drain(&mut reader, &mut out);
    }
    reader.eof = true;
    let ended = drain(&mut reader, &mut out);
    assert!(ended, "the reader did not end after end of input");
    out
}

/// Turns raw line bytes into a command string: telnet IAC sequences and `\r` dropped, invalid
/// UTF-8 replaced, NUL and every other control character but tab (C0, DEL, and the C1 range
/// U+0080..U+009F, whose CSI can drive a terminal showing the log) turned into spaces.
fn clean_line(raw: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            // IAC: WILL/WONT/DO/DONT carry one option byte; other commands stand alone.
            0xFF => {
                i += if raw.get(i + 1).is_some_and(|c| (0xFB..=0xFE).contains(c)) {
                    3
                } else {
                    2
                }
            }
            b'\r' => i += 1,
            b if b < 0x20 && b != b'\t' => {
                bytes.push(b' ');
                i += 1;
            }
            b => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    // DEL and the C1 controls arrive as valid UTF-8 (or one byte): clean them after decoding.
    // See: issue 5 (found by the property test `lines_do_not_depend_on_how_the_input_is_cut`).
    String::from_utf8_lossy(&bytes)
        .chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

/// For a command that runs a while (`profile`): sleeps up to `pause`, then says whether the
/// session should go on. A client that hung up (`POLLHUP`: both directions closed) or an
/// uninstall ends it; input typed ahead and a half-close do not (the answer is still wanted).
fn still_wanted(stream: BorrowedFd<'_>, stop: BorrowedFd<'_>, pause: Duration) -> bool {
    let mut fds = [
        PollFd::new(stream, PollFlags::empty()),
        PollFd::new(stop, PollFlags::POLLIN),
    ];
    let timeout =
        PollTimeout::try_from(pause.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::ZERO);
    match poll(&mut fds, timeout) {
        Ok(0) | Err(Errno::EINTR) => true,
        Ok(_) => {
            let gone = |fd: &PollFd<'_>| {
                fd.revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLIN)
                })
            };
            !gone(&fds[0]) && !gone(&fds[1])
        }
        Err(_) => false,
    }
}

/// A connected, accepted client.
pub(crate) struct Session {
    stream: UnixStream,
    peer: PeerCred,
    settings: Arc<Settings>,
    stop: Arc<OwnedFd>,
    reader: LineReader,
    json: bool,
    /// Exec framing, with frames carrying these parts of each answer.
    exec: Option<Forms>,
    /// The tee while this session shows the process's stdout or stderr.
    feed: Option<tee::Feed>,
}

/// The client connections of the open sessions: a forked child closes its copies, or a client
/// would never see its session end while the child lives. Held across `fork` (see `fork.rs`),
/// taken last, after `tee::TEE`.
static SESSION_FDS: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

fn session_fds() -> MutexGuard<'static, Vec<RawFd>> {
    SESSION_FDS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps a session's connection on the list of descriptors a forked child closes.
struct CloseInChildren(RawFd);

/// Puts `fd` on the list until the returned guard is dropped.
fn close_in_children(fd: RawFd) -> CloseInChildren {
    session_fds().push(fd);
    CloseInChildren(fd)
}

impl Drop for CloseInChildren {
    fn drop(&mut self) {
        let mut fds = session_fds();
        if let Some(at) = fds.iter().position(|&fd| fd == self.0) {
            fds.swap_remove(at);
        }
    }
}

/// `SESSION_FDS`, held by the fork handlers from `prepare` until `parent`/`child`.
pub(crate) struct ForkHold(MutexGuard<'static, Vec<RawFd>>);

pub(crate) fn fork_hold() -> ForkHold {
    ForkHold(session_fds())
}

/// In a forked child (async-signal-safe, with the list held): closes the child's copies of the
/// sessions' connections; `clear` frees nothing.
pub(crate) fn after_fork_in_child(hold: &mut ForkHold) {
    for &fd in hold.0.iter() {
        crate::sys::close_raw(fd);
    }
    hold.0.clear();
}

/// Sessions running right now, in any installation.
pub(crate) static LIVE_SESSIONS: AtomicUsize = AtomicUsize::new(0);
/// Sessions working on a command line right now (from reading it to writing its answer): a
/// normal exit gives them a short grace to finish (unless `daemon_connection` is on).
pub(crate) static BUSY_SESSIONS: AtomicUsize = AtomicUsize::new(0);
/// Set by the exit hook before it hangs up the stop pipe: a stopped session says why.
pub(crate) static EXITING: AtomicBool = AtomicBool::new(false);

/// One more in a counter for as long as it lives.
struct Counted(&'static AtomicUsize);

impl Counted {
    fn new(counter: &'static AtomicUsize) -> Counted {
        counter.fetch_add(1, Ordering::SeqCst);
        Counted(counter)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Session {
    pub(crate) fn new(
        stream: UnixStream,
        peer: PeerCred,
        settings: Arc<Settings>,
        stop: Arc<OwnedFd>,
    ) -> Session {
        let exec = (settings.handler == ConnectionHandler::Exec).then_some(Forms::BOTH);
        Session {
            stream,
            peer,
            settings,
            stop,
            reader: LineReader::default(),
            json: false,
            exec,
            feed: None,
        }
    }

    /// Serves the session until the client leaves, `exit`, idleness or uninstall.
    pub(crate) fn run(mut self) {
        let _live = Counted::new(&LIVE_SESSIONS);
        let _not_in_children = close_in_children(self.stream.as_raw_fd());
        let why = match self.serve() {
            Ok(why) => why,
            Err(e) => format!("connection error: {e}"),
        };
        log_event!("Session of {} ended: {why}", self.peer);
    }

    fn serve(&mut self) -> io::Result<String> {
        if self.exec.is_none()
            && let Some(hello) = self.exec_hello()?
        {
            let reply = commands::run(&hello, &self.settings, &self.peer);
            if let Action::Exec(forms) = reply.action {
                self.exec = Some(forms);
            }
            self.reply(&reply)?;
        }
        if self.exec.is_none() {
            self.greet()?;
        }
        self.update_feed();
        loop {
            match self.next_input()? {
                Input::Line(line) => {
                    let line = line.trim();
                    if line.is_empty() {
                        if self.exec.is_none() {
                            self.write(self.prompt().as_bytes())?;
                        }
                        continue;
                    }
                    // Until its answer is written: an exit gives it a moment to finish.
                    let _busy = Counted::new(&BUSY_SESSIONS);
                    let (stream, stop) = (self.stream.as_fd(), self.stop.as_fd());
                    let reply =
                        commands::run_waiting(line, &self.settings, &self.peer, &mut |pause| {
                            still_wanted(stream, stop, pause)
                        });
                    match reply.action {
                        Action::JsonFormat(on) => self.json = on,
                        Action::Exec(forms) => self.exec = Some(forms),
                        Action::Continue | Action::Exit => {}
                    }
                    self.update_feed();
                    self.reply(&reply)?;
                    if reply.action == Action::Exit {
                        return Ok("exit".into());
                    }
                }
                Input::TooLong => {
                    let reply = Reply {
                        command: String::new(),
                        result: Err(format!("line longer than {MAX_LINE} bytes, ignored")),
                        action: Action::Continue,
                    };
                    self.reply(&reply)?;
                }
                Input::End => return Ok("client closed the connection".into()),
                Input::Stopped if EXITING.load(Ordering::SeqCst) => {
                    let _ = self.write(b"\nmanhole: the process is exiting, closing the session\n");
                    return Ok("the process is exiting".into());
                }
                Input::Stopped => {
                    let _ = self.write(b"\nmanhole: uninstalled, closing the session\n");
                    return Ok("manhole uninstalled".into());
                }
                Input::Idle => {
                    let _ = self.write(b"\nmanhole: idle for too long, closing the session\n");
                    return Ok("idle timeout".into());
                }
            }
        }
    }

    /// Waits up to [`HELLO_WINDOW`] for a first line and, if it is an exec hello (`exec`,
    /// `exec text` or `exec data`), takes it out of the input and returns it.
    fn exec_hello(&mut self) -> io::Result<Option<String>> {
        if !self.fill(Some(HELLO_WINDOW))? {
            return Ok(None);
        }
        // A hello may arrive in pieces (`exec data`, then its newline): while what came so far
        // can still become one, give the rest of it up to another window.
        let deadline = Instant::now() + HELLO_WINDOW;
        while !self.reader.buffer.contains(&b'\n')
            && !self.reader.eof
            && could_become_hello(&self.reader.buffer)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.fill(Some(left))? {
                break;
            }
        }
        // A last line without a newline is a line too (as for every command).
        let end = match self.reader.buffer.iter().position(|&b| b == b'\n') {
            Some(end) => end,
            None if self.reader.eof => self.reader.buffer.len(),
            None => return Ok(None),
        };
        let line = clean_line(&self.reader.buffer[..end]);
        let words: Vec<&str> = line.split_whitespace().collect();
        let is_hello =
            matches!(words.split_first(), Some((&"exec", args)) if Forms::for_exec(args).is_some());
        if !is_hello {
            return Ok(None);
        }
        let hello = words.join(" ");
        let taken = (end + 1).min(self.reader.buffer.len());
        self.reader.buffer.drain(..taken);
        Ok(Some(hello))
    }

    fn greet(&mut self) -> io::Result<()> {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "?".into());
        let banner = format!(
            "Manhole {} in pid {} ({exe}), uid {}; type \"help\" for the commands.\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            nix::unistd::geteuid(),
        );
        self.write(banner.as_bytes())?;
        if let Some(runtime) = self.settings.runtime.greeting() {
            self.write(runtime.as_bytes())?;
        }
        if !self.settings.banner.is_empty() {
            self.write(self.settings.banner.as_bytes())?;
            if !self.settings.banner.ends_with('\n') {
                self.write(b"\n")?;
            }
        }
        let dump = commands::run("threads", &self.settings, &self.peer);
        let mut out = Sink::new(self.stream.as_fd(), self.settings.write_timeout);
        let _ = dump.write_repl(&mut out);
        // A blank line between the dump and the prompt; an error is its one line.
        if dump.result.is_ok() {
            let _ = out.write_char('\n');
        }
        let _ = out.write_str(self.prompt());
        out.finish()
    }

    /// Shows the process's stdout and stderr in text REPL sessions only: exec frames and JSON
    /// answers must stay one JSON document per line.
    fn update_feed(&mut self) {
        let shown = tee::Shown {
            stdout: self.settings.redirect_stdout,
            stderr: self.settings.redirect_stderr,
        };
        let wanted = shown.any() && self.exec.is_none() && !self.json;
        if wanted && self.feed.is_none() {
            match tee::attach(shown) {
                Ok(feed) => self.feed = Some(feed),
                Err(e) => log_event!("Cannot show stdout/stderr in the session: {e}"),
            }
        } else if !wanted {
            self.feed = None;
        }
    }

    /// Sends what the process wrote to stdout and stderr since the last call to the client.
    fn forward_output(&mut self) -> io::Result<()> {
        let Some(feed) = &self.feed else {
            return Ok(());
        };
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match nix::unistd::read(feed.reader(), &mut chunk) {
                Ok(0) | Err(Errno::EAGAIN) => return Ok(()),
                Ok(n) => send_all(
                    self.stream.as_fd(),
                    &chunk[..n],
                    self.settings.write_timeout,
                )?,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn prompt(&self) -> &'static str {
        if self.exec.is_some() { "" } else { PROMPT }
    }

    /// The parts of an answer this session's frames carry: both in `format json` and plain
    /// exec framing, one after `exec text` or `exec data`. `None`: the REPL's text.
    fn frame_forms(&self) -> Option<Forms> {
        match self.exec {
            Some(forms) => Some(forms),
            None if self.json => Some(Forms::BOTH),
            None => None,
        }
    }

    /// Sends a reply, streamed: a big dump is written out as it goes, never built whole.
    fn reply(&mut self, reply: &Reply) -> io::Result<()> {
        let mut out = Sink::new(self.stream.as_fd(), self.settings.write_timeout);
        // The exec handshake itself always carries both parts (its data is the pid).
        let forms = match reply.action {
            Action::Exec(_) => Some(Forms::BOTH),
            _ => self.frame_forms(),
        };
        let _ = match forms {
            Some(forms) => reply
                .write_frame(forms, &mut out)
                .and_then(|()| out.write_char('\n')),
            None => reply.write_repl(&mut out),
        };
        if reply.action != Action::Exit {
            let _ = out.write_str(self.prompt());
        }
        out.finish()
    }

    /// The next input event, reading from the socket as needed.
    fn next_input(&mut self) -> io::Result<Input> {
        loop {
            if let Some(input) = self.reader.take_line() {
                return Ok(input);
            }
            match self.fill(self.settings.idle_timeout) {
                Ok(true) => {}
                Ok(false) => return Ok(Input::Idle),
                Err(e) if e.kind() == io::ErrorKind::Interrupted && self.stopped() => {
                    return Ok(Input::Stopped);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn stopped(&self) -> bool {
        crate::wait::stopped_now(self.stop.as_fd())
    }

    /// Waits for input (or the stop pipe) up to `timeout` and appends what arrived. `Ok(false)`
    /// means the time ran out; a stop is reported as `Interrupted`.
    fn fill(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => PollTimeout::try_from(d.saturating_duration_since(Instant::now()))
                    .unwrap_or(PollTimeout::MAX),
            };
            // Slot 2 is the feed, when the session shows stdout or stderr: its output goes to the
            // client as it is written, without waiting for the client's next line.
            let (ready, input, output) = {
                let mut fds = vec![
                    PollFd::new(self.stream.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
                ];
                if let Some(feed) = &self.feed {
                    fds.push(PollFd::new(feed.reader().as_fd(), PollFlags::POLLIN));
                }
                let ready = loop {
                    match poll(&mut fds, timeout) {
                        Ok(n) => break n,
                        Err(Errno::EINTR) => continue,
                        Err(e) => return Err(e.into()),
                    }
                };
                let has = |i: usize| {
                    fds.get(i)
                        .and_then(|f| f.revents())
                        .is_some_and(|r| !r.is_empty())
                };
                let stop = crate::wait::stop_fired(self.stop.as_fd(), fds[1].revents());
                (ready, has(0) || stop, has(2))
            };
            if ready == 0 {
                return Ok(false);
            }
            if output {
                self.forward_output()?;
            }
            if input {
                break;
            }
        }
        if self.stopped() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "manhole stopped",
            ));
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = loop {
            match recv(self.stream.as_raw_fd(), &mut chunk, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(true),
                Err(Errno::ECONNRESET) => break 0,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            self.reader.eof = true;
        } else {
            self.reader.buffer.extend_from_slice(&chunk[..n]);
        }
        Ok(true)
    }

    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        send_all(self.stream.as_fd(), bytes, self.settings.write_timeout)
    }
}

/// Whether the start of a first line (no newline yet) may still become an exec hello: `exec`,
/// `exec text` or `exec data`, perhaps cut in the middle of a word.
fn could_become_hello(start: &[u8]) -> bool {
    // Longer than any hello with some white space around it.
    if start.len() > 64 {
        return false;
    }
    let line = clean_line(start);
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => true,
        [word] => "exec".starts_with(word),
        ["exec", word] => "text".starts_with(word) || "data".starts_with(word),
        _ => false,
    }
}

/// What a session writes to its client, sent in pieces of [`Sink::PIECE`] bytes as it is
/// written (`fmt::Write`). The first send error is kept and everything after it dropped;
/// [`finish`](Sink::finish) sends the rest and reports that error.
struct Sink<'a> {
    fd: BorrowedFd<'a>,
    timeout: Duration,
    buffer: Vec<u8>,
    error: Option<io::Error>,
}

impl<'a> Sink<'a> {
    const PIECE: usize = 64 * 1024;

    fn new(fd: BorrowedFd<'a>, timeout: Duration) -> Sink<'a> {
        Sink {
            fd,
            timeout,
            buffer: Vec::new(),
            error: None,
        }
    }

    fn send_buffer(&mut self) {
        if self.error.is_none()
            && let Err(e) = send_all(self.fd, &self.buffer, self.timeout)
        {
            self.error = Some(e);
        }
        self.buffer.clear();
    }

    fn finish(mut self) -> io::Result<()> {
        self.send_buffer();
        self.error.map_or(Ok(()), Err)
    }
}

impl fmt::Write for Sink<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if self.error.is_some() {
            return Err(fmt::Error);
        }
        self.buffer.extend_from_slice(text.as_bytes());
        if self.buffer.len() >= Sink::PIECE {
            self.send_buffer();
        }
        match self.error {
            Some(_) => Err(fmt::Error),
            None => Ok(()),
        }
    }
}

/// Sends all of `bytes` with `MSG_NOSIGNAL`, giving up once the client has taken nothing for
/// `timeout`. The sends do not block; the waits are `poll`s for `POLLOUT`. (A blocking send with
/// `SO_SNDTIMEO` waits twice as long: the send that fills the buffer blocks the whole timeout
/// and then returns the part it copied, and only the next one fails.)
pub(crate) fn send_all(fd: BorrowedFd<'_>, mut bytes: &[u8], timeout: Duration) -> io::Result<()> {
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading (write timed out)",
        )
    };
    let mut deadline = Instant::now() + timeout;
    while !bytes.is_empty() {
        match send(
            fd.as_raw_fd(),
            bytes,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => {
                bytes = &bytes[n..];
                deadline = Instant::now() + timeout;
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(timed_out());
                }
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
                match poll(&mut fds, wait) {
                    Ok(0) => return Err(timed_out()),
                    // Writable, or an error or hang-up the next send reports.
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_cut_anywhere_may_still_become_one_and_other_lines_may_not() {
        for start in [
            "",
            " ",
            "e",
            "exe",
            "exec",
            "exec ",
            "exec t",
            "exec text",
            "exec  da",
            " exec data",
            "exec\tdata\r",
        ] {
            assert!(could_become_hello(start.as_bytes()), "{start:?}");
        }
        for start in [
            "threads",
            "help",
            "execs",
            "exec text extra",
            "exec x",
            "exec dat a",
            "EXEC",
        ] {
            assert!(!could_become_hello(start.as_bytes()), "{start:?}");
        }
        assert!(!could_become_hello(
            format!("{}exec", " ".repeat(100)).as_bytes()
        ));
    }

    fn lines(reader: &mut LineReader) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(input) = reader.take_line() {
            match input {
                Input::Line(l) => out.push(l),
                Input::TooLong => out.push("<too long>".into()),
                Input::End => {
                    out.push("<end>".into());
                    break;
                }
                other => out.push(format!("{other:?}")),
            }
        }
        out
    }

    #[test]
    fn lines_are_cleaned_and_bounded() {
        let mut r = LineReader::default();
        r.buffer
            .extend_from_slice(b"info\r\nget\0x\n\xff\xfb\x01help\n\xc3(bad\npartial");
        assert_eq!(lines(&mut r), ["info", "get x", "help", "\u{fffd}(bad"]);
        // DEL and C1 controls (a CSI in UTF-8 and as a lone byte) become spaces too.
        let mut controls = LineReader::default();
        controls
            .buffer
            .extend_from_slice(b"get\x7fx\xc2\x9b31m\x9by\n");
        assert_eq!(lines(&mut controls), ["get x 31m\u{fffd}y"]);
        r.buffer.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        assert_eq!(lines(&mut r), ["<too long>"]);
        r.buffer.extend_from_slice(b"aaaa\nnext\n");
        assert_eq!(lines(&mut r), ["next"]);
        let mut long = vec![b'b'; MAX_LINE + 1];
        long.extend_from_slice(b"\nafter\n");
        r.buffer.extend_from_slice(&long);
        assert_eq!(lines(&mut r), ["<too long>", "after"]);
        r.buffer.extend_from_slice(b"last");
        r.eof = true;
        assert_eq!(lines(&mut r), ["last", "<end>"]);
    }
}
