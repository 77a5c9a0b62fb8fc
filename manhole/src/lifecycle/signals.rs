//! Activation signals (`activate_on`, `oneshot_on`, `dump_on`, the opt-in SIGTERM cleanup) and
//! the `mh-signal` thread that acts on them.
//!
//! The handlers are chained through signal-hook's registry, so a handler the application had for
//! the same signal keeps running (first). Our action is async-signal-safe and tiny: it sets the
//! signal's bit in [`PENDING`] and writes one byte to a non-blocking self-pipe. All the work
//! (starting the listener, a one-shot session, a dump) happens on the `mh-signal` thread,
//! which waits in `poll` on that pipe and the installation's stop pipe. A storm of signals
//! coalesces into bits and a full pipe, so it costs nothing and cannot start two of anything.
//!
//! Our registry action is registered once per signal and never removed (it checks [`WANTED`]),
//! because signal-hook's `unregister` leaves its handler installed: a signal whose disposition was
//! `SIG_DFL` would then be silently ignored. Instead, when a signal is no longer wanted and it had
//! no handler before us (`SIG_DFL` or `SIG_IGN`), the old disposition is put back with
//! `sigaction`; a re-install puts signal-hook's handler back. If the application had a handler,
//! signal-hook's handler stays and keeps chaining to it, and our action does nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::log::log_event;
use crate::sys::{self, SavedAction};
use crate::{Error, ErrorKind, Result};

/// A signal as the options take it: a number, or a name with or without `SIG` (`"USR2"`,
/// `"SIGUSR2"`, `"RTMIN+3"`). Names are checked at `install` by [`parse_signal`].
///
/// [`parse_signal`]: crate::parse_signal
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalSpec {
    /// A signal number.
    Number(i32),
    /// A signal name.
    Name(String),
}

impl SignalSpec {
    /// The signal number, or an [`ErrorKind::Signal`] error for an unknown name or number.
    pub fn resolve(&self) -> Result<i32> {
        match self {
            SignalSpec::Number(n) => crate::parse_signal(&n.to_string()),
            SignalSpec::Name(name) => crate::parse_signal(name),
        }
    }
}

impl From<i32> for SignalSpec {
    fn from(n: i32) -> SignalSpec {
        SignalSpec::Number(n)
    }
}

impl From<&str> for SignalSpec {
    fn from(name: &str) -> SignalSpec {
        SignalSpec::Name(name.to_string())
    }
}

impl From<String> for SignalSpec {
    fn from(name: String) -> SignalSpec {
        SignalSpec::Name(name)
    }
}

impl fmt::Display for SignalSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalSpec::Number(n) => write!(f, "{n}"),
            SignalSpec::Name(name) => f.write_str(name),
        }
    }
}

/// A readable name for signal `n`: `SIGUSR2`, `SIGRTMIN+7`.
pub(crate) fn signal_name(n: i32) -> String {
    if let Ok(signal) = nix::sys::signal::Signal::try_from(n) {
        return signal.as_str().to_string();
    }
    if n >= libc::SIGRTMIN() {
        return format!("SIGRTMIN+{}", n - libc::SIGRTMIN());
    }
    format!("signal {n}")
}

/// Signals whose arrival the manhole currently acts on (bit `n - 1` for signal `n`).
static WANTED: AtomicU64 = AtomicU64::new(0);
/// Signals that arrived and are not yet handled by the signal thread.
static PENDING: AtomicU64 = AtomicU64::new(0);
/// The self-pipe (read end, write end); -1 until first needed. Created once per process (and
/// once more in a forked child) and never closed, so a handler never writes to a reused number.
static WAKE_READ: AtomicI32 = AtomicI32::new(-1);
static WAKE_WRITE: AtomicI32 = AtomicI32::new(-1);

fn bit(signal: i32) -> u64 {
    if (1..=64).contains(&signal) {
        1u64 << (signal - 1)
    } else {
        0
    }
}

/// The registry action: runs inside the signal handler. Async-signal-safe: atomics and one
/// `write(2)` to a non-blocking pipe; no allocation, no lock, no panic.
pub(crate) fn on_signal(signal: i32) {
    let bit = bit(signal);
    if WANTED.load(Ordering::Acquire) & bit == 0 {
        return;
    }
    PENDING.fetch_or(bit, Ordering::AcqRel);
    let fd = WAKE_WRITE.load(Ordering::Acquire);
    if fd >= 0 {
        // A full pipe (EAGAIN) is fine: the reader is already due to wake up.
        let _ = nix::unistd::write(sys::borrow_fd(fd), &[signal as u8]);
    }
}

