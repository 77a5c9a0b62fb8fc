//! Who is on the other end of a connection, and whether they may come in.
//!
//! The kernel records the peer's pid, uid and gid at `connect()` (`SO_PEERCRED`); they cannot be
//! forged by the client. The default policy is python-manhole's and the JVM attach listener's:
//! the process's effective uid, or root. [`Policy`] widens it with the application's
//! allow-lists (`Options::allowed_uids`, `Options::allowed_gids`) and narrows what an admitted
//! peer may do (`Options::read_only`). The socket file's mode is the first gate; this check is
//! the second, and it is the one that counts when the file mode is bypassed (root, an
//! allow-list that opens the mode, or a socket path in a shared directory).
//!
//! An allowed gid is matched against the peer's *primary* (effective) gid as `SO_PEERCRED`
//! reports it, never against its supplementary groups: those could only be read from
//! `/proc/<pid>/status` after the fact, and by then the peer may have exited and its pid been
//! reused by another process. An operator who is only a supplementary member of the group runs
//! the client under it (`sg ops -c 'manhole-cli PID'`).

use std::fmt;
use std::os::unix::net::UnixStream;

use nix::sys::socket::{MsgFlags, getsockopt, send, sockopt::PeerCredentials};

use crate::log::log_event;

/// The credentials of a connected peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// The peer's process id.
    pub pid: i32,
    /// The peer's effective user id at connect time.
    pub uid: u32,
    /// The peer's effective group id at connect time.
    pub gid: u32,
}

impl fmt::Display for PeerCred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The kernel gives the pid as seen from our PID namespace: a client outside it (an
        // operator on the host, reaching a process in a container) has none here, and is 0.
        if self.pid == 0 {
            write!(f, "pid 0 (outside this pid namespace)")?;
        } else {
            write!(f, "pid {}", self.pid)?;
        }
        write!(f, ", uid {}, gid {}", self.uid, self.gid)
    }
}

/// Reads the peer credentials of `stream`.
pub(crate) fn peer_of(stream: &UnixStream) -> std::io::Result<PeerCred> {
    let cred = getsockopt(stream, PeerCredentials).map_err(std::io::Error::from)?;
    Ok(PeerCred {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

/// Who may open a session and what they may do there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Uids admitted besides the euid and root.
    pub uids: Vec<u32>,
    /// Primary gids admitted besides the euid and root.
    pub gids: Vec<u32>,
    /// Refuse `set` and registered commands that may change state.
    pub read_only: bool,
}

/// Why a peer was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admitted {
    Root,
    SameUser,
    AllowedUid,
    AllowedGid,
}

impl fmt::Display for Admitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Admitted::Root => "root",
            Admitted::SameUser => "same user",
            Admitted::AllowedUid => "allowed uid",
            Admitted::AllowedGid => "allowed gid",
        })
    }
}

impl Policy {
    /// Whether `peer` may open a session, and why; `None` if it may not.
    pub(crate) fn admits(&self, peer: &PeerCred, euid: u32) -> Option<Admitted> {
        if peer.uid == 0 {
            Some(Admitted::Root)
        } else if peer.uid == euid {
            Some(Admitted::SameUser)
        } else if self.uids.contains(&peer.uid) {
            Some(Admitted::AllowedUid)
        } else if self.gids.contains(&peer.gid) {
            Some(Admitted::AllowedGid)
        } else {
            None
        }
    }

    /// The mode and group of the socket file. Without allow-lists only the owner can connect
    /// (0600). One allowed gid and no allowed uid: 0660 with that group, so the file mode still
    /// keeps everyone else out. Any other allow-list needs a mode every user can connect
    /// through (0666): then `SO_PEERCRED` is the only gate, and refused peers cost one
    /// `accept` and one line each.
    pub(crate) fn socket_mode(&self) -> (u32, Option<u32>) {
        match (self.uids.as_slice(), self.gids.as_slice()) {
            ([], []) => (0o600, None),
            ([], [gid]) => (0o660, Some(*gid)),
            _ => (0o666, None),
        }
    }
}

