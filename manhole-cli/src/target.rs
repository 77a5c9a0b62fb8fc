//! What TARGET means and what is known about it: parsing it, finding its socket, reading the
//! target process in `/proc` (name, uids, caught signals), sending the activation signal safely,
//! and `--list`/`--prune` over a socket directory.
//!
//! TARGET has three forms: a pid (`1234`, the socket is `DIR/manhole-1234`), a path whose file
//! name is `manhole-<pid>` (that exact path, and the pid is known), or any other path containing
//! a `/` (that path, no pid). Whenever the pid is known, the connection is checked against it
//! (see `connect`), and a signal can be sent to it, but only when the process has published
//! evidence that a manhole waits for that signal (see `evidence`) and `/proc/<pid>/status` shows
//! it catches it: catching is not enough (bash catches SIGUSR2 and exits on it), and a process
//! without a handler would be killed by it.
//!
//! Process names come from the target (`prctl(PR_SET_NAME)`), so they are kept escaped
//! (see `escape`) wherever they are shown.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{AccessFlags, Pid, Uid, User, access, geteuid};

use crate::error::{Error, ErrorKind, Result, errno, note};

/// The accepted TARGET forms, for usage errors.
const TARGET_FORMS: &str = "expected a pid (1234), a manhole socket path (/tmp/manhole-1234) or any socket path containing a '/' (./app.sock)";

/// What the operator pointed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A bare pid: its socket is `DIR/manhole-<pid>`.
    Pid(i32),
    /// A socket path, with the pid when the file name is `manhole-<pid>`.
    Path { path: PathBuf, pid: Option<i32> },
}

impl Target {
    /// The target's pid, when it has one.
    pub fn pid(&self) -> Option<i32> {
        match self {
            Target::Pid(pid) => Some(*pid),
            Target::Path { pid, .. } => *pid,
        }
    }