/// What the manhole did to one signal's disposition.
struct Hooked {
    /// The disposition before our first registration.
    before: SavedAction,
    /// signal-hook's handler, as installed by the registration.
    hooked: SavedAction,
    /// `before` was put back (the signal is not hooked right now).
    restored: bool,
}

/// Taken after `lifecycle::STATE` when both are needed; held across `fork` (see `fork.rs`).
static HOOKED: Mutex<BTreeMap<i32, Hooked>> = Mutex::new(BTreeMap::new());

fn hooked() -> MutexGuard<'static, BTreeMap<i32, Hooked>> {
    HOOKED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `HOOKED`, held by the fork handlers from `prepare` until `parent`/`child`.
pub(crate) struct ForkHold(#[allow(dead_code)] MutexGuard<'static, BTreeMap<i32, Hooked>>);

pub(crate) fn fork_hold() -> ForkHold {
    ForkHold(hooked())
}

/// Starts acting on `signal`: chains our action through signal-hook (once per process) or puts
/// signal-hook's handler back where [`unhook`] restored the old disposition.
pub(crate) fn hook(signal: i32) -> Result<()> {
    if signal_hook_registry::FORBIDDEN.contains(&signal) {
        return Err(Error::new(
            ErrorKind::Signal,
            format!("{} cannot be used by the manhole", signal_name(signal)),
        ));
    }
    let cannot = |e: std::io::Error| {
        Error::with_source(
            ErrorKind::Signal,
            format!("cannot install a handler for {}", signal_name(signal)),
            e,
        )
    };
    let mut hooked = hooked();
    match hooked.get_mut(&signal) {
        None => {
            let before = sys::get_action(signal).map_err(cannot)?;
            sys::hook_signal(signal, on_signal).map_err(cannot)?;
            let after = sys::get_action(signal).map_err(cannot)?;
            hooked.insert(
                signal,
                Hooked {
                    before,
                    hooked: after,
                    restored: false,
                },
            );
        }
        Some(entry) if entry.restored => {
            let current = sys::get_action(signal).map_err(cannot)?;
            if !current.same_handler(&entry.before) {
                return Err(Error::new(
                    ErrorKind::Signal,
                    format!(
                        "{} got another handler since the manhole last used it; it cannot be \
                         chained to",
                        signal_name(signal)
                    ),
                ));
            }
            sys::set_action(signal, &entry.hooked).map_err(cannot)?;
            entry.restored = false;
        }
        Some(_) => {}
    }
    WANTED.fetch_or(bit(signal), Ordering::AcqRel);
    Ok(())
}

/// Stops acting on `signal` and, if it had no handler before the manhole's, restores its old
/// disposition (`SIG_DFL` or `SIG_IGN`), unless someone replaced signal-hook's handler meanwhile.
pub(crate) fn unhook(signal: i32) {
    WANTED.fetch_and(!bit(signal), Ordering::AcqRel);
    PENDING.fetch_and(!bit(signal), Ordering::AcqRel);
    let mut hooked = hooked();
    if let Some(entry) = hooked.get_mut(&signal)
        && !entry.restored
        && entry.before.is_default_or_ignore()
        && sys::get_action(signal).is_ok_and(|current| current.same_handler(&entry.hooked))
    {
        match sys::set_action(signal, &entry.before) {
            Ok(()) => entry.restored = true,
            Err(e) => log_event!(
                "Cannot restore the disposition of {}: {e}",
                signal_name(signal)
            ),
        }
    }
}

/// The read end of the self-pipe, created on first use.
fn wake_reader() -> Result<RawFd> {
    let fd = WAKE_READ.load(Ordering::Acquire);
    if fd >= 0 {
        return Ok(fd);
    }
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(|e| Error::io("cannot create the signal pipe", e.into()))?;
    let read = read.into_raw_fd();
    WAKE_WRITE.store(write.into_raw_fd(), Ordering::Release);
    WAKE_READ.store(read, Ordering::Release);
    Ok(read)
}

/// In a forked child (async-signal-safe): forget signals that arrived in the parent and drop the
/// inherited self-pipe, which the parent's signal thread reads; the child makes its own.
pub(crate) fn after_fork_in_child() {
    PENDING.store(0, Ordering::Release);
    let write = WAKE_WRITE.swap(-1, Ordering::AcqRel);
    let read = WAKE_READ.swap(-1, Ordering::AcqRel);
    sys::close_raw(write);
    sys::close_raw(read);
}

/// Which signals do what for one installation.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Roles {
    pub activate: Option<i32>,
    pub oneshot: Option<i32>,
    pub dump: Option<i32>,
    pub terminate: Option<i32>,
}

impl Roles {
    pub(crate) fn signals(&self) -> impl Iterator<Item = i32> {
        [self.activate, self.oneshot, self.dump, self.terminate]
            .into_iter()
            .flatten()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.signals().next().is_none()
    }
}

