//! The manhole across the life of a real process: activation by signal, one-shot sessions, the
//! signal mask, `fork`, exit, `daemon_connection`, `redirect_stderr`, the `MANHOLE` variable and
//! re-install. Each test starts its own `bare` or `demo` process (the `App` guard kills and reaps
//! it and removes its socket, even when the test fails).

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use manhole_e2e::{
    App, Client, TempDir, asleep, bare, default_path, dump_sections, is_socket, wait_for_socket,
    wait_until,
};

const SIGUSR1: i32 = libc::SIGUSR1;
const SIGUSR2: i32 = libc::SIGUSR2;

fn wait_for_no_socket(path: &Path) {
    wait_until(|| (!is_socket(path)).then_some(()))
        .unwrap_or_else(|| panic!("{} was never removed", path.display()));
}

/// The kernel names (`comm`, 15 bytes) of the threads of `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

fn count_threads(pid: u32, name: &str) -> usize {
    thread_names(pid).iter().filter(|n| *n == name).count()
}

/// A session: connect, read the greeting up to the prompt, run `info`, leave with `exit`.
fn session_works(path: &Path, pid: u32) {
    let mut client = Client::connect(path).unwrap_or_else(|e| panic!("connect {path:?}: {e}"));
    let greeting = client.skip_greeting();
    assert!(greeting.contains(&format!("pid {pid}")), "{greeting}");
    let info = client.command("info");
    assert!(info.contains(&format!("pid {pid}")), "{info}");
    client.send("exit");
    client.read_to_end();
}

fn signal(pid: u32, signal: i32) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let signal = nix::sys::signal::Signal::try_from(signal).expect("a standard signal");
    nix::sys::signal::kill(pid, signal).expect("signal the process");
}

/// Whether `pid` has a handler (not SIG_DFL/SIG_IGN) for `signal`, from `/proc/<pid>/status`.
fn catches(pid: u32, signal: i32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|l| l.starts_with("SigCgt:"))
        .expect("SigCgt line");
    let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
    mask & (1 << (signal - 1)) != 0
}

/// A process that is not ours to reap (a fork child of the app): killed and its socket removed
/// on drop.
struct Orphan(u32);

impl Drop for Orphan {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = fs::remove_file(default_path(self.0));
    }
}

#[test]
fn activate_on_usr2_listens_only_after_the_signal_and_a_storm_leaves_one_listener() {
    let app = bare(Some("activate_on=USR2"), &[]);
    let pid = app.pid();
    app.wait_for_stderr("Activation is done by signal 12");
    assert!(
        !is_socket(&default_path(pid)),
        "no socket before the signal"
    );
    assert_eq!(count_threads(pid, "mh-listener"), 0);
    for _ in 0..1000 {
        signal(pid, SIGUSR2);
    }
    wait_for_socket(&default_path(pid));
    session_works(&default_path(pid), pid);
    for _ in 0..1000 {
        signal(pid, SIGUSR2);
    }
    session_works(&default_path(pid), pid);
    assert_eq!(
        count_threads(pid, "mh-listener"),
        1,
        "{:?}",
        thread_names(pid)
    );
    assert_eq!(app.stderr().matches("Manhole UDS path").count(), 1);
    assert_eq!(
        app.stderr()
            .matches("Activation signal received: starting the listener")
            .count(),
        1
    );
}

#[test]
fn oneshot_on_opens_one_session_per_signal_and_removes_the_socket() {
    let app = bare(Some("oneshot_on=USR2"), &[]);
    let pid = app.pid();
    let path = default_path(pid);
    app.wait_for_stderr("Oneshot activation is done by signal 12");
    assert!(!is_socket(&path));
    // A clean session.
    signal(pid, SIGUSR2);
    wait_for_socket(&path);
    session_works(&path, pid);
    wait_for_no_socket(&path);
    // A session that ends badly: the client vanishes in the middle of the greeting.
    signal(pid, SIGUSR2);
    wait_for_socket(&path);
    let mut client = Client::connect(&path).unwrap();
    client.send_raw(b"garbage\xff\xfe with no end").unwrap();
    drop(client);
    wait_for_no_socket(&path);
    // And it still works.
    signal(pid, SIGUSR2);
    wait_for_socket(&path);
    session_works(&path, pid);
    wait_for_no_socket(&path);
    assert_eq!(count_threads(pid, "mh-listener"), 0);
}

