//! The one installation per process: [`install`], the [`Manhole`] handle, uninstall, what the
//! activation signals start (the listener, one-shot sessions, dumps), the reinstall in a forked
//! child, and the exit hook that gives commands under way a short grace, closes the sessions
//! and removes the socket.
//!
//! The state is a process-global `Option<Installation>` behind a lock that is only held for
//! short bookkeeping, never while a client is served or a thread is joined. Tearing an
//! installation down closes the write end of its stop pipe: the listener, the signal thread, a
//! one-shot and every session poll the read end, see it hang up and finish on their own.
//!
//! Lock order: `STATE`, `PENDING`, then `registry::TABLE`, `signals::HOOKED`, `tee::TEE`. All
//! are std mutexes held by the fork handlers across `fork` (see `fork.rs`).

pub(crate) mod envvar;
pub(crate) mod evidence;
pub(crate) mod fork;
pub(crate) mod signals;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use self::signals::{Roles, signal_name};
use crate::listener::{self, Shared};
use crate::log::log_event;
use crate::registry::{self, Entry, Registration};
use crate::session::{BUSY_SESSIONS, EXITING, LIVE_SESSIONS, Session, Settings};
use crate::socket::{self, BoundSocket};
use crate::stackdump::{self, DumpOptions, StackDump};
use crate::{Error, ErrorKind, Options, Result, threads};

struct Installation {
    id: u64,
    pid: u32,
    settings: Arc<Settings>,
    /// The options it was installed with: a forked child reinstalls from them.
    options: Arc<Options>,
    roles: Roles,
    /// Read end of the stop pipe, polled by every thread of this installation.
    stop: Arc<OwnedFd>,
    /// Write end of the stop pipe; dropping it stops the listener, signal thread and sessions.
    stop_writer: Option<OwnedFd>,
    socket: Option<Arc<BoundSocket>>,
    listener: Option<JoinHandle<()>>,
    signal_thread: Option<JoinHandle<()>>,
    oneshot: Arc<Oneshot>,
    /// The published activation evidence (`evidence.rs`), for `activate_on`/`oneshot_on`.
    evidence: Option<evidence::Evidence>,
    /// Which of SIGTERM, SIGINT and SIGHUP remove our files and die (`cleanup_on_signals`).
    cleanup_signals: Vec<i32>,
    _registrations: Vec<Registration>,
}

/// The one-shot session of an installation (signal or `handle_oneshot`), if one is under way.
#[derive(Default)]
struct Oneshot {
    running: AtomicBool,
    socket: Mutex<Option<Arc<BoundSocket>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A std `Mutex` (not parking_lot's) so that the fork child can unlock it with one atomic store.
static STATE: Mutex<Option<Installation>> = Mutex::new(None);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static EXIT_HOOK: AtomicBool = AtomicBool::new(false);
/// The installed `daemon_connection`: when off, the exit hook waits for sessions.
static DAEMON_CONNECTION: AtomicBool = AtomicBool::new(false);

/// In a forked child (`patch_fork`), the options of the manhole it may bring back, from the
/// fork until it reinstalls or installs. Apart from `STATE`, so that a child that forks again
/// before its reinstall (a daemon's fork, setsid, fork) passes the plan on to its own child.
static PENDING: Mutex<Option<Arc<Options>>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<Installation>> {
    locked(&STATE)
}

fn pending() -> MutexGuard<'static, Option<Arc<Options>>> {
    locked(&PENDING)
}

/// `STATE` and `PENDING`, held by the fork handlers from `prepare` until `parent`/`child`.
struct ForkHold(
    MutexGuard<'static, Option<Installation>>,
    MutexGuard<'static, Option<Arc<Options>>>,
);

thread_local! {
    /// [`ForkHold`] between the fork handlers (same thread: the child continues the forking
    /// thread).
    static FORK_HELD: std::cell::RefCell<Option<ForkHold>> =
        const { std::cell::RefCell::new(None) };
}

/// The installation's part of the fork handlers (see `fork.rs`).
const FORK_HANDLERS: fork::StateHandlers = fork::StateHandlers {
    prepare: || {
        let state = state();
        let hold = ForkHold(state, pending());
        FORK_HELD.with(|slot| *slot.borrow_mut() = Some(hold));
    },
    parent: || drop(FORK_HELD.with(|slot| slot.borrow_mut().take())),
    child: || {
        let Some(mut hold) = FORK_HELD.with(|slot| slot.borrow_mut().take()) else {
            return;
        };
        let reinstall_now = after_fork_in_child(&mut hold);
        drop(hold);
        if reinstall_now {
            reinstall_in_child();
        }
    },
};

/// A handle on the installed manhole. Dropping it does nothing: the manhole stays installed until
/// [`Manhole::uninstall`] or process exit.
#[derive(Debug, Clone)]
pub struct Manhole {
    id: u64,
    socket_path: Option<PathBuf>,
}

impl Manhole {
    /// Where this installation listens, if it has a listener.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket_path.as_deref()
    }

