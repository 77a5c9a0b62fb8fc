//! Who gets in: a connection from another uid is refused, logged, and the listener keeps serving;
//! the allow-lists let in exactly whom they name; a read-only manhole refuses what changes state;
//! nothing found at the socket path or in a badly protected directory is used or removed.
//!
//! The other uid is a real process: this test binary re-executed with `uid(65534)` and an
//! environment variable telling it to connect (the `other_uid_client` entry below). It needs root
//! to change uid, as CI has; run as another user, those tests say so and check nothing.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use manhole_e2e::{App, Client, TempDir, run_with_timeout};

const CONNECT_ENV: &str = "MANHOLE_E2E_CONNECT_AS_OTHER_UID";
const NOBODY: u32 = 65534;

/// Not a test of its own: when re-executed with `CONNECT_ENV` set, connects there and prints
/// what happened.
#[test]
fn other_uid_client() {
    let Ok(path) = std::env::var(CONNECT_ENV) else {
        return;
    };
    match UnixStream::connect(&path) {
        Err(e) => println!("CONNECT-ERROR {:?}", e.kind()),
        Ok(mut stream) => {
            let _ = stream.write_all(b"info\nexit\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            println!("ANSWER {answer}");
        }
    }
}

fn connect_as_nobody(path: &std::path::Path) -> String {
    connect_as(path, NOBODY, NOBODY)
}

fn connect_as(path: &std::path::Path, uid: u32, gid: u32) -> String {
    let exe = std::env::current_exe().unwrap();
    let output = run_with_timeout(
        Command::new(exe)
            .args([
                "--exact",
                "other_uid_client",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CONNECT_ENV, path)
            .uid(uid)
            .gid(gid),
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: changing uid needs root");
    false
}

#[test]
fn another_uid_is_refused_by_file_mode_and_by_peer_credentials() {
    if !is_root() {
        return;
    }
    let app = App::demo(&[]);
    // Gate 1: the socket is 0600, so another uid cannot even connect.
    let out = connect_as_nobody(app.socket());
    assert!(out.contains("CONNECT-ERROR PermissionDenied"), "{out}");
    // Gate 2: with the file mode opened up by hand, SO_PEERCRED still refuses the peer.
    std::fs::set_permissions(app.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = connect_as_nobody(app.socket());
    assert!(
        out.contains(&format!(
            "ANSWER manhole: access denied: peer uid {NOBODY} is not allowed"
        )),
        "{out}"
    );
    assert!(
        !out.contains("Manhole "),
        "no banner for a refused peer: {out}"
    );
    app.wait_for_stderr("Access denied to pid");
    assert!(
        app.stderr()
            .contains(&format!("uid {NOBODY}, gid {NOBODY}")),
        "{}",
        app.stderr()
    );
    // The listener keeps serving the right user.
    let mut c = Client::connect(app.socket()).unwrap();
    c.skip_greeting();
    assert_eq!(c.command("echo still serving").trim(), "still serving");
}

#[test]
fn an_allowed_uid_gets_in_and_other_uids_still_do_not() {
    if !is_root() {
        return;
    }
    let dir = TempDir::new();
    let path = dir.join("sock");
    let app = App::listening(
        "faults",
        &[
            "--socket-path",
            path.to_str().unwrap(),
            "--allowed-uid",
            &NOBODY.to_string(),
        ],
    );
    // The file mode has to let other users connect; SO_PEERCRED is the gate.
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o666);
    let out = connect_as_nobody(&path);
    assert!(out.contains("Manhole ") && out.contains("pid "), "{out}");
    app.wait_for_stderr(&format!("uid {NOBODY}, gid {NOBODY} (allowed uid)"));
    let out = connect_as(&path, NOBODY - 1, NOBODY - 1);
    assert!(
        out.contains(&format!(
            "ANSWER manhole: access denied: peer uid {} is not allowed",
            NOBODY - 1
        )),
        "{out}"
    );
    app.wait_for_stderr("nor in the allowed uids or gids");
}

#[test]
fn an_allowed_gid_gets_in_through_a_group_socket() {
    if !is_root() {
        return;
    }
    let dir = TempDir::new();
    let path = dir.join("sock");
    let app = App::listening(
        "faults",
        &[
            "--socket-path",
            path.to_str().unwrap(),
            "--allowed-gid",
            &NOBODY.to_string(),
        ],
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, NOBODY));
    // Another uid whose primary group is the allowed one gets in.
    let out = connect_as(&path, NOBODY - 1, NOBODY);
    assert!(out.contains("Manhole "), "{out}");
    app.wait_for_stderr("(allowed gid)");
    // Outside the group, the file mode keeps it out already.
    let out = connect_as(&path, NOBODY - 1, NOBODY - 1);
    assert!(out.contains("CONNECT-ERROR PermissionDenied"), "{out}");
}

#[test]
fn a_read_only_manhole_refuses_set_and_state_changing_commands() {
    let mut app = App::listening("faults", &["--read-only"]);
    let mut c = Client::connect(app.socket()).unwrap();
    c.skip_greeting();
    assert_eq!(
        c.command("set counter 5").trim(),
        "error: set refused: this manhole is read-only"
    );
    let refused = c.command("bump");
    assert!(
        refused.starts_with("error: bump refused: this manhole is read-only"),
        "{refused}"
    );
    // Queries, values and the built-in commands still work, and nothing changed.
    assert_eq!(c.command("peek").trim(), "0");
    assert_eq!(c.command("get counter").trim(), "0");
    assert!(c.command("threads").contains("Threads: "));
    let locals = c.command("locals");
    let counter = locals.lines().find(|l| l.starts_with("counter")).unwrap();
    assert!(!counter.contains("settable"), "{locals}");
    // The refusals are in the audit trail with the peer's credentials; the query ran.
    app.wait_for_stderr("was refused set counter (read-only manhole)");
    app.wait_for_stderr("was refused command bump (read-only manhole)");
    let log = app.wait_for_stderr("runs query peek");
    assert!(
        log.contains(&format!("Session of pid {}", std::process::id())),
        "{log}"
    );
    assert!(app.alive());
}

#[test]
fn every_session_set_and_command_is_in_the_audit_trail() {
    let app = App::listening("faults", &[]);
    let mut c = Client::connect(app.socket()).unwrap();
    c.skip_greeting();
    assert_eq!(c.command("set counter 5").trim(), "counter: 0 -> 5");
    assert_eq!(c.command("bump").trim(), "6");
    assert_eq!(c.command("get counter").trim(), "6");
    let me = format!(
        "pid {}, uid {}, gid {}",
        std::process::id(),
        nix::unistd::geteuid(),
        nix::unistd::getegid()
    );
    let log = app.wait_for_stderr("runs command bump");
    assert!(
        log.contains(&format!("Accepted session 1 from {me}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("Session of {me} set counter from 0 to 5")),
        "{log}"
    );
    assert!(
        log.contains(&format!("Session of {me} runs command bump")),
        "{log}"
    );
    assert!(!log.contains("get counter"), "reads are not logged: {log}");
}

/// Starts `faults` on `path`; it must refuse to install. Returns its stderr.
fn install_fails(path: &std::path::Path) -> String {
    let mut app = App::start("faults", &["--socket-path", path.to_str().unwrap()], &[]);
    let status = app.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", app.stderr());
    app.wait_for_stderr("cannot install the manhole")
}

#[test]
fn a_fifo_at_the_path_is_neither_opened_nor_removed() {
    let dir = TempDir::new();
    let path = dir.join("fifo");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let err = install_fails(&path);
    assert!(err.contains("a fifo is there (it is left alone)"), "{err}");
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn another_users_socket_at_the_path_is_left_alone() {
    if !is_root() {
        return;
    }
    let dir = TempDir::new();
    let path = dir.join("theirs");
    // A socket nobody listens on: it would be "stale" if it were ours.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    std::os::unix::fs::lchown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
    let err = install_fails(&path);
    assert!(
        err.contains(&format!("a socket of uid {NOBODY} is there")),
        "{err}"
    );
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket() && meta.uid() == NOBODY);
}

#[test]
fn a_directory_others_can_rearrange_is_refused() {
    let dir = TempDir::new();
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = install_fails(&open.join("sock"));
    assert!(err.contains("without the sticky bit"), "{err}");
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    // With the sticky bit (as /tmp) it is fine.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let app = App::listening(
        "faults",
        &["--socket-path", open.join("sock").to_str().unwrap()],
    );
    drop(app);
    if nix::unistd::geteuid().is_root() {
        // A directory of another user is theirs to rearrange.
        let theirs = dir.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::lchown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
        let err = install_fails(&theirs.join("sock"));
        assert!(
            err.contains(&format!("it belongs to uid {NOBODY}")),
            "{err}"
        );
    }
}
