//! Manholes in containers, reached from the host by host pid: processes in another PID, mount
//! or user namespace.
//!
//! A process in a container listens on `/tmp/manhole-<pid>` as *it* sees both: its pid inside
//! its PID namespace (the last field of `NSpid` in `/proc/<pid>/status`) and `/tmp` in its own
//! mount namespace. From the host that socket is `/proc/<host pid>/root/tmp/manhole-<ns pid>`.
//! The path is resolved with `openat2(RESOLVE_IN_ROOT)` from `/proc/<host pid>/root`, so a
//! symbolic link inside the container (an absolute `/tmp -> /var/tmp`) is followed inside the
//! container, never on the host, and a path too long for `sockaddr_un` is reached through the
//! pinned descriptor (`/proc/self/fd/N`). No `setns` is needed: the kernel lets a process that
//! may read another's `/proc/<pid>/root` (root, or the same user) walk its mount namespace.
//!
//! The usual checks still apply, and the kernel translates what they compare: the socket's owner
//! as `stat` shows it on the host, the process's uids from the host's `/proc`, and the
//! `SO_PEERCRED` pid of the server, which is its host pid. The server sees the client the other
//! way round: a pid outside its PID namespace is 0, and a uid its user namespace does not map
//! is the overflow uid (65534), which the server refuses. So root on the host, talking to a
//! container whose user namespace does not map host root, connects with the effective uid and
//! gid of the process (as jattach does) and is admitted as that process's own user.
//!
//! A path TARGET of the form `/proc/<host pid>/root/PATH` (a custom `socket_path` inside a
//! container) takes its pid from the `/proc` part, so the same checks apply to it.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::unistd::{AccessFlags, Gid, Uid, access, getegid, geteuid, setegid, seteuid};

use crate::error::{Error, ErrorKind, Result, errno};
use crate::target::{self, Entry, Target};

/// The longest path `sockaddr_un` takes (108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A target process in other namespaces than ours, and where its socket is.
#[derive(Debug)]
pub struct Container {
    /// The pid on the host (in our PID namespace).
    pub host_pid: i32,
    /// The pid inside its innermost PID namespace.
    pub ns_pid: i32,
    /// The socket's path as the process sees it.
    pub inner_path: PathBuf,
    /// The socket's path from here.
    pub path: PathBuf,
    /// The socket, opened `O_PATH`, while `path` goes through `/proc/self/fd`.
    _pinned: Option<OwnedFd>,
    /// The effective uid and gid (host view) to connect with, when ours would be refused.
    act_as: Option<(Uid, Gid)>,
}

impl Container {
    /// For a pid TARGET in another PID or mount namespace (its default socket in `dir`, as the
    /// process sees `dir`), or a `/proc/<pid>/root/...` path TARGET: where its socket is.
    /// `None` for everything else, which the caller handles as before.
    pub fn of(target: &Target, dir: &Path) -> Result<Option<Container>> {
        let (host_pid, inner_path) = match target {
            Target::Pid(pid) => {
                let Some(ns_pid) = foreign_ns_pid(*pid) else {
                    return Ok(None);
                };
                (*pid, dir.join(target::socket_name(ns_pid)))
            }
            Target::Path { path, .. } => match split_proc_root(path) {
                Some((pid, inner)) => (pid, inner),
                None => return Ok(None),
            },
        };
        let ns_pid = ns_pids(host_pid).last().copied().unwrap_or(host_pid);
        let act_as = identity_to_connect_with(host_pid)?;
        // Another uid has no capabilities, so it may not walk /proc/<pid>/root of a process
        // that has them in its own user namespace: the socket is pinned now, as root.
        let (path, pinned) = if same_ns(host_pid, "mnt") && act_as.is_none() {
            (inner_path.clone(), None)
        } else {
            reach(host_pid, &inner_path, act_as.is_some())
        };
        Ok(Some(Container {
            host_pid,
            ns_pid,
            path,
            _pinned: pinned,
            act_as,
            inner_path,
        }))
    }