    /// The socket to connect to; `dir` is the directory of `manhole-<pid>` sockets.
    pub fn socket_path(&self, dir: &Path) -> PathBuf {
        match self {
            Target::Pid(pid) => dir.join(socket_name(*pid)),
            Target::Path { path, .. } => path.clone(),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Target, String> {
        if text.is_empty() {
            return Err(format!("empty TARGET: {TARGET_FORMS}"));
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return parse_pid(text)
                .map(Target::Pid)
                .ok_or_else(|| format!("{text} is not a valid pid: {TARGET_FORMS}"));
        }
        if text.contains('/') {
            let path = PathBuf::from(text);
            let pid = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(pid_from_socket_name);
            return Ok(Target::Path { path, pid });
        }
        Err(format!("invalid TARGET {text:?}: {TARGET_FORMS}"))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Pid(pid) => write!(f, "{pid}"),
            Target::Path { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// A positive pid that fits `pid_t`.
fn parse_pid(digits: &str) -> Option<i32> {
    digits.parse::<i32>().ok().filter(|pid| *pid > 0)
}

/// `manhole-<pid>`, the default socket's file name.
pub fn socket_name(pid: i32) -> String {
    format!("manhole-{pid}")
}

/// The pid in a file name of the form `manhole-<pid>`.
pub fn pid_from_socket_name(name: &str) -> Option<i32> {
    let digits = name.strip_prefix("manhole-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    parse_pid(digits)
}

/// What `/proc/<pid>/status` says about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// The command name (`comm`, at most 15 bytes), with control characters escaped.
    pub name: String,
    /// The thread-group id: differs from the pid when the pid is a thread.
    pub tgid: i32,
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Signals with a handler installed (bit `n - 1` for signal `n`).
    pub caught: u64,
}

impl ProcStatus {
    /// Whether the process has a handler for `signal`.
    pub fn catches(&self, signal: Signal) -> bool {
        let bit = signal as i32 - 1;
        (0..64).contains(&bit) && self.caught & (1 << bit) != 0
    }

    /// The effective uid: the owner of files (and sockets) the process creates.
    pub fn euid(&self) -> u32 {
        self.uids[1]
    }
}

/// Parses the text of `/proc/<pid>/status`; `None` if a needed field is missing.
pub fn parse_status(text: &str) -> Option<ProcStatus> {
    let mut name = None;
    let mut tgid = None;
    let mut uids = None;
    let mut caught = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Name" => name = Some(crate::escape::escape_line(value)),
            "Tgid" => tgid = value.parse().ok(),
            "Uid" => {
                let parsed: Vec<u32> = value
                    .split_whitespace()
                    .filter_map(|uid| uid.parse().ok())
                    .collect();
                uids = <[u32; 4]>::try_from(parsed).ok();
            }
            "SigCgt" => caught = u64::from_str_radix(value, 16).ok(),
            _ => {}
        }
    }
    Some(ProcStatus {
        name: name?,
        tgid: tgid?,
        uids: uids?,
        caught: caught?,
    })
}

/// Reads `/proc/<pid>/status`: [`ErrorKind::NoSuchProcess`] if there is no such process.
pub fn read_status(pid: i32) -> Result<ProcStatus> {
    let path = format!("/proc/{pid}/status");
    match fs::read_to_string(&path) {
        Ok(text) => parse_status(&text)
            .ok_or_else(|| Error::new(ErrorKind::Other, format!("cannot parse {path}"))),
        Err(err)
            if err.kind() == io::ErrorKind::NotFound
                || err.raw_os_error() == Some(Errno::ESRCH as i32) =>
        {
            Err(no_such_process(pid))
        }
        Err(err) => Err(Error::io(format_args!("reading {path}"), &err)),
    }
}

fn no_such_process(pid: i32) -> Error {
    Error::new(ErrorKind::NoSuchProcess, format!("no such process: {pid}"))
}

/// Checks that `pid` is a live process (not a thread of one) and returns its status.
pub fn check_process(target: &Target, socket: &Path) -> Result<Option<ProcStatus>> {
    let Some(pid) = target.pid() else {
        return Ok(None);
    };
    let status = match read_status(pid) {
        Ok(status) => status,
        Err(err)
            if err.kind() == ErrorKind::NoSuchProcess && fs::symlink_metadata(socket).is_ok() =>
        {
            return Err(err.with_hint(format!(
                "{} is left over from a process that is gone; `manhole-cli --list --prune` removes such sockets",
                socket.display()
            )));
        }
        Err(err) => return Err(err),
    };
    if status.tgid != pid {
        return Err(Error::new(
            ErrorKind::Usage,
            format!(
                "{pid} is a thread of process {} ({}); use the process id",
                status.tgid, status.name
            ),
        ));
    }
    Ok(Some(status))
}

/// Signals no manhole can be activated by, whatever `SigCgt` says. SIGKILL and SIGSTOP cannot be
/// caught. The fault signals (and SIGABRT, SIGTRAP, SIGSYS) are caught by crash handlers: every
/// Rust program catches SIGSEGV and SIGBUS for its stack-overflow report and resets them to the
/// default action when one arrives that is not an overflow, a JVM treats SIGSEGV as a fault, a
/// crash reporter dumps and aborts. Sending one would disarm or crash the target.
const NEVER_SENT: [Signal; 9] = [
    Signal::SIGKILL,
    Signal::SIGSTOP,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGILL,
    Signal::SIGFPE,
    Signal::SIGABRT,
    Signal::SIGTRAP,
    Signal::SIGSYS,
];

/// Sends `signal` to `pid`, but only if it is not one of the signals no manhole uses
/// ([`NEVER_SENT`]), the process published evidence that a manhole waits for it next to
/// `socket`, and it catches it (so it cannot be killed by it).
pub fn send_signal(
    pid: i32,
    status: &ProcStatus,
    signal: Signal,
    socket: &Path,
    pid_in_file: i32,
) -> Result<()> {
    if NEVER_SENT.contains(&signal) {
        return Err(Error::new(
            ErrorKind::Unsafe,
            format!(
                "refusing to send {} to process {pid} ({}): no manhole is activated by it, and a \
                 process that catches it does so to report a crash (use a signal like USR2)",
                signal.as_str(),
                status.name
            ),
        ));
    }
    let refuse = |why: String| {
        Error::new(
            ErrorKind::NoEvidence,
            format!(
                "refusing to send {} to process {pid} ({}): nothing shows a manhole waiting for it: {why}",
                signal.as_str(),
                status.name
            ),
        )
    };
    match crate::evidence::read(socket, pid, pid_in_file, status) {
        Err(crate::evidence::Missing::NotReadable(why)) => {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "permission denied sending {} to process {pid} ({}, uid {}): {why}",
                    signal.as_str(),
                    status.name,
                    status.euid()
                ),
            ));
        }
        Err(crate::evidence::Missing::Untrusted(why)) => {
            return Err(refuse(why).with_hint(
                "a manhole that starts on a signal publishes <socket>.activation; if it uses a \
                 custom socket_path, pass that path as TARGET",
            ));
        }
        Ok(evidence) if !evidence.activated_by(signal) => {
            let waits = evidence.suggested().map_or("no signal", Signal::as_str);
            return Err(refuse(format!("its manhole starts on {waits}"))
                .with_hint(format!("try `manhole-cli -s {} {pid}`", short_name(waits))));
        }
        Ok(_) => {}
    }
    if !status.catches(signal) {
        return Err(Error::new(
            ErrorKind::Unsafe,
            format!(
                "refusing to send {} to process {pid} ({}): it does not catch that signal, so no manhole \
                 handler would see it and its default action could kill the process",
                signal.as_str(),
                status.name
            ),
        ));
    }
    kill(Pid::from_raw(pid), signal).map_err(|err| match err {
        Errno::ESRCH => no_such_process(pid),
        Errno::EPERM => Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "permission denied sending {} to process {pid} ({}, uid {})",
                signal.as_str(),
                status.name,
                status.euid()
            ),
        ),
        other => Error::io(
            format_args!("sending {} to process {pid}", signal.as_str()),
            &errno(other),
        ),
    })
}

