//! [`Options`]: everything `install` can be told, each with its documented default.
//!
//! The setter names follow python-manhole's `install()` keywords (`verbose`, `socket_path`,
//! `strict`, `locals`, `connection_handler`, ...), so its users find their way; options that only
//! make sense in Rust (`dump_signal`, `lock_timeout`, ...) say so. Setters consume and return the
//! builder: `Options::new().socket_path("/run/app.sock").verbose(false)`.

use std::fmt;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::credentials::Policy;
use crate::local::{CommandFn, Local};
use crate::signals::SignalSpec;
use crate::{Error, Result};

/// How a connection is served once its peer is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionHandler {
    /// A banner, every thread's backtrace, then a `>>> ` prompt for commands (python-manhole's
    /// `handle_connection_repl`). This is the default.
    #[default]
    Repl,
    /// No banner, dump or prompt: one command per line and one JSON frame per answer, for tools
    /// (python-manhole's `handle_connection_exec`). See [docs/protocol.md](https://docs.rs/crate/manhole/latest/source/docs/protocol.md).
    Exec,
}

impl std::str::FromStr for ConnectionHandler {
    type Err = Error;
    fn from_str(s: &str) -> Result<ConnectionHandler> {
        match s {
            "repl" => Ok(ConnectionHandler::Repl),
            "exec" => Ok(ConnectionHandler::Exec),
            other => Err(Error::config(format!(
                "unknown connection_handler {other:?} (expected \"repl\" or \"exec\")"
            ))),
        }
    }
}

