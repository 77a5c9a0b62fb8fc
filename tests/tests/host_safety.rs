//! The manhole never hurts the process it lives in: a log that cannot block or raise SIGPIPE,
//! odd starts (closed standard descriptors, a privileged binary), thread names that fit the
//! kernel. Each test starts a real `bare` process (the `App` guard kills and reaps it and removes
//! its socket, even when the test fails).

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use manhole_e2e::{
    App, Client, TempDir, bin, default_path, is_socket, wait_for_socket, wait_until,
};

/// A pipe of one page whose buffer is already full, for a stderr nobody reads: (read end,
/// write end). The write end is blocking again, as a real stalled log collector's pipe is.
fn full_pipe() -> (OwnedFd, OwnedFd) {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    // SAFETY: F_SETPIPE_SZ on a pipe we own; a failure only leaves the default size.
    unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    set_nonblocking(&writer, true);
    let chunk = [b'.'; 512];
    while nix::unistd::write(&writer, &chunk).is_ok() {}
    set_nonblocking(&writer, false);
    (reader, writer)
}

fn set_nonblocking(fd: &OwnedFd, on: bool) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let mut flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).unwrap());
    flags.set(OFlag::O_NONBLOCK, on);
    fcntl(fd, FcntlArg::F_SETFL(flags)).unwrap();
}

/// Starts `bare` with `MANHOLE=manhole` and `args`, its stderr the write end `stderr`.
fn bare_with_stderr(manhole: &str, args: &[&str], stderr: OwnedFd) -> App {
    let mut app = App::start_with(&bin("bare"), args, &[("MANHOLE", manhole)], |c| {
        c.stderr(Stdio::from(stderr));
    });
    app.wait_for_line("ready pid=");
    app.socket = Some(default_path(app.pid()));
    app
}

/// The number `info` reports after `log lines dropped`.
fn dropped_lines(client: &mut Client) -> u64 {
    let info = client.command("info");
    info.lines()
        .find_map(|l| l.strip_prefix("log lines dropped "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no drop count in info: {info}"))
}

#[test]
fn a_full_stderr_nobody_reads_blocks_neither_the_start_nor_three_sessions() {
    for redirect in ["True", "False"] {
        let (_unread, writer) = full_pipe();
        let app = bare_with_stderr(&format!("redirect_stderr={redirect}"), &[], writer);
        for n in 1..=3 {
            let mut client = Client::connect(app.socket()).unwrap();
            let greeting = client.skip_greeting();
            assert!(
                greeting.contains("bare_sleeper_loop"),
                "session {n} (redirect_stderr={redirect}) got no dump: {greeting}"
            );
            // Every accepted session is logged, so the drops grow with the sessions.
            assert!(
                dropped_lines(&mut client) >= n,
                "redirect_stderr={redirect}"
            );
            client.send("exit");
            client.read_to_end();
        }
    }
}

#[test]
fn cleanup_on_sigterm_still_terminates_at_once_with_a_full_stderr() {
    let (_unread, writer) = full_pipe();
    let mut app = bare_with_stderr("cleanup_on_sigterm=True", &[], writer);
    wait_for_socket(app.socket());
    let sent = Instant::now();
    app.signal(libc::SIGTERM);
    let status = app.wait_exit();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "took {:?}",
        sent.elapsed()
    );
    assert!(!is_socket(app.socket()), "the socket was left behind");
}

#[test]
fn the_log_raises_no_sigpipe_with_an_empty_sigmask_and_sigpipe_at_default() {
    // stderr is a pipe whose reader is gone: every log line's write fails with EPIPE. The first
    // ones are written by the constructor, before std ignores SIGPIPE; `--sigpipe-default` puts
    // it back to SIG_DFL for the rest, and `sigmask=None` leaves it unblocked in our threads.
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let mut app = bare_with_stderr("sigmask=None", &["--sigpipe-default"], writer);
    for _ in 0..2 {
        let mut client = Client::connect(app.socket()).unwrap();
        assert!(client.skip_greeting().contains("bare_sleeper_loop"));
        assert!(dropped_lines(&mut client) > 0);
        client.send("exit");
        client.read_to_end();
    }
    assert!(app.alive(), "the process died");
}

#[test]
fn an_env_install_with_fds_0_1_2_closed_keeps_listening_while_the_app_prints() {
    let app = App::start_with(
        &bin("bare"),
        &["--stdout-every-ms", "1"],
        &[("MANHOLE", "")],
        |c| {
            // SAFETY: only `close` (async-signal-safe) between fork and exec.
            unsafe {
                c.pre_exec(|| {
                    for fd in 0..3 {
                        libc::close(fd);
                    }
                    Ok(())
                });
            }
        },
    );
    let path = default_path(app.pid());
    let mut app = app;
    app.socket = Some(path.clone());
    wait_for_socket(&path);
    for fd in 0..3 {
        let target = fs::read_link(format!("/proc/{}/fd/{fd}", app.pid())).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "fd {fd}");
    }
    // The ticker writes to fd 1 every millisecond; the listener must not take that for a stop.
    wait_until(|| {
        app.thread_names()
            .iter()
            .any(|n| n == "tocker")
            .then_some(())
    })
    .expect("the tocker thread runs");
    for _ in 0..3 {
        let mut client = Client::connect(&path).unwrap();
        assert!(client.skip_greeting().contains("\"tocker\""));
        client.send("exit");
        client.read_to_end();
    }
    assert!(app.alive());
}

