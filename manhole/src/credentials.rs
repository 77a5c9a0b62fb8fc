//! Who is on the other end of a connection, and whether they may come in.
//!
//! The kernel records the peer's pid, uid and gid at `connect()` (`SO_PEERCRED`); they cannot be
//! forged by the client. The policy is python-manhole's and the JVM attach listener's: the
//! process's effective uid, or root. The socket file's 0600 mode is the first gate; this check
//! is the second, and it is the one that counts when the file mode is bypassed (root, or a
//! socket path in a shared directory).

use std::fmt;
use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

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
        write!(f, "pid {}, uid {}, gid {}", self.pid, self.uid, self.gid)
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

/// Whether `peer` may open a session: same effective uid as this process, or root.
pub(crate) fn is_allowed(peer: &PeerCred) -> bool {
    peer.uid == 0 || peer.uid == nix::unistd::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socketpair_peer_is_this_process_and_allowed() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = peer_of(&a).unwrap();
        assert_eq!(peer.pid as u32, std::process::id());
        assert!(is_allowed(&peer));
        let stranger = PeerCred {
            pid: 1,
            uid: 54321,
            gid: 54321,
        };
        assert_eq!(
            is_allowed(&stranger),
            nix::unistd::geteuid().as_raw() == 54321
        );
    }
}