    /// Stops the listener, ends the open sessions, removes the socket file, restores the
    /// activation signals' old dispositions and drops the locals and commands registered through
    /// [`Options`]. Fails with [`ErrorKind::NotInstalled`] if this installation was already
    /// replaced or uninstalled.
    pub fn uninstall(self) -> Result<()> {
        let mut state = state();
        match state.as_ref() {
            Some(current) if current.id == self.id => {
                let installation = state.take().expect("checked above");
                drop(state);
                teardown(installation);
                Ok(())
            }
            _ => Err(not_installed()),
        }
    }

    /// Captures a symbolized backtrace of every thread, as the `threads` command does.
    pub fn dump_threads(&self) -> Result<StackDump> {
        dump_threads()
    }

    /// Opens the socket (`socket_path`, or `/tmp/manhole-<pid>`) for exactly one session, serves
    /// it on the calling thread and removes the socket when it ends (python-manhole's
    /// `handle_oneshot`). Meant for `thread(false)` installations in programs that own their
    /// signal handling: call it from your own handler thread when the operator asks. It blocks
    /// until a client has come and gone, or until the manhole is uninstalled.
    ///
    /// ```no_run
    /// let manhole = manhole::install(manhole::Options::new().thread(false))?;
    /// // ... later, when the operator asks for it:
    /// manhole.handle_oneshot()?;
    /// # Ok::<(), manhole::Error>(())
    /// ```
    pub fn handle_oneshot(&self) -> Result<()> {
        let (settings, stop, path, oneshot) = {
            let state = state();
            let current = state
                .as_ref()
                .filter(|i| i.id == self.id && i.pid == std::process::id())
                .ok_or_else(not_installed)?;
            (
                current.settings.clone(),
                current.stop.clone(),
                current.options.socket_path_for(current.pid),
                current.oneshot.clone(),
            )
        };
        if oneshot.running.swap(true, Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Configuration,
                "a one-shot session is already under way",
            ));
        }
        serve_oneshot(&path, &settings, &stop, &oneshot)
    }
}

fn not_installed() -> Error {
    Error::new(
        ErrorKind::NotInstalled,
        "this manhole is no longer installed",
    )
}

/// Installs the manhole: the dump signal handler, the registered values and commands, the
/// activation signals, and (with `thread`, the default, and no activation signal) the listener
/// on `/tmp/manhole-<pid>` or `socket_path`.
///
/// Errors: [`ErrorKind::AlreadyInstalled`] when a manhole is installed and `strict` is on (the
/// default; with `strict(false)` the old one is uninstalled first),
/// [`ErrorKind::Configuration`] when options contradict each other (the same signal for
/// `activate_on` and `oneshot_on`), [`ErrorKind::Signal`] for an unknown or unusable signal,
/// [`ErrorKind::SocketPath`] when the socket cannot be put at its path.
///
/// ```no_run
/// let manhole = manhole::install(manhole::Options::new())?;
/// println!("manhole listening on {}", manhole.socket_path().unwrap().display());
/// # Ok::<(), manhole::Error>(())
/// ```
pub fn install(options: Options) -> Result<Manhole> {
    install_as(options, false)
}

/// The resolved signal numbers and mask of some options.
#[derive(Debug)]
struct Resolved {
    dump_signal: i32,
    roles: Roles,
    sigmask: u64,
    thread: bool,
}

fn resolve(options: &Options) -> Result<Resolved> {
    let dump_signal = options.dump_signal.unwrap_or(Options::DEFAULT_DUMP_SIGNAL);
    stackdump::check_dump_signal(dump_signal)?;
    let one = |spec: &Option<crate::SignalSpec>| spec.as_ref().map(|s| s.resolve()).transpose();
    let roles = Roles {
        activate: one(&options.activate_on)?,
        oneshot: one(&options.oneshot_on)?,
        dump: one(&options.dump_on)?,
        terminate: options.cleanup_on_sigterm.then_some(libc::SIGTERM),
    };
    if roles.activate.is_some() && roles.activate == roles.oneshot {
        return Err(Error::config(
            "You cannot do activation of the Manhole thread on the same signal that you want to \
             do oneshot activation !",
        ));
    }
    if roles.dump.is_some() && (roles.dump == roles.activate || roles.dump == roles.oneshot) {
        return Err(Error::config(
            "dump_on must be a different signal from activate_on and oneshot_on",
        ));
    }
    if roles.terminate.is_some()
        && [roles.activate, roles.oneshot, roles.dump].contains(&roles.terminate)
    {
        return Err(Error::config(
            "cleanup_on_sigterm takes SIGTERM, so no other option may use it",
        ));
    }
    if let Some(signal) = roles.signals().find(|&s| s == dump_signal) {
        return Err(Error::config(format!(
            "{} is the dump signal (dump_signal); choose another one",
            signal_name(signal)
        )));
    }
    let names = (options.locals.iter().map(|(name, _)| (name, false)))
        .chain(options.commands.iter().map(|(name, _, _)| (name, true)));
    for (name, is_command) in names {
        if let Some(reason) = crate::commands::unusable_name(name, is_command) {
            return Err(Error::config(reason));
        }
    }
    let sigmask = match &options.sigmask {
        None => u64::MAX,
        Some(list) => list.iter().try_fold(0u64, |set, spec| {
            let n = spec.resolve()?;
            Ok::<u64, Error>(if (1..=64).contains(&n) {
                set | (1u64 << (n - 1))
            } else {
                set
            })
        })?,
    };
    Ok(Resolved {
        dump_signal,
        thread: options.thread && roles.activate.is_none() && roles.oneshot.is_none(),
        roles,
        sigmask,
    })
}