#[test]
fn the_same_signal_for_activate_on_and_oneshot_on_is_a_configuration_error() {
    let mut app = bare(Some("activate_on=USR2, oneshot_on='SIGUSR2'"), &[]);
    let err = app.wait_for_stderr("the program goes on without a manhole");
    assert!(
        err.contains("You cannot do activation of the Manhole thread on the same signal"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!is_socket(&default_path(app.pid())));
    assert!(!catches(app.pid(), SIGUSR2), "no handler was left behind");
    assert!(app.alive());
}

#[test]
fn dump_on_writes_every_thread_to_stderr_and_the_app_goes_on() {
    let mut app = bare(Some("dump_on=USR1, verbose=False"), &[]);
    let pid = app.pid();
    wait_until(|| catches(pid, SIGUSR1).then_some(())).expect("the dump handler is installed");
    // A dump while a sleeper is still on its way to its sleep shows it in other frames.
    wait_until(|| (asleep(pid, "sleeper-") == 4).then_some(())).expect("the sleepers fall asleep");
    signal(pid, SIGUSR1);
    let dump = app.wait_for_stderr("bare_sleeper_loop");
    // The four sleepers share one stack: one group that counts them all.
    let sleepers: usize = dump_sections(&dump)
        .iter()
        .filter(|s| s.header.contains("\"sleeper-") && s.body.contains("bare_sleeper_loop"))
        .map(|s| s.count)
        .sum();
    assert_eq!(sleepers, 4, "{dump}");
    signal(pid, SIGUSR1);
    wait_until(|| (app.stderr().matches("bare_sleeper_loop").count() >= 2).then_some(()))
        .expect("a second dump");
    assert!(app.alive());
    assert!(session_ok(&mut app));
}

fn session_ok(app: &mut App) -> bool {
    session_works(&default_path(app.pid()), app.pid());
    app.alive()
}

#[test]
fn sigmask_keeps_the_applications_signals_out_of_manhole_threads() {
    let mut app = bare(Some(""), &["--signalfd", "USR1"]);
    let pid = app.pid();
    let path = default_path(pid);
    wait_for_socket(&path);
    // Sessions and dumps run while the storm goes on.
    let busy = {
        let path = path.clone();
        std::thread::spawn(move || {
            for _ in 0..3 {
                let mut client = Client::connect(&path).unwrap();
                client.skip_greeting();
                for _ in 0..5 {
                    client.command("threads");
                }
                client.send("exit");
                client.read_to_end();
            }
        })
    };
    for _ in 0..10_000 {
        signal(pid, SIGUSR1);
    }
    busy.join().expect("the sessions ran");
    assert!(
        app.alive(),
        "a USR1 reached a thread that does not block it"
    );
    let line = app.wait_for_line("usr1 via signalfd count=");
    let count: u64 = line.rsplit('=').next().unwrap().parse().unwrap();
    assert!(count > 0);
    session_works(&path, pid);
    assert!(app.alive());
}

#[test]
fn without_sigmask_a_manhole_thread_takes_the_applications_signal() {
    // The control for the test above: with blocking off, USR1 reaches a manhole thread and its
    // default action ends the process.
    // A process-directed USR1 also wakes the signalfd reader, which may dequeue it first (and
    // print `usr1 via signalfd`): the kernel does not say which of them wins. So signal until
    // one lands on a manhole thread.
    let mut app = bare(Some("sigmask=None"), &["--signalfd", "USR1"]);
    let pid = app.pid();
    wait_for_socket(&default_path(pid));
    wait_until(|| {
        signal(pid, SIGUSR1);
        (!app.alive()).then_some(())
    })
    .expect("a USR1 reached a manhole thread and ended the process");
    let status = app.wait_exit();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(SIGUSR1), "{status:?}");
}

#[test]
fn a_listener_interrupted_in_accept_keeps_serving() {
    // sigmask off, so the listener can take the signal; activate_on gives USR2 a handler.
    let app = bare(Some("sigmask=[], activate_on=USR2"), &[]);
    let pid = app.pid();
    let path = default_path(pid);
    signal(pid, SIGUSR2);
    wait_for_socket(&path);
    let listener = wait_until(|| {
        fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .filter_map(|t| t.ok())
            .find(|t| {
                fs::read_to_string(t.path().join("comm")).is_ok_and(|n| n.trim() == "mh-listener")
            })
            .and_then(|t| t.file_name().to_str()?.parse::<i32>().ok())
    })
    .expect("the listener thread");
    for _ in 0..100 {
        // SAFETY: tgkill takes plain integers; it signals one thread of the app.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_tgkill,
                pid as libc::c_long,
                listener as libc::c_long,
                SIGUSR2,
            )
        };
        assert_eq!(rc, 0, "tgkill: {}", std::io::Error::last_os_error());
    }
    // Delivered (not left pending on the thread), and the listener goes on.
    let status = format!("/proc/{pid}/task/{listener}/status");
    wait_until(|| {
        let text = fs::read_to_string(&status).ok()?;
        let pending = text.lines().find(|l| l.starts_with("SigPnd:"))?;
        let mask = u64::from_str_radix(pending.split_whitespace().nth(1)?, 16).ok()?;
        (mask & (1 << (SIGUSR2 - 1)) == 0).then_some(())
    })
    .expect("the signals were delivered to the listener");
    session_works(&path, pid);
    session_works(&path, pid);
    assert!(
        !app.stderr().contains("Listener stopped"),
        "{}",
        app.stderr()
    );
    assert_eq!(count_threads(pid, "mh-listener"), 1);
}

#[test]
fn with_reinstall_at_fork_a_child_gets_its_own_socket_after_the_delay_and_the_values() {
    let mut app = App::demo(&["--fork", "1", "--reinstall-at-fork"]);
    let parent = app.pid();
    let line = app.wait_for_line("child pid=");
    let child: u32 = line.trim_start_matches("child pid=").parse().unwrap();
    let _orphan = Orphan(child);
    let child_path = default_path(child);
    assert_ne!(child_path, default_path(parent));
    wait_for_socket(&child_path);
    let stderr = app.wait_for_stderr(&format!("Manhole UDS path: {}", child_path.display()));
    assert!(
        stderr.contains("Fork detected. Reinstalling Manhole."),
        "{stderr}"
    );
    assert!(
        stderr.contains("Delaying UDS binding 0.5 seconds"),
        "{stderr}"
    );
    // The child's manhole: its own pid, the registered values and commands.
    let mut client = Client::connect(&child_path).unwrap();
    let greeting = client.skip_greeting();
    assert!(greeting.contains(&format!("pid {child}")), "{greeting}");
    assert_eq!(client.command("get log_filter").trim(), "info");
    assert_eq!(
        client.command("echo from the child").trim(),
        "from the child"
    );
    assert!(client.command("get config").contains("workers: 4"));
    client.send("exit");
    client.read_to_end();
    // The parent is unaffected.
    session_works(app.socket(), parent);
    assert!(is_socket(app.socket()));
    assert!(app.alive());
}

