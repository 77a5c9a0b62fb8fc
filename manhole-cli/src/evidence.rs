//! The positive evidence a signal is needed before `-s SIG` sends it: the activation file the
//! library publishes next to the socket path (`<socket>.activation`, see docs/protocol.md).
//!
//! Catching a signal proves nothing (bash catches SIGUSR2 and exits on it), so the client sends
//! one only when that file says a manhole waits for it, and only if the file can be trusted: a
//! regular file (never a symlink) owned by the target's user or root, not writable by group or
//! others, naming the target's pid and its start time (field 22 of `/proc/<pid>/stat`), so a
//! file left by a killed process cannot vouch for a later process with the same pid.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use crate::target::ProcStatus;

/// The first line of a version-1 evidence file.
const MAGIC: &str = "manhole-activation 1";
/// A real file is under 200 bytes; anything much larger is not one.
const MAX_SIZE: u64 = 4096;

/// What a trusted evidence file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The signal that starts the always-on listener (`activate_on`).
    pub activate_on: Option<Signal>,
    /// The signal that opens one session (`oneshot_on`).
    pub oneshot_on: Option<Signal>,
}

impl Evidence {
    /// Whether a manhole waits for `signal`.
    pub fn activated_by(&self, signal: Signal) -> bool {
        self.activate_on == Some(signal) || self.oneshot_on == Some(signal)
    }

    /// The signal to suggest in a hint: the always-on one first.
    pub fn suggested(&self) -> Option<Signal> {
        self.activate_on.or(self.oneshot_on)
    }
}

/// `<socket>.activation`.
pub fn path_for(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".activation");
    PathBuf::from(name)
}

/// The pid an activation file next to `socket` names, if there is one; nothing is trusted yet
/// ([`read`] checks the file against that process).
pub fn pid_named(socket: &Path) -> Option<i32> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path_for(socket))
        .ok()?;
    let mut text = String::new();
    file.take(MAX_SIZE).read_to_string(&mut text).ok()?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return None;
    }
    lines
        .find_map(|line| line.strip_prefix("pid "))
        .and_then(|pid| pid.parse().ok())
        .filter(|pid| *pid > 0)
}

/// Why there is no evidence to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// This user may not read the file (nor, then, signal the process: it is another user's).
    NotReadable(String),
    /// No file, or one that cannot be trusted: why, in a few words.
    Untrusted(String),
}

impl From<String> for Missing {
    fn from(why: String) -> Missing {
        Missing::Untrusted(why)
    }
}

/// Reads and checks the evidence for process `pid` whose socket is `socket`; the file names the
/// process as `pid_in_file` (its pid in its own PID namespace: `pid` unless in a container).
pub fn read(
    socket: &Path,
    pid: i32,
    pid_in_file: i32,
    status: &ProcStatus,
) -> Result<Evidence, Missing> {
    let path = path_for(socket);
    let shown = path.display();
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&path)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => format!("it has not published {shown}").into(),
            std::io::ErrorKind::PermissionDenied => {
                Missing::NotReadable(format!("{shown} is not readable by this user"))
            }
            _ => Missing::from(format!("{shown} cannot be read ({})", strip(&err))),
        })?;
    trust(file, &path, pid, pid_in_file, status).map_err(Missing::Untrusted)
}

/// Checks an open evidence file: what it is, who owns it, what it says.
fn trust(
    file: fs::File,
    path: &Path,
    pid: i32,
    pid_in_file: i32,
    status: &ProcStatus,
) -> Result<Evidence, String> {
    let shown = path.display();
    let meta = file
        .metadata()
        .map_err(|err| format!("{shown} cannot be read ({})", strip(&err)))?;
    if !meta.file_type().is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    if meta.uid() != 0 && !status.uids.contains(&meta.uid()) {
        return Err(format!(
            "{shown} is owned by uid {}, not by the process's user",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("{shown} is writable by other users"));
    }
    if meta.len() > MAX_SIZE {
        return Err(format!("{shown} is too large to be an activation file"));
    }
    let mut text = String::new();
    file.take(MAX_SIZE)
        .read_to_string(&mut text)
        .map_err(|err| format!("{shown} cannot be read ({})", strip(&err)))?;
    let start = crate::target::start_ticks(pid)
        .ok_or_else(|| format!("the start time of process {pid} cannot be read"))?;
    check(&text, pid_in_file, start).map_err(|why| format!("{shown} {why}"))
}

/// An I/O error's text without " (os error N)".
fn strip(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Parses `text` and checks it names process `pid` started at `start`.
pub fn check(text: &str, pid: i32, start: u64) -> Result<Evidence, String> {
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("does not start with {MAGIC:?}"));
    }
    let mut evidence = Evidence {
        activate_on: None,
        oneshot_on: None,
    };
    let (mut seen_pid, mut seen_start) = (None, None);
    for line in lines {
        let mut fields = line.split(' ');
        let key = fields.next().unwrap_or_default();
        let value = fields.next().unwrap_or_default();
        let signal = || {
            value
                .parse::<i32>()
                .ok()
                .and_then(|n| Signal::try_from(n).ok())
        };
        match key {
            "pid" => seen_pid = value.parse::<i32>().ok(),
            "start" => seen_start = value.parse::<u64>().ok(),
            "activate_on" => evidence.activate_on = signal(),
            "oneshot_on" => evidence.oneshot_on = signal(),
            // Later versions may add lines.
            _ => {}
        }
    }
    match (seen_pid, seen_start) {
        (Some(p), _) if p != pid => Err(format!("names process {p}, not {pid}")),
        (Some(_), Some(s)) if s != start => Err(format!(
            "was left by an earlier process with pid {pid} (it started at tick {s}, this one at {start})"
        )),
        (Some(_), Some(_)) => Ok(evidence),
        _ => Err("lacks its pid or start line".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "manhole-activation 1\npid 42\nstart 987\nactivate_on 12 SIGUSR2\n";

    #[test]
    fn a_matching_file_is_evidence_for_its_signals_only() {
        let evidence = check(FILE, 42, 987).unwrap();
        assert!(evidence.activated_by(Signal::SIGUSR2));
        assert!(!evidence.activated_by(Signal::SIGUSR1));
        assert_eq!(evidence.suggested(), Some(Signal::SIGUSR2));
        let both = check(&format!("{FILE}oneshot_on 10 SIGUSR1\nfuture 1\n"), 42, 987).unwrap();
        assert!(both.activated_by(Signal::SIGUSR1));
    }

    #[test]
    fn another_pid_a_reused_pid_or_garbage_is_no_evidence() {
        assert!(
            check(FILE, 43, 987)
                .unwrap_err()
                .contains("names process 42")
        );
        assert!(
            check(FILE, 42, 988)
                .unwrap_err()
                .contains("earlier process")
        );
        assert!(check("pid 42\nstart 987\n", 42, 987).is_err());
        assert!(check("manhole-activation 1\npid 42\n", 42, 987).is_err());
        assert!(check("", 42, 987).is_err());
    }

    #[test]
    fn the_file_sits_next_to_the_socket() {
        assert_eq!(
            path_for(Path::new("/tmp/manhole-42")),
            PathBuf::from("/tmp/manhole-42.activation")
        );
    }
}
