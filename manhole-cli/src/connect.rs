//! Getting a connected socket to the right server: connect with retry until the timeout, then,
//! when the target's pid is known, check that the socket file and the process serving it belong
//! to that target before a single byte is sent.
//!
//! Each attempt uses a fresh non-blocking socket, so a server whose accept backlog is full makes
//! `connect` fail with `EAGAIN` instead of blocking past the timeout. Between attempts the client
//! sleeps 5 ms, doubling up to 100 ms: a manhole that is coming up (after its activation signal)
//! is found quickly, and a long timeout costs no CPU.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, getsockopt, socket, sockopt};

use crate::error::{Error, ErrorKind, Result, errno};
use crate::target::ProcStatus;

/// The first pause between two connection attempts.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between two connection attempts.
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// One connection attempt: a non-blocking connect, then a blocking stream.
pub fn try_connect(path: &Path) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path).map_err(errno)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(errno)?;
    nix::sys::socket::connect(fd.as_raw_fd(), &addr).map_err(errno)?;
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Why the connection could not be made before the deadline.
#[derive(Debug)]
enum Failure {
    /// Nothing at the path.
    Missing,
    /// A file that is not a socket.
    NotSocket,
    /// A socket with no listener (`ECONNREFUSED`).
    NoListener,
    /// A listener that did not accept in time (`EAGAIN`: backlog full).
    Busy,
    /// Any other error, final.
    Failed(io::Error),
}

/// Tries to connect until it works or `timeout` has passed.
fn connect_with_retry(path: &Path, timeout: Duration) -> std::result::Result<UnixStream, Failure> {
    // A timeout too large for the clock means "keep trying".
    let deadline = Instant::now().checked_add(timeout);
    let mut pause = FIRST_PAUSE;
    loop {
        let failure = match try_connect(path) {
            Ok(stream) => return Ok(stream),
            Err(err) => match Errno::from_raw(err.raw_os_error().unwrap_or(0)) {
                Errno::ENOENT => Failure::Missing,
                Errno::ECONNREFUSED => match fs::symlink_metadata(path) {
                    Ok(meta) if !meta.file_type().is_socket() => return Err(Failure::NotSocket),
                    _ => Failure::NoListener,
                },
                Errno::EAGAIN => Failure::Busy,
                Errno::ENOTSOCK => return Err(Failure::NotSocket),
                _ => return Err(Failure::Failed(err)),
            },
        };
        let now = Instant::now();
        let left = deadline.map_or(MAX_PAUSE, |deadline| {
            deadline.saturating_duration_since(now)
        });
        if left.is_zero() {
            return Err(failure);
        }
        thread::sleep(pause.min(left));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// What the client knows about the target while connecting, for the checks and the messages.
#[derive(Debug)]
pub struct Expect<'a> {
    /// The target's pid and `/proc` status, when TARGET named a pid.
    pub process: Option<(i32, &'a ProcStatus)>,
    /// The signal that was sent before connecting, if any.
    pub signal_sent: Option<Signal>,
}

/// Connects to `path` within `timeout` and checks the server is the expected one.
pub fn open(path: &Path, timeout: Duration, expect: &Expect<'_>) -> Result<UnixStream> {
    let shown = path.display();
    let stream = match connect_with_retry(path, timeout) {
        Ok(stream) => stream,
        Err(Failure::Missing) => {
            if let Some(signal) = expect.signal_sent {
                let alive = match expect.process {
                    Some((pid, _)) => format!("; process {pid} {}", still_there(pid)),
                    None => String::new(),
                };
                let err = Error::new(
                    ErrorKind::TimedOut,
                    format!(
                        "timed out after {} waiting for {shown} to appear after sending {}{alive}",
                        seconds(timeout),
                        signal.as_str()
                    ),
                );
                // The signal may have started a manhole on a custom socket_path.
                if let Some((pid, status)) = expect.process
                    && let Some(hint) = listens_elsewhere(pid, status)
                {
                    return Err(err.with_hint(hint));
                }
                return Err(err.with_hint("the process may not start a manhole on that signal; a longer -t may help if it is slow"));
            }
            let err = Error::new(ErrorKind::NoSocket, format!("no manhole socket at {shown}"));
            return Err(match expect.process {
                Some((pid, status)) => with_discovery_hint(err, path, pid, status),
                None => err,
            });
        }
        Err(Failure::NotSocket) => {
            return Err(Error::new(
                ErrorKind::NoSocket,
                format!("{shown} is not a socket"),
            ));
        }
        Err(Failure::NoListener) => {
            return Err(Error::new(
                ErrorKind::NoSocket,
                format!("nothing is listening on {shown} (a stale socket?)"),
            ));
        }
        Err(Failure::Busy) => {
            return Err(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "timed out after {}: {shown} did not accept the connection",
                    seconds(timeout)
                ),
            ));
        }
        Err(Failure::Failed(err)) if err.kind() == io::ErrorKind::PermissionDenied => {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("permission denied connecting to {shown}{}", owner_of(path)),
            ));
        }
        Err(Failure::Failed(err)) => {
            return Err(Error::io(format_args!("connecting to {shown}"), &err));
        }
    };
    if let Some((pid, status)) = expect.process {
        check_socket_owner(path, pid, status)?;
        check_peer(&stream, path, pid)?;
    }
    Ok(stream)
}