#[test]
fn a_forked_child_with_signal_activation_listens_at_its_own_pid_path() {
    let mut app = bare(
        Some("activate_on=USR2, reinstall_at_fork=1"),
        &["--fork", "1"],
    );
    let line = app.wait_for_line("child pid=");
    let child: u32 = line.trim_start_matches("child pid=").parse().unwrap();
    let _orphan = Orphan(child);
    app.wait_for_stderr(&format!("Manhole[{child}:"));
    let note = app.wait_for_stderr("Fork detected. Not listening in the child");
    assert!(
        note.contains(&default_path(child).display().to_string()),
        "{note}"
    );
    // The child re-armed its signal thread; it listens only when told to.
    wait_until(|| (count_threads(child, "mh-signal") == 1).then_some(()))
        .expect("the child's signal thread");
    assert!(!is_socket(&default_path(child)));
    signal(child, SIGUSR2);
    wait_for_socket(&default_path(child));
    session_works(&default_path(child), child);
    assert!(!is_socket(app.socket()), "the parent was not activated");
}

#[test]
fn a_child_of_an_app_with_a_custom_socket_path_does_not_listen_there() {
    let dir = TempDir::new();
    let path = dir.join("app.sock");
    let mut app = App::start(
        "demo",
        &["--socket-path", path.to_str().unwrap(), "--fork", "1"],
        &[],
    );
    app.wait_for_line("manhole listening on ");
    app.socket = Some(path.clone());
    let line = app.wait_for_line("child pid=");
    let child: u32 = line.trim_start_matches("child pid=").parse().unwrap();
    let _orphan = Orphan(child);
    let note = app.wait_for_stderr("Not listening in the child: the user socket path");
    assert!(note.contains("Using user socket path"), "{note}");
    assert!(!is_socket(&default_path(child)));
    // The parent's socket is still its own and works.
    session_works(&path, app.pid());
}

#[test]
fn a_storm_of_fork_exec_children_leaves_no_socket_and_no_deadlock() {
    let mut app = bare(Some(""), &["--threads", "8", "--fork-exec", "100"]);
    let line = app.wait_for_line("fork-exec done n=100");
    let pids: Vec<u32> = line
        .split("pids=")
        .nth(1)
        .unwrap()
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 100);
    // Every child has exited (bare reaped them all), so none can bind a socket any more; one
    // that bound before its exec logged it on the stderr they share with bare, ahead of bare's
    // own `fork-exec done` line there. (The log is the evidence: pids are reused, and another
    // test's process may own /tmp/manhole-<pid> by now.)
    let stderr = app.wait_for_stderr("fork-exec done n=100");
    for pid in &pids {
        let bound = format!("Manhole UDS path: {}", default_path(*pid).display());
        assert!(
            !stderr.contains(&bound),
            "child {pid} bound a socket before it exec'd: {stderr}"
        );
    }
    assert!(!stderr.contains("Cannot reinstall"), "{stderr}");
    session_works(app.socket(), app.pid());
}

#[test]
fn the_socket_is_removed_when_main_returns_and_after_process_exit() {
    for (flag, code) in [("--return-when", 0), ("--exit-when", 3)] {
        let dir = TempDir::new();
        let trigger = dir.join("go");
        let mut app = bare(Some(""), &[flag, trigger.to_str().unwrap()]);
        let path = default_path(app.pid());
        wait_for_socket(&path);
        fs::write(&trigger, b"").unwrap();
        let status = app.wait_exit();
        assert_eq!(status.code(), Some(code), "{flag}: {status:?}");
        assert!(!is_socket(&path), "{flag}: the socket is left");
    }
}

#[test]
fn cleanup_on_sigterm_removes_the_socket_and_dies_of_sigterm() {
    let mut app = bare(Some("cleanup_on_sigterm=True"), &[]);
    let path = default_path(app.pid());
    wait_for_socket(&path);
    signal(app.pid(), libc::SIGTERM);
    let status = app.wait_exit();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert!(!is_socket(&path));
}

const CLOSING_LINE: &str = "manhole: the process is exiting, closing the session";

/// Waits until the process has a `mh-worker-<n>` thread (a registered command is running).
fn wait_for_worker(pid: u32) {
    wait_until(|| {
        thread_names(pid)
            .iter()
            .any(|n| n.starts_with("mh-worker-"))
            .then_some(())
    })
    .expect("the command never started");
}

/// `bare` (with `MANHOLE=manhole`) that exits on `flag` (`--exit-when`, `--return-when`) once
/// [`Exiting::trigger`] is called, with a session open at the prompt.
struct Exiting {
    app: App,
    client: Client,
    path: PathBuf,
    _dir: TempDir,
    trigger: PathBuf,
}

impl Exiting {
    fn start(manhole: &str, flag: &str) -> Exiting {
        let dir = TempDir::new();
        let trigger = dir.join("go");
        let app = bare(Some(manhole), &[flag, trigger.to_str().unwrap()]);
        let path = default_path(app.pid());
        wait_for_socket(&path);
        let mut client = Client::connect(&path).unwrap();
        client.skip_greeting();
        Exiting {
            app,
            client,
            path,
            _dir: dir,
            trigger,
        }
    }

