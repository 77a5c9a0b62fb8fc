//! The `mh-listener` thread: accepts connections, checks each peer, starts sessions.
//!
//! The thread sleeps in `poll` on the listening socket and the installation's stop pipe, so an
//! idle manhole costs no CPU and no wake-ups, and uninstall wakes it at once. Refusals (a peer
//! that is not allowed, one client too many) are one line written without blocking, then the
//! connection is closed; the listener itself never waits on a client.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::credentials::{self, PeerCred};
use crate::log::log_event;
use crate::session::{Session, Settings};
use crate::{threads, wait};

/// Everything the listener and its sessions share.
pub(crate) struct Shared {
    pub settings: Arc<Settings>,
    /// Read end of the stop pipe: readable (hung up) once the installation is torn down.
    pub stop: Arc<OwnedFd>,
    pub max_sessions: usize,
    pub open_sessions: Arc<AtomicUsize>,
    pub next_session: AtomicU64,
}

/// Accepts connections until the stop pipe hangs up.
pub(crate) fn run(listener: &UnixListener, shared: &Shared) {
    loop {
        // No timeout while idle; while sessions are open, or their dump caches wait out their
        // grace period, wake up to give the caches back once unused.
        let timeout = crate::stackdump::cache_wake_interval();
        let woken =
            match wait::until_ready_stopped_or(listener.as_fd(), shared.stop.as_fd(), timeout) {
                Ok(woken) => woken,
                Err(e) => {
                    log_event!("Listener stopped: poll failed: {e}");
                    return;
                }
            };
        if woken.stopped {
            return;
        }
        crate::stackdump::release_caches_after_grace();
        if woken.ready {
            match listener.accept() {
                Ok((stream, _)) => accept(stream, shared),
                Err(e) if is_transient(&e) => continue,
                Err(e) => {
                    // EMFILE and friends: log, and keep serving once resources come back.
                    log_event!("accept failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionAborted
    )
}

fn accept(stream: UnixStream, shared: &Shared) {
    let Some((peer, why)) = credentials::admit(&stream, &shared.settings.policy) else {
        return;
    };
    let open = shared.open_sessions.fetch_add(1, Ordering::SeqCst);
    if open >= shared.max_sessions {
        shared.open_sessions.fetch_sub(1, Ordering::SeqCst);
        log_event!("Refused {peer}: {open} sessions already open");
        credentials::refuse(
            &stream,
            &format!("manhole: too many sessions ({open} open), try again later\n"),
        );
        return;
    }
    let n = shared.next_session.fetch_add(1, Ordering::Relaxed);
    log_event!("Accepted session {n} from {peer} ({why})");
    start_session(stream, peer, n, shared);
}

fn start_session(stream: UnixStream, peer: PeerCred, n: u64, shared: &Shared) {
    let open_sessions = shared.open_sessions.clone();
    let session = Session::new(stream, peer, shared.settings.clone(), shared.stop.clone());
    // The dump caches live while any session is open (warm dumps stay fast) and a few seconds
    // after the last one ends (the next `manhole-cli` call is a new session). Taken here, so
    // that the listener's next wait already wakes up for them.
    let cache = crate::stackdump::hold_caches_for_session();
    let spawned = threads::spawn(format!("mh-session-{n}"), move || {
        // Release the slot even if the session panics.
        struct Slot(Arc<AtomicUsize>);
        impl Drop for Slot {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _slot = Slot(open_sessions);
        session.run();
        drop(cache);
        crate::stackdump::release_dump_memory();
    });
    if let Err(e) = spawned {
        shared.open_sessions.fetch_sub(1, Ordering::SeqCst);
        log_event!("Cannot start a session thread: {e}");
    }
}