#[test]
fn manhole_is_ignored_with_one_line_in_a_setuid_process() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: making a setuid binary needs root");
        return;
    }
    let dir = TempDir::new();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("bare-setuid");
    fs::copy(bin("bare"), &copy).unwrap();
    std::os::unix::fs::chown(&copy, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o4755)).unwrap();
    let mut app = App::start_exe(&copy, &[], &[("MANHOLE", "")]);
    app.wait_for_line("ready pid=");
    app.socket = Some(default_path(app.pid()));
    let status = fs::read_to_string(format!("/proc/{}/status", app.pid())).unwrap();
    let uids: Vec<&str> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .collect();
    if uids[0] == uids[1] {
        eprintln!("skipped: {} is mounted nosuid", dir.path().display());
        return;
    }
    let stderr = app.wait_for_stderr("MANHOLE is ignored");
    assert_eq!(stderr.matches("Manhole[").count(), 1, "{stderr}");
    assert!(stderr.contains("AT_SECURE"), "{stderr}");
    assert!(!is_socket(app.socket()));
}

#[test]
fn log_lines_carry_rfc3339_times_and_threads_have_names_that_fit_the_kernel() {
    let mut app = App::start("bare", &[], &[("MANHOLE", "")]);
    app.wait_for_line("ready pid=");
    app.socket = Some(default_path(app.pid()));
    let stderr = app.wait_for_stderr("Manhole UDS path");
    let line = stderr.lines().find(|l| l.contains("UDS path")).unwrap();
    let prefix = format!("Manhole[{}:", app.pid());
    let stamp = line
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split_once("]: "))
        .map(|(stamp, _)| stamp)
        .unwrap_or_else(|| panic!("{line:?}"));
    // 2026-12-02T07:40:33.123Z
    let shape: String = stamp
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999-99-99T99:99:99.999Z", "{line:?}");
    let mut client = Client::connect(app.socket()).unwrap();
    let greeting = client.skip_greeting();
    assert!(greeting.contains("\"mh-listener\""), "{greeting}");
    assert!(greeting.contains("\"mh-session-1\""), "{greeting}");
    let names = app.thread_names();
    assert!(names.iter().any(|n| n == "mh-listener"), "{names:?}");
    assert!(names.iter().any(|n| n == "mh-session-1"), "{names:?}");
    assert!(names.iter().all(|n| n.len() <= 15));
}

#[test]
fn threads_name_matches_an_exact_name_before_substrings() {
    // sleeper-0 .. sleeper-11: `sleeper-1` is also a substring of sleeper-10 and sleeper-11.
    let mut app = App::start("bare", &["--threads", "12"], &[("MANHOLE", "")]);
    app.wait_for_line("ready pid=");
    app.socket = Some(default_path(app.pid()));
    let mut client = Client::connect(app.socket()).unwrap();
    client.skip_greeting();
    // `--all`: each thread on its own (the sleepers' equal stacks would be one group).
    let one = client.command("threads --all sleeper-1");
    assert_eq!(one.matches("Thread ").count(), 1, "{one}");
    assert!(one.contains("\"sleeper-1\""), "{one}");
    assert_eq!(
        client
            .command("threads --all mh-listener")
            .matches("Thread ")
            .count(),
        1
    );
    // No exact name: every thread whose name contains it.
    let all = client.command("threads --all sleeper-");
    assert_eq!(all.matches("Thread ").count(), 12, "{all}");
}