/// `install`, also used by a forked child to reinstall (`quiet_conflict`: an installation the
/// child's own code made meanwhile wins, without an error).
fn install_as(options: Options, quiet_conflict: bool) -> Result<Manhole> {
    let resolved = resolve(&options)?;
    let mut state = state();
    if let Some(current) = state.as_ref() {
        if current.pid == std::process::id() && (options.strict || quiet_conflict) {
            return Err(Error::new(
                ErrorKind::AlreadyInstalled,
                "Manhole already installed!",
            ));
        }
        let previous = state.take().expect("checked above");
        if previous.pid == std::process::id() {
            log_event!("Replacing the installed manhole (strict is off)");
            // Its threads may need the state lock to finish: tear down without holding it.
            drop(state);
            teardown(previous);
            state = self::state();
            if state.is_some() {
                return Err(Error::new(
                    ErrorKind::AlreadyInstalled,
                    "another manhole was installed while the old one was being replaced",
                ));
            }
        } else {
            // Inherited through fork without the fork hook: its threads do not exist here and
            // its socket is the parent's. Forget it without touching either.
            std::mem::forget(previous);
        }
    }
    crate::log::configure(options.verbose, options.verbose_destination);
    #[cfg(feature = "tracing")]
    crate::log::send_to_tracing(options.log_to_tracing);
    stackdump::install_handler(resolved.dump_signal)?;
    threads::set_dump_signal(resolved.dump_signal);
    threads::set_sigmask(resolved.sigmask);
    fork::ensure_hooks(FORK_HANDLERS);
    crate::tee::prepare(crate::tee::Shown {
        stdout: options.redirect_stdout,
        stderr: options.redirect_stderr,
    });
    let settings = Arc::new(Settings {
        handler: options.connection_handler,
        lock_timeout: options.lock_timeout,
        command_timeout: options.command_timeout,
        task_dumps: options.task_dumps,
        write_timeout: options.write_timeout,
        idle_timeout: options.idle_timeout,
        dump: DumpOptions {
            signal: resolved.dump_signal,
            timeout: options.dump_timeout,
            max_frames: options.max_frames,
            fresh: false,
        },
        profile: crate::profile::ProfileOptions {
            signal: resolved.dump_signal,
            hz: options.profile_hz,
        },
        redirect_stderr: options.redirect_stderr,
        redirect_stdout: options.redirect_stdout,
        banner: options.banner.clone(),
        runtime: options.runtime.for_install(),
        policy: options.policy.clone(),
    });
    // Non-blocking, so stray bytes in it can be drained (see `wait::stop_fired`).
    let (stop_reader, stop_writer) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(|e| Error::io("cannot create the stop pipe", e.into()))?;
    let pid = std::process::id();
    let mut installation = Installation {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        pid,
        settings,
        roles: resolved.roles,
        stop: Arc::new(stop_reader),
        stop_writer: Some(stop_writer),
        socket: None,
        listener: None,
        signal_thread: None,
        oneshot: Arc::new(Oneshot::default()),
        evidence: None,
        cleanup_signals: Vec::new(),
        _registrations: registrations(&options),
        options: Arc::new(options),
    };
    signals::hook_all(&installation.roles)?;
    let started = (|| -> Result<()> {
        if resolved.thread {
            start_listener(&mut installation)?;
        }
        if !installation.roles.is_empty() {
            let actions = Arc::new(SignalActions {
                id: installation.id,
                settings: installation.settings.clone(),
                options: installation.options.clone(),
                stop: installation.stop.clone(),
                oneshot: installation.oneshot.clone(),
            });
            installation.signal_thread = Some(signals::spawn_thread(
                installation.roles,
                actions,
                installation.stop.clone(),
            )?);
        }
        Ok(())
    })();
    if let Err(e) = started {
        drop(state);
        teardown(installation);
        return Err(e);
    }
    // Only now that the signals are hooked: the evidence promises a handler.
    installation.evidence = evidence::publish(
        &installation.options.socket_path_for(pid),
        installation.roles.activate,
        installation.roles.oneshot,
    );
    arm_cleanup(&mut installation);
    publish_files(&installation);
    DAEMON_CONNECTION.store(installation.options.daemon_connection, Ordering::SeqCst);
    install_exit_hook();
    log_mode(&installation);
    let handle = Manhole {
        id: installation.id,
        socket_path: installation.socket.as_ref().map(|s| s.path().to_path_buf()),
    };
    *state = Some(installation);
    // Installed: a child forked from now on takes its plan from this installation.
    pending().take();
    Ok(handle)
}

