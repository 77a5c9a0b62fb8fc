//! `manhole-cli` end to end: the real client binary against real `demo` processes (and, for the
//! error paths a healthy server never shows, small servers played by the test itself).
//!
//! Covered: piped sessions, one-shot commands with and without `--json`, custom socket paths, an
//! exec-handler server, a closed stdout or stderr, signal refusal (the target stays alive; crash
//! signals are refused even when caught), `-s USR2` starting `bare`'s signal-activated manhole, a
//! caught signal followed by a timeout, connection retries that do not spin, `--list`/`--prune`
//! (only dead sockets, only the user's own), every error exit code (5, 6 and the socket-owner
//! check need root to run the client as, or chown to, another uid), and interactive sessions through a pseudo-terminal (line editing, history, Ctrl-C at
//! the prompt and while waiting, Ctrl-D, `exit`, live output while typing, the server going
//! away).
//!
//! Every process a test starts is owned by a guard ([`App`], [`Proc`], [`Pty`]) that kills and
//! reaps it on drop; sockets live in per-test [`TempDir`]s or are removed by [`App`]. Waits are
//! for conditions (a line, some text, an exit) with the harness's generous timeout, never sleeps.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use manhole_e2e::{
    App, Client, TIMEOUT, TempDir, bin, cli_command as cli, run_with_timeout, wait_until,
};
use serde_json::Value;

const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------------------------
// Helpers local to the client tests

/// What one run of the client did.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `command` to its end (killed after the harness timeout) and collects what it did.
fn run(command: &mut Command) -> Ran {
    let output = run_with_timeout(command);
    Ran {
        code: output
            .status
            .code()
            .unwrap_or_else(|| panic!("the client died of a signal: {:?}", output.status)),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the client with `args` and stdin from nowhere.
fn run_cli(args: &[&str]) -> Ran {
    run(&mut cli(args))
}

/// Asserts the exit code and that stderr contains `needle`, showing everything on failure.
fn assert_fails(ran: &Ran, code: i32, needle: &str) {
    assert_eq!(ran.code, code, "wrong exit code: {ran:#?}");
    assert!(
        ran.stderr.contains(needle),
        "stderr lacks {needle:?}: {ran:#?}"
    );
    assert!(!ran.stderr.contains("panicked"), "{ran:#?}");
}

/// Runs the client with `stdin` fed from a file holding `input`.
fn run_piped(dir: &TempDir, input: &str, args: &[&str]) -> Ran {
    let path = dir.join("stdin.txt");
    fs::write(&path, input).unwrap();
    run(cli(args).stdin(File::open(&path).unwrap()))
}

/// A helper process (not a workspace binary), killed and reaped on drop.
struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `sh -c script` and waits for it to print `ready`.
    fn sh(script: &str) -> Proc {
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sh");
        let stdout = child.stdout.take().unwrap();
        let proc = Proc { child };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        loop {
            match rx.recv_timeout(TIMEOUT) {
                Ok(line) if line == "ready" => return proc,
                Ok(_) => {}
                Err(_) => panic!("the helper shell never said ready"),
            }
        }
    }

    /// A process that handles no signal at all.
    fn sleeper() -> Proc {
        let child = Command::new("sleep")
            .arg("300")
            .stdin(Stdio::null())
            .spawn()
            .expect("start sleep");
        Proc { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shell that catches SIGUSR2 (and only says so) but has no manhole.
fn usr2_catcher() -> Proc {
    Proc::sh("trap 'echo caught' USR2; echo ready; while :; do sleep 0.05; done")
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("run true");
    let pid = child.id();
    child.wait().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    pid
}

/// A server played by the test: accepts one connection on `path`, reads the client's lines
/// until end of input, and answers with `script` (then closes).
fn fake_server(path: &Path, script: &'static [u8]) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(path).expect("bind the fake server");
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut request = Vec::new();
        let _ = stream.read_to_end(&mut request);
        let _ = stream.write_all(script);
    })
}

/// Whether this test process may run the client as another uid.
fn can_switch_uid() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipped: running the client as another uid needs root");
        false
    }
}

// ---------------------------------------------------------------------------------------------
// One-shot commands