/// What the signal thread asks the installation to do.
pub(crate) trait Actions: Send + Sync + 'static {
    fn activate(&self);
    fn oneshot(&self);
    fn dump(&self);
    fn terminate(&self, signal: i32);
}

/// Hooks every signal of `roles` (undoing the ones done if one fails).
pub(crate) fn hook_all(roles: &Roles) -> Result<()> {
    let mut done = Vec::new();
    for signal in roles.signals() {
        if let Err(e) = hook(signal) {
            for s in done {
                unhook(s);
            }
            return Err(e);
        }
        done.push(signal);
    }
    Ok(())
}

/// Unhooks every signal of `roles`.
pub(crate) fn unhook_all(roles: &Roles) {
    for signal in roles.signals() {
        unhook(signal);
    }
}

/// Starts the `mh-signal` thread, which acts on `roles` until `stop` hangs up.
pub(crate) fn spawn_thread(
    roles: Roles,
    actions: Arc<dyn Actions>,
    stop: Arc<OwnedFd>,
) -> Result<JoinHandle<()>> {
    let wake = wake_reader()?;
    crate::threads::spawn("mh-signal".into(), move || {
        run(wake, roles, &*actions, &stop)
    })
    .map_err(|e| Error::io("cannot start the signal thread", e))
}

fn run(wake: RawFd, roles: Roles, actions: &dyn Actions, stop: &OwnedFd) {
    let wake_fd = sys::borrow_fd(wake);
    loop {
        // Signals that came before this thread existed (or before the pipe did) count too.
        let pending = PENDING.swap(0, Ordering::AcqRel);
        if pending != 0 {
            dispatch(pending, &roles, actions);
            continue;
        }
        let woken = match crate::wait::until_ready_or_stopped(wake_fd, stop.as_fd()) {
            Ok(woken) => woken,
            Err(e) => {
                log_event!("Signal thread stopped: poll failed: {e}");
                return;
            }
        };
        if woken.stopped {
            return;
        }
        if woken.ready {
            let mut buf = [0u8; 256];
            while matches!(nix::unistd::read(wake_fd, &mut buf), Ok(n) if n > 0) {}
        }
    }
}

fn dispatch(pending: u64, roles: &Roles, actions: &dyn Actions) {
    let has = |signal: Option<i32>| signal.is_some_and(|s| pending & bit(s) != 0);
    let guarded = |what: &str, work: &dyn Fn()| {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
            log_event!("The signal thread's {what} panicked; the manhole goes on");
        }
    };
    if let Some(signal) = roles.terminate.filter(|&s| pending & bit(s) != 0) {
        guarded("cleanup", &|| actions.terminate(signal));
    }
    if has(roles.dump) {
        guarded("dump", &|| actions.dump());
    }
    if has(roles.activate) {
        guarded("activation", &|| actions.activate());
    }
    if has(roles.oneshot) {
        guarded("one-shot session", &|| actions.oneshot());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_resolve_names_and_numbers() {
        assert_eq!(SignalSpec::from("USR2").resolve().unwrap(), libc::SIGUSR2);
        assert_eq!(
            SignalSpec::from("SIGUSR1").resolve().unwrap(),
            libc::SIGUSR1
        );
        assert_eq!(SignalSpec::from(12).resolve().unwrap(), 12);
        let err = SignalSpec::from("SIGNOPE").resolve().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Signal);
        assert!(err.to_string().contains("SIGNOPE"), "{err}");
        assert_eq!(signal_name(libc::SIGUSR2), "SIGUSR2");
        assert_eq!(signal_name(libc::SIGRTMIN() + 2), "SIGRTMIN+2");
    }

    #[test]
    fn forbidden_signals_are_refused() {
        assert_eq!(hook(libc::SIGKILL).unwrap_err().kind(), ErrorKind::Signal);
        assert_eq!(hook(libc::SIGSEGV).unwrap_err().kind(), ErrorKind::Signal);
    }

    #[test]
    fn unhook_restores_the_default_disposition() {
        // SIGWINCH: default action "ignore", so a stray one cannot hurt the test process.
        let signal = libc::SIGWINCH;
        assert!(sys::get_action(signal).unwrap().is_default_or_ignore());
        hook(signal).unwrap();
        assert!(!sys::get_action(signal).unwrap().is_default_or_ignore());
        unhook(signal);
        assert!(sys::get_action(signal).unwrap().is_default_or_ignore());
        hook(signal).unwrap();
        assert!(!sys::get_action(signal).unwrap().is_default_or_ignore());
        unhook(signal);
        assert!(sys::get_action(signal).unwrap().is_default_or_ignore());
    }
}
