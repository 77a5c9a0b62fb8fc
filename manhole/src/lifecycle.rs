//! The one installation per process: [`install`], the [`Manhole`] handle, uninstall, and the
//! exit hook that removes the socket.
//!
//! The state is a process-global `Option<Installation>` behind a lock that is only held for
//! short bookkeeping, never while a client is served. Tearing an installation down closes the
//! write end of its stop pipe: the listener and every session poll the read end, see it hang up
//! and finish on their own.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::listener::{self, Shared};
use crate::log::log_event;
use crate::registry::{self, Entry, Registration};
use crate::session::Settings;
use crate::socket::{self, BoundSocket};
use crate::stackdump::{self, DumpOptions, StackDump};
use crate::{Error, ErrorKind, Options, Result, threads};

struct Installation {
    id: u64,
    pid: u32,
    settings: Arc<Settings>,
    socket: Option<Arc<BoundSocket>>,
    /// Write end of the stop pipe; dropping it stops the listener and the sessions.
    stop_writer: Option<OwnedFd>,
    listener: Option<JoinHandle<()>>,
    _registrations: Vec<Registration>,
}

static STATE: Mutex<Option<Installation>> = Mutex::new(None);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static EXIT_HOOK: AtomicBool = AtomicBool::new(false);

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

    /// Stops the listener, ends the open sessions, removes the socket file and drops the locals
    /// and commands registered through [`Options`]. Fails with
    /// [`ErrorKind::NotInstalled`] if this installation was already replaced or uninstalled.
    pub fn uninstall(self) -> Result<()> {
        let mut state = STATE.lock();
        match state.as_ref() {
            Some(current) if current.id == self.id => {
                let installation = state.take().expect("checked above");
                drop(state);
                teardown(installation);
                Ok(())
            }
            _ => Err(Error::new(
                ErrorKind::NotInstalled,
                "this manhole is no longer installed",
            )),
        }
    }

    /// Captures a symbolized backtrace of every thread, as the `threads` command does.
    pub fn dump_threads(&self) -> Result<StackDump> {
        dump_threads()
    }
}

/// Installs the manhole: the dump signal handler, the registered values and commands, and (with
/// `thread`, the default) the listener on `/tmp/manhole-<pid>` or `socket_path`.
///
/// Errors: [`ErrorKind::AlreadyInstalled`] when a manhole is installed and `strict` is on (the
/// default; with `strict(false)` the old one is uninstalled first), [`ErrorKind::SocketPath`]
/// when the socket cannot be put at its path, [`ErrorKind::Signal`] when the dump signal already
/// has a handler.
///
/// ```no_run
/// let manhole = manhole::install(manhole::Options::new())?;
/// println!("manhole listening on {}", manhole.socket_path().unwrap().display());
/// # Ok::<(), manhole::Error>(())
/// ```
pub fn install(options: Options) -> Result<Manhole> {
    let mut state = STATE.lock();
    if let Some(current) = state.as_ref() {
        if current.pid == std::process::id() && options.strict {
            return Err(Error::new(
                ErrorKind::AlreadyInstalled,
                "Manhole already installed!",
            ));
        }
        let previous = state.take().expect("checked above");
        if previous.pid == std::process::id() {
            log_event!("Replacing the installed manhole (strict is off)");
            teardown(previous);
        } else {
            // Inherited through fork: its threads do not exist here and its socket is the
            // parent's. Forget it without touching either.
            std::mem::forget(previous);
        }
    }
    crate::log::configure(options.verbose, options.verbose_destination);
    let signal = options
        .dump_signal
        .unwrap_or_else(|| libc::SIGRTMIN() + Options::DEFAULT_DUMP_SIGNAL_OFFSET);
    stackdump::install_handler(signal)?;
    threads::set_dump_signal(signal);
    let settings = Arc::new(Settings {
        handler: options.connection_handler,
        lock_timeout: options.lock_timeout,
        command_timeout: options.command_timeout,
        write_timeout: options.write_timeout,
        idle_timeout: options.idle_timeout,
        dump: DumpOptions {
            signal,
            timeout: options.dump_timeout,
            max_frames: options.max_frames,
        },
        banner: options.banner.clone(),
        runtime: options.runtime.for_install(),
    });
    let mut installation = Installation {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        pid: std::process::id(),
        settings,
        socket: None,
        stop_writer: None,
        listener: None,
        _registrations: registrations(&options),
    };
    if options.thread {
        let path = options.socket_path_for(installation.pid);
        start_listener(&mut installation, &path, options.max_sessions)?;
    }
    install_exit_hook();
    let handle = Manhole {
        id: installation.id,
        socket_path: installation.socket.as_ref().map(|s| s.path().to_path_buf()),
    };
    *state = Some(installation);
    Ok(handle)
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

fn start_listener(installation: &mut Installation, path: &Path, max_sessions: usize) -> Result<()> {
    let bound = Arc::new(socket::bind(path)?);
    let (stop_reader, stop_writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::io("cannot create the stop pipe", e.into()))?;
    let shared = Shared {
        settings: installation.settings.clone(),
        stop: Arc::new(stop_reader),
        max_sessions,
        open_sessions: Arc::new(AtomicUsize::new(0)),
        next_session: AtomicU64::new(1),
    };
    let listening = bound.clone();
    let handle = threads::spawn("manhole-listener".into(), move || {
        listener::run(&listening.listener, &shared)
    })
    .map_err(|e| {
        bound.remove_file();
        Error::io("cannot start the listener thread", e)
    })?;
    log_event!("Manhole UDS path: {}", bound.path().display());
    installation.socket = Some(bound);
    installation.stop_writer = Some(stop_writer);
    installation.listener = Some(handle);
    Ok(())
}

fn teardown(mut installation: Installation) {
    drop(installation.stop_writer.take());
    if let Some(listener) = installation.listener.take()
        && listener.thread().id() != std::thread::current().id()
    {
        let _ = listener.join();
    }
    if let Some(socket) = installation.socket.take() {
        socket.remove_file();
        log_event!("Removed {}", socket.path().display());
    }
}

/// Captures a symbolized backtrace of every thread with the installed manhole's settings.
/// Fails with [`ErrorKind::NotInstalled`] before `install` (the capture needs its signal handler).
pub fn dump_threads() -> Result<StackDump> {
    let dump = STATE
        .lock()
        .as_ref()
        .map(|i| i.settings.dump.clone())
        .ok_or_else(|| Error::new(ErrorKind::NotInstalled, "no manhole is installed"))?;
    stackdump::capture(&dump)
}

fn install_exit_hook() {
    if !EXIT_HOOK.swap(true, Ordering::SeqCst)
        && let Err(e) = crate::sys::at_exit(remove_socket_at_exit)
    {
        log_event!("Cannot register the exit hook; the socket will stay after exit: {e}");
    }
}

/// Runs at normal process exit: removes our socket file. It must not block exit, so the state
/// lock is only tried briefly.
extern "C" fn remove_socket_at_exit() {
    if let Some(state) = STATE.try_lock_for(Duration::from_millis(100))
        && let Some(installation) = state.as_ref()
        && let Some(socket) = &installation.socket
    {
        socket.remove_file();
    }
}