/// Says how this installation listens and what a forked child will do (python-manhole's lines).
fn log_mode(installation: &Installation) {
    let options = &installation.options;
    let roles = &installation.roles;
    if let Some(signal) = roles.activate {
        log_event!(
            "Not patching fork. Activation is done by signal {signal} ({})",
            signal_name(signal)
        );
    } else if let Some(signal) = roles.oneshot {
        log_event!(
            "Not patching fork. Oneshot activation is done by signal {signal} ({})",
            signal_name(signal)
        );
    } else if !options.thread {
        log_event!("No listener thread (thread is off): call handle_oneshot to open a session");
    } else if let Some(path) = &options.socket_path {
        log_event!(
            "Not patching fork. Using user socket path {}",
            path.display()
        );
    } else if options.patch_fork && options.reinstall_at_fork {
        log_event!(
            "Patched fork: a forked child listens at /tmp/manhole-<childpid> after {:.1} seconds",
            options.reinstall_delay.as_secs_f64()
        );
    } else if options.patch_fork {
        log_event!(
            "Patched fork: a forked child gets its manhole back when it calls \
             manhole::reinstall_after_fork"
        );
    }
    if let Some(signal) = roles.dump {
        log_event!(
            "Dumping every thread's stack on signal {signal} ({})",
            signal_name(signal)
        );
    }
}

/// `cleanup_on_signals`: gives SIGTERM, SIGINT and SIGHUP the handler that removes our files and
/// dies of the signal, each only if it is at `SIG_DFL` and no option of ours uses it.
fn arm_cleanup(installation: &mut Installation) {
    if !installation.options.cleanup_on_signals {
        return;
    }
    let mut theirs = Vec::new();
    for signal in crate::sys::dying::TERMINATING {
        if installation.roles.signals().any(|s| s == signal) {
            continue;
        }
        match crate::sys::dying::arm(signal) {
            Ok(true) => installation.cleanup_signals.push(signal),
            Ok(false) => theirs.push(signal_name(signal)),
            Err(e) => log_event!("Cannot install a handler for {}: {e}", signal_name(signal)),
        }
    }
    if !theirs.is_empty() {
        log_event!(
            "{} handled or ignored by the application: left to it (if it kills the process, the \
             socket stays)",
            theirs.join(", ")
        );
    }
}

/// Tells the handler of `cleanup_on_signals` which files are ours now: the listener's socket,
/// a one-shot's socket, the activation evidence.
fn publish_files(installation: &Installation) {
    let oneshot = locked(&installation.oneshot.socket).clone();
    let sockets = [installation.socket.as_ref(), oneshot.as_ref()];
    let files: Vec<(&Path, (u64, u64))> = (sockets.into_iter().flatten())
        .map(|socket| (socket.path(), socket.identity()))
        .chain(installation.evidence.as_ref().map(|e| e.file()))
        .collect();
    crate::sys::dying::set_files(&files);
}

/// [`publish_files`] for the current installation, if any.
fn publish_current_files() {
    if let Some(installation) = state().as_ref() {
        publish_files(installation);
    }
}

fn registrations(options: &Options) -> Vec<Registration> {
    let values = options
        .locals
        .iter()
        .map(|(name, local)| registry::insert(name.clone(), Entry::Value(local.clone())));
    let commands = options.commands.iter().map(|(name, help, run)| {
        registry::insert(
            name.clone(),
            Entry::Command {
                help: help.clone(),
                run: run.clone(),
            },
        )
    });
    values.chain(commands).collect()
}

fn start_listener(installation: &mut Installation) -> Result<()> {
    let path = installation.options.socket_path_for(installation.pid);
    let bound = Arc::new(socket::bind(&path, &installation.settings.policy)?);
    // Before anyone can be served on it, so a signal that kills us after a session removes it.
    installation.socket = Some(bound.clone());
    publish_files(installation);
    let shared = Shared {
        settings: installation.settings.clone(),
        stop: installation.stop.clone(),
        max_sessions: installation.options.max_sessions,
        open_sessions: Arc::new(AtomicUsize::new(0)),
        next_session: AtomicU64::new(1),
    };
    let listening = bound.clone();
    let spawned = threads::spawn("mh-listener".into(), move || {
        listener::run(&listening.listener, &shared)
    });
    let handle = match spawned {
        Ok(handle) => handle,
        Err(e) => {
            installation.socket = None;
            publish_files(installation);
            bound.remove_file();
            return Err(Error::io("cannot start the listener thread", e));
        }
    };
    log_event!("Manhole UDS path: {}", bound.path().display());
    installation.listener = Some(handle);
    Ok(())
}

