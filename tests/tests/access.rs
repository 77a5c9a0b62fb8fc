//! Who gets in: a connection from another uid is refused, logged, and the listener keeps serving.
//!
//! The other uid is a real process: this test binary re-executed with `uid(65534)` and an
//! environment variable telling it to connect (the `other_uid_client` entry below). It needs root
//! to change uid, as CI has; run as another user, the test says so and checks nothing.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

use manhole_e2e::{App, Client, run_with_timeout};

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
            let _ = stream.write_all(b"info\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            println!("ANSWER {answer}");
        }
    }
}

fn connect_as_nobody(path: &std::path::Path) -> String {
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
            .uid(NOBODY)
            .gid(NOBODY),
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn another_uid_is_refused_by_file_mode_and_by_peer_credentials() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: changing uid needs root");
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
