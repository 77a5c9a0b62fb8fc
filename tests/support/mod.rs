//! The end-to-end test harness: real example processes, real sockets, the real client.
//!
//! - [`bin`] finds (building once if needed) the workspace binaries: `demo`, `bare`, `manhole-cli`.
//! - [`App`] starts one as a child process and owns it: dropping it kills and reaps the process
//!   and removes its socket, so a failing test leaves nothing behind.
//! - [`Client`] talks to a socket the way an operator's tool would, with generous timeouts:
//!   every wait is for a condition (some text arriving, the peer closing), never a fixed sleep.
//! - [`TempDir`] gives each test its own directory, so tests run in parallel.
//! - [`dump_sections`] splits a stack dump's text into its threads and groups of threads.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// The generous default for any wait in a test.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The path of a workspace binary, built on first use with the same profile as the tests
/// (`MANHOLE_E2E_NO_BUILD` set: use what is already built).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = target_dir();
    BUILT.get_or_init(|| {
        if std::env::var_os("MANHOLE_E2E_NO_BUILD").is_some() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--quiet",
            "-p",
            "manhole-examples",
            "-p",
            "manhole-cli",
            "--bins",
        ]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build
            .status()
            .expect("run cargo build for the test binaries");
        assert!(status.success(), "building the example binaries failed");
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// `target/<profile>`, from the test executable's own path (`target/<profile>/deps/<test>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// A directory of this test's own, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory under /tmp with a short path (socket paths must fit 107 bytes).
    pub fn new() -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/mh-e2e-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create the test directory");
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Default for TempDir {
    fn default() -> TempDir {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running example process, killed, reaped and cleaned up on drop.
pub struct App {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stdout line seen so far.
    pub seen: Vec<String>,
    /// The socket the app listens on, once known.
    pub socket: Option<PathBuf>,
    stderr: std::sync::Arc<Mutex<String>>,
    /// Set once the stderr pipe reached end of file (every writer closed it).
    stderr_closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl App {
    /// Starts `name` with `args` and `env`, stdout and stderr captured.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> App {
        App::start_exe(&bin(name), args, env)
    }

    /// Starts the executable at `exe` (say, a build from another target directory) with `args`
    /// and `env`, stdout and stderr captured.
    pub fn start_exe(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> App {
        App::start_with(exe, args, env, |_| {})
    }

    /// Like [`App::start_exe`], with `configure` applied to the command last: it may, say, give
    /// the process a stderr of the test's own (then [`App::stderr`] stays empty) or close its
    /// standard descriptors in `pre_exec` (then no stdout line arrives).
    pub fn start_with(
        exe: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> App {
        let name = exe.display().to_string();
        let mut command = Command::new(exe);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.env_remove("MANHOLE");
        for (k, v) in env {
            command.env(k, v);
        }
        configure(&mut command);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let closed = stderr_closed.clone();
        match child.stderr.take() {
            Some(mut err_pipe) => {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = err_pipe.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        sink.lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                    closed.store(true, Ordering::SeqCst);
                });
            }
            None => closed.store(true, Ordering::SeqCst),
        }
        App {
            child,
            lines,
            seen: Vec::new(),
            socket: None,
            stderr,
            stderr_closed,
        }
    }

    /// Starts `demo` with `args` and waits for its `manhole listening on <path>` line.
    pub fn demo(args: &[&str]) -> App {
        App::listening("demo", args)
    }

    /// Starts the example `name` with `args` and waits for its `manhole listening on <path>`
    /// line.
    pub fn listening(name: &str, args: &[&str]) -> App {
        let mut app = App::start(name, args, &[]);
        let line = app.wait_for_line("manhole listening on ");
        app.socket = Some(PathBuf::from(
            line.trim_start_matches("manhole listening on "),
        ));
        app
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The socket path (panics if unknown).
    pub fn socket(&self) -> &Path {
        self.socket
            .as_deref()
            .expect("the app's socket path is known")
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    pub fn wait_for_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        if let Some(line) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stdout line starting with {prefix:?}; stdout so far {:?}; stderr {:?}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// Everything the app wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_for_stderr(&self, needle: &str) -> String {
        wait_until(|| self.stderr().contains(needle).then(|| self.stderr())).unwrap_or_else(|| {
            panic!(
                "stderr never contained {needle:?}; it has {:?}",
                self.stderr()
            )
        })
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader take in the last of stderr. Forked children may keep the pipe
                // open, so wait for its end of file only briefly.
                let drained = Instant::now() + Duration::from_secs(2);
                while !self.stderr_closed.load(Ordering::SeqCst) && Instant::now() < drained {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// How many file descriptors the process has open.
    pub fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The names of the process's threads.
    pub fn thread_names(&self) -> Vec<String> {
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return Vec::new();
        };
        tasks
            .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_string())
            .collect()
    }

    /// The process's resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until no `mh-session-<n>` or `mh-worker-<n>` thread is left (all sessions over).
    pub fn wait_sessions_gone(&self) {
        let gone = wait_until(|| {
            let busy = self
                .thread_names()
                .iter()
                .any(|n| n.starts_with("mh-session-") || n.starts_with("mh-worker-"));
            (!busy).then_some(())
        });
        assert!(
            gone.is_some(),
            "sessions still open: {:?}",
            self.thread_names()
        );
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let signal = nix::sys::signal::Signal::try_from(signal).expect("a standard signal");
        nix::sys::signal::kill(pid, signal).expect("signal the app");
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(socket) = &self.socket
            && fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket())
        {
            let _ = fs::remove_file(socket);
        }
    }
}

/// Polls `check` every few milliseconds until it yields a value or [`TIMEOUT`] passes.
pub fn wait_until<T>(mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A raw client connection to a manhole socket.
pub struct Client {
    stream: UnixStream,
    /// Everything received and not yet consumed by a `read_until`.
    pending: String,
}

impl Client {
    /// Connects to `path`.
    pub fn connect(path: &Path) -> io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(Client {
            stream,
            pending: String::new(),
        })
    }

    /// Sends `line` and a newline.
    pub fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("send a line");
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Half-closes: the server sees end of input but can still answer.
    pub fn shutdown_write(&self) {
        self.stream
            .shutdown(Shutdown::Write)
            .expect("shutdown write");
    }

    /// Reads once; `Ok(false)` on end of stream.
    fn read_some(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 64 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Reads until the received text contains `needle`; returns everything up to and including
    /// it, keeping the rest for the next call. Panics after [`TIMEOUT`] or if the server closes.
    pub fn read_until(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(pos) = self.pending.find(needle) {
                let rest = self.pending.split_off(pos + needle.len());
                return std::mem::replace(&mut self.pending, rest);
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?}; got {:?}",
                self.pending
            );
            match self.read_some() {
                Ok(true) => {}
                Ok(false) => panic!("server closed before {needle:?}; got {:?}", self.pending),
                Err(e) => panic!(
                    "read failed waiting for {needle:?}: {e}; got {:?}",
                    self.pending
                ),
            }
        }
    }

    /// Reads until the server closes the connection; returns everything not yet consumed.
    pub fn read_to_end(&mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(
                Instant::now() < deadline,
                "server did not close; got {:?}",
                self.pending
            );
            match self.read_some() {
                Ok(true) => {}
                Ok(false) => return std::mem::take(&mut self.pending),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return std::mem::take(&mut self.pending);
                }
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Reads up to the next prompt: a `>>> ` at the start of a line (symbol names in a dump can
    /// contain `>>> ` too). Returns the text before it.
    pub fn read_prompt(&mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(rest) = self.pending.strip_prefix(">>> ") {
                self.pending = rest.to_string();
                return String::new();
            }
            if let Some(pos) = self.pending.find("\n>>> ") {
                let rest = self.pending.split_off(pos + 5);
                let mut answer = std::mem::replace(&mut self.pending, rest);
                answer.truncate(pos + 1);
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for a prompt; got {:?}",
                self.pending
            );
            match self.read_some() {
                Ok(true) => {}
                Ok(false) => panic!("server closed before a prompt; got {:?}", self.pending),
                Err(e) => panic!(
                    "read failed waiting for a prompt: {e}; got {:?}",
                    self.pending
                ),
            }
        }
    }

    /// Skips the banner and the thread dump: reads up to the first prompt, returns the greeting.
    pub fn skip_greeting(&mut self) -> String {
        self.read_prompt()
    }

    /// Runs one REPL command and returns its answer (without the prompt).
    pub fn command(&mut self, line: &str) -> String {
        self.send(line);
        self.read_prompt()
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

/// Runs a command and captures its output, killing it and failing the test after [`TIMEOUT`].
pub fn run_with_timeout(command: &mut Command) -> std::process::Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(output) => output.expect("collect output"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let output = rx
                .recv()
                .expect("the killed command ends")
                .expect("collect output");
            panic!(
                "command timed out; stdout {:?}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
    }
}

/// `manhole-cli ARGS` with no stdin, no history home and no `MANHOLE`, as an operator's script
/// would run it.
pub fn cli_command(args: &[&str]) -> Command {
    let mut command = Command::new(bin("manhole-cli"));
    command
        .args(args)
        .stdin(Stdio::null())
        .env("HOME", "/nonexistent")
        .env_remove("MANHOLE");
    command
}

/// Runs [`cli_command`] to its end (bounded by [`TIMEOUT`]): exit code, stdout, stderr.
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let output = run_with_timeout(&mut cli_command(args));
    (
        output.status.code().expect("the client exits"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts `bare` with `MANHOLE` set to `manhole` (or unset for `None`) and waits for `ready`.
/// The App guard removes `/tmp/manhole-<pid>`.
pub fn bare(manhole: Option<&str>, args: &[&str]) -> App {
    let env: Vec<(&str, &str)> = manhole.map(|m| ("MANHOLE", m)).into_iter().collect();
    let mut app = App::start("bare", args, &env);
    app.wait_for_line("ready pid=");
    app.socket = Some(default_path(app.pid()));
    app
}

/// The default socket path of process `pid`.
pub fn default_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/manhole-{pid}"))
}

/// Whether `path` is a socket (not following a symlink).
pub fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Waits (bounded by [`TIMEOUT`]) until a socket is at `path`; fails the test otherwise.
pub fn wait_for_socket(path: &Path) {
    wait_until(|| is_socket(path).then_some(()))
        .unwrap_or_else(|| panic!("{} never appeared", path.display()));
}

/// One thread (`Thread TID "NAME" ...`) or group of threads (`N threads "NAMES" ...`) of a stack
/// dump's text: its header line, how many threads it stands for, and its lines up to the next.
#[derive(Debug)]
pub struct DumpSection {
    pub header: String,
    pub count: usize,
    pub body: String,
}

/// The threads and groups of a stack dump's text, in order (see docs/protocol.md).
pub fn dump_sections(text: &str) -> Vec<DumpSection> {
    let mut sections: Vec<DumpSection> = Vec::new();
    for line in text.lines() {
        let count = if line.starts_with("Thread ") {
            Some(1)
        } else {
            line.split_once(" threads \"")
                .and_then(|(count, _)| count.parse().ok())
        };
        match (count, sections.last_mut()) {
            (Some(count), _) => sections.push(DumpSection {
                header: line.to_string(),
                count,
                body: String::new(),
            }),
            (None, Some(section)) if !line.is_empty() && !line.starts_with(">>>") => {
                section.body.push_str(line);
                section.body.push('\n');
            }
            _ => {}
        }
    }
    sections
}

/// How many threads of `pid` whose name starts with `prefix` are in `clock_nanosleep`.
pub fn asleep(pid: u32, prefix: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            let read = |file| std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
            read("comm").starts_with(prefix)
                && read("syscall").split(' ').next()
                    == Some(libc::SYS_clock_nanosleep.to_string().as_str())
        })
        .count()
}