    /// Adds what only a container explains to a "no socket" error (replacing a hint written in
    /// host terms): the pid and path the process sees, and the sockets it listens on, by the
    /// paths that reach them from here.
    pub fn explain(&self, err: Error) -> Error {
        if err.kind() != ErrorKind::NoSocket {
            return err;
        }
        let root = proc_root(self.host_pid);
        let from_here = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
        let mut elsewhere: Vec<String> = Vec::new();
        for path in target::listening_socket_paths(self.host_pid) {
            let mut found = Vec::new();
            if is_socket(&from_here(&path)) {
                found.push(from_here(&path));
            } else if let Some(dir) = path
                .parent()
                .filter(|dir| {
                    dir.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".manhole-"))
                })
                .and_then(Path::parent)
            {
                // The manhole binds in a private directory and links the socket into its
                // parent: name the sockets there.
                if let Ok(entries) = fs::read_dir(from_here(dir)) {
                    found.extend(entries.flatten().map(|e| e.path()).filter(|p| is_socket(p)));
                }
            }
            for path in found {
                let shown = path.display().to_string();
                if path != self.path && !elsewhere.contains(&shown) {
                    elsewhere.push(shown);
                }
            }
        }
        let mut hint = format!(
            "process {} is in a container, where it is pid {} and its socket would be {}",
            self.host_pid,
            self.ns_pid,
            self.inner_path.display()
        );
        if !elsewhere.is_empty() {
            hint.push_str(&format!(
                "; it listens on {}: if that is its manhole (a custom socket_path), pass that path as TARGET",
                elsewhere.join(", ")
            ));
        }
        err.with_hint(hint)
    }

    /// Takes on the process's effective uid and gid until the guard is dropped, when the server
    /// would refuse ours (root on the host, unmapped in the container's user namespace).
    pub fn act_as_owner(&self) -> Result<ActingAs> {
        let Some((uid, gid)) = self.act_as else {
            return Ok(ActingAs { restore: None });
        };
        let restore = (geteuid(), getegid());
        let failed = |err: Errno| {
            Error::io(
                format_args!(
                    "taking on uid {uid} and gid {gid} of process {} to connect",
                    self.host_pid
                ),
                &errno(err),
            )
        };
        setegid(gid).map_err(failed)?;
        if let Err(err) = seteuid(uid) {
            let _ = setegid(restore.1);
            return Err(failed(err));
        }
        Ok(ActingAs {
            restore: Some(restore),
        })
    }
}

/// While alive, the client runs with another effective uid and gid; dropping it restores ours.
#[must_use]
pub struct ActingAs {
    restore: Option<(Uid, Gid)>,
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        if let Some((uid, gid)) = self.restore {
            // The saved uid is still ours (root), so both calls are allowed; the uid first,
            // because changing the gid needs the privilege back.
            let _ = seteuid(uid);
            let _ = setegid(gid);
        }
    }
}

/// A path TARGET `/proc/<pid>/root/PATH` keeps `<pid>` as its pid (not a `manhole-<pid>` file
/// name, which is the pid inside the container).
pub fn refine(target: Target) -> Target {
    match target {
        Target::Path { path, pid } => {
            let pid = split_proc_root(&path).map(|(pid, _)| pid).or(pid);
            Target::Path { path, pid }
        }
        other => other,
    }
}

/// `/proc/<pid>/root/PATH` → (`pid`, `/PATH`).
fn split_proc_root(path: &Path) -> Option<(i32, PathBuf)> {
    let mut parts = path.components();
    if parts.next() != Some(Component::RootDir)
        || parts.next() != Some(Component::Normal("proc".as_ref()))
    {
        return None;
    }
    let Some(Component::Normal(pid)) = parts.next() else {
        return None;
    };
    let pid = pid
        .to_str()
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))?
        .parse::<i32>()
        .ok()
        .filter(|pid| *pid > 0)?;
    if parts.next() != Some(Component::Normal("root".as_ref())) {
        return None;
    }
    Some((pid, Path::new("/").join(parts.as_path())))
}

/// The pid of `pid` inside its PID namespace, if it is in another PID or mount namespace than
/// ours (and we may see which).
fn foreign_ns_pid(pid: i32) -> Option<i32> {
    let ns_pid = ns_pids(pid).last().copied().unwrap_or(pid);
    (ns_pid != pid || !same_ns(pid, "mnt")).then_some(ns_pid)
}

/// The `NSpid` field of `/proc/<pid>/status`: the pid in each PID namespace, outermost first.
fn ns_pids(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|text| parse_ns_pids(&text))
        .unwrap_or_default()
}