    /// Asks the process to exit; returns its exit code and how long the exit took.
    fn trigger(&mut self) -> (Option<i32>, Duration) {
        let asked = Instant::now();
        fs::write(&self.trigger, b"").unwrap();
        let status = self.app.wait_exit();
        (status.code(), asked.elapsed())
    }
}

#[test]
fn exit_and_return_from_main_never_wait_for_an_idle_session_which_gets_a_closing_line() {
    for (flag, code) in [("--exit-when", 3), ("--return-when", 0)] {
        // An operator who left the session open at the prompt.
        let mut exiting = Exiting::start("", flag);
        let (exited, took) = exiting.trigger();
        assert_eq!(exited, Some(code), "{flag}");
        assert!(took < Duration::from_secs(5), "{flag}: exit took {took:?}");
        let rest = exiting.client.read_to_end();
        assert!(rest.contains(CLOSING_LINE), "{flag}: {rest:?}");
        assert!(!is_socket(&exiting.path), "{flag}: the socket is left");
        eprintln!("{flag} with an idle session open: exited in {took:?}");
    }
}

#[test]
fn exit_lets_a_command_under_way_answer_before_the_closing_line() {
    let mut exiting = Exiting::start("", "--exit-when");
    exiting.client.send("nap 1000");
    wait_for_worker(exiting.app.pid());
    let (exited, took) = exiting.trigger();
    assert_eq!(exited, Some(3));
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    let rest = exiting.client.read_to_end();
    let answered = rest
        .find("napped 1000")
        .unwrap_or_else(|| panic!("{rest:?}"));
    let closed = rest
        .find(CLOSING_LINE)
        .unwrap_or_else(|| panic!("{rest:?}"));
    assert!(answered < closed, "{rest:?}");
    assert!(
        exiting
            .app
            .stderr()
            .contains("waiting up to 2 s for 1 session command(s) under way")
    );
}

#[test]
fn exit_waits_for_a_long_command_no_longer_than_its_grace() {
    let mut exiting = Exiting::start("", "--exit-when");
    exiting.client.send("nap 60000");
    wait_for_worker(exiting.app.pid());
    let (exited, took) = exiting.trigger();
    assert_eq!(exited, Some(3));
    // The grace is 2 s, then half a second for the closing lines.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "exit took {took:?}"
    );
    assert!(!exiting.client.read_to_end().contains("napped"));
    assert!(!is_socket(&exiting.path));
}

#[test]
fn a_command_that_calls_exit_is_not_waited_for_by_its_own_exit() {
    // `bye 4` runs `std::process::exit(4)` on the command's worker while its session waits for
    // it: the exit must not give that session the grace (nor wait for it to close).
    let mut exiting = Exiting::start("", "--exit-when");
    let asked = Instant::now();
    exiting.client.send("bye 4");
    assert_eq!(exiting.app.wait_exit().code(), Some(4));
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(1500), "exit took {took:?}");
    assert!(!exiting.app.stderr().contains("waiting up to"));
    assert!(!is_socket(&exiting.path));
    eprintln!("bye 4 from a session: exited in {took:?}");
}

#[test]
fn with_daemon_connection_exit_does_not_wait_for_sessions() {
    let mut exiting = Exiting::start("daemon_connection=True", "--exit-when");
    let (exited, _) = exiting.trigger();
    assert_eq!(exited, Some(3));
    // No grace and no closing line: the connection ends with the process.
    assert!(!exiting.client.read_to_end().contains(CLOSING_LINE));
    assert!(!is_socket(&exiting.path));
    assert!(!exiting.app.stderr().contains("Exiting:"));
}

fn stderr_link(pid: u32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/fd/2")).expect("read fd 2")
}

#[test]
fn redirect_stderr_shows_the_processs_stderr_live_in_the_session() {
    let app = bare(Some(""), &["--stderr-every-ms", "50"]);
    let pid = app.pid();
    let path = default_path(pid);
    wait_for_socket(&path);
    let original = stderr_link(pid);
    let mut client = Client::connect(&path).unwrap();
    client.skip_greeting();
    // Nothing is sent: the ticks arrive on their own.
    client.read_until("tick ");
    client.read_until("\n");
    let tick = client.read_until("\n");
    assert!(tick.starts_with("tick "), "{tick:?}");
    let seen: u64 = tick.trim().trim_start_matches("tick ").parse().unwrap();
    // The original stderr got it too.
    wait_until(|| {
        app.stderr()
            .contains(&format!("tick {seen}\n"))
            .then_some(())
    })
    .expect("the original stderr keeps everything");
    assert_ne!(
        stderr_link(pid),
        original,
        "fd 2 is teed during the session"
    );
    // The manhole's own log lines do not come back into the session.
    let answer = client.command("info");
    assert!(!answer.contains("Manhole["), "{answer}");
    client.send("exit");
    client.read_to_end();
    wait_until(|| (stderr_link(pid) == original).then_some(()))
        .expect("fd 2 is restored when the last session ends");
    let before = app.stderr().matches("tick ").count();
    wait_until(|| (app.stderr().matches("tick ").count() > before + 2).then_some(()))
        .expect("stderr still works after the session");
}

#[test]
fn redirect_stderr_false_keeps_stderr_out_of_the_session() {
    let app = bare(Some("redirect_stderr=False"), &["--stderr-every-ms", "20"]);
    let path = default_path(app.pid());
    wait_for_socket(&path);
    let original = stderr_link(app.pid());
    let mut client = Client::connect(&path).unwrap();
    let mut seen = client.skip_greeting();
    for _ in 0..5 {
        seen += &client.command("info");
    }
    assert!(!seen.contains("tick "), "{seen}");
    assert_eq!(stderr_link(app.pid()), original);
}