/// Suggests where the process's manhole may be instead: another socket it listens on, or the
/// activation signal its published evidence names (never a guess from the signals it catches:
/// bash catches SIGUSR2 and exits on it).
fn with_discovery_hint(err: Error, path: &Path, pid: i32, status: &ProcStatus) -> Error {
    if let Some(hint) = listens_elsewhere(pid, status) {
        return err.with_hint(hint);
    }
    if let Some(signal) = crate::evidence::read(path, pid, pid, status)
        .ok()
        .and_then(|evidence| evidence.suggested())
    {
        return err.with_hint(format!(
            "process {pid} ({}) starts its manhole on {}: try `manhole-cli -s {} {pid}`",
            status.name,
            signal.as_str(),
            crate::target::short_name(signal.as_str())
        ));
    }
    err
}

/// "is still running" or "has exited": what became of the process after a signal.
pub fn still_there(pid: i32) -> &'static str {
    // A zombie (exited, not yet reaped by its parent) has exited too.
    let state = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = &stat[stat.rfind(')')? + 1..];
            after_name.trim_start().chars().next()
        });
    match state {
        None | Some('Z' | 'X' | 'x') => "has exited",
        Some(_) => "is still running",
    }
}

/// A hint naming the unix sockets process `pid` listens on (a custom `socket_path`), if any.
fn listens_elsewhere(pid: i32, status: &ProcStatus) -> Option<String> {
    let mut places: Vec<String> = Vec::new();
    for path in crate::target::listening_socket_paths(pid) {
        let place = if fs::symlink_metadata(&path).is_ok_and(|meta| meta.file_type().is_socket()) {
            format!("on {}", path.display())
        } else if let Some(dir) = bound_then_linked_into(&path) {
            // The manhole binds in a private directory, then links the socket into place: the
            // bound path is gone, but its directory's parent is where the socket lives.
            format!("on a socket in {}", dir.display())
        } else {
            continue;
        };
        if !places.contains(&place) {
            places.push(place);
        }
    }
    (!places.is_empty()).then(|| {
        format!(
            "process {pid} ({}) listens {}: if that is its manhole (a custom socket_path), pass that path as TARGET",
            status.name,
            places.join(", ")
        )
    })
}

/// For a bound path `DIR/.manhole-XXXXXX/s` (the manhole's private bind directory), `DIR`.
fn bound_then_linked_into(path: &Path) -> Option<&Path> {
    let private = path.parent()?;
    let name = private.file_name()?.to_str()?;
    name.starts_with(".manhole-")
        .then(|| private.parent())
        .flatten()
}

/// ` (owned by uid N, mode 0600)`, to explain a permission error.
fn owner_of(path: &Path) -> String {
    match fs::metadata(path) {
        Ok(meta) => format!(
            " (owned by uid {}, mode {:04o})",
            meta.uid(),
            meta.permissions().mode() & 0o7777
        ),
        Err(_) => String::new(),
    }
}

/// The socket file must belong to the target process's user (or root): otherwise someone else
/// may have planted it.
fn check_socket_owner(path: &Path, pid: i32, status: &ProcStatus) -> Result<()> {
    let meta = fs::metadata(path)
        .map_err(|err| Error::io(format_args!("checking {}", path.display()), &err))?;
    let owner = meta.uid();
    if owner_allowed(owner, status) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Unsafe,
        format!(
            "refusing to use {}: it is owned by uid {owner}, but process {pid} ({}) runs as uid {}",
            path.display(),
            status.name,
            status.euid()
        ),
    ))
}

/// Root, or any of the process's uids (it creates files as its effective/filesystem uid).
fn owner_allowed(owner: u32, status: &ProcStatus) -> bool {
    owner == 0 || status.uids.contains(&owner)
}