fn parse_ns_pids(status: &str) -> Vec<i32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .map(|pids| {
            pids.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` is in our namespace of `kind` (`mnt`, `pid`, `user`). A namespace we may not
/// look at counts as ours: then nothing changes from what the client did before.
fn same_ns(pid: i32, kind: &str) -> bool {
    let theirs = fs::read_link(format!("/proc/{pid}/ns/{kind}"));
    let ours = fs::read_link(format!("/proc/self/ns/{kind}"));
    match (theirs, ours) {
        (Ok(theirs), Ok(ours)) => theirs == ours,
        _ => true,
    }
}

/// The path to connect to for `inner` (a path inside the mount namespace of `pid`): resolved
/// inside the container's root; the plain `/proc/<pid>/root/...` path when it names the same
/// socket and fits `sockaddr_un` (and `pin` is false), else `/proc/self/fd/N` of the pinned
/// socket. Nothing found: the plain path, so the connection reports it missing in the usual
/// words.
fn reach(pid: i32, inner: &Path, pin: bool) -> (PathBuf, Option<OwnedFd>) {
    let plain = proc_root(pid).join(inner.strip_prefix("/").unwrap_or(inner));
    let Some(pinned) = open_in_root(pid, inner) else {
        return (plain, None);
    };
    let resolved = PathBuf::from(format!("/proc/self/fd/{}", pinned.as_raw_fd()));
    let same_file = match (fs::symlink_metadata(&plain), fs::metadata(&resolved)) {
        (Ok(a), Ok(b)) => a.file_type().is_socket() && (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    };
    if same_file && !pin && plain.as_os_str().len() <= MAX_SOCKET_PATH {
        (plain, None)
    } else {
        (resolved, Some(pinned))
    }
}

fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket())
}

fn proc_root(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root"))
}

/// Opens `inner` with `O_PATH`, resolved as the process `pid` would (its root is the root).
fn open_in_root(pid: i32, inner: &Path) -> Option<OwnedFd> {
    let root = fs::File::open(proc_root(pid)).ok()?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(&root, inner, how).ok()
}

/// One line of `/proc/<pid>/uid_map` or `gid_map`: ids `inner..inner+count` inside are
/// `outer..outer+count` in the reader's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdRange {
    inner: u32,
    outer: u32,
    count: u32,
}

fn parse_id_map(text: &str) -> Vec<IdRange> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().map(|f| f.parse::<u32>().ok());
            Some(IdRange {
                inner: fields.next()??,
                outer: fields.next()??,
                count: fields.next()??,
            })
        })
        .collect()
}

/// What an id of ours is inside the namespace, if it is mapped there.
fn map_in(map: &[IdRange], outer: u32) -> Option<u32> {
    map.iter().find_map(|range| {
        let offset = outer.checked_sub(range.outer)?;
        (offset < range.count).then(|| range.inner + offset)
    })
}

/// The uid and gid to connect with: `None` (ours) unless the server would refuse ours and we
/// are root, who may take on the process's own.
fn identity_to_connect_with(pid: i32) -> Result<Option<(Uid, Gid)>> {
    if same_ns(pid, "user") {
        return Ok(None);
    }
    let me = geteuid().as_raw();
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Ok(None);
    };
    let (Some(uid), Some(gid)) = (effective_id(&status, "Uid:"), effective_id(&status, "Gid:"))
    else {
        return Ok(None);
    };
    let map = fs::read_to_string(format!("/proc/{pid}/uid_map"))
        .map(|text| parse_id_map(&text))
        .unwrap_or_default();
    let ours_inside = map_in(&map, me);
    // Admitted as it is: root inside, or the process's own user.
    if ours_inside == Some(0) || me == uid {
        return Ok(None);
    }
    if me != 0 {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "process {pid} is in a user namespace where your uid {me} is {}: its manhole \
                 would refuse you; run as root or as its user (uid {uid} on the host)",
                ours_inside.map_or_else(|| "not mapped".to_owned(), |id| format!("uid {id}")),
            ),
        ));
    }
    Ok(Some((Uid::from_raw(uid), Gid::from_raw(gid))))
}

/// The effective id (second field) of the `Uid:` or `Gid:` line of a status text.
fn effective_id(status: &str, key: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// For `--list`: the default sockets (in `dir`, as each process sees it) of processes in other
/// PID or mount namespaces, each with its host pid and its pid inside. `host` is what the scan
/// of our own `dir` found: an entry there that is the same socket file as one found here
/// (a `/tmp` shared with a container) is dropped, since its pid is the container's.
pub fn add_containers(entries: &mut Vec<Entry>, dir: &Path) {
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for proc in procs.flatten() {
        let Some(pid) = proc
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Some(ns_pid) = foreign_ns_pid(pid) else {
            continue;
        };
        let inner = dir.join(target::socket_name(ns_pid));
        let path = if same_ns(pid, "mnt") {
            inner
        } else {
            proc_root(pid).join(inner.strip_prefix("/").unwrap_or(&inner))
        };
        // The socket itself, resolved inside the container; shown by its /proc path.
        let Some(meta) = open_in_root(pid, &dir.join(target::socket_name(ns_pid)))
            .and_then(|fd| fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok())
        else {
            continue;
        };
        if !meta.file_type().is_socket() {
            continue;
        }
        if geteuid().as_raw() != 0 && access(&path, AccessFlags::W_OK).is_err() {
            continue;
        }
        found.push(target::entry(pid, path, &meta, Some(ns_pid)));
    }
    entries.retain(|host| !found.iter().any(|c| c.same_file(host)));
    entries.extend(found);
    entries.sort_by(|a, b| a.pid.cmp(&b.pid).then_with(|| a.path.cmp(&b.path)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_lists_the_pid_in_each_namespace() {
        let status = "Name:\tdemo\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t4241\n\
NSpid:\t4242\t7\t1\nNStgid:\t4242\t7\t1\n";
        assert_eq!(parse_ns_pids(status), vec![4242, 7, 1]);
        assert_eq!(parse_ns_pids("Name:\told kernel\n"), Vec::<i32>::new());
        // Our own process is in our namespaces: not a container.
        assert_eq!(foreign_ns_pid(std::process::id() as i32), None);
        assert!(same_ns(std::process::id() as i32, "mnt"));
    }

    #[test]
    fn proc_root_paths_carry_the_host_pid() {
        assert_eq!(
            split_proc_root(Path::new("/proc/4242/root/run/app.sock")),
            Some((4242, PathBuf::from("/run/app.sock")))
        );
        assert_eq!(
            split_proc_root(Path::new("/proc/4242/root/tmp/manhole-1")),
            Some((4242, PathBuf::from("/tmp/manhole-1")))
        );
        for other in [
            "/proc/self/root/tmp/x",
            "/proc/4242/cwd/x",
            "/tmp/manhole-1",
            "proc/1/root/x",
            "/proc/0/root/x",
        ] {
            assert_eq!(split_proc_root(Path::new(other)), None, "{other}");
        }
        let target: Target = "/proc/4242/root/tmp/manhole-1".parse().unwrap();
        assert_eq!(target.pid(), Some(1));
        assert_eq!(refine(target).pid(), Some(4242));
        let target: Target = "/tmp/manhole-7".parse().unwrap();
        assert_eq!(refine(target).pid(), Some(7));
    }

    #[test]
    fn ids_map_through_user_namespaces() {
        let map =
            parse_id_map("         0     100000      65536\n     65536       1000          1\n");
        assert_eq!(
            map,
            vec![
                IdRange {
                    inner: 0,
                    outer: 100000,
                    count: 65536
                },
                IdRange {
                    inner: 65536,
                    outer: 1000,
                    count: 1
                }
            ]
        );
        assert_eq!(map_in(&map, 100000), Some(0));
        assert_eq!(map_in(&map, 100005), Some(5));
        assert_eq!(map_in(&map, 165536), None);
        assert_eq!(map_in(&map, 1000), Some(65536));
        assert_eq!(map_in(&map, 0), None);
        let status = "Uid:\t0\t100000\t100000\t100000\nGid:\t5\t100001\t100001\t100001\n";
        assert_eq!(effective_id(status, "Uid:"), Some(100000));
        assert_eq!(effective_id(status, "Gid:"), Some(100001));
    }

    #[test]
    fn a_socket_is_resolved_inside_the_root_and_pinned_when_too_long() {
        // Our own root is "/": resolving an absolute path inside it finds the same socket.
        let dir = std::env::temp_dir().join(format!(
            "manhole-cli-ns-{}-{}",
            std::process::id(),
            "x".repeat(90)
        ));
        fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("sock");
        // Too long to bind directly: bind through a descriptor of the directory.
        let dir_fd = fs::File::open(&dir).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(format!(
            "/proc/self/fd/{}/sock",
            dir_fd.as_raw_fd()
        ))
        .unwrap();
        let me = std::process::id() as i32;
        let (path, pinned) = reach(me, &socket, false);
        assert!(pinned.is_some(), "{}", path.display());
        assert!(path.starts_with("/proc/self/fd"), "{}", path.display());
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        let (missing, pinned) = reach(me, &dir.join("nothing"), true);
        assert!(pinned.is_none());
        assert!(missing.starts_with(format!("/proc/{me}/root")));
        fs::remove_dir_all(&dir).unwrap();
    }
}
