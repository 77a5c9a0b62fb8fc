//! The activation evidence: a small file next to the socket path saying which signals start a
//! manhole in this process, so that a client never sends a signal on a guess.
//!
//! Catching a signal (`SigCgt` in `/proc/<pid>/status`) proves nothing: bash and many daemons
//! catch SIGUSR1/SIGUSR2 to clean up and exit. So an installation with `activate_on` or
//! `oneshot_on` publishes `<socket path>.activation` (e.g. `/tmp/manhole-4242.activation`):
//!
//! ```text
//! manhole-activation 1
//! pid 4242
//! start 1234567
//! activate_on 12 SIGUSR2
//! ```
//!
//! (`oneshot_on N NAME` instead of, or besides, `activate_on`). `start` is field 22 of
//! `/proc/<pid>/stat` (clock ticks since boot), so a file left by a killed process cannot vouch
//! for a later process that got the same pid. The file is created with `O_EXCL | O_NOFOLLOW`,
//! mode 0600, owned by the process's user: a client trusts it only if it is a regular file owned
//! by the target's user (or root), not writable by others, and its pid and start match the
//! target. docs/protocol.md describes the format for clients.
//!
//! The file is removed at uninstall and at exit (only by the process that made it, and only if it
//! is still the same file). A forked child never removes or reuses its parent's file (the pid in
//! it is not the child's); a child that reinstalls publishes its own.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::log::log_event;

/// The first line of an evidence file (format version 1).
const MAGIC: &str = "manhole-activation 1";

/// A published evidence file, removed by [`Evidence::withdraw`] or on drop (in the process
/// that published it only).
#[derive(Debug)]
pub(crate) struct Evidence {
    path: PathBuf,
    identity: (u64, u64),
    owner_pid: u32,
}

/// The evidence file for a socket at `socket`: `<socket>.activation`.
pub(crate) fn path_for(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".activation");
    PathBuf::from(name)
}

/// The file's text for process `pid`, started at `start` (clock ticks since boot).
fn render(pid: u32, start: u64, activate_on: Option<i32>, oneshot_on: Option<i32>) -> String {
    let mut text = format!("{MAGIC}\npid {pid}\nstart {start}\n");
    for (key, signal) in [("activate_on", activate_on), ("oneshot_on", oneshot_on)] {
        if let Some(n) = signal {
            let name = nix::sys::signal::Signal::try_from(n)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| format!("SIG{n}"));
            text.push_str(&format!("{key} {n} {name}\n"));
        }
    }
    text
}

/// Publishes the evidence next to `socket` when a signal starts a manhole here. A failure is
/// logged, not fatal: the manhole works, only `manhole-cli -s` will refuse to signal it.
pub(crate) fn publish(
    socket: &Path,
    activate_on: Option<i32>,
    oneshot_on: Option<i32>,
) -> Option<Evidence> {
    if activate_on.is_none() && oneshot_on.is_none() {
        return None;
    }
    let path = path_for(socket);
    match try_publish(&path, activate_on, oneshot_on) {
        Ok(evidence) => Some(evidence),
        Err(e) => {
            log_event!(
                "Cannot publish {} (manhole-cli -s will refuse to signal this process): {e}",
                path.display()
            );
            None
        }
    }
}

fn try_publish(
    path: &Path,
    activate_on: Option<i32>,
    oneshot_on: Option<i32>,
) -> io::Result<Evidence> {
    let pid = std::process::id();
    let start = crate::procfs::own_start_ticks()?;
    let text = render(pid, start, activate_on, oneshot_on);
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    let mut file = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A file named after our pid is left over from an earlier process with this pid
            // (killed before it could clean up). Replace it only if it is a plain file of ours.
            let meta = fs::symlink_metadata(path)?;
            if !meta.file_type().is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
                return Err(io::Error::other(
                    "something that is not a file of ours is at that path",
                ));
            }
            fs::remove_file(path)?;
            create()?
        }
        other => other?,
    };
    let written = file.write_all(text.as_bytes());
    let meta = file.metadata()?;
    let evidence = Evidence {
        path: path.to_path_buf(),
        identity: (meta.dev(), meta.ino()),
        owner_pid: pid,
    };
    // On a failed write the half-written file goes away with `evidence`.
    written?;
    Ok(evidence)
}

impl Evidence {
    /// The file's path and (device, inode).
    pub(crate) fn file(&self) -> (&Path, (u64, u64)) {
        (&self.path, self.identity)
    }

    /// Removes the file if this process made it and it is still the same file.
    pub(crate) fn withdraw(&self) {
        crate::socket::remove_if_ours(&self.path, self.identity, self.owner_pid);
    }
}

impl Drop for Evidence {
    fn drop(&mut self) {
        self.withdraw();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_pid_start_and_signals() {
        assert_eq!(
            render(42, 987, Some(12), None),
            "manhole-activation 1\npid 42\nstart 987\nactivate_on 12 SIGUSR2\n"
        );
        assert_eq!(
            render(42, 987, Some(12), Some(10)),
            "manhole-activation 1\npid 42\nstart 987\nactivate_on 12 SIGUSR2\noneshot_on 10 SIGUSR1\n"
        );
        assert_eq!(
            path_for(Path::new("/tmp/manhole-42")),
            PathBuf::from("/tmp/manhole-42.activation")
        );
    }

    #[test]
    fn published_0600_replacing_a_stale_file_and_withdrawn() {
        let dir = std::env::temp_dir().join(format!("manhole-evidence-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("manhole-1");
        let path = path_for(&socket);
        fs::write(&path, "stale").unwrap();
        let evidence = publish(&socket, None, Some(10)).expect("published");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("manhole-activation 1\n"), "{text}");
        assert!(
            text.contains(&format!("pid {}\n", std::process::id())),
            "{text}"
        );
        assert!(text.ends_with("oneshot_on 10 SIGUSR1\n"), "{text}");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        drop(evidence);
        assert!(!path.exists());
        // A symlink is never followed or replaced.
        std::os::unix::fs::symlink("/nonexistent", &path).unwrap();
        assert!(publish(&socket, Some(12), None).is_none());
        assert!(
            fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(publish(&socket, None, None).is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