#[test]
fn one_shot_prints_only_the_answer() {
    let app = App::demo(&[]);
    let pid = app.pid().to_string();
    let ran = run_cli(&[&pid, "get", "requests"]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(ran.stderr.is_empty(), "{ran:#?}");
    let count: u64 = ran
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a count: {ran:#?}"));
    assert!(
        ran.stdout.ends_with('\n') && ran.stdout.lines().count() == 1,
        "{ran:#?}"
    );
    let _ = count;

    let ran = run_cli(&[&pid, "echo", "hello", "world"]);
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "hello world\n"),
        "{ran:#?}"
    );

    // No banner and no dump, even for the dump command itself.
    let ran = run_cli(&[&pid, "threads", "--all"]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(!ran.stdout.contains("Manhole "), "{ran:#?}");
    assert!(ran.stdout.starts_with("Threads: "), "{ran:#?}");
    assert!(
        ran.stdout.contains("\"worker-0\"") && ran.stdout.contains("\"worker-3\""),
        "{ran:#?}"
    );
}

#[test]
fn one_shot_set_then_get_and_the_default_path_form() {
    let app = App::demo(&[]);
    let pid = app.pid().to_string();
    let path = format!("/tmp/manhole-{pid}");
    let ran = run_cli(&[&path, "set", "log_filter", "debug"]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(
        ran.stdout.contains("info") && ran.stdout.contains("debug"),
        "{ran:#?}"
    );
    let ran = run_cli(&[&pid, "get", "log_filter"]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(ran.stdout.contains("debug"), "{ran:#?}");
}

#[test]
fn one_shot_json_prints_the_data() {
    let app = App::demo(&[]);
    let pid = app.pid().to_string();
    let ran = run_cli(&["--json", &pid, "get", "requests"]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert_eq!(ran.stdout.lines().count(), 1, "one line of JSON: {ran:#?}");
    let data: Value = serde_json::from_str(&ran.stdout).expect("JSON on stdout");
    assert_eq!(data["name"], "requests", "{data}");
    assert!(
        data["value"].as_str().unwrap().parse::<u64>().is_ok(),
        "{data}"
    );

    let ran = run_cli(&["--json", &pid, "threads"]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    let dump: Value = serde_json::from_str(&ran.stdout).expect("JSON on stdout");
    let names: Vec<&str> = dump["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for i in 0..4 {
        assert!(names.contains(&format!("worker-{i}").as_str()), "{names:?}");
    }
    assert_eq!(dump["pid"], app.pid());
}

#[test]
fn an_unknown_command_exits_1() {
    let app = App::demo(&[]);
    let pid = app.pid().to_string();
    let ran = run_cli(&[&pid, "nosuchcommand", "x"]);
    assert_eq!(ran.code, 1, "{ran:#?}");
    assert!(ran.stdout.is_empty(), "{ran:#?}");
    assert!(
        ran.stderr.starts_with("error: ") && ran.stderr.contains("nosuchcommand"),
        "{ran:#?}"
    );

    let ran = run_cli(&[&pid, "get", "nosuch"]);
    assert_eq!(ran.code, 1, "{ran:#?}");
    assert!(ran.stderr.contains("nosuch"), "{ran:#?}");

    // --json: the whole failed frame, on stdout.
    let ran = run_cli(&["--json", &pid, "nosuchcommand"]);
    assert_eq!(ran.code, 1, "{ran:#?}");
    let frame: Value = serde_json::from_str(&ran.stdout).expect("JSON on stdout");
    assert_eq!(frame["ok"], false, "{frame}");
    assert_eq!(frame["command"], "nosuchcommand", "{frame}");
    assert!(
        frame["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{frame}"
    );
}

#[test]
fn a_custom_socket_path_is_used_as_given() {
    let dir = TempDir::new();
    let path = dir.join("app.sock");
    let app = App::demo(&["--socket-path", path.to_str().unwrap()]);
    assert_eq!(app.socket(), path);
    let ran = run_cli(&[path.to_str().unwrap(), "echo", "custom"]);
    assert_eq!((ran.code, ran.stdout.as_str()), (0, "custom\n"), "{ran:#?}");
    let ran = run_piped(&dir, "echo piped custom\n", &[path.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(ran.stdout.contains("piped custom"), "{ran:#?}");
    // A relative path works too.
    let ran = run(cli(&["./app.sock", "echo", "relative"]).current_dir(dir.path()));
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "relative\n"),
        "{ran:#?}"
    );
}

#[test]
fn one_shot_works_with_an_exec_handler_server() {
    let app = App::demo(&["--exec"]);
    let ran = run_cli(&[&app.pid().to_string(), "echo", "exec", "mode"]);
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "exec mode\n"),
        "{ran:#?}"
    );
}

#[test]
fn a_closed_stdout_ends_the_client_quietly() {
    let app = App::demo(&[]);
    let (reader, writer) = nix::unistd::pipe().unwrap();
    // Nobody will ever read: the client's first write gets EPIPE, as under `| head` once head left.
    drop(reader);
    let child = cli(&[&app.pid().to_string(), "threads"])
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client");
    let mut client = Proc { child };
    let status =
        wait_until(|| client.child.try_wait().expect("try_wait")).expect("the client exits");
    let mut stderr = String::new();
    client
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// Runs the client with stderr into a pipe nobody reads (as `2>&1 | head` once head left), stdout
/// discarded, and returns its exit code.
fn run_with_dead_stderr(args: &[&str]) -> i32 {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let child = cli(args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .spawn()
        .expect("start the client");
    let mut client = Proc { child };
    let status =
        wait_until(|| client.child.try_wait().expect("try_wait")).expect("the client exits");
    status
        .code()
        .unwrap_or_else(|| panic!("the client died of a signal: {status:?}"))
}

#[test]
fn a_closed_stderr_does_not_change_the_exit_code() {
    let app = App::demo(&[]);
    let pid = app.pid().to_string();
    // The command's error goes to stderr: still exit 1, not a panic (101).
    assert_eq!(run_with_dead_stderr(&[&pid, "nosuchcommand"]), 1);
    assert_eq!(run_with_dead_stderr(&[&dead_pid().to_string()]), 3);
    // --prune reports each removal on stderr: all of them are still removed.
    let dir = TempDir::new();
    let stale: Vec<PathBuf> = (0..2)
        .map(|_| dir.join(&format!("manhole-{}", dead_pid())))
        .collect();
    for path in &stale {
        drop(UnixListener::bind(path).unwrap());
    }
    let dirs = dir.path().to_str().unwrap();
    assert_eq!(
        run_with_dead_stderr(&["--list", "--prune", "--dir", dirs]),
        0
    );
    for path in &stale {
        assert!(
            fs::symlink_metadata(path).is_err(),
            "{} kept",
            path.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Piped sessions

#[test]
fn piped_threads_prints_the_dump() {
    let app = App::demo(&[]);
    let dir = TempDir::new();
    let ran = run_piped(&dir, "threads\n", &[&app.pid().to_string()]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(
        ran.stdout.starts_with("Manhole "),
        "the banner comes first: {ran:#?}"
    );
    // Once in the greeting, once as the answer.
    assert_eq!(ran.stdout.matches("Threads: ").count(), 2, "{ran:#?}");
    assert!(
        ran.stdout.matches("demo_worker_loop").count() >= 2,
        "{ran:#?}"
    );
    assert!(ran.stderr.is_empty(), "{ran:#?}");
}

#[test]
fn piped_lines_are_all_answered_even_without_a_final_newline() {
    let app = App::demo(&[]);
    let dir = TempDir::new();
    let ran = run_piped(
        &dir,
        "echo first\nget log_filter\necho last",
        &[&app.pid().to_string()],
    );
    assert_eq!(ran.code, 0, "{ran:#?}");
    let first = ran.stdout.find("first\n").expect("first answer");
    let level = ran.stdout.find("info").expect("log_filter answer");
    let last = ran.stdout.find("last\n").expect("last answer");
    assert!(first < level && level < last, "{ran:#?}");
}

// ---------------------------------------------------------------------------------------------
// Signals

#[test]
fn refuses_to_signal_a_process_without_evidence_of_a_manhole_waiting() {
    let mut app = App::demo(&[]);
    let pid = app.pid().to_string();
    for flags in [
        &["-s", "USR1"][..],
        &["-1"],
        &["-USR1"],
        &["-2"],
        &["-USR2"],
        &["-s", "12"],
        &["--signal", "sigusr2"],
    ] {
        let mut args = flags.to_vec();
        args.push(&pid);
        let ran = run_cli(&args);
        assert_fails(&ran, 12, "nothing shows a manhole waiting for it");
        assert!(
            ran.stderr.contains(&format!("process {pid} (demo)")),
            "{ran:#?}"
        );
        assert!(app.alive(), "the demo died of {flags:?}");
    }
    // Still alive and serving.
    let ran = run_cli(&[&pid, "echo", "still", "here"]);
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "still here\n"),
        "{ran:#?}"
    );

    let mut sleeper = Proc::sleeper();
    let ran = run_cli(&["-s", "TERM", &sleeper.pid().to_string()]);
    assert_fails(&ran, 12, "nothing shows a manhole waiting for it");
    assert!(sleeper.alive());
}

/// The signals process `pid` has a handler for (`SigCgt`, bit `n - 1` for signal `n`).
fn caught_signals(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .expect("SigCgt in /proc/PID/status");
    u64::from_str_radix(mask.trim(), 16).unwrap()
}

/// Crash signals are never sent, even to a process that catches them: every Rust program
/// catches SIGSEGV and SIGBUS (its stack-overflow report), and a stray one would reset that
/// handler (a JVM or a crash reporter would dump and abort).
#[test]
fn refuses_crash_signals_even_when_caught() {
    let mut app = App::demo(&[]);
    let pid = app.pid().to_string();
    let segv_and_bus = (1 << (libc::SIGSEGV - 1)) | (1 << (libc::SIGBUS - 1));
    assert_eq!(
        caught_signals(app.pid()) & segv_and_bus,
        segv_and_bus,
        "the demo catches SIGSEGV and SIGBUS (Rust's stack-overflow handler)"
    );
    for signal in ["SEGV", "SIGBUS", "11", "ABRT", "KILL", "STOP"] {
        let ran = run_cli(&["-s", signal, &pid, "echo", "x"]);
        assert_fails(&ran, 10, "no manhole is activated by it");
        assert!(app.alive(), "the demo died of -s {signal}");
    }
    assert_eq!(
        caught_signals(app.pid()) & segv_and_bus,
        segv_and_bus,
        "the demo's fault handlers are untouched"
    );
    let ran = run_cli(&[&pid, "echo", "still", "here"]);
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "still here\n"),
        "{ran:#?}"
    );
}

/// A shell that catches SIGUSR2 for its own reasons and exits on it (as bash does), with no
/// manhole: the client's hint once made operators kill such processes.
fn usr2_exiter() -> Proc {
    Proc::sh("trap 'echo caught; exit 0' USR2; echo ready; while :; do sleep 0.05; done")
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
fn start_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    after_name
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap()
}

/// An activation file written by the test for process `pid` (removed on drop).
struct Forged(PathBuf);

impl Forged {
    fn write(pid: u32, text: &str) -> Forged {
        let path = PathBuf::from(format!("/tmp/manhole-{pid}.activation"));
        let _ = fs::remove_file(&path);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        Forged(path)
    }

    /// What the library would publish for `pid` waiting for SIGUSR2.
    fn genuine(pid: u32) -> Forged {
        Forged::write(
            pid,
            &format!(
                "manhole-activation 1\npid {pid}\nstart {}\nactivate_on 12 SIGUSR2\n",
                start_ticks(pid)
            ),
        )
    }
}

impl Drop for Forged {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn a_process_that_exits_on_usr2_is_never_sent_it() {
    let mut exiter = usr2_exiter();
    let pid = exiter.pid().to_string();
    for flags in [
        &["-s", "USR2"][..],
        &["-USR2"],
        &["-2"],
        &["--signal", "12"],
    ] {
        let mut args = flags.to_vec();
        args.extend(["-t", "0", &pid]);
        let ran = run_cli(&args);
        assert_fails(&ran, 12, "nothing shows a manhole waiting for it");
        assert!(
            ran.stderr.contains(&format!(
                "it has not published /tmp/manhole-{pid}.activation"
            )),
            "{ran:#?}"
        );
        assert!(exiter.alive(), "{flags:?} killed the process");
    }
    // And no hint suggests it.
    let ran = run_cli(&["-t", "0", &pid]);
    assert_fails(&ran, 4, "no manhole socket");
    assert!(!ran.stderr.contains("-s"), "{ran:#?}");
    assert!(exiter.alive());
}

/// A file that is not the library's, or not this process's, is no evidence: another pid, an
/// earlier process with the same pid (another start time), a file others may write, a symlink,
/// garbage. The process is never signalled.
#[test]
fn a_forged_or_stale_activation_file_is_no_evidence() {
    let mut exiter = usr2_exiter();
    let pid = exiter.pid();
    let start = start_ticks(pid);
    let cases = [
        (
            format!(
                "manhole-activation 1\npid {pid}\nstart {}\nactivate_on 12 SIGUSR2\n",
                start + 1
            ),
            "was left by an earlier process",
        ),
        (
            format!("manhole-activation 1\npid 1\nstart {start}\nactivate_on 12 SIGUSR2\n"),
            "names process 1",
        ),
        (
            format!("manhole-activation 1\npid {pid}\nstart {start}\nactivate_on 10 SIGUSR1\n"),
            "its manhole starts on SIGUSR1",
        ),
        ("activate_on 12\n".to_owned(), "does not start with"),
    ];
    for (text, why) in cases {
        let forged = Forged::write(pid, &text);
        let ran = run_cli(&["-s", "USR2", "-t", "0", &pid.to_string()]);
        assert_fails(&ran, 12, why);
        assert!(exiter.alive(), "signalled for {text:?}");
        drop(forged);
    }
    let forged = Forged::genuine(pid);
    fs::set_permissions(&forged.0, fs::Permissions::from_mode(0o622)).unwrap();
    let ran = run_cli(&["-s", "USR2", "-t", "0", &pid.to_string()]);
    assert_fails(&ran, 12, "is writable by other users");
    drop(forged);
    let genuine = Forged::genuine(pid);
    let link = PathBuf::from(format!("/tmp/manhole-{pid}.activation"));
    let target = genuine.0.with_extension("real");
    fs::rename(&genuine.0, &target).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let ran = run_cli(&["-s", "USR2", "-t", "0", &pid.to_string()]);
    assert_fails(&ran, 12, "cannot be read");
    let _ = fs::remove_file(&target);
    assert!(exiter.alive());
}

/// With evidence the signal is sent; when no socket follows, the client says whether the process
/// is still there (the evidence here is written by the test, for processes of its own).
#[test]
fn after_a_timeout_the_client_says_whether_the_process_lives() {
    let mut survivor = usr2_catcher();
    let _evidence = Forged::genuine(survivor.pid());
    let ran = run_cli(&["-s", "USR2", "-t", "0.3", &survivor.pid().to_string()]);
    assert_fails(&ran, 8, "timed out after 0.3s");
    assert!(
        ran.stderr.contains(&format!(
            "after sending SIGUSR2; process {} is still running",
            survivor.pid()
        )),
        "{ran:#?}"
    );
    assert!(survivor.alive());

    let mut exiter = usr2_exiter();
    let _evidence = Forged::genuine(exiter.pid());
    let ran = run_cli(&["-s", "USR2", "-t", "2", &exiter.pid().to_string()]);
    assert_fails(&ran, 8, "timed out after 2s");
    assert!(
        ran.stderr
            .contains(&format!("process {} has exited", exiter.pid())),
        "{ran:#?}"
    );
    assert!(!exiter.alive());
}

/// The library publishes its evidence at install (0600, its pid and start time), a forked child
/// publishes its own (the parent's is left alone), and exit removes it.
#[test]
fn the_activation_file_lives_as_long_as_the_manhole() {
    let dir = TempDir::new();
    let exit_when = dir.join("exit-now");
    let mut app = App::start(
        "bare",
        &[
            "--fork",
            "1",
            "--reinstall-after-fork",
            "--exit-when",
            exit_when.to_str().unwrap(),
        ],
        &[("MANHOLE", "activate_on=USR2")],
    );
    app.wait_for_line("ready pid=");
    let child: u32 = app
        .wait_for_line("child pid=")
        .trim_start_matches("child pid=")
        .trim()
        .parse()
        .unwrap();
    let parent_file = PathBuf::from(format!("/tmp/manhole-{}.activation", app.pid()));
    let child_file = Forged(PathBuf::from(format!("/tmp/manhole-{child}.activation")));
    let text = fs::read_to_string(&parent_file).expect("the evidence is published");
    assert_eq!(
        text,
        format!(
            "manhole-activation 1\npid {}\nstart {}\nactivate_on 12 SIGUSR2\n",
            app.pid(),
            start_ticks(app.pid())
        )
    );
    assert_eq!(
        fs::metadata(&parent_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let child_text = wait_until(|| fs::read_to_string(&child_file.0).ok())
        .expect("the forked child publishes its own evidence");
    assert!(
        child_text.contains(&format!("\npid {child}\n")),
        "{child_text}"
    );
    assert!(
        fs::read_to_string(&parent_file)
            .unwrap()
            .contains(&format!("pid {}", app.pid()))
    );
    fs::write(&exit_when, "").unwrap();
    app.wait_exit();
    assert!(!parent_file.exists(), "exit removes the evidence");
}

#[test]
fn signal_options_are_exclusive_and_need_a_pid() {
    assert_fails(&run_cli(&["-1", "-2", "1"]), 2, "cannot be used with");
    assert_fails(
        &run_cli(&["-2", "-s", "USR2", "1"]),
        2,
        "cannot be used with",
    );
    assert_fails(&run_cli(&["-s", "NOPE", "1"]), 2, "invalid signal name");
    assert_fails(&run_cli(&["-s", "99", "1"]), 2, "invalid signal number 99");
    assert_fails(&run_cli(&["-2", "./app.sock"]), 2, "needs a pid");
}

/// `-s USR2` against a process whose manhole starts on SIGUSR2 (`bare` with
/// `MANHOLE=activate_on=USR2`): without the signal there is no socket (and the hint says what to
/// do), with it the client connects.
#[test]
fn signal_activates_a_manhole() {
    let mut app = App::start("bare", &[], &[("MANHOLE", "activate_on=USR2")]);
    app.wait_for_line("ready pid=");
    app.socket = Some(PathBuf::from(format!("/tmp/manhole-{}", app.pid())));
    let pid = app.pid().to_string();

    let ran = run_cli(&["-t", "0", &pid, "echo", "x"]);
    assert_fails(&ran, 4, "no manhole socket");
    assert!(
        ran.stderr
            .contains(&format!("try `manhole-cli -s USR2 {pid}`")),
        "{ran:#?}"
    );

    let ran = run_cli(&["-s", "USR2", "-t", "10", &pid, "echo", "activated"]);
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "activated\n"),
        "{ran:#?}"
    );
    assert!(app.alive());
    // Once up, the manhole answers without another signal.
    let ran = run_cli(&[&pid, "echo", "again"]);
    assert_eq!((ran.code, ran.stdout.as_str()), (0, "again\n"), "{ran:#?}");
}

/// A signal-activated manhole on a custom `socket_path`: its evidence sits next to that path, so
/// `-s USR2 PID` (which looks next to `/tmp/manhole-PID`) refuses and says where to look, and
/// `-s USR2 PATH` takes the pid from the evidence, checks it and connects. Once it listens, the
/// hint for the pid names the directory.
#[test]
fn a_custom_socket_path_is_signalled_through_its_path() {
    let dir = TempDir::new();
    let path = dir.join("app.sock");
    let manhole = format!("activate_on=USR2,socket_path={}", path.display());
    let mut app = App::start("bare", &[], &[("MANHOLE", manhole.as_str())]);
    app.wait_for_line("ready pid=");
    app.socket = Some(path.clone());
    let pid = app.pid().to_string();
    let ran = run_cli(&["-s", "USR2", "-t", "0.2", &pid, "echo", "x"]);
    assert_fails(&ran, 12, "nothing shows a manhole waiting for it");
    assert!(ran.stderr.contains("pass that path as TARGET"), "{ran:#?}");
    let ran = run_cli(&[
        "-s",
        "USR2",
        "-t",
        "10",
        path.to_str().unwrap(),
        "echo",
        "found",
    ]);
    assert_eq!((ran.code, ran.stdout.as_str()), (0, "found\n"), "{ran:#?}");
    let ran = run_cli(&["-t", "0", &pid, "echo", "x"]);
    assert_fails(&ran, 4, "no manhole socket");
    assert!(
        ran.stderr.contains(&format!(
            "hint: process {pid} (bare) listens on a socket in {}",
            dir.path().display()
        )),
        "{ran:#?}"
    );
    assert!(app.alive());
}

// ---------------------------------------------------------------------------------------------
// --list and --prune

#[test]
fn list_shows_a_running_demo() {
    let app = App::demo(&[]);
    let ran = run_cli(&["--list"]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(ran.stdout.starts_with("PID "), "{ran:#?}");
    let row = ran
        .stdout
        .lines()
        .find(|line| line.ends_with(&format!(" /tmp/manhole-{}", app.pid())))
        .unwrap_or_else(|| panic!("no row for the demo: {ran:#?}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns[0], app.pid().to_string(), "{row}");
    assert_eq!(columns[1], "demo", "{row}");
    assert_eq!(columns[3], "alive", "{row}");

    let ran = run_cli(&["--list", "--json"]);
    let entries: Value = serde_json::from_str(&ran.stdout).expect("a JSON array");
    let entry = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pid"] == app.pid())
        .unwrap_or_else(|| panic!("no entry for the demo: {entries}"));
    assert_eq!(entry["process"], "demo");
    assert_eq!(entry["alive"], true);
}

#[test]
fn prune_removes_only_dead_sockets() {
    let dir = TempDir::new();
    let dirs = dir.path().to_str().unwrap();
    let at = |pid: u32| dir.join(&format!("manhole-{pid}"));

    // A stale socket of a dead process: listed as gone, pruned.
    let stale = at(dead_pid());
    drop(UnixListener::bind(&stale).unwrap());
    // A socket of a dead pid that something still listens on: kept.
    let held = at(dead_pid());
    let _holder = UnixListener::bind(&held).unwrap();
    // A live process's socket (this test process listens): kept.
    let live = at(std::process::id());
    let _live_listener = UnixListener::bind(&live).unwrap();
    // A regular file and a symlink with socket names: never listed, never touched.
    let file = at(dead_pid());
    fs::write(&file, b"not a socket").unwrap();
    let link = at(dead_pid());
    std::os::unix::fs::symlink(&stale, &link).unwrap();

    let ran = run_cli(&["--list", "--dir", dirs]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    let row = |path: &Path| {
        ran.stdout
            .lines()
            .find(|l| l.ends_with(path.to_str().unwrap()))
            .map(str::to_owned)
    };
    assert!(
        row(&stale).is_some_and(|r| r.contains(" gone ")),
        "{ran:#?}"
    );
    assert!(row(&held).is_some_and(|r| r.contains(" gone ")), "{ran:#?}");
    assert!(
        row(&live).is_some_and(|r| r.contains(" alive ")),
        "{ran:#?}"
    );
    assert!(row(&file).is_none() && row(&link).is_none(), "{ran:#?}");

    let ran = run_cli(&["--list", "--prune", "--dir", dirs]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(
        ran.stderr.contains(&format!("removed {}", stale.display())),
        "{ran:#?}"
    );
    assert!(
        ran.stderr.contains(&format!("kept {}", held.display())),
        "{ran:#?}"
    );
    assert!(
        fs::symlink_metadata(&stale).is_err(),
        "the stale socket is gone"
    );
    assert!(
        fs::symlink_metadata(&held).is_ok(),
        "a socket with a listener stays"
    );
    assert!(fs::symlink_metadata(&live).is_ok(), "a live socket stays");
    assert!(
        fs::read(&file).unwrap() == b"not a socket",
        "the regular file is untouched"
    );
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the symlink is untouched"
    );
    assert!(!ran.stdout.contains(stale.to_str().unwrap()), "{ran:#?}");
    assert!(ran.stdout.contains(live.to_str().unwrap()), "{ran:#?}");

    let ran = run_cli(&["--list", "--json", "--dir", dirs]);
    let entries: Value = serde_json::from_str(&ran.stdout).expect("a JSON array");
    assert_eq!(entries.as_array().unwrap().len(), 2, "{entries}");
}

/// `--prune` removes only the user's own sockets: another user's socket of a dead process is
/// listed (root can reach it) and kept.
#[test]
fn prune_keeps_other_users_sockets() {
    if !can_switch_uid() {
        return;
    }
    let dir = TempDir::new();
    let dirs = dir.path().to_str().unwrap();
    let theirs = dir.join(&format!("manhole-{}", dead_pid()));
    drop(UnixListener::bind(&theirs).unwrap());
    nix::unistd::chown(
        &theirs,
        Some(nix::unistd::Uid::from_raw(NOBODY)),
        Some(nix::unistd::Gid::from_raw(NOBODY)),
    )
    .unwrap();
    let mine = dir.join(&format!("manhole-{}", dead_pid()));
    drop(UnixListener::bind(&mine).unwrap());
    let ran = run_cli(&["--list", "--prune", "--dir", dirs]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(
        ran.stderr.contains(&format!("removed {}", mine.display())),
        "{ran:#?}"
    );
    assert!(fs::symlink_metadata(&mine).is_err(), "{ran:#?}");
    assert!(
        fs::symlink_metadata(&theirs).is_ok(),
        "another user's socket is never removed: {ran:#?}"
    );
    let row = ran
        .stdout
        .lines()
        .find(|line| line.ends_with(theirs.to_str().unwrap()))
        .unwrap_or_else(|| panic!("their socket is still listed: {ran:#?}"));
    assert!(row.contains(" nobody ") && row.contains(" gone "), "{row}");
}

#[test]
fn list_of_an_empty_directory_says_so() {
    let dir = TempDir::new();
    let ran = run_cli(&["--list", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(ran.stdout.is_empty(), "{ran:#?}");
    assert!(ran.stderr.contains("no manhole sockets"), "{ran:#?}");
    let ran = run_cli(&["--list", "--dir", dir.join("missing").to_str().unwrap()]);
    assert_eq!(ran.code, 11, "{ran:#?}");
}

// ---------------------------------------------------------------------------------------------
// Errors and exit codes

#[test]
fn invalid_targets_are_usage_errors() {
    for target in ["abc", "12ab", "manhole-12", "0"] {
        let ran = run_cli(&[target]);
        assert_fails(&ran, 2, "/tmp/manhole-1234");
    }
    assert_fails(&run_cli(&[]), 2, "TARGET");
    assert_fails(&run_cli(&["--json", "1"]), 2, "--json needs a COMMAND");
}

#[test]
fn no_such_process_exits_3() {
    let pid = dead_pid().to_string();
    let ran = run_cli(&[&pid]);
    assert_fails(&ran, 3, &format!("no such process: {pid}"));
    let ran = run_cli(&[&pid, "get", "requests"]);
    assert_fails(&ran, 3, "no such process");
}

#[test]
fn a_thread_id_is_not_a_target() {
    let app = App::demo(&[]);
    let tid = fs::read_dir(format!("/proc/{}/task", app.pid()))
        .unwrap()
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|tid| *tid != app.pid())
        .expect("the demo has threads");
    let ran = run_cli(&[&tid.to_string(), "echo", "x"]);
    assert_fails(&ran, 2, &format!("is a thread of process {}", app.pid()));
}

#[test]
fn no_manhole_socket_exits_4_with_a_hint_when_there_is_one() {
    let sleeper = Proc::sleeper();
    let ran = run_cli(&["-t", "0.2", &sleeper.pid().to_string()]);
    assert_fails(
        &ran,
        4,
        &format!("no manhole socket at /tmp/manhole-{}", sleeper.pid()),
    );
    assert!(!ran.stderr.contains("hint"), "{ran:#?}");

    // Catching SIGUSR2 is no evidence of a manhole: no "try -s" hint.
    let catcher = usr2_catcher();
    let ran = run_cli(&["-t", "0", &catcher.pid().to_string()]);
    assert_fails(&ran, 4, "no manhole socket");
    assert!(!ran.stderr.contains("-s USR2"), "{ran:#?}");

    // A manhole on a custom path: the hint points at its directory.
    let dir = TempDir::new();
    let app = App::demo(&["--socket-path", dir.join("custom.sock").to_str().unwrap()]);
    let ran = run_cli(&["-t", "0", &app.pid().to_string()]);
    assert_fails(&ran, 4, "no manhole socket");
    assert!(
        ran.stderr.contains(&format!("in {}", dir.path().display())),
        "{ran:#?}"
    );
}

#[test]
fn stale_sockets_and_plain_files_exit_4() {
    let dir = TempDir::new();
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert_fails(
        &run_cli(&["-t", "0.1", stale.to_str().unwrap()]),
        4,
        "nothing is listening",
    );
    let file = dir.join("file");
    fs::write(&file, b"").unwrap();
    assert_fails(&run_cli(&[file.to_str().unwrap()]), 4, "is not a socket");
    assert_fails(
        &run_cli(&["-t", "0", dir.join("missing").to_str().unwrap()]),
        4,
        "no manhole socket",
    );
}

/// `-t` keeps retrying with pauses, not in a busy loop: a client that waits 2 s for a socket
/// that never comes uses almost no CPU. Its CPU time is read from `/proc/PID/stat` while it is
/// a zombie (waited for with `WNOWAIT`, so it is not reaped yet).
#[test]
fn retrying_the_connection_does_not_spin() {
    let dir = TempDir::new();
    let missing = dir.join("never.sock");
    let child = cli(&["-t", "2", missing.to_str().unwrap(), "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the client");
    let mut client = Proc { child };
    let pid = nix::unistd::Pid::from_raw(client.pid() as i32);
    let flags = nix::sys::wait::WaitPidFlag::WEXITED
        | nix::sys::wait::WaitPidFlag::WNOWAIT
        | nix::sys::wait::WaitPidFlag::WNOHANG;
    wait_until(|| {
        match nix::sys::wait::waitid(nix::sys::wait::Id::Pid(pid), flags).expect("waitid") {
            nix::sys::wait::WaitStatus::StillAlive => None,
            exited => Some(exited),
        }
    })
    .expect("the client gives up after its timeout");
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime, fields 14 and 15 (the 12th and 13th after the command name).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    let status = client.child.wait().unwrap();
    assert_eq!(status.code(), Some(4), "no socket after the timeout");
    // A busy loop for 2 s would use about 2 * hz ticks; pauses use next to none.
    assert!(
        ticks * 5 < hz,
        "the client used {ticks} ticks of CPU (hz {hz}) waiting 2 s for a socket"
    );
}

#[test]
fn permission_denied_exits_5() {
    if !can_switch_uid() {
        return;
    }
    let app = App::demo(&[]);
    let ran = run(cli(&[&app.pid().to_string(), "info"])
        .uid(NOBODY)
        .gid(NOBODY));
    assert_fails(&ran, 5, "permission denied connecting to");
    assert!(ran.stderr.contains("mode 0600"), "{ran:#?}");
}

#[test]
fn access_denied_by_the_server_exits_6() {
    if !can_switch_uid() {
        return;
    }
    let app = App::demo(&[]);
    // Open the file mode so the connection reaches the server's own peer check.
    fs::set_permissions(app.socket(), fs::Permissions::from_mode(0o666)).unwrap();
    let ran = run(cli(&[&app.pid().to_string(), "info"])
        .uid(NOBODY)
        .gid(NOBODY));
    assert_fails(&ran, 6, "manhole: access denied");
    assert!(ran.stdout.is_empty(), "{ran:#?}");
    let dir = TempDir::new();
    let path = dir.join("stdin.txt");
    fs::write(&path, "info\n").unwrap();
    let ran = run(cli(&[&app.pid().to_string()])
        .stdin(File::open(&path).unwrap())
        .uid(NOBODY)
        .gid(NOBODY));
    assert_fails(&ran, 6, "manhole: access denied");
}

#[test]
fn too_many_sessions_exits_7() {
    let app = App::demo(&["--max-sessions", "1"]);
    let mut holder = Client::connect(app.socket()).unwrap();
    holder.skip_greeting();
    let ran = run_cli(&[&app.pid().to_string(), "echo", "x"]);
    assert_fails(&ran, 7, "manhole: too many sessions");
    let dir = TempDir::new();
    let ran = run_piped(&dir, "echo x\n", &[&app.pid().to_string()]);
    assert_fails(&ran, 7, "manhole: too many sessions");
    drop(holder);
    app.wait_sessions_gone();
    let ran = run_cli(&[&app.pid().to_string(), "echo", "after"]);
    assert_eq!((ran.code, ran.stdout.as_str()), (0, "after\n"), "{ran:#?}");
}

#[test]
fn a_server_that_closes_without_answering_exits_9() {
    let dir = TempDir::new();
    let path = dir.join("closing.sock");
    let server = fake_server(&path, b"");
    assert_fails(
        &run_cli(&[path.to_str().unwrap(), "info"]),
        9,
        "closed the connection before answering",
    );
    server.join().unwrap();

    let server = fake_server(
        &path_again(&path),
        b"{\"ok\":true,\"command\":\"exec\",\"text\":\"\",\"data\":{}}\n",
    );
    assert_fails(
        &run_cli(&[path.to_str().unwrap(), "info"]),
        9,
        "before answering the command",
    );
    server.join().unwrap();

    let server = fake_server(&path_again(&path), b"");
    let ran = run_piped(&dir, "info\n", &[path.to_str().unwrap()]);
    assert_fails(&ran, 9, "closed the connection before answering");
    server.join().unwrap();
}

/// Removes the previous fake server's socket so the path can be bound again.
fn path_again(path: &Path) -> PathBuf {
    let _ = fs::remove_file(path);
    path.to_path_buf()
}

#[test]
fn a_socket_served_by_another_process_is_refused_with_10() {
    let sleeper = Proc::sleeper();
    let dir = TempDir::new();
    // A socket named for the sleeper's pid, but served by this test process: planted.
    let planted = dir.join(&format!("manhole-{}", sleeper.pid()));
    let _listener = UnixListener::bind(&planted).unwrap();
    let ran = run_cli(&[planted.to_str().unwrap(), "info"]);
    assert_fails(
        &ran,
        10,
        &format!("served by process {}", std::process::id()),
    );
    assert!(
        ran.stderr
            .contains(&format!("not by process {}", sleeper.pid())),
        "{ran:#?}"
    );
    // Same with a pid TARGET and --dir.
    let ran = run_cli(&[
        "--dir",
        dir.path().to_str().unwrap(),
        &sleeper.pid().to_string(),
        "info",
    ]);
    assert_fails(&ran, 10, "refusing to talk to");
}

/// A pid TARGET whose socket file is owned by a user the process does not run as: refused
/// before anything is sent (someone else may have planted it).
#[test]
fn a_socket_owned_by_another_user_is_refused_with_10() {
    if !can_switch_uid() {
        return;
    }
    let app = App::demo(&[]);
    let pid = app.pid().to_string();
    nix::unistd::chown(
        app.socket(),
        Some(nix::unistd::Uid::from_raw(NOBODY)),
        Some(nix::unistd::Gid::from_raw(NOBODY)),
    )
    .unwrap();
    let ran = run_cli(&[&pid, "echo", "x"]);
    assert_fails(&ran, 10, &format!("owned by uid {NOBODY}"));
    assert!(
        ran.stderr
            .contains(&format!("process {pid} (demo) runs as uid 0")),
        "{ran:#?}"
    );
    assert!(ran.stdout.is_empty(), "{ran:#?}");
}

/// Signalling a process of another user: the kernel refuses, exit 5, the process is unharmed.
#[test]
fn permission_denied_signalling_exits_5() {
    if !can_switch_uid() {
        return;
    }
    let mut app = App::start("bare", &[], &[("MANHOLE", "activate_on=USR2")]);
    app.wait_for_line("ready pid=");
    app.socket = Some(PathBuf::from(format!("/tmp/manhole-{}", app.pid())));
    let pid = app.pid().to_string();
    let ran = run(cli(&["-s", "USR2", "-t", "0", &pid, "info"])
        .uid(NOBODY)
        .gid(NOBODY));
    // Another user cannot read the process's activation file (0600), nor signal it.
    assert_fails(&ran, 5, "permission denied sending SIGUSR2 to process");
    assert!(
        ran.stderr.contains("is not readable by this user"),
        "{ran:#?}"
    );
    assert!(app.alive());
    assert!(
        !app.socket().exists(),
        "the signal was not delivered: no manhole started"
    );
}

#[test]
fn an_answer_the_client_does_not_understand_exits_11() {
    let dir = TempDir::new();
    let path = dir.join("odd.sock");
    let server = fake_server(
        &path,
        b"{\"ok\":true,\"command\":\"exec\",\"text\":\"\",\"data\":{}}\nwhat is this\n",
    );
    assert_fails(
        &run_cli(&[path.to_str().unwrap(), "info"]),
        11,
        "unexpected answer from the server: what is this",
    );
    server.join().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Interactive sessions through a pseudo-terminal

/// The client running on a pseudo-terminal: what it prints is collected from the master side.
struct Pty {
    child: Child,
    master: File,
    output: mpsc::Receiver<Vec<u8>>,
    /// Everything received so far.
    seen: String,
    /// How much of `seen` earlier `expect`s consumed.
    consumed: usize,
}

impl Pty {
    /// Starts the client with `args` on a new 120x40 terminal, `HOME` at `home`.
    fn start(args: &[&str], home: &Path) -> Pty {
        Pty::start_command(cli(args), home)
    }

    /// Starts the client with the terminal as its controlling terminal, so Ctrl-C typed while
    /// rustyline is not reading becomes a SIGINT (`setsid --ctty`, from util-linux).
    fn start_in_session(args: &[&str], home: &Path) -> Pty {
        let mut command = Command::new("setsid");
        command
            .arg("--ctty")
            .arg(bin("manhole-cli"))
            .args(args)
            .env_remove("MANHOLE");
        Pty::start_command(command, home)
    }

    /// Starts `command` (the client) on a new 120x40 terminal, `HOME` at `home`.
    fn start_command(mut command: Command, home: &Path) -> Pty {
        let size = nix::pty::Winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        let child = command
            .env("HOME", home)
            .env("TERM", "xterm")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("start the client on the pty");
        let master = File::from(pty.master);
        let mut reader = master.try_clone().unwrap();
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the client (the last holder of the slave side) exits.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Pty {
            child,
            master,
            output,
            seen: String::new(),
            consumed: 0,
        }
    }

    /// Types `keys`.
    fn send(&mut self, keys: &str) {
        self.master
            .write_all(keys.as_bytes())
            .expect("write to the pty");
    }

    /// Waits until the output after the last match contains `needle`; returns the text up to
    /// and including it.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(at) = self.seen[self.consumed..].find(needle) {
                let end = self.consumed + at + needle.len();
                let text = self.seen[self.consumed..end].to_owned();
                self.consumed = end;
                return text;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.seen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => panic!(
                    "no {needle:?} on the terminal; it shows {:?}",
                    &self.seen[self.consumed..]
                ),
            }
        }
    }

    /// Waits until the client reads a line: rustyline has switched the terminal to raw mode
    /// (it turns bracketed paste on as it does) and drawn the prompt. Merely waiting for `>>> `
    /// is not enough: symbol names in the greeting's stack dump can contain it.
    fn expect_prompt(&mut self) -> String {
        let mut text = self.expect(BRACKETED_PASTE_ON);
        text.push_str(&self.expect(">>> "));
        text
    }

    /// Waits for the client to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let status = wait_until(|| self.child.try_wait().expect("try_wait"));
        status.unwrap_or_else(|| {
            panic!(
                "the client did not exit; the terminal shows {:?}",
                self.seen
            )
        })
    }

    /// Everything shown so far, after waiting for the output to end.
    fn drain(&mut self) -> &str {
        while let Ok(bytes) = self.output.recv_timeout(TIMEOUT) {
            self.seen.push_str(&String::from_utf8_lossy(&bytes));
        }
        &self.seen
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What rustyline writes when it starts reading a line.
const BRACKETED_PASTE_ON: &str = "\x1b[?2004h";
/// What rustyline writes when it is done reading a line.
const BRACKETED_PASTE_OFF: &str = "\x1b[?2004l";

/// The server's answer to a typed line, as the terminal shows it: on its own line.
fn answer_line(text: &str) -> String {
    format!("\r\n{text}\r\n")
}

#[test]
fn interactive_line_editing_history_ctrl_c_and_ctrl_d() {
    let app = App::demo(&[]);
    let home = TempDir::new();
    let mut pty = Pty::start(&[&app.pid().to_string()], home.path());
    let greeting = pty.expect_prompt();
    assert!(greeting.contains("Manhole "), "{greeting:?}");
    assert!(greeting.contains("\"worker-"), "{greeting:?}");
    assert!(greeting.contains("demo_worker_loop"), "{greeting:?}");

    // Line editing: a typo fixed with backspace.
    pty.send("echo typoX");
    pty.expect("typoX");
    pty.send("\x7f\x7f\x7f\x7f\x7fgood\r");
    pty.expect(&answer_line("good"));
    pty.expect_prompt();

    // History: the up arrow brings the last line back.
    pty.send("\x1b[A\r");
    pty.expect(&answer_line("good"));
    pty.expect_prompt();

    // Ctrl-C clears the line: the half-typed command is never sent.
    pty.send("garbage-never-sent");
    pty.expect("garbage-never-sent");
    pty.send("\x03");
    pty.expect_prompt();
    pty.send("echo after-ctrl-c\r");
    pty.expect(&answer_line("after-ctrl-c"));
    pty.expect_prompt();

    // Ctrl-D ends the session.
    pty.send("\x04");
    let status = pty.wait_exit();
    assert_eq!(status.code(), Some(0), "{:?}", pty.seen);
    let shown = pty.drain().to_owned();
    assert!(!shown.contains("unknown command"), "{shown:?}");
    assert!(!shown.contains("typoX\r\n"), "{shown:?}");

    let history = fs::read_to_string(home.join(".manhole_history")).expect("history saved");
    assert!(
        history.contains("echo good") && history.contains("echo after-ctrl-c"),
        "{history}"
    );
    assert!(!history.contains("garbage"), "{history}");
}

#[test]
fn interactive_history_survives_a_closed_terminal() {
    let app = App::demo(&[]);
    let home = TempDir::new();
    let mut pty = Pty::start(&[&app.pid().to_string()], home.path());
    pty.expect_prompt();
    pty.send("echo typed-before-hangup\r");
    pty.expect("typed-before-hangup\r\n");
    pty.expect_prompt();
    // The terminal goes away: SIGHUP's default action ends the client, with no exit path run.
    let pid = nix::unistd::Pid::from_raw(pty.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("hang up the client");
    let status = pty.wait_exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGHUP)
    );
    let history = fs::read_to_string(home.join(".manhole_history")).expect("history saved");
    assert!(history.contains("echo typed-before-hangup"), "{history}");
}

#[test]
fn interactive_exit_command_ends_the_client() {
    let app = App::demo(&[]);
    let home = TempDir::new();
    let mut pty = Pty::start(&[&app.pid().to_string()], home.path());
    pty.expect_prompt();
    pty.send("exit\r");
    let status = pty.wait_exit();
    assert_eq!(status.code(), Some(0), "{:?}", pty.seen);
}

#[test]
fn interactive_client_exits_when_the_server_goes_away() {
    let app = App::demo(&[]);
    let home = TempDir::new();
    let mut pty = Pty::start(&[&app.pid().to_string()], home.path());
    pty.expect_prompt();
    pty.send("echo half-typed");
    pty.expect("half-typed");
    // The process ends while the operator is at the prompt.
    drop(app);
    let status = pty.wait_exit();
    assert_eq!(status.code(), Some(0), "{:?}", pty.seen);
    assert!(
        pty.drain().contains("the server closed the session"),
        "{:?}",
        pty.seen
    );
}

#[test]
fn interactive_refusal_is_an_error() {
    let app = App::demo(&["--max-sessions", "1"]);
    let mut holder = Client::connect(app.socket()).unwrap();
    holder.skip_greeting();
    let home = TempDir::new();
    let mut pty = Pty::start(&[&app.pid().to_string()], home.path());
    let status = pty.wait_exit();
    assert_eq!(status.code(), Some(7), "{:?}", pty.seen);
    assert!(
        pty.drain().contains("manhole: too many sessions"),
        "{:?}",
        pty.seen
    );
}

#[test]
fn interactive_live_output_is_printed_while_typing() {
    // bare's manhole comes from MANHOLE (defaults: stderr is shown live in sessions) and a
    // thread writes `tick <n>` to stderr every 100 ms.
    let mut app = App::start("bare", &["--stderr-every-ms", "100"], &[("MANHOLE", "")]);
    app.wait_for_line("ready pid=");
    app.socket = Some(PathBuf::from(format!("/tmp/manhole-{}", app.pid())));
    let home = TempDir::new();
    let mut pty = Pty::start(&["-t", "10", &app.pid().to_string()], home.path());
    pty.expect_prompt();
    pty.send("echo still-typing");
    pty.expect("still-typing");
    // A tick arrives while the line is being edited: it is printed above, then the prompt and
    // the unfinished line are drawn again.
    pty.expect("tick ");
    pty.expect(">>> echo still-typing");
    pty.send("\r");
    pty.expect("\nstill-typing\r\n");
    pty.expect_prompt();
    pty.send("\x04");
    assert_eq!(pty.wait_exit().code(), Some(0), "{:?}", pty.seen);
}

#[test]
fn interactive_ctrl_c_stops_waiting_for_a_slow_command() {
    // `hang` never finishes; with a 120 s command timeout the server stays silent for longer
    // than any wait here, so only Ctrl-C can bring the prompt back.
    let mut app = App::start("faults", &["--command-timeout-ms", "120000"], &[]);
    let line = app.wait_for_line("manhole listening on ");
    app.socket = Some(PathBuf::from(
        line.trim_start_matches("manhole listening on "),
    ));
    let home = TempDir::new();
    let mut pty = Pty::start_in_session(&[app.socket().to_str().unwrap()], home.path());
    pty.expect_prompt();
    pty.send("hang\r");
    // rustyline hands the line over (and leaves raw mode): the client now waits for an answer.
    pty.expect(BRACKETED_PASTE_OFF);
    pty.send("\x03");
    pty.expect_prompt();
    // Ctrl-D: the client half-closes and waits for the server to finish; Ctrl-C stops that too.
    pty.send("\x04");
    pty.expect(BRACKETED_PASTE_OFF);
    pty.send("\x03");
    assert_eq!(pty.wait_exit().code(), Some(0), "{:?}", pty.seen);
}

// ---------------------------------------------------------------------------------------------
// A hostile server: escape sequences, floods, stalls

/// What the fake server's process is called (`/proc/<pid>/comm`): an OSC 52 clipboard write.
const HOSTILE_NAME: &str = "\x1b]52;c;eA==\x07";
/// Escape sequences a hostile server sends: OSC 0 (title), OSC 52 (clipboard), CSI 2J (clear
/// the screen) and a C1 CSI in UTF-8.
const HOSTILE: &str = "\x1b]0;pwned\x07 \x1b]52;c;eA==\x07 \x1b[2J \u{9b}31m";
/// The same as the client shows them on a terminal.
const HOSTILE_SHOWN: &str = "\\x1b]0;pwned\\x07 \\x1b]52;c;eA==\\x07 \\x1b[2J \\u{9b}31m";

/// The raw sequences that must never reach the operator's terminal.
fn assert_no_raw_sequences(shown: &str) {
    for raw in ["\x1b]0;", "\x1b]52;", "\x1b[2J", "\u{9b}"] {
        assert!(
            !shown.contains(raw),
            "{raw:?} reached the terminal: {shown:?}"
        );
    }
}

/// The fake server's process: this test binary again, started by [`FakeServer::start`] with
/// `MANHOLE_FAKE_SERVER=<mode>`. Not a test: it serves until it is killed.
#[test]
#[ignore = "the fake server's entry point, started by the hostile-server tests"]
fn fake_server_process() {
    let Ok(mode) = std::env::var("MANHOLE_FAKE_SERVER") else {
        return;
    };
    // Writing /proc/self/comm names the process (its main thread), whichever thread writes.
    fs::write("/proc/self/comm", HOSTILE_NAME).expect("set the process name");
    let path = PathBuf::from(format!("/tmp/manhole-{}", std::process::id()));
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    for stream in listener.incoming().flatten() {
        let mode = mode.clone();
        std::thread::spawn(move || serve_fake(&mode, stream));
    }
}

/// One connection of the fake server.
fn serve_fake(mode: &str, mut stream: std::os::unix::net::UnixStream) {
    match mode {
        "flood" => {
            let chunk = vec![b'x'; 64 * 1024];
            while stream.write_all(&chunk).is_ok() {}
        }
        "stall" => {
            let _ = stream.write_all(b"Manhole (fake) that stalls after this line\n");
            std::thread::sleep(Duration::from_secs(3600));
        }
        _ => {
            stream
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            stream.set_read_timeout(None).unwrap();
            let escaped = serde_json::to_string(&format!("answer {HOSTILE}")).unwrap();
            let exec = first.trim().starts_with("exec");
            if exec {
                let _ = writeln!(
                    stream,
                    r#"{{"ok":true,"command":"exec","text":"","data":{{"protocol":1}}}}"#
                );
            } else {
                let _ = write!(
                    stream,
                    "Manhole (fake) {HOSTILE}\nThread 1 \"{HOSTILE}\"\n  #0 main\n\n>>> "
                );
            }
            let mut pending = (!exec && !first.trim().is_empty()).then_some(first);
            loop {
                let line = match pending.take() {
                    Some(line) => line,
                    None => {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => line,
                        }
                    }
                };
                let word = line.split_whitespace().next().unwrap_or("").to_owned();
                let written = if exec {
                    writeln!(
                        stream,
                        r#"{{"ok":true,"command":{},"text":{escaped},"data":{{}}}}"#,
                        serde_json::to_string(&word).unwrap()
                    )
                } else {
                    write!(stream, "answer {HOSTILE}\n>>> ")
                };
                if written.is_err() || word == "exit" {
                    return;
                }
            }
        }
    }
}

/// A fake server process at `/tmp/manhole-<pid>`, killed, reaped and removed on drop.
struct FakeServer {
    child: Child,
    socket: PathBuf,
}

impl FakeServer {
    fn start(mode: &str) -> FakeServer {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "fake_server_process", "--nocapture"])
            .env("MANHOLE_FAKE_SERVER", mode)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the fake server");
        let socket = PathBuf::from(format!("/tmp/manhole-{}", child.id()));
        let server = FakeServer { child, socket };
        wait_until(|| {
            let named = fs::read_to_string(format!("/proc/{}/comm", server.pid()))
                .is_ok_and(|name| name.starts_with(HOSTILE_NAME));
            (named && server.socket.exists()).then_some(())
        })
        .expect("the fake server listens");
        server
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket);
    }
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn escape_sequences_from_a_hostile_server_never_reach_the_terminal() {
    let server = FakeServer::start("hostile");
    let home = TempDir::new();

    // Interactive: the greeting, a thread name, an answer.
    let mut pty = Pty::start(&[&server.pid()], home.path());
    let greeting = pty.expect_prompt();
    assert!(
        greeting.contains(&format!("Manhole (fake) {HOSTILE_SHOWN}")),
        "{greeting:?}"
    );
    assert!(
        greeting.contains(&format!("Thread 1 \"{HOSTILE_SHOWN}\"")),
        "{greeting:?}"
    );
    pty.send("anything\r");
    pty.expect(&format!("answer {HOSTILE_SHOWN}"));
    pty.expect_prompt();
    pty.send("\x04");
    assert_eq!(pty.wait_exit().code(), Some(0), "{:?}", pty.seen);
    assert_no_raw_sequences(pty.drain());

    // One-shot on a terminal.
    let mut pty = Pty::start(&[&server.pid(), "get", "x"], home.path());
    pty.expect(&format!("answer {HOSTILE_SHOWN}"));
    assert_eq!(pty.wait_exit().code(), Some(0), "{:?}", pty.seen);
    assert_no_raw_sequences(pty.drain());

    // --raw on a terminal passes the bytes through, as asked.
    let mut pty = Pty::start(&["--raw", &server.pid(), "get", "x"], home.path());
    pty.expect(&format!("answer {HOSTILE}"));
    assert_eq!(pty.wait_exit().code(), Some(0), "{:?}", pty.seen);

    // A pipe gets the server's bytes unchanged (what a script asked for).
    let ran = run_cli(&[&server.pid(), "get", "x"]);
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, format!("answer {HOSTILE}\n").as_str()),
        "{ran:#?}"
    );
    let dir = TempDir::new();
    let ran = run_piped(&dir, "anything\n", &[&server.pid()]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    assert!(
        ran.stdout.contains(&format!("answer {HOSTILE}")),
        "{ran:#?}"
    );

    // The process name, in --list and in messages, is always shown escaped.
    let ran = run_cli(&["--list"]);
    let row = ran
        .stdout
        .lines()
        .find(|line| line.starts_with(&format!("{} ", server.pid())))
        .unwrap_or_else(|| panic!("no row for the fake server: {ran:#?}"));
    assert!(row.contains("\\x1b]52;c;eA==\\x07"), "{row:?}");
    assert_no_raw_sequences(&ran.stdout);
    let ran = run_cli(&["-s", "USR2", &server.pid()]);
    assert_fails(&ran, 12, "\\x1b]52;c;eA==\\x07");
    assert_no_raw_sequences(&ran.stderr);
}

#[test]
fn a_flood_without_newlines_is_cut_off_with_bounded_memory() {
    let server = FakeServer::start("flood");
    // One-shot: the line limit ends it, with its own exit code.
    let started = Instant::now();
    let ran = run_cli(&["--max-answer", "8", &server.pid(), "info"]);
    assert_fails(&ran, 14, "a line larger than 8 MiB");
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());

    // Interactive: a line that long is shown in pieces (with one note), memory stays flat.
    let home = TempDir::new();
    let mut pty = Pty::start(&[&server.pid()], home.path());
    pty.expect("shown in pieces");
    let client = pty.child.id();
    let mut rss = Vec::new();
    for _ in 0..3 {
        // Let a few more megabytes through between two looks.
        let target = pty.seen.len() + (8 << 20);
        while pty.seen.len() < target {
            match pty.output.recv_timeout(TIMEOUT) {
                Ok(bytes) => pty.seen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => panic!("the flood stopped reaching the terminal"),
            }
        }
        rss.push(rss_kib(client));
        pty.seen.clear();
        pty.consumed = 0;
    }
    assert!(
        rss.iter().all(|&kib| kib > 0 && kib < 64 * 1024),
        "the client's memory grows with the flood: {rss:?} KiB"
    );
}

#[test]
fn a_server_that_stalls_mid_answer_ends_one_shot_and_piped_clients() {
    let server = FakeServer::start("stall");
    let started = Instant::now();
    let ran = run_cli(&[&server.pid(), "info"]);
    assert_fails(&ran, 13, "the server stalled in the middle of its answer");
    let dir = TempDir::new();
    let ran = run_piped(&dir, "info\n", &[&server.pid()]);
    assert_fails(&ran, 13, "the server stalled in the middle of its answer");
    assert!(
        ran.stdout.contains("stalls after this line"),
        "the line before the stall is printed: {ran:#?}"
    );
    // Each waited the minimum 10 s, not for ever.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Interactive: exec, Tab completion, quoting

#[test]
fn interactive_exec_prints_frames_and_gives_the_prompt_back() {
    let app = App::demo(&[]);
    let home = TempDir::new();
    let mut pty = Pty::start(&[&app.pid().to_string()], home.path());
    pty.expect_prompt();
    pty.send("exec\r");
    pty.expect(r#"{"ok":true,"command":"exec""#);
    pty.expect_prompt();
    pty.send("echo framed\r");
    pty.expect(r#""command":"echo","text":"framed""#);
    pty.expect_prompt();
    pty.send("\x04");
    assert_eq!(pty.wait_exit().code(), Some(0), "{:?}", pty.seen);
}

#[test]
fn interactive_tab_completes_commands_and_registered_names() {
    let app = App::demo(&[]);
    let home = TempDir::new();
    let mut pty = Pty::start(&[&app.pid().to_string()], home.path());
    pty.expect_prompt();
    // A built-in command, then a registered value after `get`.
    pty.send("loc\t");
    pty.expect("locals");
    pty.send("\r");
    pty.expect("log_filter");
    pty.expect_prompt();
    pty.send("get log_f\t");
    pty.expect("get log_filter");
    pty.send("\r");
    pty.expect(&answer_line("info"));
    pty.expect_prompt();
    // A registered command.
    pty.send("ech\t");
    pty.expect("echo");
    pty.send(" completed\r");
    pty.expect(&answer_line("completed"));
    pty.expect_prompt();
    pty.send("\x04");
    assert_eq!(pty.wait_exit().code(), Some(0), "{:?}", pty.seen);
}

#[test]
fn quoted_arguments_and_format_text() {
    let app = App::demo(&[]);
    let pid = app.pid().to_string();
    let ran = run_cli(&[&pid, "get", "\"log_filter\""]);
    assert_eq!((ran.code, ran.stdout.as_str()), (0, "info\n"), "{ran:#?}");
    let ran = run_cli(&[&pid, "echo", "\"hello   world\"", "'it''s'"]);
    assert_fails(&ran, 1, "a closing ' quote must end the word");
    let ran = run_cli(&[&pid, "echo", "\"hello   world\"", "'\"quoted\"'"]);
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "hello   world \"quoted\"\n"),
        "{ran:#?}"
    );
    let ran = run_cli(&[&pid, "echo", "\"open"]);
    assert_fails(&ran, 1, "unterminated \" quote");
    // Interactive too, and `format text` says what it did.
    let home = TempDir::new();
    let mut pty = Pty::start(&[&pid], home.path());
    pty.expect_prompt();
    pty.send("echo \"two  spaces\"\r");
    pty.expect(&answer_line("two  spaces"));
    pty.expect_prompt();
    pty.send("format text\r");
    pty.expect(&answer_line("answers are text from now on"));
    pty.expect_prompt();
    pty.send("\x04");
    assert_eq!(pty.wait_exit().code(), Some(0), "{:?}", pty.seen);
}
