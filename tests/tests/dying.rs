//! How a process with a manhole ends: SIGTERM, SIGINT and SIGHUP remove its socket and still kill
//! it with the same signal, unless the application handles them; a handler of the
//! application's, installed before the manhole or after it through signal-hook, keeps the
//! signal. A crash with a session open (stderr teed into it) keeps its last words on the real
//! stderr. Each test starts a real `bare`, `demo` or `crash` process with those three signals at
//! their default action (whatever the test runner inherited); the `App` guard kills and reaps it
//! and removes its socket, even when the test fails.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use manhole_e2e::{
    App, Client, TempDir, bin, default_path, is_socket, wait_for_socket, wait_until,
};

const TERMINATING: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
const NAMED: [(&str, i32); 3] = [
    ("TERM", libc::SIGTERM),
    ("INT", libc::SIGINT),
    ("HUP", libc::SIGHUP),
];

/// Puts SIGTERM, SIGINT and SIGHUP at `SIG_DFL` in the child (a test runner started in the
/// background may have SIGINT ignored, and the child would inherit that).
fn default_dispositions(command: &mut Command) {
    // SAFETY: only `signal` (async-signal-safe) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            for signal in TERMINATING {
                libc::signal(signal, libc::SIG_DFL);
            }
            Ok(())
        });
    }
}

/// `bare` with `MANHOLE=manhole` and `args`, once it is ready and listening (unless `manhole`
/// has it wait for an activation signal).
fn bare(manhole: &str, args: &[&str]) -> App {
    let mut app = App::start_with(
        &bin("bare"),
        args,
        &[("MANHOLE", manhole)],
        default_dispositions,
    );
    app.wait_for_line("ready pid=");
    app.socket = Some(default_path(app.pid()));
    app
}

/// `demo` with `args`, once it listens.
fn demo(args: &[&str]) -> App {
    let mut app = App::start_with(&bin("demo"), args, &[], default_dispositions);
    let line = app.wait_for_line("manhole listening on ");
    app.socket = Some(PathBuf::from(
        line.trim_start_matches("manhole listening on "),
    ));
    app
}

fn activation_file(socket: &Path) -> PathBuf {
    PathBuf::from(format!("{}.activation", socket.display()))
}

/// A session still gets the greeting and answers `info`.
fn session_works(app: &App) {
    let mut client = Client::connect(app.socket()).expect("connect");
    let greeting = client.skip_greeting();
    assert!(
        greeting.contains(&format!("pid {}", app.pid())),
        "{greeting}"
    );
    client.send("exit");
    client.read_to_end();
}

#[test]
fn sigterm_sigint_and_sighup_remove_the_socket_and_kill_with_the_same_signal() {
    for signal in TERMINATING {
        let mut app = bare("", &[]);
        wait_for_socket(app.socket());
        app.signal(signal);
        let status = app.wait_exit();
        assert_eq!(status.signal(), Some(signal), "{status:?}");
        assert!(!status.core_dumped(), "{status:?}");
        assert!(
            !is_socket(app.socket()),
            "signal {signal} left the socket behind"
        );
    }
}

#[test]
fn sighup_removes_the_activation_file_and_the_socket_it_activated() {
    let mut app = bare("activate_on=USR2", &[]);
    let evidence = activation_file(app.socket());
    assert!(evidence.exists(), "no activation file");
    app.signal(libc::SIGUSR2);
    wait_for_socket(app.socket());
    // Served: the listener runs, so the socket is known to the handler.
    session_works(&app);
    app.signal(libc::SIGHUP);
    let status = app.wait_exit();
    assert_eq!(status.signal(), Some(libc::SIGHUP), "{status:?}");
    assert!(!is_socket(app.socket()), "the socket is left");
    assert!(!evidence.exists(), "the activation file is left");
}

#[test]
fn a_handler_the_application_had_before_install_keeps_the_signal() {
    for (name, signal) in NAMED {
        let mut app = demo(&["--own-handler", name]);
        app.signal(signal);
        app.wait_for_line("own handler count=1");
        assert!(app.alive(), "SIG{name} killed the process");
        assert!(is_socket(app.socket()), "SIG{name} removed the socket");
        session_works(&app);
    }
}

#[test]
fn a_signal_hook_handler_registered_after_install_keeps_the_signal() {
    // signal-hook finds our handler in place and calls it before its own: ours must see that the
    // signal is no longer its own, and neither remove the socket nor re-raise.
    for (name, signal) in NAMED {
        let mut app = demo(&["--hook-after", name]);
        for n in 1..=2 {
            app.signal(signal);
            app.wait_for_line(&format!("own handler count={n}"));
        }
        assert!(app.alive(), "SIG{name} killed the process");
        assert!(is_socket(app.socket()), "SIG{name} removed the socket");
        session_works(&app);
    }
}