/// Configuration for [`install`](crate::install).
///
/// `Options::default()` is what `install(Options::new())` uses: listen on `/tmp/manhole-<pid>`
/// from a background thread, log events to stderr, serve the REPL.
#[derive(Clone)]
pub struct Options {
    pub(crate) verbose: bool,
    pub(crate) verbose_destination: RawFd,
    #[cfg(feature = "tracing")]
    pub(crate) log_to_tracing: bool,
    pub(crate) thread: bool,
    pub(crate) socket_path: Option<PathBuf>,
    pub(crate) locals: Vec<(String, Local)>,
    pub(crate) commands: Vec<(String, String, CommandFn)>,
    pub(crate) banner: String,
    pub(crate) runtime: crate::runtime::Attached,
    pub(crate) strict: bool,
    pub(crate) connection_handler: ConnectionHandler,
    pub(crate) max_sessions: usize,
    pub(crate) dump_signal: Option<i32>,
    pub(crate) dump_timeout: Duration,
    pub(crate) max_frames: usize,
    pub(crate) profile_hz: u32,
    pub(crate) lock_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) task_dumps: bool,
    pub(crate) write_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    /// `allowed_uids`, `allowed_gids` and `read_only`.
    pub(crate) policy: Policy,
    pub(crate) activate_on: Option<SignalSpec>,
    pub(crate) oneshot_on: Option<SignalSpec>,
    pub(crate) dump_on: Option<SignalSpec>,
    /// `None`: every signal.
    pub(crate) sigmask: Option<Vec<SignalSpec>>,
    pub(crate) reinstall_delay: Duration,
    pub(crate) patch_fork: bool,
    pub(crate) reinstall_at_fork: bool,
    pub(crate) daemon_connection: bool,
    pub(crate) redirect_stderr: bool,
    pub(crate) redirect_stdout: bool,
    pub(crate) cleanup_on_sigterm: bool,
    pub(crate) cleanup_on_signals: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            verbose: true,
            verbose_destination: 2,
            #[cfg(feature = "tracing")]
            log_to_tracing: false,
            thread: true,
            socket_path: None,
            locals: Vec::new(),
            commands: Vec::new(),
            banner: String::new(),
            runtime: crate::runtime::Attached::default(),
            strict: true,
            connection_handler: ConnectionHandler::Repl,
            max_sessions: Options::DEFAULT_MAX_SESSIONS,
            dump_signal: None,
            dump_timeout: Options::DEFAULT_DUMP_TIMEOUT,
            max_frames: Options::DEFAULT_MAX_FRAMES,
            profile_hz: Options::DEFAULT_PROFILE_HZ,
            lock_timeout: Options::DEFAULT_LOCK_TIMEOUT,
            command_timeout: Options::DEFAULT_COMMAND_TIMEOUT,
            task_dumps: false,
            write_timeout: Options::DEFAULT_WRITE_TIMEOUT,
            idle_timeout: Some(Options::DEFAULT_IDLE_TIMEOUT),
            policy: Policy::default(),
            activate_on: None,
            oneshot_on: None,
            dump_on: None,
            sigmask: None,
            reinstall_delay: Options::DEFAULT_REINSTALL_DELAY,
            patch_fork: true,
            reinstall_at_fork: false,
            daemon_connection: false,
            redirect_stderr: true,
            redirect_stdout: true,
            cleanup_on_sigterm: false,
            cleanup_on_signals: true,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Options");
        debug
            .field("verbose", &self.verbose)
            .field("verbose_destination", &self.verbose_destination)
            .field("thread", &self.thread)
            .field("socket_path", &self.socket_path)
            .field(
                "locals",
                &self.locals.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field(
                "commands",
                &self.commands.iter().map(|(n, _, _)| n).collect::<Vec<_>>(),
            )
            .field("banner", &self.banner)
            .field("runtime", &self.runtime)
            .field("strict", &self.strict)
            .field("connection_handler", &self.connection_handler)
            .field("max_sessions", &self.max_sessions)
            .field("dump_signal", &self.dump_signal)
            .field("dump_timeout", &self.dump_timeout)
            .field("max_frames", &self.max_frames)
            .field("profile_hz", &self.profile_hz)
            .field("lock_timeout", &self.lock_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("task_dumps", &self.task_dumps)
            .field("write_timeout", &self.write_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("allowed_uids", &self.policy.uids)
            .field("allowed_gids", &self.policy.gids)
            .field("read_only", &self.policy.read_only)
            .field("activate_on", &self.activate_on)
            .field("oneshot_on", &self.oneshot_on)
            .field("dump_on", &self.dump_on)
            .field("sigmask", &self.sigmask)
            .field("reinstall_delay", &self.reinstall_delay)
            .field("patch_fork", &self.patch_fork)
            .field("reinstall_at_fork", &self.reinstall_at_fork)
            .field("daemon_connection", &self.daemon_connection)
            .field("redirect_stderr", &self.redirect_stderr)
            .field("redirect_stdout", &self.redirect_stdout)
            .field("cleanup_on_sigterm", &self.cleanup_on_sigterm)
            .field("cleanup_on_signals", &self.cleanup_on_signals);
        #[cfg(feature = "tracing")]
        debug.field("log_to_tracing", &self.log_to_tracing);
        debug.finish()
    }
}

impl Options {
    /// The directory of the default socket path `/tmp/manhole-<pid>`.
    pub const DEFAULT_SOCKET_DIR: &'static str = "/tmp";
    /// The most sessions open at once.
    pub const DEFAULT_MAX_SESSIONS: usize = 8;
    /// How long a dump waits for the threads to answer.
    pub const DEFAULT_DUMP_TIMEOUT: Duration = Duration::from_secs(1);
    /// The most frames recorded for one thread.
    pub const DEFAULT_MAX_FRAMES: usize = 128;
    /// Samples per second of each thread's CPU time in a `profile`.
    pub const DEFAULT_PROFILE_HZ: u32 = crate::profile::DEFAULT_HZ;
    /// How long reading a value tries to take its lock.
    pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(1);
    /// How long a registered command or value read may run before the session stops waiting.
    pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
    /// Lets the `tasks` command ask tokio for a task dump (`Handle::dump`, in applications built
    /// with `--cfg tokio_unstable`). Off by default because tokio's task dump can itself harm
    /// the runtime: when a worker does not join the dump within tokio's 250 ms (a busy or
    /// blocked worker, a loaded machine), a later dump may trace without exclusive access and
    /// panic or leave a worker waiting for good (tokio-rs/tokio#8370, #7478, #8391). Turn it on
    /// where that risk is acceptable, e.g. in staging or for a runtime with one worker.
    /// Defaults to `false`.
    pub fn task_dumps(mut self, on: bool) -> Options {
        self.task_dumps = on;
        self
    }

    /// How long a write to a client may block before the session gives up on it.
    pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long a session may sit without input before it is closed.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
    /// The default dump signal: `SIGURG`, whose default action is to ignore it (see
    /// [`Options::dump_signal`]).
    pub const DEFAULT_DUMP_SIGNAL: i32 = libc::SIGURG;
    /// How long a forked child waits before listening at its own `/tmp/manhole-<pid>`.
    pub const DEFAULT_REINSTALL_DELAY: Duration = Duration::from_millis(500);
    /// Longest socket path: `sun_path` holds 108 bytes including the terminating NUL.
    pub const MAX_SOCKET_PATH_LEN: usize = 107;

    /// The default options.
    pub fn new() -> Options {
        Options::default()
    }

    /// Log one line per event (connections, refusals, commands that change state).
    /// Defaults to `true`.
    pub fn verbose(mut self, on: bool) -> Options {
        self.verbose = on;
        self
    }

    /// The file descriptor events are written to with a raw `write(2)`.
    /// Defaults to `2` (stderr).
    pub fn verbose_destination(mut self, fd: RawFd) -> Options {
        self.verbose_destination = fd;
        self
    }

    /// Send the event log (accepted and refused peers, every `set`, every registered command
    /// run, ...) to `tracing` instead of `verbose_destination`: one INFO event per line, target
    /// `manhole`, so the application's subscriber filters, formats and ships them with its own
    /// logs. [`verbose(false)`](Options::verbose) still turns them off. A forked child writes to
    /// `verbose_destination` until its manhole is reinstalled (the fork handler must not enter
    /// the subscriber), and `dump_on` dumps always go to `verbose_destination`. Defaults to
    /// `false` (feature `tracing`).
    #[cfg(feature = "tracing")]
    pub fn log_to_tracing(mut self, on: bool) -> Options {
        self.log_to_tracing = on;
        self
    }

    /// Start the always-on listener thread at install. It is off anyway when
    /// [`activate_on`](Options::activate_on) or [`oneshot_on`](Options::oneshot_on) is given; with
    /// `thread(false)` and neither, nothing listens until the application calls
    /// [`Manhole::handle_oneshot`](crate::Manhole::handle_oneshot).
    /// Defaults to `true`.
    pub fn thread(mut self, on: bool) -> Options {
        self.thread = on;
        self
    }

    /// Listen here instead of `/tmp/manhole-<pid>`. The path must fit `sun_path` (107 bytes).
    /// Defaults to `None` (the pid path in [`Options::DEFAULT_SOCKET_DIR`]).
    pub fn socket_path(mut self, path: impl Into<PathBuf>) -> Options {
        self.socket_path = Some(path.into());
        self
    }

    /// Fail a second `install` with [`ErrorKind::AlreadyInstalled`](crate::ErrorKind) when on;
    /// when off, undo the previous installation first and take over.
    /// Defaults to `true`.
    pub fn strict(mut self, on: bool) -> Options {
        self.strict = on;
        self
    }

    /// How connections are served.
    /// Defaults to [`ConnectionHandler::Repl`].
    pub fn connection_handler(mut self, handler: ConnectionHandler) -> Options {
        self.connection_handler = handler;
        self
    }

    /// Registers a named value for the lifetime of this installation (python-manhole's
    /// `locals`, one entry). Run-time registrations use [`register`](crate::register).
    /// Defaults to none.
    pub fn local(mut self, name: impl Into<String>, value: Local) -> Options {
        self.locals.push((name.into(), value));
        self
    }

    /// Registers several named values at once (python-manhole's `locals` dict).
    /// Defaults to none.
    pub fn locals<N: Into<String>>(
        mut self,
        locals: impl IntoIterator<Item = (N, Local)>,
    ) -> Options {
        self.locals
            .extend(locals.into_iter().map(|(n, v)| (n.into(), v)));
        self
    }

    /// Registers a command for the lifetime of this installation: `name ARGS...` in a session
    /// calls `run` with the argument words on a manhole worker thread; `help` is its one-line
    /// description. Run-time registrations use [`register_command`](crate::register_command).
    /// Defaults to none.
    pub fn command<F>(mut self, name: impl Into<String>, help: impl Into<String>, run: F) -> Options
    where
        F: Fn(&[String]) -> std::result::Result<String, String> + Send + Sync + 'static,
    {
        self.commands
            .push((name.into(), help.into(), CommandFn::new(run)));
        self
    }

    /// Registers a query for the lifetime of this installation: a command, like
    /// [`command`](Options::command), that only reads state, so a [`read_only`](Options::read_only)
    /// manhole still runs it. Commands registered with `command` are taken to change state.
    /// Run-time registrations use [`register_query`](crate::register_query).
    /// Defaults to none.
    pub fn query<F>(mut self, name: impl Into<String>, help: impl Into<String>, run: F) -> Options
    where
        F: Fn(&[String]) -> std::result::Result<String, String> + Send + Sync + 'static,
    {
        self.commands
            .push((name.into(), help.into(), CommandFn::query(run)));
        self
    }

    /// Registers an async command for the lifetime of this installation: `name ARGS...` in a
    /// session calls `run` with the argument words and runs the future it returns as a task on
    /// the tokio runtime (the one this is called from, else the attached one); after
    /// `command_timeout` the task is aborted and the session says so. Run-time registrations use
    /// [`register_async_command`](crate::register_async_command).
    /// Defaults to none.
    #[cfg(feature = "tokio")]
    pub fn async_command<F, Fut>(
        mut self,
        name: impl Into<String>,
        help: impl Into<String>,
        run: F,
    ) -> Options
    where
        F: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<String, String>> + Send + 'static,
    {
        let run = CommandFn::Async(crate::runtime::AsyncCommand::new(run));
        self.commands.push((name.into(), help.into(), run));
        self
    }

    /// The tokio runtime that async commands and values run on and that the `runtime` and
    /// `tasks` commands inspect.
    /// Defaults to the runtime `install` is called from, if any (`Handle::try_current`).
    #[cfg(feature = "tokio")]
    pub fn tokio_runtime(mut self, handle: tokio::runtime::Handle) -> Options {
        self.runtime = crate::runtime::Attached::new(handle);
        self
    }

    /// Extra text shown to a REPL session after the built-in banner line, before the thread
    /// dump (aiomanhole's `banner`); a missing final newline is added.
    /// Defaults to none.
    pub fn banner(mut self, text: impl Into<String>) -> Options {
        self.banner = text.into();
        self
    }

    /// The most sessions open at once; one more client gets a "too many sessions" line.
    /// Defaults to [`Options::DEFAULT_MAX_SESSIONS`] (8).
    pub fn max_sessions(mut self, n: usize) -> Options {
        self.max_sessions = n.max(1);
        self
    }

    /// The signal used to ask each thread for its stack. It must have no handler when the
    /// manhole is installed, and its default action must be to ignore it, so that a request
    /// that arrives late (queued across `exec`, after `SA_RESETHAND`, or after the application
    /// reset it to `SIG_DFL`) can never kill or stop the process: `install` accepts only
    /// `SIGURG` and `SIGWINCH` and refuses any other signal (real-time signals, `SIGTERM`,
    /// `SIGCHLD`, `SIGPIPE`, `SIGTSTP`, ...) with [`ErrorKind::Signal`](crate::ErrorKind).
    /// Defaults to [`Options::DEFAULT_DUMP_SIGNAL`] (`SIGURG`, as Go's runtime uses for
    /// preemption).
    pub fn dump_signal(mut self, signal: i32) -> Options {
        self.dump_signal = Some(signal);
        self
    }

    /// How long a dump waits for the threads to answer before listing the silent ones from
    /// `/proc`.
    /// The wait ends as soon as every thread has answered, so this only costs time when a
    /// thread cannot answer (stopped, or starved of CPU on a loaded machine).
    /// Defaults to [`Options::DEFAULT_DUMP_TIMEOUT`] (1 s).
    pub fn dump_timeout(mut self, timeout: Duration) -> Options {
        self.dump_timeout = timeout;
        self
    }

    /// The most frames recorded per thread (deeper stacks are marked truncated).
    /// Defaults to [`Options::DEFAULT_MAX_FRAMES`] (128).
    pub fn max_frames(mut self, n: usize) -> Options {
        self.max_frames = n.clamp(8, 1024);
        self
    }

    /// How often the `profile` command samples each application thread, per second of the
    /// CPU time that thread uses (a sleeping thread is never sampled). Clamped to 1..=1000.
    /// Defaults to [`Options::DEFAULT_PROFILE_HZ`] (99, as `perf record -F 99`).
    pub fn profile_hz(mut self, hz: u32) -> Options {
        self.profile_hz = hz.clamp(1, crate::profile::MAX_HZ);
        self
    }

    /// How long `get` tries to take the lock of a value behind a `Mutex`/`RwLock`.
    /// Defaults to [`Options::DEFAULT_LOCK_TIMEOUT`] (1 s).
    pub fn lock_timeout(mut self, timeout: Duration) -> Options {
        self.lock_timeout = timeout;
        self
    }

    /// How long a registered command or value read may run before the session reports it as
    /// still running and goes on (aiomanhole's command timeout).
    /// Defaults to [`Options::DEFAULT_COMMAND_TIMEOUT`] (5 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Options {
        self.command_timeout = timeout;
        self
    }

    /// How long a client may take nothing of an answer (it stopped reading) before its session
    /// is closed; the wait starts again whenever the client reads more.
    /// Defaults to [`Options::DEFAULT_WRITE_TIMEOUT`] (10 s).
    pub fn write_timeout(mut self, timeout: Duration) -> Options {
        self.write_timeout = timeout;
        self
    }

    /// Close a session after this long without input; `None` keeps idle sessions open.
    /// Defaults to `Some(`[`Options::DEFAULT_IDLE_TIMEOUT`]`)` (30 min).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Options {
        self.idle_timeout = timeout;
        self
    }

    /// Also admit peers running as these uids (besides the process's effective uid and root,
    /// which are always admitted). The socket file is then mode 0666 so they can connect, and
    /// the `SO_PEERCRED` check is what keeps everyone else out; see [docs/security.md](https://docs.rs/crate/manhole/latest/source/docs/security.md).
    /// Defaults to none.
    pub fn allowed_uids(mut self, uids: impl IntoIterator<Item = u32>) -> Options {
        self.policy.uids = uids.into_iter().collect();
        self
    }

    /// Also admit peers whose primary (effective) gid is one of these, as `SO_PEERCRED` reports
    /// it at `connect()`; supplementary groups are not consulted (they cannot be read without a
    /// race), so an operator runs the client under the group (`sg GROUP -c 'manhole-cli PID'`).
    /// With exactly one gid and no [`allowed_uids`](Options::allowed_uids), the socket file is
    /// mode 0660 and owned by that group (the process must be root or a member of it); otherwise
    /// 0666. See [docs/security.md](https://docs.rs/crate/manhole/latest/source/docs/security.md).
    /// Defaults to none.
    pub fn allowed_gids(mut self, gids: impl IntoIterator<Item = u32>) -> Options {
        self.policy.gids = gids.into_iter().collect();
        self
    }

    /// Refuse what may change the process: `set`, and registered commands other than those
    /// registered as queries ([`query`](Options::query), [`register_query`](crate::register_query)).
    /// Async commands may change state too and are refused. Reading values, `threads`, `info`
    /// and the other built-in commands still work. A refused command gets one error line and is
    /// logged.
    /// Defaults to `false`.
    pub fn read_only(mut self, on: bool) -> Options {
        self.policy.read_only = on;
        self
    }

    /// Start the listener (and keep it) when `signal` arrives; nothing listens before. The signal
    /// is a number or a name with or without `SIG` (`"USR2"`, `"SIGUSR2"`, `12`). A handler the
    /// application has for it keeps running (it is chained through signal-hook).
    /// Defaults to `None`.
    pub fn activate_on(mut self, signal: impl Into<SignalSpec>) -> Options {
        self.activate_on = Some(signal.into());
        self
    }

    /// Each time `signal` arrives, open the socket for exactly one session and remove it when
    /// that session ends (python-manhole's `oneshot_on`). It must differ from `activate_on`.
    /// Defaults to `None`.
    pub fn oneshot_on(mut self, signal: impl Into<SignalSpec>) -> Options {
        self.oneshot_on = Some(signal.into());
        self
    }

    /// On `signal`, write the backtrace of every thread to the
    /// [`verbose_destination`](Options::verbose_destination) (like the JVM's `kill -3`); the
    /// application keeps running.
    /// Defaults to `None`.
    pub fn dump_on(mut self, signal: impl Into<SignalSpec>) -> Options {
        self.dump_on = Some(signal.into());
        self
    }

    /// The signals every manhole thread blocks, so that a signal meant for the application
    /// (read with `signalfd` or `sigwait`) is never taken by a manhole thread. An empty list
    /// turns blocking off. The dump signal always stays unblocked.
    /// Defaults to every signal (see [`Options::sigmask_all`]).
    pub fn sigmask<S: Into<SignalSpec>>(mut self, signals: impl IntoIterator<Item = S>) -> Options {
        self.sigmask = Some(signals.into_iter().map(Into::into).collect());
        self
    }

    /// Block every signal in the manhole threads (the default).
    pub fn sigmask_all(mut self) -> Options {
        self.sigmask = None;
        self
    }

    /// In a forked child, wait this long before listening at the child's own
    /// `/tmp/manhole-<pid>`, so children that `exec` at once never create a socket.
    /// Defaults to [`Options::DEFAULT_REINSTALL_DELAY`] (0.5 s).
    pub fn reinstall_delay(mut self, delay: Duration) -> Options {
        self.reinstall_delay = delay;
        self
    }

    /// Let the child of a `fork` bring the manhole back (the fork handlers keep the parent's
    /// options for it): with [`crate::reinstall_after_fork`] from the child's code, or on its
    /// own with [`Options::reinstall_at_fork`]. Only the default pid path with the always-on
    /// listener gets a listener in the child; see
    /// [docs/options.md](https://docs.rs/crate/manhole/latest/source/docs/options.md).
    /// Defaults to `true`.
    pub fn patch_fork(mut self, on: bool) -> Options {
        self.patch_fork = on;
        self
    }

    /// Start every forked child's reinstall from the fork handler itself: a `mh-fork` thread
    /// that listens at `/tmp/manhole-<childpid>` after `reinstall_delay`, with no call from the
    /// child. The price: the child has a second thread before `fork` returns, so a child that
    /// calls `unshare(CLONE_NEWUSER)` or `setns` into a user or mount namespace (sandboxes,
    /// container runtimes, `pre_exec` closures) fails with `EINVAL`, and each fork+exec pays
    /// for a thread; and the fork handler allocates (a global allocator that is not fork-safe
    /// can deadlock there). No mechanism can start a thread later without the child's code: see
    /// [docs/options.md](https://docs.rs/crate/manhole/latest/source/docs/options.md).
    /// Defaults to `false`.
    pub fn reinstall_at_fork(mut self, on: bool) -> Options {
        self.reinstall_at_fork = on;
        self
    }

    /// When `false`, a normal process exit (main returning, `std::process::exit`) gives a
    /// session that is running a command up to 2 s to answer, then closes every open session
    /// with the line `manhole: the process is exiting, closing the session`; it never waits for
    /// an idle session. When `true`, there is no grace and no closing line: sessions end with
    /// the process. See [docs/options.md](https://docs.rs/crate/manhole/latest/source/docs/options.md)
    /// for how this compares with python-manhole's option of the same name.
    /// Defaults to `false`.
    pub fn daemon_connection(mut self, on: bool) -> Options {
        self.daemon_connection = on;
        self
    }

    /// While a session is open, also show what the process writes to its stderr (fd 2) in the
    /// session, live. The original stderr still gets everything. See [docs/options.md](https://docs.rs/crate/manhole/latest/source/docs/options.md) for the
    /// caveats.
    /// Defaults to `true` (as python-manhole).
    pub fn redirect_stderr(mut self, on: bool) -> Options {
        self.redirect_stderr = on;
        self
    }

    /// While a session is open, also show what the process writes to its stdout (fd 1) in the
    /// session, live, as [`Options::redirect_stderr`] does for fd 2. Nothing is taken from the
    /// real stdout: it still gets every byte, in order. Turn it off for a program whose stdout
    /// is a data stream an operator does not want in the session. See [docs/options.md](https://docs.rs/crate/manhole/latest/source/docs/options.md).
    /// Defaults to `true` (python-manhole's sessions always show the process's stdout).
    pub fn redirect_stdout(mut self, on: bool) -> Options {
        self.redirect_stdout = on;
        self
    }

    /// SIGTERM, SIGINT and SIGHUP, each while it has its default action (`SIG_DFL`), remove the
    /// socket file (and the activation file) and then kill the process with the same signal, so
    /// it dies of it as before, with the same wait status. A signal the application handles or
    /// ignores, when the manhole is installed or later, is left to the application: nothing is
    /// removed and nothing re-raised. `false`: the manhole installs no handler for them, and a
    /// process they kill leaves its socket behind (the next start replaces it,
    /// `manhole-cli --list --prune` removes it). SIGKILL and crashes always leave it.
    /// Defaults to `true`.
    pub fn cleanup_on_signals(mut self, on: bool) -> Options {
        self.cleanup_on_signals = on;
        self
    }

    /// Also when the application has a SIGTERM handler of its own: after that handler ran
    /// (chained through signal-hook), the manhole removes the socket and kills the process with
    /// SIGTERM, cutting the application's own shutdown short. Only for applications that want
    /// exactly that; a SIGTERM at its default action is already handled by
    /// [`Options::cleanup_on_signals`]. See [docs/options.md](https://docs.rs/crate/manhole/latest/source/docs/options.md).
    /// Defaults to `false`.
    pub fn cleanup_on_sigterm(mut self, on: bool) -> Options {
        self.cleanup_on_sigterm = on;
        self
    }

    /// The socket path this configuration listens on for process `pid`.
    pub(crate) fn socket_path_for(&self, pid: u32) -> PathBuf {
        match &self.socket_path {
            Some(path) => path.clone(),
            None => default_socket_path(pid),
        }
    }
}

