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

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

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

/// Binds a listening socket at `path`, mode 0600, owned by the effective uid.
pub(crate) fn bind(path: &Path) -> Result<BoundSocket> {
    prepare_path(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
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
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("cannot chmod the socket to 0600", e))?;
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
        let bound = bind(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(meta.file_type().is_socket());
        // A second bind while the first listens is refused.
        assert_eq!(bind(&path).unwrap_err().kind(), ErrorKind::SocketPath);
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
        assert!(bind(&link).unwrap_err().to_string().contains("symlink"));
        assert!(
            bind(&target)
                .unwrap_err()
                .to_string()
                .contains("not a socket")
        );
        assert_eq!(fs::read(&target).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&link).is_ok());
        let long = dir.join("x".repeat(120));
        assert!(bind(&long).unwrap_err().to_string().contains("bytes"));
        let stale = dir.join("stale");
        drop(UnixListener::bind(&stale).unwrap());
        let bound = bind(&stale).unwrap();
        assert!(UnixStream::connect(bound.path()).is_ok());
        bound.remove_file();
        assert!(fs::symlink_metadata(&stale).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