#[test]
fn with_cleanup_on_signals_off_sigterm_kills_and_the_socket_stays() {
    let mut app = bare("cleanup_on_signals=False", &[]);
    wait_for_socket(app.socket());
    app.signal(libc::SIGTERM);
    let status = app.wait_exit();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    // Stale now; the App guard removes it.
    assert!(is_socket(app.socket()), "the socket was removed");
}

/// The `crash` example built with `-C panic=abort` (once per test run; only the final crate is
/// rebuilt), copied to `crash-panic-abort` next to the other binaries.
fn crash_panic_abort() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let normal = bin("crash");
            let copy = normal.with_file_name("crash-panic-abort");
            if std::env::var_os("MANHOLE_E2E_NO_BUILD").is_some() && copy.exists() {
                return copy;
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.args([
                "rustc",
                "--quiet",
                "-p",
                "manhole-examples",
                "--bin",
                "crash",
            ]);
            if normal.parent().is_some_and(|d| d.ends_with("release")) {
                build.arg("--release");
            }
            build.args(["--", "-C", "panic=abort"]);
            let status = build.status().expect("run cargo rustc");
            assert!(status.success(), "building crash with panic=abort failed");
            std::fs::copy(&normal, &copy).expect("copy the panic=abort build");
            copy
        })
        .clone()
}

/// Five times: `crash KIND` with a session open (so its stderr is teed into the session) writes
/// a line and dies of `signal`; every line of `expected` is on its real stderr.
fn last_words_survive(kind: &str, signal: i32, expected: &[&str]) {
    let exe = crash_panic_abort();
    let (mut kept, mut mirrored) = (0, 0);
    for run in 1..=5 {
        let dir = TempDir::new();
        let go = dir.join("go");
        let mut app = App::start_with(
            &exe,
            &[kind, go.to_str().unwrap()],
            // No backtrace: the panic's message is all that is written before the abort.
            &[("RUST_BACKTRACE", "0")],
            |command| {
                default_dispositions(command);
                // SAFETY: only `setrlimit` (async-signal-safe) between fork and exec: no core
                // files from the crashes.
                unsafe {
                    command.pre_exec(|| {
                        let none = libc::rlimit {
                            rlim_cur: 0,
                            rlim_max: 0,
                        };
                        libc::setrlimit(libc::RLIMIT_CORE, &none);
                        Ok(())
                    });
                }
            },
        );
        let line = app.wait_for_line("manhole listening on ");
        app.socket = Some(PathBuf::from(
            line.trim_start_matches("manhole listening on "),
        ));
        let mut client = Client::connect(app.socket()).expect("connect");
        client.skip_greeting();
        // The session shows stderr: fd 2 is the tee's pipe now.
        wait_until(|| {
            app.thread_names()
                .iter()
                .any(|n| n == "mh-stderr")
                .then_some(())
        })
        .expect("the stderr tee never started");
        std::fs::write(&go, b"").unwrap();
        let status = app.wait_exit();
        assert_eq!(status.signal(), Some(signal), "run {run}: {status:?}");
        let stderr = app.stderr();
        let missing: Vec<&&str> = expected.iter().filter(|e| !stderr.contains(**e)).collect();
        if missing.is_empty() {
            kept += 1;
        } else {
            eprintln!("run {run}: {missing:?} missing from stderr: {stderr:?}");
        }
        // The session's live copy is a bonus (the pump writes the original first).
        if client.read_to_end().contains(expected[0]) {
            mirrored += 1;
        }
    }
    eprintln!("{kind}: on the real stderr {kept} of 5, also in the session {mirrored} of 5");
    assert_eq!(
        kept, 5,
        "{kind}: the last words reached the real stderr in {kept} of 5 runs"
    );
}

#[test]
fn a_line_before_abort_reaches_the_real_stderr_with_a_session_open() {
    last_words_survive("abort", libc::SIGABRT, &["last words before abort"]);
}

#[test]
fn a_panic_under_panic_abort_reaches_the_real_stderr_with_a_session_open() {
    last_words_survive(
        "panic",
        libc::SIGABRT,
        &["last words before panic", "last words of a panic"],
    );
}

#[test]
fn a_line_before_a_sigsegv_reaches_the_real_stderr_with_a_session_open() {
    last_words_survive("segv", libc::SIGSEGV, &["last words before segv"]);
}