/// The default socket path of process `pid`: `/tmp/manhole-<pid>`.
pub fn default_socket_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("{}/manhole-{pid}", Options::DEFAULT_SOCKET_DIR))
}

/// Parses a signal given as a name with or without `SIG` (`USR2`, `SIGUSR2`, case-insensitive), a
/// real-time offset (`RTMIN+3`, `SIGRTMAX-1`) or a number.
pub fn parse_signal(text: &str) -> Result<i32> {
    let text = text.trim();
    let bad = || {
        Error::new(
            crate::ErrorKind::Signal,
            format!(
                "unknown signal {text:?} (expected a name like USR2 or SIGUSR2, RTMIN+N, or a number)"
            ),
        )
    };
    let in_range = |n: i32| {
        if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        }
    };
    if let Ok(n) = text.parse::<i32>() {
        return in_range(n);
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    for (base_name, base) in [("RTMIN", libc::SIGRTMIN()), ("RTMAX", libc::SIGRTMAX())] {
        if let Some(rest) = name.strip_prefix(base_name) {
            let offset = match rest.as_bytes().first() {
                None => 0,
                Some(b'+') => rest[1..].parse::<i32>().map_err(|_| bad())?,
                Some(b'-') => -rest[1..].parse::<i32>().map_err(|_| bad())?,
                Some(_) => return Err(bad()),
            };
            let n = base + offset;
            return if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n) {
                Ok(n)
            } else {
                Err(bad())
            };
        }
    }
    format!("SIG{name}")
        .parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_number_and_rt_offset() {
        assert_eq!(parse_signal("USR2").unwrap(), libc::SIGUSR2);
        assert_eq!(parse_signal("SIGUSR2").unwrap(), libc::SIGUSR2);
        assert_eq!(parse_signal("usr1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("12").unwrap(), 12);
        assert_eq!(parse_signal("RTMIN+7").unwrap(), libc::SIGRTMIN() + 7);
        assert_eq!(parse_signal("SIGRTMAX-1").unwrap(), libc::SIGRTMAX() - 1);
        for bad in ["", "NOPE", "0", "999", "RTMIN+99", "RTMIN*2"] {
            let err = parse_signal(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Signal, "{bad}");
        }
    }

    #[test]
    fn default_path_is_per_pid_in_tmp() {
        assert_eq!(default_socket_path(42), PathBuf::from("/tmp/manhole-42"));
        assert_eq!(
            Options::new().socket_path_for(7),
            PathBuf::from("/tmp/manhole-7")
        );
        assert_eq!(
            Options::new().socket_path("/x/y").socket_path_for(7),
            PathBuf::from("/x/y")
        );
    }
}
