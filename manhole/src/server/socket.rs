//! The socket file: created 0600 with no window where it is more open, and removed only if it is
//! still the one we created.
//!
//! Binding happens inside a fresh private directory (`mkdtemp`, mode 0700) next to the final
//! path; the socket is chmod-ed to 0600 there and then hard-linked into place, which fails
//! instead of replacing anything that appeared at the path meanwhile. Before that, whatever is at
//! the path is checked with `lstat` (never followed): a socket of ours whose listener is gone
//! (connect is refused) is stale and removed; a live socket, a socket of another user, a symlink,
//! a regular file, a fifo or a directory are left alone and make the bind fail with a clear error.
//! The (device, inode) pair of the file we linked is remembered, so cleanup never deletes a file
//! someone else put at the path later.
//!
//! The directory is checked first: it must belong to us or to root, and it must not be writable
//! by other users unless its sticky bit is set (as `/tmp`'s is). In a directory anyone can
//! write to without the sticky bit, another user could swap the file between our check and our
//! `unlink` of a stale socket, or remove ours; in one owned by another user, that user can.
//! Group-writable directories are accepted: the group is trusted by whoever made them so.
//!
//! The mode is 0600 unless the application's allow-lists need more (see
//! `credentials::Policy::socket_mode`); mode and group are set on the staged socket inside the
//! private directory, before it appears at the path.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::credentials::Policy;
use crate::{Error, ErrorKind, Options, Result};

/// A listening socket at a path, with what is needed to remove exactly that file.
#[derive(Debug)]
pub(crate) struct BoundSocket {
    pub listener: UnixListener,
    path: PathBuf,
    identity: (u64, u64),
    owner_pid: u32,
}

impl BoundSocket {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The (device, inode) of the file we linked at the path.
    pub(crate) fn identity(&self) -> (u64, u64) {
        self.identity
    }

    /// Removes the socket file if it is still ours and we are the process that created it (a
    /// forked child never removes its parent's socket).
    pub(crate) fn remove_file(&self) {
        remove_if_ours(&self.path, self.identity, self.owner_pid);
    }
}

/// Removes `path` if it still is the file `identity` created by process `owner_pid`.
pub(crate) fn remove_if_ours(path: &Path, identity: (u64, u64), owner_pid: u32) {
    if std::process::id() != owner_pid {
        return;
    }
    if let Ok(meta) = fs::symlink_metadata(path)
        && (meta.dev(), meta.ino()) == identity
    {
        let _ = fs::remove_file(path);
    }
}

fn path_error(path: &Path, what: &str) -> Error {
    Error::new(
        ErrorKind::SocketPath,
        format!("cannot listen on {}: {what}", path.display()),
    )
}

/// Checks the length and clears a stale socket of ours; fails on anything else at the path.
fn prepare_path(path: &Path) -> Result<()> {
    let len = path.as_os_str().len();
    if len == 0 || len > Options::MAX_SOCKET_PATH_LEN {
        return Err(path_error(
            path,
            &format!(
                "the path is {len} bytes; a unix socket path must be 1 to {} bytes",
                Options::MAX_SOCKET_PATH_LEN
            ),
        ));
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::with_source(
                ErrorKind::SocketPath,
                path_error(path, "lstat failed").message(),
                e,
            ));
        }
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_symlink() {
            "a symlink is there (it is never followed or removed)"
        } else if kind.is_dir() {
            "a directory is there"
        } else if kind.is_fifo() {
            "a fifo is there (it is left alone)"
        } else {
            "a file that is not a socket is there (it is left alone)"
        };
        return Err(path_error(path, what));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(path_error(
            path,
            &format!(
                "a socket of uid {} is there, not ours (uid {euid}); it is left alone",
                meta.uid()
            ),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(path_error(path, "another process is listening there")),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            // Our own socket with nobody listening: the leftover of a dead process.
            crate::log::log_event!("Removing stale socket {}", path.display());
            fs::remove_file(path).map_err(|e| {
                Error::with_source(
                    ErrorKind::SocketPath,
                    format!("cannot remove the stale socket {}", path.display()),
                    e,
                )
            })
        }
        Err(e) => Err(Error::with_source(
            ErrorKind::SocketPath,
            format!(
                "cannot tell whether the socket at {} is in use",
                path.display()
            ),
            e,
        )),
    }
}

/// Refuses a directory another user could rearrange: one owned by neither us nor root, or one
/// writable by others without the sticky bit.
fn check_directory(dir: &Path) -> Result<()> {
    let meta = fs::metadata(dir).map_err(|e| {
        Error::with_source(
            ErrorKind::SocketPath,
            format!("cannot use the socket directory {}", dir.display()),
            e,
        )
    })?;
    let euid = nix::unistd::geteuid().as_raw();
    let unsafe_dir = |why: String| {
        Error::new(
            ErrorKind::SocketPath,
            format!(
                "cannot listen in {}: {why}; another user could replace or remove the socket",
                dir.display()
            ),
        )
    };
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(unsafe_dir(format!(
            "it belongs to uid {}, neither us (uid {euid}) nor root",
            meta.uid()
        )));
    }
    let mode = meta.mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(unsafe_dir(format!(
            "it is writable by everyone (mode {:o}) without the sticky bit",
            mode & 0o7777
        )));
    }
    Ok(())
}