fn teardown(mut installation: Installation) {
    // First: no moment where the evidence promises a handler that is gone.
    drop(installation.evidence.take());
    crate::sys::dying::set_files(&[]);
    for signal in installation.cleanup_signals.drain(..) {
        crate::sys::dying::disarm(signal);
    }
    signals::unhook_all(&installation.roles);
    drop(installation.stop_writer.take());
    let me = std::thread::current().id();
    let oneshot_thread = locked(&installation.oneshot.thread).take();
    for handle in [
        installation.listener.take(),
        installation.signal_thread.take(),
        oneshot_thread,
    ]
    .into_iter()
    .flatten()
    {
        if handle.thread().id() != me {
            let _ = handle.join();
        }
    }
    if let Some(socket) = installation.socket.take() {
        socket.remove_file();
        log_event!("Removed {}", socket.path().display());
    }
    if let Some(socket) = locked(&installation.oneshot.socket).take() {
        socket.remove_file();
    }
}

/// What the `mh-signal` thread does for one installation.
struct SignalActions {
    id: u64,
    settings: Arc<Settings>,
    options: Arc<Options>,
    stop: Arc<OwnedFd>,
    oneshot: Arc<Oneshot>,
}

impl signals::Actions for SignalActions {
    fn activate(&self) {
        let mut state = state();
        let Some(installation) = state.as_mut().filter(|i| i.id == self.id) else {
            return;
        };
        if installation.listener.is_some() {
            return;
        }
        log_event!("Activation signal received: starting the listener");
        if let Err(e) = start_listener(installation) {
            log_event!("Cannot start the listener: {e}");
        }
    }

    fn oneshot(&self) {
        if self.oneshot.running.swap(true, Ordering::SeqCst) {
            log_event!("Oneshot signal ignored: a one-shot session is already under way");
            return;
        }
        let path = self.options.socket_path_for(std::process::id());
        let (settings, stop, oneshot) = (
            self.settings.clone(),
            self.stop.clone(),
            self.oneshot.clone(),
        );
        let previous = locked(&self.oneshot.thread).take();
        if let Some(previous) = previous {
            let _ = previous.join();
        }
        let spawned = threads::spawn("mh-oneshot".into(), move || {
            if let Err(e) = serve_oneshot(&path, &settings, &stop, &oneshot) {
                log_event!("Oneshot failure: {e}");
            }
        });
        match spawned {
            Ok(handle) => *locked(&self.oneshot.thread) = Some(handle),
            Err(e) => {
                self.oneshot.running.store(false, Ordering::SeqCst);
                log_event!("Oneshot failure: cannot start its thread: {e}");
            }
        }
    }

    fn dump(&self) {
        let text = match stackdump::capture(&self.settings.dump) {
            Ok(dump) => dump.to_text(),
            Err(e) => format!("manhole: cannot dump the threads: {e}\n"),
        };
        // A full stderr nobody reads must not hold the signal thread: what does not fit in a
        // second is dropped.
        crate::log::write_text(
            crate::log::destination_now(),
            text.as_bytes(),
            Duration::from_secs(1),
        );
    }

    fn terminate(&self, signal: i32) {
        remove_sockets(Duration::from_millis(500));
        log_event!("{}: removed the socket; terminating", signal_name(signal));
        crate::sys::raise_with_default_action(signal);
    }
}

/// Binds `path`, waits for one connection (or the stop pipe), serves it on this thread, and
/// removes the socket whatever happens. The caller has set `oneshot.running`; it is cleared here,
/// as soon as the socket is gone (or could not be made).
fn serve_oneshot(
    path: &Path,
    settings: &Arc<Settings>,
    stop: &Arc<OwnedFd>,
    oneshot: &Oneshot,
) -> Result<()> {
    let bound = match socket::bind(path, &settings.policy) {
        Ok(bound) => Arc::new(bound),
        Err(e) => {
            oneshot.running.store(false, Ordering::SeqCst);
            return Err(e);
        }
    };
    *locked(&oneshot.socket) = Some(bound.clone());
    publish_current_files();
    // Once the socket is gone, the next signal must open a new one: the one-shot counts as over
    // from that moment, not when this thread has finished.
    struct Remove<'a>(&'a Oneshot, Arc<BoundSocket>);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            self.1.remove_file();
            locked(&self.0.socket).take();
            publish_current_files();
            self.0.running.store(false, Ordering::SeqCst);
            log_event!("Cleaned up. Removed {}", self.1.path().display());
        }
    }
    let _remove = Remove(oneshot, bound.clone());
    log_event!(
        "Manhole UDS path: {} (one session). Waiting for new connection (in pid:{}) ...",
        bound.path().display(),
        std::process::id()
    );
    loop {
        let woken = crate::wait::until_ready_or_stopped(bound.listener.as_fd(), stop.as_fd())
            .map_err(|e| Error::io("poll failed", e.into()))?;
        if woken.stopped {
            return Ok(());
        }
        if !woken.ready {
            continue;
        }
        let stream = match bound.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(Error::io("accept failed", e)),
        };
        // Blocking mode for the session, as the listener's sessions get.
        let _ = stream.set_nonblocking(false);
        // A refused peer does not use up the one session: wait for the next connection.
        let Some((peer, why)) = crate::credentials::admit(&stream, &settings.policy) else {
            continue;
        };
        log_event!("Accepted one-shot session from {peer} ({why})");
        Session::new(stream, peer, settings.clone(), stop.clone()).run();
        return Ok(());
    }
}