/// Reads the peer's credentials and applies `policy`. An admitted peer is returned with the
/// reason (the caller logs the session it opens); a refused one is logged, gets one line, and
/// `None` is returned (the caller drops the connection).
pub(crate) fn admit(stream: &UnixStream, policy: &Policy) -> Option<(PeerCred, Admitted)> {
    let peer = match peer_of(stream) {
        Ok(peer) => peer,
        Err(e) => {
            log_event!("Refused a connection: cannot read its credentials: {e}");
            return None;
        }
    };
    let euid = nix::unistd::geteuid().as_raw();
    match policy.admits(&peer, euid) {
        Some(why) => Some((peer, why)),
        None => {
            log_event!(
                "Access denied to {peer}: uid {} is neither root nor our euid {euid}{}",
                peer.uid,
                if policy.uids.is_empty() && policy.gids.is_empty() {
                    ""
                } else {
                    ", nor in the allowed uids or gids"
                }
            );
            refuse(
                stream,
                &format!(
                    "manhole: access denied: peer uid {} is not allowed ({peer})\n",
                    peer.uid
                ),
            );
            None
        }
    }
}

/// Writes one refusal line without blocking; the caller then drops the connection.
pub(crate) fn refuse(stream: &UnixStream, line: &str) {
    let _ = send(
        std::os::fd::AsRawFd::as_raw_fd(stream),
        line.as_bytes(),
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> PeerCred {
        PeerCred { pid: 1, uid, gid }
    }

    #[test]
    fn a_socketpair_peer_is_this_process_and_allowed() {
        let (a, _b) = UnixStream::pair().unwrap();
        let me = peer_of(&a).unwrap();
        assert_eq!(me.pid as u32, std::process::id());
        let euid = nix::unistd::geteuid().as_raw();
        assert!(Policy::default().admits(&me, euid).is_some());
    }

    #[test]
    fn a_peer_outside_our_pid_namespace_is_pid_0_and_still_judged_by_uid() {
        let outside = PeerCred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        assert_eq!(
            outside.to_string(),
            "pid 0 (outside this pid namespace), uid 0, gid 0"
        );
        assert_eq!(peer(7, 7).to_string(), "pid 1, uid 7, gid 7");
        assert_eq!(
            Policy::default().admits(&outside, 1000),
            Some(Admitted::Root)
        );
    }

    #[test]
    fn only_root_the_euid_and_the_allow_lists_get_in() {
        let none = Policy::default();
        assert_eq!(none.admits(&peer(0, 5), 1000), Some(Admitted::Root));
        assert_eq!(none.admits(&peer(1000, 5), 1000), Some(Admitted::SameUser));
        assert_eq!(none.admits(&peer(1001, 1000), 1000), None);
        let lists = Policy {
            uids: vec![1001],
            gids: vec![50],
            read_only: false,
        };
        assert_eq!(
            lists.admits(&peer(1001, 7), 1000),
            Some(Admitted::AllowedUid)
        );
        assert_eq!(
            lists.admits(&peer(1002, 50), 1000),
            Some(Admitted::AllowedGid)
        );
        assert_eq!(lists.admits(&peer(1002, 51), 1000), None);
    }

    #[test]
    fn the_socket_mode_opens_only_as_far_as_the_allow_lists_need() {
        let mut policy = Policy::default();
        assert_eq!(policy.socket_mode(), (0o600, None));
        policy.gids = vec![50];
        assert_eq!(policy.socket_mode(), (0o660, Some(50)));
        policy.gids = vec![50, 51];
        assert_eq!(policy.socket_mode(), (0o666, None));
        policy.gids.clear();
        policy.uids = vec![1001];
        assert_eq!(policy.socket_mode(), (0o666, None));
    }
}