/// `USR2` for `SIGUSR2`: how the hints spell a signal.
pub fn short_name(signal: &str) -> &str {
    signal.strip_prefix("SIG").unwrap_or(signal)
}

/// The filesystem paths of the unix stream sockets process `pid` listens on, as far as this
/// user may see (`/proc/<pid>/fd` needs the same user or root). Used for a hint when the
/// default socket is missing: the process may listen on a custom `socket_path`.
pub fn listening_socket_paths(pid: i32) -> Vec<PathBuf> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: Vec<u64> = fds
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            link.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let table = fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    parse_unix_listeners(&table)
        .into_iter()
        .filter(|(inode, _)| inodes.contains(inode))
        .map(|(_, path)| path)
        .collect()
}

/// The listening stream sockets with a filesystem path in a `/proc/net/unix` table, by inode.
fn parse_unix_listeners(table: &str) -> Vec<(u64, PathBuf)> {
    /// `__SO_ACCEPTCON`: the socket is listening.
    const ACCEPTING: u32 = 0x0001_0000;
    /// `SOCK_STREAM`.
    const STREAM: u32 = 1;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // Num RefCount Protocol Flags Type St Inode Path
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            let kind = u32::from_str_radix(fields.get(4)?, 16).ok()?;
            let inode = fields.get(6)?.parse().ok()?;
            let path = fields.get(7).filter(|path| path.starts_with('/'))?;
            (flags & ACCEPTING != 0 && kind == STREAM).then(|| (inode, PathBuf::from(path)))
        })
        .collect()
}

/// Whether the process behind a socket is still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The process exists (and started before the socket was made).
    Alive,
    /// No process has this pid.
    Gone,
    /// A process has this pid but started after the socket was made: the pid was reused.
    Reused,
}

impl Liveness {
    fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Gone => "gone",
            Liveness::Reused => "gone (pid reused)",
        }
    }
}

/// One `manhole-<pid>` socket found in the socket directory.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The pid on the host (in our PID namespace).
    pub pid: i32,
    /// The pid inside the process's own PID namespace, for a process in a container.
    pub ns_pid: Option<i32>,
    pub path: PathBuf,
    pub uid: u32,
    pub user: String,
    pub name: Option<String>,
    pub liveness: Liveness,
    identity: (u64, u64),
}