/// Captures a symbolized backtrace of every thread with the installed manhole's settings.
/// Fails with [`ErrorKind::NotInstalled`] before `install` (the capture needs its signal handler).
///
/// A thread that has not run since an earlier dump captured it parked in a system call is not
/// signalled again: that capture is shown ([`ThreadStack::unchanged`](crate::stackdump::ThreadStack::unchanged)).
/// [`dump_threads_fresh`] signals every thread.
pub fn dump_threads() -> Result<StackDump> {
    stackdump::capture(&installed_dump_options()?)
}

/// [`dump_threads`], signalling every thread, also those whose earlier capture it would show
/// again (as `threads --fresh` does).
pub fn dump_threads_fresh() -> Result<StackDump> {
    let mut options = installed_dump_options()?;
    options.fresh = true;
    stackdump::capture(&options)
}

/// The installed manhole's dump options.
fn installed_dump_options() -> Result<stackdump::DumpOptions> {
    state()
        .as_ref()
        .map(|i| i.settings.dump.clone())
        .ok_or_else(|| Error::new(ErrorKind::NotInstalled, "no manhole is installed"))
}

fn install_exit_hook() {
    if !EXIT_HOOK.swap(true, Ordering::SeqCst)
        && let Err(e) = crate::sys::at_exit(at_exit)
    {
        log_event!("Cannot register the exit hook; the socket will stay after exit: {e}");
    }
}