fn stdout_link(pid: u32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/fd/1")).expect("read fd 1")
}

/// The numbers of the `tock <n>` lines the app wrote to its real stdout so far.
fn tocks(app: &App) -> Vec<u64> {
    app.seen
        .iter()
        .filter_map(|l| l.strip_prefix("tock ")?.parse().ok())
        .collect()
}

#[test]
fn redirect_stdout_shows_stdout_live_and_the_real_stdout_keeps_every_line_in_order() {
    let mut app = bare(Some(""), &["--stdout-every-ms", "3"]);
    let pid = app.pid();
    let path = default_path(pid);
    wait_for_socket(&path);
    let original = stdout_link(pid);
    let mut last_seen = 0;
    // Three sessions in a row, each seeing the tocks live without sending anything.
    for _ in 0..3 {
        let mut client = Client::connect(&path).unwrap();
        client.skip_greeting();
        client.read_until("tock ");
        client.read_until("\n");
        let tock = client.read_until("\n");
        assert!(tock.starts_with("tock "), "{tock:?}");
        last_seen = tock
            .trim()
            .trim_start_matches("tock ")
            .parse::<u64>()
            .unwrap();
        assert_ne!(
            stdout_link(pid),
            original,
            "fd 1 is teed during the session"
        );
        client.send("exit");
        client.read_to_end();
        wait_until(|| (stdout_link(pid) == original).then_some(()))
            .expect("fd 1 is restored when the last session ends");
    }
    // The real stdout got every line, in order, before, during and after the sessions.
    app.wait_for_line(&format!("tock {}", last_seen + 100));
    let seen = tocks(&app);
    let expected: Vec<u64> = (0..seen.len() as u64).collect();
    assert_eq!(seen, expected, "the real stdout lost or reordered a line");
}

#[test]
fn redirect_stdout_false_keeps_stdout_out_of_the_session() {
    let mut app = bare(Some("redirect_stdout=False"), &["--stdout-every-ms", "10"]);
    let path = default_path(app.pid());
    wait_for_socket(&path);
    let original = stdout_link(app.pid());
    let mut client = Client::connect(&path).unwrap();
    let mut seen = client.skip_greeting();
    for _ in 0..5 {
        seen += &client.command("info");
    }
    let after = tocks(&app).len();
    app.wait_for_line(&format!("tock {}", after + 5));
    seen += &client.command("info");
    assert!(!seen.contains("tock "), "{seen}");
    assert_eq!(stdout_link(app.pid()), original);
}

#[test]
fn log_lines_to_stdout_do_not_echo_into_a_session_that_shows_stdout() {
    let mut app = bare(Some("verbose_destination=1"), &["--stdout-every-ms", "20"]);
    let path = default_path(app.pid());
    wait_for_socket(&path);
    let mut first = Client::connect(&path).unwrap();
    first.skip_greeting();
    first.read_until("tock ");
    // A second session is logged ("Accepted session ...") on fd 1, which the first one shows.
    let mut second = Client::connect(&path).unwrap();
    second.skip_greeting();
    app.wait_for_line("Manhole[");
    let seen = app.seen.iter().filter(|l| l.starts_with("tock ")).count();
    app.wait_for_line(&format!("tock {}", seen + 3));
    let shown = first.command("info");
    assert!(shown.contains("tock "), "{shown}");
    assert!(!shown.contains("Manhole["), "{shown}");
}

#[test]
fn a_full_stdout_pipe_blocks_only_the_application_not_the_sessions() {
    // stdout a small pipe nobody reads: the tocker fills it and then waits in its write, as it
    // would without a manhole; sessions come and go regardless.
    let (keep_reader, writer) = nix::unistd::pipe().expect("pipe");
    // SAFETY: F_SETPIPE_SZ takes an int and changes only the pipe's capacity.
    unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    let app = App::start_with(
        &manhole_e2e::bin("bare"),
        &["--stdout-every-ms", "1"],
        &[("MANHOLE", "")],
        |command| {
            command.stdout(std::process::Stdio::from(writer));
        },
    );
    let path = default_path(app.pid());
    wait_for_socket(&path);
    let full = || {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through a pointer to a live local.
        unsafe { libc::ioctl(keep_reader.as_raw_fd(), libc::FIONREAD, &mut queued) };
        (queued >= 4096 - 64).then_some(())
    };
    wait_until(full).expect("the tocker fills its stdout");
    for _ in 0..3 {
        let mut client = Client::connect(&path).unwrap();
        let greeting = client.skip_greeting();
        assert!(greeting.contains("bare_sleeper_loop"), "{greeting}");
        let info = client.command("info");
        assert!(info.contains(&format!("pid {}", app.pid())), "{info}");
        client.send("exit");
        client.read_to_end();
    }
    drop(keep_reader);
}