/// Finds the `manhole-<pid>` sockets in `dir` that this user can connect to (or, for
/// `only_own`, that this user owns), sorted by pid. Symlinks and non-sockets are never listed.
pub fn scan(dir: &Path, only_own: bool) -> Result<Vec<Entry>> {
    let entries = fs::read_dir(dir)
        .map_err(|err| Error::io(format_args!("reading {}", dir.display()), &err))?;
    let me = geteuid().as_raw();
    let mut found = Vec::new();
    for dirent in entries.flatten() {
        let Some(pid) = dirent.file_name().to_str().and_then(pid_from_socket_name) else {
            continue;
        };
        let path = dirent.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_socket() {
            continue;
        }
        if only_own && meta.uid() != me {
            continue;
        }
        if !only_own && access(&path, AccessFlags::W_OK).is_err() {
            continue;
        }
        found.push(entry(pid, path, &meta, None));
    }
    found.sort_by(|a, b| a.pid.cmp(&b.pid).then_with(|| a.path.cmp(&b.path)));
    Ok(found)
}

/// The `--list` entry for the socket at `path` (metadata `meta`) of process `pid` (host pid;
/// `ns_pid`, its pid inside its own PID namespace).
pub fn entry(pid: i32, path: PathBuf, meta: &fs::Metadata, ns_pid: Option<i32>) -> Entry {
    let status = read_status(pid).ok();
    let liveness = liveness(pid, meta.ctime());
    Entry {
        pid,
        ns_pid,
        uid: meta.uid(),
        user: user_name(meta.uid()),
        name: status
            .filter(|_| liveness == Liveness::Alive)
            .map(|status| status.name),
        liveness,
        identity: (meta.dev(), meta.ino()),
        path,
    }
}

impl Entry {
    /// Whether both entries are the same socket file (reached by two paths).
    pub fn same_file(&self, other: &Entry) -> bool {
        self.identity == other.identity
    }
}

/// Whether process `pid` is the one that could have made a socket at time `socket_ctime`.
fn liveness(pid: i32, socket_ctime: i64) -> Liveness {
    match kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => Liveness::Gone,
        _ => match process_start_time(pid) {
            // Two seconds of slack for clock granularity; a reused pid is usually far younger.
            Some(started) if started > socket_ctime + 2 => Liveness::Reused,
            _ => Liveness::Alive,
        },
    }
}

/// The start time of `pid` in seconds since the epoch, from `/proc/<pid>/stat` and `/proc/stat`.
fn process_start_time(pid: i32) -> Option<i64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_start_ticks(&stat)?;
    let boot = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse::<i64>()
        .ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(boot + ticks / hz)
}

/// When process `pid` started, in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    u64::try_from(parse_start_ticks(&stat)?).ok()
}

/// Field 22 (`starttime`, in clock ticks since boot) of `/proc/<pid>/stat`.
fn parse_start_ticks(stat: &str) -> Option<i64> {
    // The command name (field 2) may contain spaces and parentheses: fields resume after the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// Whether something listens on the socket at `path`: false only when the kernel refuses the
/// connection (no listener). A successful probe says `exec` and leaves, which costs the server
/// no banner and no stack dump.
fn someone_listens(path: &Path) -> bool {
    match crate::connect::try_connect(path) {
        Ok(mut stream) => {
            let _ = stream.write_all(b"exec\n");
            true
        }
        Err(err) => err.raw_os_error() != Some(Errno::ECONNREFUSED as i32),
    }
}

/// Removes `entry` if it still is the same socket file; reports what happened.
fn prune_one(entry: &Entry) -> std::result::Result<(), String> {
    if someone_listens(&entry.path) {
        return Err("something is still listening on it".to_owned());
    }
    match fs::symlink_metadata(&entry.path) {
        Ok(meta) if meta.file_type().is_socket() && (meta.dev(), meta.ino()) == entry.identity => {
            fs::remove_file(&entry.path).map_err(|err| err.to_string())
        }
        Ok(_) => Err("it was replaced meanwhile".to_owned()),
        Err(err) => Err(err.to_string()),
    }
}

/// `--list [--prune] [--json]`: prints the table (or JSON array) of sockets in `dir`.
pub fn list(dir: &Path, prune: bool, json: bool) -> Result<()> {
    let mut entries = scan(dir, false)?;
    crate::namespace::add_containers(&mut entries, dir);
    if prune {
        let me = geteuid().as_raw();
        entries.retain(|entry| {
            if entry.uid != me || entry.liveness == Liveness::Alive {
                return true;
            }
            match prune_one(entry) {
                Ok(()) => {
                    note!(
                        "manhole-cli: removed {} (process {} is {})",
                        entry.path.display(),
                        entry.pid,
                        entry.liveness.as_str()
                    );
                    false
                }
                Err(why) => {
                    note!("manhole-cli: kept {}: {why}", entry.path.display());
                    true
                }
            }
        });
    }
    let text = if json {
        render_json(&entries)
    } else {
        render_table(&entries)
    };
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|err| Error::stdout(&err))?;
    if entries.is_empty() && !json {
        note!(
            "manhole-cli: no manhole sockets in {} that you can reach",
            dir.display()
        );
    }
    Ok(())
}

