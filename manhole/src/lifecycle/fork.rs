//! `fork`: no manhole lock is held across it, and the child gets its own manhole back.
//!
//! Registered once per process with `pthread_atfork` at the first `install`:
//!
//! - **prepare** (in the forking thread, before `fork`) takes the manhole's locks in their one
//!   order (`lifecycle::STATE`, `lifecycle::PENDING`, `registry::TABLE`, `signals::HOOKED`,
//!   `tee::TEE`, and the list of session connections) and parks the
//!   guards in a thread-local. So no other thread can be inside one of them at the instant of
//!   the fork, and the child never inherits a lock held by a thread that does not exist there.
//! - **parent** drops the guards.
//! - **child** (only the forking thread exists) does async-signal-safe bookkeeping while it
//!   still holds the locks, allocating nothing: forget the sessions count, drop the parent's
//!   signal self-pipe and pending signals, note whether a parent thread was inside a stack dump
//!   (its locks, which include the symbolizer's cache lock, may then be held forever here: the child
//!   refuses dumps with a clear error instead of waiting on them), point stdout and stderr back
//!   at the originals if a session had them teed, close its copies of the sessions' client
//!   connections (so a client sees its session end when the parent's session ends, not when the
//!   child exits), take the parent's installation out of the state and leak it after closing its
//!   descriptors (its socket file is the parent's and is never removed by the child: `socket.rs`
//!   also checks the pid; its threads do not exist here), keeping its options as the child's
//!   reinstall plan (`patch_fork`; a child of a child that has not reinstalled inherits the plan).
//!   Then it drops the guards: for std's futex mutexes an unlock is one atomic store (plus a
//!   `futex` wake), with no global table that another thread could have held (which is why these
//!   locks are std's, not parking_lot's).
//! - It starts **no thread**, so the child is single-threaded when `fork` returns (`unshare` of a
//!   user namespace and `setns` work; an `exec` has nothing to tear down). The child brings its
//!   manhole back with `manhole::reinstall_after_fork` (`lifecycle::reinstall_after_fork`). Only
//!   with `reinstall_at_fork` does the handler start a `mh-fork` thread that reinstalls from the
//!   plan after `reinstall_delay` (`lifecycle::reinstall_in_child`); starting a thread in a fork
//!   child is outside POSIX's async-signal-safe list, glibc supports it (its own locks are reset
//!   by its fork), and it is what python-manhole's patched `os.fork` does (after the fork).
//!
//! `std::process::Command` uses `posix_spawn` when it can, which runs no fork handlers (and needs
//! none). A `fork` from inside a signal handler that interrupted a manhole thread holding one of
//! these locks would deadlock in prepare, as glibc's own `malloc` fork handler would.

use std::cell::RefCell;
use std::sync::{Once, OnceLock};

use crate::log::log_event;
use crate::{registry, session, signals, stackdump, tee};

/// The installation's part of the handlers, given by `lifecycle` (which sits above this module
/// and calls it, so this module never calls back up): `prepare` takes its locks (`STATE`,
/// `PENDING`) first, `parent` releases them last, `child` does its bookkeeping last, releases
/// them and starts the reinstall thread if there is to be one. Each runs in a fork handler.
pub(crate) struct StateHandlers {
    pub(crate) prepare: fn(),
    pub(crate) parent: fn(),
    pub(crate) child: fn(),
}

struct Held {
    _table: registry::ForkHold,
    _hooked: signals::ForkHold,
    tee: tee::ForkHold,
    sessions: session::ForkHold,
}

thread_local! {
    /// The guards taken by `prepare`, dropped by `parent` or `child` (same thread: the child
    /// continues the forking thread).
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

static HOOKS: Once = Once::new();
/// Set once, before the handlers are registered; read (one atomic load) in each handler.
static STATE: OnceLock<StateHandlers> = OnceLock::new();

/// Registers the fork handlers (once per process), with the installation's part.
pub(crate) fn ensure_hooks(state: StateHandlers) {
    HOOKS.call_once(|| {
        let _ = STATE.set(state);
        if let Err(e) = crate::sys::at_fork(prepare, parent, child) {
            log_event!("Cannot register the fork handlers: {e}");
        }
    });
}

extern "C" fn prepare() {
    // Lock order: STATE, PENDING, TABLE, HOOKED, TEE, sessions (the order everything else takes
    // them in).
    if let Some(state) = STATE.get() {
        (state.prepare)();
    }
    let held = Held {
        _table: registry::fork_hold(),
        _hooked: signals::fork_hold(),
        tee: tee::fork_hold(),
        sessions: session::fork_hold(),
    };
    HELD.with(|slot| *slot.borrow_mut() = Some(held));
}

extern "C" fn parent() {
    drop(HELD.with(|slot| slot.borrow_mut().take()));
    if let Some(state) = STATE.get() {
        (state.parent)();
    }
}

extern "C" fn child() {
    if let Some(mut held) = HELD.with(|slot| slot.borrow_mut().take()) {
        signals::after_fork_in_child();
        stackdump::after_fork_in_child();
        crate::profile::after_fork_in_child();
        tee::after_fork_in_child(&mut held.tee);
        session::after_fork_in_child(&mut held.sessions);
    }
    if let Some(state) = STATE.get() {
        (state.child)();
    }
}