/// `STATE`, if it can be had within `patience` (the exit path must not wait on a thread that
/// holds it for long).
fn state_within(patience: Duration) -> Option<MutexGuard<'static, Option<Installation>>> {
    let deadline = Instant::now() + patience;
    loop {
        match STATE.try_lock() {
            Ok(state) => return Some(state),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

/// Removes this process's socket files (the listener's and a one-shot's), trying the state lock
/// for at most `patience`.
fn remove_sockets(patience: Duration) {
    let Some(state) = state_within(patience) else {
        return;
    };
    if let Some(installation) = state.as_ref() {
        if let Some(evidence) = &installation.evidence {
            evidence.withdraw();
        }
        if let Some(socket) = &installation.socket {
            socket.remove_file();
        }
        if let Ok(oneshot) = installation.oneshot.socket.try_lock()
            && let Some(socket) = oneshot.as_ref()
        {
            socket.remove_file();
        }
    }
}

/// How long a normal exit waits for sessions that are running a command (`daemon_connection`
/// off); idle sessions are never waited for.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long a normal exit then gives the sessions to send their closing line.
const CLOSING_PATIENCE: Duration = Duration::from_millis(500);

/// Runs at normal process exit (main returning, `std::process::exit`): unless
/// `daemon_connection` is on, gives the sessions running a command up to [`EXIT_GRACE`] to
/// answer, then closes every session with a closing line; then puts stdout and stderr back and
/// removes our socket.
extern "C" fn at_exit() {
    if !DAEMON_CONNECTION.load(Ordering::SeqCst) && LIVE_SESSIONS.load(Ordering::SeqCst) > 0 {
        close_sessions_for_exit();
    }
    crate::tee::at_exit();
    remove_sockets(Duration::from_millis(100));
}

fn close_sessions_for_exit() {
    // A registered command that calls `exit` runs this on its worker, while its own session
    // waits for it: that one is not waited for.
    let own = usize::from(threads::on_worker_thread());
    let busy = || BUSY_SESSIONS.load(Ordering::SeqCst).saturating_sub(own);
    if busy() > 0 {
        log_event!(
            "Exiting: waiting up to {:.0} s for {} session command(s) under way",
            EXIT_GRACE.as_secs_f64(),
            busy()
        );
        let deadline = Instant::now() + EXIT_GRACE;
        while busy() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    EXITING.store(true, Ordering::SeqCst);
    // Hanging up the stop pipe ends every session (and the listener): each one that is idle
    // says "the process is exiting" and closes.
    let hung_up = state_within(Duration::from_millis(100))
        .and_then(|mut state| state.as_mut().and_then(|i| i.stop_writer.take()));
    let Some(stop_writer) = hung_up else {
        return;
    };
    drop(stop_writer);
    log_event!(
        "Exiting: closing {} open session(s)",
        LIVE_SESSIONS.load(Ordering::SeqCst)
    );
    let deadline = Instant::now() + CLOSING_PATIENCE;
    while LIVE_SESSIONS.load(Ordering::SeqCst) > own && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// In a forked child, with `STATE` and `PENDING` held by the fork handlers (async-signal-safe:
/// no allocation, no lock, only atomics, `close` and reference counts): forgets the parent's
/// installation without touching its socket file or threads (they do not exist here), closes
/// its descriptors, and keeps its options as this child's plan (`patch_fork`). A parent that was
/// itself a child that had not reinstalled yet passes its plan on. Says whether to start the
/// reinstall thread now (`reinstall_at_fork`).
fn after_fork_in_child(hold: &mut ForkHold) -> bool {
    LIVE_SESSIONS.store(0, Ordering::SeqCst);
    crate::sys::dying::after_fork_in_child();
    if let Some(installation) = hold.0.take() {
        crate::sys::close_raw(installation.stop.as_raw_fd());
        if let Some(writer) = &installation.stop_writer {
            crate::sys::close_raw(writer.as_raw_fd());
        }
        if let Some(socket) = &installation.socket {
            crate::sys::close_raw(socket.listener.as_raw_fd());
        }
        if let Ok(oneshot) = installation.oneshot.socket.try_lock()
            && let Some(socket) = oneshot.as_ref()
        {
            crate::sys::close_raw(socket.listener.as_raw_fd());
        }
        let plan = installation
            .options
            .patch_fork
            .then(|| installation.options.clone());
        // Never freed here (an installed process has no plan; this only guards the rule).
        if let Some(old) = std::mem::replace(&mut *hold.1, plan) {
            std::mem::forget(old);
        }
        // Never dropped: dropping would close the descriptors again, detach threads that do not
        // exist and (were it the same pid) remove the parent's socket.
        std::mem::forget(installation);
    }
    hold.1.as_ref().is_some_and(|plan| plan.reinstall_at_fork)
}

/// The parent's options adjusted for this child: where it listens (its own pid path, only with
/// the always-on listener and no `socket_path`), no runtime (the parent's has no workers here).
/// Logs what the child will do; says whether it will listen (and so waits `reinstall_delay`
/// when reinstalling on its own).
fn child_options(parent: &Options) -> (Options, bool) {
    let mut options = parent.clone();
    options.runtime = crate::runtime::Attached::in_forked_child();
    if stackdump::forked_mid_dump() {
        log_event!(
            "Fork detected during a stack dump in the parent: no stack dumps in this process"
        );
    }
    let by_signal = options.activate_on.is_some() || options.oneshot_on.is_some();
    let listens = if by_signal {
        // Signal activation in the child listens at the child's own pid path.
        options.socket_path = None;
        log_event!(
            "Fork detected. Not listening in the child; activation by signal uses {}",
            crate::default_socket_path(std::process::id()).display()
        );
        false
    } else if !options.thread {
        log_event!("Fork detected. No listener thread in the child (thread is off)");
        false
    } else if let Some(path) = options.socket_path.take() {
        options.thread = false;
        log_event!(
            "Fork detected. Not listening in the child: the user socket path {} is the parent's",
            path.display()
        );
        false
    } else {
        log_event!("Fork detected. Reinstalling Manhole.");
        true
    };
    (options, listens)
}

fn install_in_child(options: Options) -> Result<Manhole> {
    let installed = install_as(options, true);
    if let Err(e) = &installed {
        if e.kind() == ErrorKind::AlreadyInstalled {
            log_event!("Not reinstalling in the child: it installed a manhole itself");
        } else {
            log_event!("Cannot reinstall the manhole in the child: {e}");
        }
    }
    installed
}

/// `reinstall_at_fork`: in a forked child, after the fork locks are released, a `mh-fork`
/// thread reinstalls from the plan (after `reinstall_delay` when it will listen at the child's
/// pid path, so a child that calls `exec` at once never creates a socket).
fn reinstall_in_child() {
    let spawned = threads::spawn("mh-fork".into(), || {
        let Some(plan) = pending().clone() else {
            return;
        };
        let (options, listens) = child_options(&plan);
        if listens {
            log_event!(
                "Delaying UDS binding {} seconds ...",
                options.reinstall_delay.as_secs_f64()
            );
            std::thread::sleep(options.reinstall_delay);
        }
        // The child may have reinstalled or installed by itself meanwhile.
        if pending().is_some() {
            let _ = install_in_child(options);
        }
    });
    if let Err(e) = spawned {
        log_event!("Cannot reinstall the manhole in the child: {e}");
    }
}

/// In a forked child that goes on running as itself, brings back the manhole its parent had
/// (`patch_fork`, on by default): call it from the child's own code once `fork` has returned,
/// e.g. after a daemon's second fork. It listens at once at `/tmp/manhole-<childpid>` (with the
/// parent's always-on listener and default path; with a `socket_path` the child does not listen,
/// with `activate_on`/`oneshot_on` it re-arms the signal), and the parent's registered values
/// and commands come along. No tokio runtime is attached in the child: the parent's has no
/// workers there.
///
/// Needed unless the parent installed with [`Options::reinstall_at_fork`], which starts the
/// reinstall from the fork itself (at the price explained there). A child of a child that has
/// not reinstalled yet inherits the plan.
///
/// Errors: [`ErrorKind::NotInstalled`] when there is nothing to bring back (not a forked child
/// of a process with a manhole, `patch_fork` was off, or the child has reinstalled or installed
/// already), and `install`'s errors.
///
/// ```no_run
/// // SAFETY: the child only runs code that is safe after fork (glibc's malloc is).
/// if unsafe { libc::fork() } == 0 {
///     manhole::reinstall_after_fork()?;
///     // ... the child's work ...
/// }
/// # Ok::<(), manhole::Error>(())
/// ```
pub fn reinstall_after_fork() -> Result<Manhole> {
    let plan = pending().clone().ok_or_else(|| {
        Error::new(
            ErrorKind::NotInstalled,
            "no manhole to bring back: this process is not a forked child of a process with a \
             manhole (or patch_fork was off, or it has reinstalled already)",
        )
    })?;
    let (options, _) = child_options(&plan);
    install_in_child(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Local;

    #[test]
    fn conflicting_signals_are_configuration_errors() {
        let same = resolve(&Options::new().activate_on("USR2").oneshot_on("SIGUSR2")).unwrap_err();
        assert_eq!(same.kind(), ErrorKind::Configuration);
        assert!(
            same.message().starts_with("You cannot do activation"),
            "{same}"
        );
        let dump = resolve(&Options::new().oneshot_on("USR1").dump_on(libc::SIGUSR1)).unwrap_err();
        assert_eq!(dump.kind(), ErrorKind::Configuration);
        let term = resolve(&Options::new().dump_on("TERM").cleanup_on_sigterm(true)).unwrap_err();
        assert_eq!(term.kind(), ErrorKind::Configuration);
        let rt = resolve(&Options::new().dump_on("URG")).unwrap_err();
        assert!(rt.message().contains("dump signal"), "{rt}");
        let unknown = resolve(&Options::new().activate_on("USR3")).unwrap_err();
        assert_eq!(unknown.kind(), ErrorKind::Signal);
    }

    #[test]
    fn names_a_session_could_not_reach_are_configuration_errors() {
        let ok = |_: &[String]| Ok(String::new());
        let builtin = resolve(&Options::new().command("info", "shadowed", ok)).unwrap_err();
        assert_eq!(builtin.kind(), ErrorKind::Configuration);
        assert!(builtin.message().contains("built-in"), "{builtin}");
        assert!(resolve(&Options::new().query("quit", "alias", ok)).is_err());
        let spaced =
            resolve(&Options::new().local("two words", Local::debug(Arc::new(1)))).unwrap_err();
        assert!(spaced.message().contains("white space"), "{spaced}");
        assert!(resolve(&Options::new().local("", Local::debug(Arc::new(1)))).is_err());
        // A session reads a control character as a space (see `session::clean_line`).
        for name in ["esc\u{1b}[31m", "del\u{7f}", "nul\0", "csi\u{9b}"] {
            let control = resolve(&Options::new().local(name, Local::debug(Arc::new(1))));
            assert!(
                control.unwrap_err().message().contains("control"),
                "{name:?}"
            );
        }
        assert!(resolve(&Options::new().local("größe", Local::debug(Arc::new(1)))).is_ok());
        // A value named like a command is still read with `get info`.
        assert!(resolve(&Options::new().local("info", Local::debug(Arc::new(1)))).is_ok());
        assert!(resolve(&Options::new().command("info-verbose", "fine", ok)).is_ok());
    }

    #[test]
    fn the_listener_thread_is_off_with_activation_signals_and_the_mask_resolves() {
        assert!(resolve(&Options::new()).unwrap().thread);
        assert!(!resolve(&Options::new().activate_on("USR2")).unwrap().thread);
        assert!(!resolve(&Options::new().oneshot_on(12)).unwrap().thread);
        assert!(!resolve(&Options::new().thread(false)).unwrap().thread);
        assert_eq!(resolve(&Options::new()).unwrap().sigmask, u64::MAX);
        assert_eq!(
            resolve(&Options::new().sigmask(["USR1", "USR2"]))
                .unwrap()
                .sigmask,
            (1 << (libc::SIGUSR1 - 1)) | (1 << (libc::SIGUSR2 - 1))
        );
        assert_eq!(
            resolve(&Options::new().sigmask(Vec::<i32>::new()))
                .unwrap()
                .sigmask,
            0
        );
    }
}