/// Binds a listening socket at `path`, owned by the effective uid, mode 0600 (or what the
/// allow-lists of `policy` need).
pub(crate) fn bind(path: &Path, policy: &Policy) -> Result<BoundSocket> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    check_directory(&parent)?;
    prepare_path(path)?;
    let (mode, group) = policy.socket_mode();
    let private_dir = nix::unistd::mkdtemp(&parent.join(".manhole-XXXXXX")).map_err(|e| {
        Error::with_source(
            ErrorKind::SocketPath,
            format!("cannot create a private directory in {}", parent.display()),
            e.into(),
        )
    })?;
    let staged = private_dir.join("s");
    let result = (|| -> Result<BoundSocket> {
        let listener = UnixListener::bind(&staged).map_err(|e| {
            Error::io(
                format!("cannot bind a socket in {}", private_dir.display()),
                e,
            )
        })?;
        if let Some(gid) = group {
            std::os::unix::fs::lchown(&staged, None, Some(gid)).map_err(|e| {
                Error::io(
                    format!("cannot give the socket to group {gid} (allowed_gids)"),
                    e,
                )
            })?;
        }
        fs::set_permissions(&staged, fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("cannot chmod the socket to {mode:o}"), e))?;
        fs::hard_link(&staged, path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                path_error(path, "something appeared at the path while binding")
            } else {
                Error::with_source(
                    ErrorKind::SocketPath,
                    format!("cannot put the socket at {}", path.display()),
                    e,
                )
            }
        })?;
        let meta =
            fs::symlink_metadata(path).map_err(|e| Error::io("cannot stat the new socket", e))?;
        Ok(BoundSocket {
            listener,
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            owner_pid: std::process::id(),
        })
    })();
    let _ = fs::remove_file(&staged);
    let _ = fs::remove_dir(&private_dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("manhole-unit-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn binds_0600_and_removes_only_its_own_file() {
        let dir = scratch("bind");
        let path = dir.join("sock");
        let bound = bind(&path, &Policy::default()).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(meta.file_type().is_socket());
        // A second bind while the first listens is refused.
        assert_eq!(
            bind(&path, &Policy::default()).unwrap_err().kind(),
            ErrorKind::SocketPath
        );
        // Someone replaces the file: cleanup leaves theirs alone.
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"not ours").unwrap();
        bound.remove_file();
        assert_eq!(fs::read(&path).unwrap(), b"not ours");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_symlinks_files_and_long_paths_and_replaces_stale_sockets() {
        let dir = scratch("refuse");
        let target = dir.join("target");
        fs::write(&target, b"precious").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(
            bind(&link, &Policy::default())
                .unwrap_err()
                .to_string()
                .contains("symlink")
        );
        assert!(
            bind(&target, &Policy::default())
                .unwrap_err()
                .to_string()
                .contains("not a socket")
        );
        assert_eq!(fs::read(&target).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&link).is_ok());
        let long = dir.join("x".repeat(120));
        assert!(
            bind(&long, &Policy::default())
                .unwrap_err()
                .to_string()
                .contains("bytes")
        );
        let stale = dir.join("stale");
        drop(UnixListener::bind(&stale).unwrap());
        let bound = bind(&stale, &Policy::default()).unwrap();
        assert!(UnixStream::connect(bound.path()).is_ok());
        bound.remove_file();
        assert!(fs::symlink_metadata(&stale).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_a_world_writable_directory_without_the_sticky_bit() {
        let dir = scratch("dirmode");
        let open = dir.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = bind(&open.join("sock"), &Policy::default()).unwrap_err();
        assert!(err.to_string().contains("without the sticky bit"), "{err}");
        assert_eq!(
            fs::read_dir(&open).unwrap().count(),
            0,
            "nothing was created"
        );
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        let bound = bind(&open.join("sock"), &Policy::default()).unwrap();
        bound.remove_file();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn allow_lists_set_the_mode_and_group_before_the_socket_appears() {
        let dir = scratch("allow");
        let egid = nix::unistd::getegid().as_raw();
        let group = Policy {
            gids: vec![egid],
            ..Policy::default()
        };
        let bound = bind(&dir.join("g"), &group).unwrap();
        let meta = fs::symlink_metadata(bound.path()).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, egid));
        bound.remove_file();
        let users = Policy {
            uids: vec![12345],
            ..Policy::default()
        };
        let bound = bind(&dir.join("u"), &users).unwrap();
        let meta = fs::symlink_metadata(bound.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o666);
        bound.remove_file();
        fs::remove_dir_all(&dir).unwrap();
    }
}