/// The `--list` table: a header and one row per socket, columns aligned.
pub fn render_table(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return String::new();
    }
    // The NSPID column (the pid inside a container) only when some process is in one.
    let containers = entries.iter().any(|entry| entry.ns_pid.is_some());
    let header = ["PID", "NSPID", "PROCESS", "USER", "STATUS", "PATH"];
    let rows: Vec<Vec<String>> = std::iter::once(header.map(str::to_owned).to_vec())
        .chain(entries.iter().map(|entry| {
            vec![
                entry.pid.to_string(),
                entry
                    .ns_pid
                    .map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
                entry.name.clone().unwrap_or_else(|| "-".to_owned()),
                entry.user.clone(),
                entry.liveness.as_str().to_owned(),
                entry.path.display().to_string(),
            ]
        }))
        .map(|mut row| {
            if !containers {
                row.remove(1);
            }
            row
        })
        .collect();
    let last = rows[0].len() - 1;
    let widths: Vec<usize> = (0..last)
        .map(|col| {
            rows.iter()
                .map(|row| row[col].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        for (col, width) in widths.iter().enumerate() {
            out.push_str(&format!("{:<width$}  ", row[col]));
        }
        out.push_str(&row[last]);
        out.push('\n');
    }
    out
}

/// The `--list --json` array: one object per socket.
pub fn render_json(entries: &[Entry]) -> String {
    let array: Vec<serde_json::Value> = entries
        .iter()
        .map(|entry| {
            serde_json::json!({
                "pid": entry.pid,
                "ns_pid": entry.ns_pid,
                "process": entry.name,
                "user": entry.user,
                "uid": entry.uid,
                "alive": entry.liveness == Liveness::Alive,
                "status": entry.liveness.as_str(),
                "path": entry.path.display().to_string(),
            })
        })
        .collect();
    format!("{}\n", serde_json::Value::Array(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<Target, String> {
        text.parse()
    }

    #[test]
    fn a_pid_is_a_pid() {
        assert_eq!(parse("1234"), Ok(Target::Pid(1234)));
        assert_eq!(parse("1"), Ok(Target::Pid(1)));
        assert_eq!(
            Target::Pid(1234).socket_path(Path::new("/tmp")),
            PathBuf::from("/tmp/manhole-1234")
        );
        assert_eq!(
            Target::Pid(7).socket_path(Path::new("/run/app")),
            PathBuf::from("/run/app/manhole-7")
        );
    }

    #[test]
    fn the_default_path_form_keeps_path_and_pid() {
        let target = parse("/tmp/manhole-1234").unwrap();
        assert_eq!(target.pid(), Some(1234));
        assert_eq!(
            target.socket_path(Path::new("/elsewhere")),
            PathBuf::from("/tmp/manhole-1234")
        );
        // The path is never thrown away (python-manhole's client did).
        let target = parse("/var/run/whatever/manhole-99").unwrap();
        assert_eq!(
            target.socket_path(Path::new("/tmp")),
            PathBuf::from("/var/run/whatever/manhole-99")
        );
        assert_eq!(target.pid(), Some(99));
        assert_eq!(parse("./manhole-5").unwrap().pid(), Some(5));
    }

    #[test]
    fn any_socket_path_works_without_a_pid() {
        for text in [
            "/run/app.sock",
            "./app.sock",
            "sockets/app",
            "/tmp/manhole-12x",
            "/tmp/manhole-",
            "/tmp/manhole-0",
        ] {
            let target = parse(text).unwrap();
            assert_eq!(target.pid(), None, "{text}");
            assert_eq!(target.socket_path(Path::new("/tmp")), PathBuf::from(text));
        }
    }

    #[test]
    fn invalid_targets_name_the_forms() {
        for text in [
            "",
            "abc",
            "12ab",
            "manhole-12",
            "0",
            "99999999999",
            "-5",
            " 12",
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                err.contains("1234")
                    && err.contains("/tmp/manhole-1234")
                    && err.contains("./app.sock"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn socket_names_carry_pids() {
        assert_eq!(pid_from_socket_name("manhole-42"), Some(42));
        assert_eq!(pid_from_socket_name("manhole-"), None);
        assert_eq!(pid_from_socket_name("manhole-4x"), None);
        assert_eq!(pid_from_socket_name("manhole-42.tmp"), None);
        assert_eq!(pid_from_socket_name("xmanhole-42"), None);
        assert_eq!(pid_from_socket_name("manhole--42"), None);
        assert_eq!(socket_name(42), "manhole-42");
    }

    const STATUS: &str = "Name:\tdemo worker\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\n\
Pid:\t4243\nPPid:\t1\nUid:\t1000\t1001\t1001\t1001\nGid:\t100\t100\t100\t100\n\
SigQ:\t0/63448\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\n\
SigIgn:\t0000000000001000\nSigCgt:\t0000000180000800\n";

    #[test]
    fn status_is_parsed() {
        let status = parse_status(STATUS).unwrap();
        assert_eq!(status.name, "demo worker");
        assert_eq!(status.tgid, 4242);
        assert_eq!(status.uids, [1000, 1001, 1001, 1001]);
        assert_eq!(status.euid(), 1001);
        assert_eq!(status.caught, 0x1_8000_0800);
        assert!(parse_status("Name:\tx\n").is_none());
    }

    #[test]
    fn caught_signals_come_from_sigcgt() {
        let status = parse_status(STATUS).unwrap();
        // 0x800 is bit 11: signal 12, SIGUSR2.
        assert!(status.catches(Signal::SIGUSR2));
        assert!(!status.catches(Signal::SIGUSR1));
        // SIGPIPE (13) is ignored (SigIgn 0x1000), not caught.
        assert!(!status.catches(Signal::SIGPIPE));
        assert!(!status.catches(Signal::SIGKILL));
    }

    #[test]
    fn refuses_to_signal_a_process_without_evidence() {
        let status = parse_status(STATUS).unwrap();
        // The pid does not matter: the check happens before any kill(2).
        let err = send_signal(
            i32::MAX,
            &status,
            Signal::SIGUSR2,
            Path::new("/nonexistent/manhole-1"),
            i32::MAX,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoEvidence);
        assert_eq!(err.exit_code(), 12);
        assert!(
            err.message()
                .contains("nothing shows a manhole waiting for it"),
            "{err}"
        );
    }

    #[test]
    fn process_names_are_escaped() {
        let status = parse_status(&STATUS.replace("demo worker", "\x1b]0;x\x07\u{9b}")).unwrap();
        assert!(
            !status.name.contains(['\x1b', '\x07', '\u{9b}']),
            "{:?}",
            status.name
        );
    }

    #[test]
    fn refuses_crash_signals_even_when_caught() {
        let mut status = parse_status(STATUS).unwrap();
        status.caught = u64::MAX;
        for signal in NEVER_SENT {
            // The pid does not matter: the check happens before any kill(2).
            let err = send_signal(
                i32::MAX,
                &status,
                signal,
                Path::new("/nonexistent/m"),
                i32::MAX,
            )
            .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsafe, "{signal:?}");
            assert!(
                err.message().contains("no manhole is activated by it"),
                "{err}"
            );
        }
        assert_eq!(
            send_signal(
                i32::MAX,
                &status,
                Signal::SIGUSR2,
                Path::new("/nonexistent/m"),
                i32::MAX
            )
            .unwrap_err()
            .kind(),
            ErrorKind::NoEvidence
        );
    }

    #[test]
    fn own_process_status_is_readable() {
        let status = read_status(std::process::id() as i32).unwrap();
        assert_eq!(status.tgid, std::process::id() as i32);
        assert_eq!(status.euid(), geteuid().as_raw());
        assert_eq!(
            read_status(i32::MAX).unwrap_err().kind(),
            ErrorKind::NoSuchProcess
        );
    }

    #[test]
    fn listening_sockets_are_found_in_proc_net_unix() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
0000000000000000: 00000002 00000000 00010000 0001 01 1001 /tmp/mhx/app.sock\n\
0000000000000000: 00000002 00000000 00010000 0001 01 1002 @abstract\n\
0000000000000000: 00000003 00000000 00000000 0001 03 1003 /run/connected.sock\n\
0000000000000000: 00000002 00000000 00010000 0005 01 1004 /run/seqpacket\n\
0000000000000000: 00000003 00000000 00000000 0001 03 1005\n";
        assert_eq!(
            parse_unix_listeners(table),
            vec![(1001, PathBuf::from("/tmp/mhx/app.sock"))]
        );
    }

    #[test]
    fn our_own_listening_socket_is_found() {
        let dir = std::env::temp_dir().join(format!("manhole-cli-listen-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let found = listening_socket_paths(std::process::id() as i32);
        fs::remove_dir_all(&dir).unwrap();
        assert!(found.contains(&path), "{found:?}");
    }

    #[test]
    fn start_ticks_skip_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2 3";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_a_dead_pid_is_gone() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert_eq!(liveness(std::process::id() as i32, now), Liveness::Alive);
        assert_eq!(liveness(std::process::id() as i32, 0), Liveness::Reused);
        assert_eq!(liveness(i32::MAX, now), Liveness::Gone);
    }

    #[test]
    fn table_is_aligned() {
        let entry = |pid, name: Option<&str>, liveness| Entry {
            pid,
            ns_pid: None,
            path: PathBuf::from(format!("/tmp/manhole-{pid}")),
            uid: 0,
            user: "root".to_owned(),
            name: name.map(str::to_owned),
            liveness,
            identity: (0, 0),
        };
        let table = render_table(&[
            entry(7, Some("demo"), Liveness::Alive),
            entry(12345, None, Liveness::Gone),
        ]);
        assert_eq!(
            table,
            "PID    PROCESS  USER  STATUS  PATH\n\
             7      demo     root  alive   /tmp/manhole-7\n\
             12345  -        root  gone    /tmp/manhole-12345\n"
        );
        assert_eq!(render_table(&[]), "");
        let mut inside = entry(4242, Some("demo"), Liveness::Alive);
        inside.ns_pid = Some(1);
        inside.path = PathBuf::from("/proc/4242/root/tmp/manhole-1");
        assert_eq!(
            render_table(&[entry(7, Some("demo"), Liveness::Alive), inside.clone()]),
            "PID   NSPID  PROCESS  USER  STATUS  PATH\n\
             7     -      demo     root  alive   /tmp/manhole-7\n\
             4242  1      demo     root  alive   /proc/4242/root/tmp/manhole-1\n"
        );
        let json: serde_json::Value = serde_json::from_str(&render_json(&[inside])).unwrap();
        assert_eq!(json[0]["pid"], 4242);
        assert_eq!(json[0]["ns_pid"], 1);
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&[entry(7, Some("demo"), Liveness::Alive)])).unwrap();
        assert_eq!(json[0]["pid"], 7);
        assert_eq!(json[0]["alive"], true);
        assert_eq!(json[0]["process"], "demo");
    }
}