#[test]
fn manhole_variable_python_style_bare_style_unset_and_bad() {
    // python-manhole's keyword style, quiet.
    let app = bare(Some(r#"oneshot_on="USR2", verbose=False"#), &[]);
    wait_until(|| catches(app.pid(), SIGUSR2).then_some(())).expect("USR2 is hooked");
    signal(app.pid(), SIGUSR2);
    wait_for_socket(&default_path(app.pid()));
    session_works(&default_path(app.pid()), app.pid());
    wait_for_no_socket(&default_path(app.pid()));
    assert!(!app.stderr().contains("Manhole["), "{}", app.stderr());
    drop(app);
    // Bare words.
    let app = bare(Some("activate_on=USR2,verbose=false"), &[]);
    wait_until(|| catches(app.pid(), SIGUSR2).then_some(())).expect("USR2 is hooked");
    assert!(!is_socket(&default_path(app.pid())));
    signal(app.pid(), SIGUSR2);
    wait_for_socket(&default_path(app.pid()));
    session_works(&default_path(app.pid()), app.pid());
    drop(app);
    // Unset: nothing at all.
    let app = bare(None, &[]);
    assert!(!is_socket(&default_path(app.pid())));
    assert!(
        !thread_names(app.pid())
            .iter()
            .any(|n| n.starts_with("manhole")),
        "{:?}",
        thread_names(app.pid())
    );
    assert_eq!(app.stderr(), "");
    drop(app);
    // A bad value: one line, and the program runs without a manhole.
    let mut app = bare(Some("verbose=maybe"), &[]);
    let err = app.wait_for_stderr("\n");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("manhole: not installed from MANHOLE="),
        "{err}"
    );
    assert!(err.contains("verbose=\"maybe\" is not a boolean"), "{err}");
    assert!(app.alive());
    assert!(!is_socket(&default_path(app.pid())));
}

#[test]
fn strict_false_takes_over_a_manhole_installed_from_the_variable() {
    // Strict (the default): demo's own install fails.
    let mut strict = App::start("demo", &[], &[("MANHOLE", "oneshot_on=USR2")]);
    strict.socket = Some(default_path(strict.pid()));
    let status = strict.wait_exit();
    assert_eq!(status.code(), Some(1));
    assert!(
        strict.stderr().contains("Manhole already installed!"),
        "{}",
        strict.stderr()
    );
    // strict(false): the one-shot manhole is replaced by demo's listener.
    let mut app = App::start("demo", &["--not-strict"], &[("MANHOLE", "oneshot_on=USR2")]);
    let line = app.wait_for_line("manhole listening on ");
    app.socket = Some(PathBuf::from(
        line.trim_start_matches("manhole listening on "),
    ));
    let stderr = app.wait_for_stderr("Replacing the installed manhole");
    assert!(
        stderr.contains("Oneshot activation is done by signal 12"),
        "{stderr}"
    );
    session_works(app.socket(), app.pid());
    assert!(
        !catches(app.pid(), SIGUSR2),
        "the replaced manhole's USR2 handler is gone (SIG_DFL restored)"
    );
    let mut client = Client::connect(app.socket()).unwrap();
    client.skip_greeting();
    assert_eq!(client.command("get log_filter").trim(), "info");
}

#[test]
fn handle_oneshot_serves_one_session_from_the_applications_thread() {
    let mut app = App::start("demo", &["--handle-oneshot"], &[]);
    let line = app.wait_for_line("manhole oneshot at ");
    let path = PathBuf::from(line.trim_start_matches("manhole oneshot at "));
    app.socket = Some(path.clone());
    assert_eq!(path, default_path(app.pid()));
    assert_eq!(count_threads(app.pid(), "mh-listener"), 0);
    wait_for_socket(&path);
    session_works(&path, app.pid());
    app.wait_for_line("oneshot served");
    // The loop in main calls it again: a fresh socket, a second session.
    wait_for_socket(&path);
    session_works(&path, app.pid());
    assert_eq!(count_threads(app.pid(), "mh-listener"), 0);
}

/// The blocked-signal mask of the thread of `pid` whose kernel name is `name`.
fn blocked_in(pid: u32, name: &str) -> u64 {
    let task = wait_until(|| {
        fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .filter_map(|t| t.ok())
            .find(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|n| n.trim() == name))
    })
    .unwrap_or_else(|| panic!("no thread {name}"));
    let status = fs::read_to_string(task.path().join("status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

#[test]
fn sigmask_sets_exactly_what_manhole_threads_block() {
    let bit = |s: i32| 1u64 << (s - 1);
    let dump_signal = libc::SIGURG;
    let faults = [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGTRAP,
        libc::SIGSYS,
    ];
    let app = bare(Some(""), &[]);
    wait_for_socket(&default_path(app.pid()));
    let all = blocked_in(app.pid(), "mh-listener");
    for s in [SIGUSR1, SIGUSR2, libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
        assert_ne!(all & bit(s), 0, "signal {s} not blocked: {all:x}");
    }
    assert_ne!(
        all & bit(dump_signal),
        0,
        "the dump signal is blocked too: {all:x}"
    );
    for s in faults {
        assert_eq!(all & bit(s), 0, "fault signal {s} blocked: {all:x}");
    }
    drop(app);
    // An explicit list, even an empty one: that list, plus the dump signal, never a fault.
    let app = bare(Some("sigmask=[USR1, SEGV, ILL]"), &[]);
    wait_for_socket(&default_path(app.pid()));
    let expected = bit(SIGUSR1) | bit(dump_signal);
    assert_eq!(blocked_in(app.pid(), "mh-listener"), expected);
    // Session threads get it too. (Read until it settles: right after the prompt the session
    // thread is still attaching to the stdout/stderr tee, and a mask read then saw more bits
    // blocked, once, under load.)
    let mut client = Client::connect(&default_path(app.pid())).unwrap();
    client.skip_greeting();
    let settled = wait_until(|| {
        let mask = blocked_in(app.pid(), "mh-session-1");
        (mask == expected).then_some(mask)
    });
    assert_eq!(settled, Some(expected));
}

#[test]
fn the_applications_own_handler_keeps_running_when_the_manhole_shares_its_signal() {
    let mut app = App::start(
        "demo",
        &["--own-handler", "USR2", "--activate-on", "USR2"],
        &[],
    );
    app.wait_for_line("manhole waiting for 12");
    app.socket = Some(default_path(app.pid()));
    assert!(!is_socket(&default_path(app.pid())));
    signal(app.pid(), SIGUSR2);
    app.wait_for_line("own handler count=1");
    wait_for_socket(&default_path(app.pid()));
    session_works(&default_path(app.pid()), app.pid());
    signal(app.pid(), SIGUSR2);
    app.wait_for_line("own handler count=2");
    assert!(app.alive());
}

#[test]
fn a_child_forked_during_a_session_gets_the_original_stderr_back() {
    let dir = TempDir::new();
    let trigger = dir.join("fork");
    let mut app = bare(
        Some(""),
        &[
            "--stderr-every-ms",
            "50",
            "--fork",
            "1",
            "--reinstall-after-fork",
            "--fork-when",
            trigger.to_str().unwrap(),
        ],
    );
    let parent = app.pid();
    let path = default_path(parent);
    wait_for_socket(&path);
    let original = stderr_link(parent);
    let mut client = Client::connect(&path).unwrap();
    client.skip_greeting();
    client.read_until("tick ");
    let teed = stderr_link(parent);
    assert_ne!(teed, original);
    fs::write(&trigger, b"").unwrap();
    let line = app.wait_for_line("child pid=");
    let child: u32 = line.trim_start_matches("child pid=").parse().unwrap();
    let _orphan = Orphan(child);
    // The child has no pump and no session: its fd 2 is the original stderr again.
    wait_until(|| (stderr_link(child) == original).then_some(()))
        .unwrap_or_else(|| panic!("child fd 2 is {:?}", stderr_link(child)));
    // The parent's session still shows the ticks, and the child gets its own manhole.
    client.read_until("tick ");
    assert_eq!(stderr_link(parent), teed);
    wait_for_socket(&default_path(child));
    session_works(&default_path(child), child);
    client.send("exit");
    client.read_to_end();
    wait_until(|| (stderr_link(parent) == original).then_some(()))
        .expect("the parent's fd 2 is restored");
}

#[test]
fn with_patch_fork_off_a_child_has_no_manhole() {
    let mut app = bare(
        Some("patch_fork=False, reinstall_at_fork=1, reinstall_delay=0.1"),
        &["--fork", "1", "--reinstall-after-fork"],
    );
    let line = app.wait_for_line("child pid=");
    let child: u32 = line.trim_start_matches("child pid=").parse().unwrap();
    let _orphan = Orphan(child);
    app.wait_for_stderr("reinstall_after_fork failed: no manhole to bring back");
    // Well past the delay: nothing was started in the child.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!is_socket(&default_path(child)));
    assert!(!app.stderr().contains("Fork detected"), "{}", app.stderr());
    assert!(
        !thread_names(child).iter().any(|n| n.starts_with("manhole")),
        "{:?}",
        thread_names(child)
    );
    session_works(app.socket(), app.pid());
}

#[test]
fn with_the_defaults_a_child_is_single_threaded_unshare_works_and_reinstall_brings_it_back() {
    // A child that enters a user namespace right after fork (sandboxes, `pre_exec`) succeeds.
    let mut app = bare(Some(""), &["--fork-unshare", "20"]);
    let line = app.wait_for_line("fork-unshare done");
    assert_eq!(line, "fork-unshare done n=20 ok=20 errno=0");
    // With reinstall_at_fork the fork handler's thread makes it fail (EINVAL), as documented.
    let mut eager = bare(Some("reinstall_at_fork=1"), &["--fork-unshare", "5"]);
    let line = eager.wait_for_line("fork-unshare done");
    assert_eq!(line, "fork-unshare done n=5 ok=0 errno=22");
    // A child that keeps running gets its manhole when it asks, with the registered command.
    let mut app = bare(Some(""), &["--fork", "1", "--reinstall-after-fork"]);
    let line = app.wait_for_line("child pid=");
    let child: u32 = line.trim_start_matches("child pid=").parse().unwrap();
    let _orphan = Orphan(child);
    wait_for_socket(&default_path(child));
    let mut client = Client::connect(&default_path(child)).unwrap();
    let greeting = client.skip_greeting();
    assert!(greeting.contains(&format!("pid {child}")), "{greeting}");
    assert_eq!(client.command("echo child").trim(), "child");
    client.send("exit");
    client.read_to_end();
    session_works(app.socket(), app.pid());
}

#[test]
fn without_reinstall_a_forked_child_gets_no_thread() {
    let mut app = bare(Some("reinstall_delay=0.1"), &["--fork", "1"]);
    let line = app.wait_for_line("child pid=");
    let child: u32 = line.trim_start_matches("child pid=").parse().unwrap();
    let _orphan = Orphan(child);
    // Well past the delay: the child is its one thread, with no socket.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(thread_names(child), vec!["bare".to_string()]);
    assert!(!is_socket(&default_path(child)));
}

/// Starts `bare --daemonize` with `MANHOLE` and returns the app and the daemon's pid.
fn daemon(manhole: &str, args: &[&str]) -> (App, Orphan) {
    let mut flags = vec!["--daemonize"];
    flags.extend_from_slice(args);
    let mut app = bare(Some(manhole), &flags);
    let line = app.wait_for_line("daemon pid=");
    let pid: u32 = line.trim_start_matches("daemon pid=").parse().unwrap();
    app.wait_for_line("daemonized");
    (app, Orphan(pid))
}

#[test]
fn a_double_forking_daemon_listens_at_its_own_path_after_the_delay() {
    // fork, setsid, fork, and the middle process exits at once, while its own reinstall
    // thread still sleeps out the delay.
    let (app, daemon) = daemon("reinstall_at_fork=1, reinstall_delay=0.3", &[]);
    let path = default_path(daemon.0);
    wait_for_socket(&path);
    app.wait_for_stderr(&format!("Manhole UDS path: {}", path.display()));
    session_works(&path, daemon.0);
    // It is a daemon indeed: a session of its own (the middle one's), not the app's child.
    let session_and_parent = |pid: u32| {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<String> = (stat.rsplit(')').next().unwrap().split_whitespace())
            .map(String::from)
            .collect();
        (fields[3].clone(), fields[1].clone())
    };
    let (session, parent) = session_and_parent(daemon.0);
    assert_ne!(session, session_and_parent(app.pid()).0);
    assert_ne!(parent, app.pid().to_string());
    session_works(app.socket(), app.pid());
}

#[test]
fn a_double_forking_daemon_that_asks_gets_its_manhole() {
    let (_app, daemon) = daemon("", &["--reinstall-after-fork"]);
    let path = default_path(daemon.0);
    wait_for_socket(&path);
    session_works(&path, daemon.0);
}

#[test]
fn a_child_forked_during_a_dump_in_the_parent_says_so_instead_of_waiting_on_its_locks() {
    // The parent's first dump loads the debug info (hundreds of milliseconds in a debug build),
    // so a fork asked for once its banner has started lands inside it; a fork that missed it
    // gives an ordinary child, and the scenario is tried again.
    for _attempt in 0..3 {
        let dir = TempDir::new();
        let trigger = dir.join("fork");
        let mut app = bare(
            Some(""),
            &[
                "--fork",
                "1",
                "--reinstall-after-fork",
                "--fork-when",
                trigger.to_str().unwrap(),
            ],
        );
        let path = default_path(app.pid());
        wait_for_socket(&path);
        let mut parent = Client::connect(&path).unwrap();
        parent.read_until("; type \"help\" for the commands.\n");
        fs::write(&trigger, b"").unwrap();
        let line = app.wait_for_line("child pid=");
        let child: u32 = line.trim_start_matches("child pid=").parse().unwrap();
        let _orphan = Orphan(child);
        assert!(
            parent.skip_greeting().contains("Thread "),
            "the parent dumps"
        );
        wait_for_socket(&default_path(child));
        let started = std::time::Instant::now();
        let mut client = Client::connect(&default_path(child)).unwrap();
        let greeting = client.skip_greeting();
        if greeting.contains("Thread ") {
            continue; // The fork came after the parent's dump.
        }
        // Without the fix the child waited 10 s for a dump lock its parent's thread held, then
        // said "another stack dump has been running for more than 10 s", at every dump.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}: {greeting}",
            started.elapsed()
        );
        assert!(
            greeting.contains("no stack dumps in this process: it was forked while its parent"),
            "{greeting}"
        );
        // The error is one line, and the prompt comes right after it.
        assert!(greeting.ends_with("\n"), "{greeting:?}");
        assert!(!greeting.contains("\n\n"), "{greeting:?}");
        assert!(
            client
                .command("threads")
                .contains("no stack dumps in this process")
        );
        assert_eq!(client.command("echo still serving").trim(), "still serving");
        app.wait_for_stderr("Fork detected during a stack dump in the parent");
        // The parent is unaffected.
        assert!(parent.command("threads").contains("Thread "));
        return;
    }
    panic!("three forks in a row missed the parent's dump");
}

#[test]
fn an_application_reading_the_dump_signal_through_a_signalfd_gets_every_one() {
    // bare blocks SIGURG in main, before its threads start, and reads it with a signalfd; the
    // manhole was installed before main from MANHOLE. Every `kill -URG` must reach the signalfd:
    // none may be taken (and dropped) by a manhole thread or by the dump handler.
    let mut app = bare(Some(""), &["--signalfd", "URG"]);
    let pid = app.pid();
    let path = default_path(pid);
    wait_for_socket(&path);
    // SIGURG is not queued: one pending instance at a time, so send each once the last is read.
    for n in 1..=20 {
        signal(pid, libc::SIGURG);
        app.wait_for_line(&format!("urg via signalfd count={n}"));
    }
    // A dump still works: the application's threads block the signal and are listed from /proc,
    // the manhole's own threads too, and the dumping session thread copies its own stack.
    let mut client = Client::connect(&path).unwrap();
    client.send("exec");
    assert!(client.read_until("\n").contains("\"ok\":true"));
    client.send("threads");
    let frame: serde_json::Value = serde_json::from_str(&client.read_until("\n")).unwrap();
    assert_eq!(frame["ok"], true, "{frame}");
    let dump = &frame["data"];
    let threads = dump["threads"].as_array().unwrap();
    for name in ["sleeper-0", "signalfd-reader", "mh-listener"] {
        let thread = threads
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {dump}"));
        assert_eq!(thread["method"], "proc", "{thread}");
        assert!(
            thread["note"]
                .as_str()
                .is_some_and(|n| n.starts_with("signal blocked")),
            "{thread}"
        );
    }
    assert!(
        threads.iter().any(|t| t["method"] == "self"),
        "the dumping thread: {dump}"
    );
    // And the instances sent after the dump arrive too.
    for n in 21..=25 {
        signal(pid, libc::SIGURG);
        app.wait_for_line(&format!("urg via signalfd count={n}"));
    }
    assert!(app.alive());
}