/// The process that serves the socket (`SO_PEERCRED`) must be the target.
pub fn check_peer(stream: &UnixStream, path: &Path, pid: i32) -> Result<()> {
    let creds = getsockopt(stream, sockopt::PeerCredentials).map_err(|err| {
        Error::io(
            format_args!("reading the peer credentials of {}", path.display()),
            &errno(err),
        )
    })?;
    if creds.pid() == pid {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Unsafe,
        format!(
            "refusing to talk to {}: it is served by process {} (uid {}), not by process {pid}",
            path.display(),
            creds.pid(),
            creds.uid()
        ),
    ))
}

/// `1s`, `0.5s`: a timeout as the operator typed it.
fn seconds(timeout: Duration) -> String {
    format!("{}s", timeout.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("manhole-cli-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_missing_socket_is_reported_after_the_timeout_without_spinning() {
        let dir = temp_dir("missing");
        let path = dir.join("nothing");
        let started = Instant::now();
        let expect = Expect {
            process: None,
            signal_sent: None,
        };
        let err = open(&path, Duration::from_millis(300), &expect).unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(err.kind(), ErrorKind::NoSocket, "{err}");
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
        let err = open(
            &path,
            Duration::ZERO,
            &Expect {
                process: None,
                signal_sent: Some(Signal::SIGUSR2),
            },
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_socket_that_appears_late_is_found() {
        let dir = temp_dir("late");
        let path = dir.join("sock");
        let bind_path = path.clone();
        let binder = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            let listener = UnixListener::bind(&bind_path).unwrap();
            listener.accept().unwrap();
        });
        let stream = open(
            &path,
            Duration::from_secs(10),
            &Expect {
                process: None,
                signal_sent: None,
            },
        );
        assert!(stream.is_ok(), "{stream:?}");
        binder.join().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_sockets_and_plain_files_are_no_manhole() {
        let dir = temp_dir("stale");
        let stale = dir.join("stale");
        drop(UnixListener::bind(&stale).unwrap());
        let err = open(
            &stale,
            Duration::ZERO,
            &Expect {
                process: None,
                signal_sent: None,
            },
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoSocket);
        assert!(err.message().contains("nothing is listening"), "{err}");
        let file = dir.join("file");
        fs::write(&file, b"").unwrap();
        let err = open(
            &file,
            Duration::ZERO,
            &Expect {
                process: None,
                signal_sent: None,
            },
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoSocket);
        assert!(err.message().contains("not a socket"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_peer_must_be_the_target_pid() {
        let dir = temp_dir("peer");
        let path = dir.join("sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let me = std::process::id() as i32;
        let status = crate::target::read_status(me).unwrap();
        let ok = open(
            &path,
            Duration::ZERO,
            &Expect {
                process: Some((me, &status)),
                signal_sent: None,
            },
        );
        assert!(ok.is_ok(), "{ok:?}");
        let err = open(
            &path,
            Duration::ZERO,
            &Expect {
                process: Some((me + 1, &status)),
                signal_sent: None,
            },
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsafe);
        assert!(
            err.message().contains(&format!("served by process {me}")),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_socket_must_belong_to_the_target_user_or_root() {
        let mut status = crate::target::read_status(std::process::id() as i32).unwrap();
        status.uids = [1000, 1001, 1001, 1001];
        assert!(owner_allowed(1001, &status));
        assert!(owner_allowed(1000, &status));
        assert!(owner_allowed(0, &status));
        assert!(!owner_allowed(1002, &status));
        // The file check itself passes for a socket we made (we own it).
        let dir = temp_dir("owner");
        let path = dir.join("sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let me = std::process::id() as i32;
        let mine = crate::target::read_status(me).unwrap();
        assert!(check_socket_owner(&path, me, &mine).is_ok());
        status.uids = [fs::metadata(&path).unwrap().uid() + 1; 4];
        if fs::metadata(&path).unwrap().uid() != 0 {
            assert_eq!(
                check_socket_owner(&path, me, &status).unwrap_err().kind(),
                ErrorKind::Unsafe
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_private_bind_directory_points_at_its_parent() {
        assert_eq!(
            bound_then_linked_into(Path::new("/run/app/.manhole-2CyL0Q/s")),
            Some(Path::new("/run/app"))
        );
        assert_eq!(bound_then_linked_into(Path::new("/run/app/other/s")), None);
    }

    #[test]
    fn timeouts_print_as_typed() {
        assert_eq!(seconds(Duration::from_secs(1)), "1s");
        assert_eq!(seconds(Duration::from_millis(500)), "0.5s");
    }
}
