//! Faults in the host process: threads that come and go, thousands of threads, threads that
//! block every signal or sit in a system call they cannot leave, application locks held for
//! long, registered commands that panic or never return. Each test runs the `faults` example
//! and ends with the process alive and its manhole still answering.

use std::time::{Duration, Instant};

use manhole_e2e::{App, Client};
use serde_json::Value;

/// A session in exec framing: one JSON frame per command.
struct Exec(Client);

impl Exec {
    fn open(app: &App) -> Exec {
        let mut client = Client::connect(app.socket()).expect("connect");
        client.send("exec");
        let hello = client.read_until("\n");
        assert!(hello.contains("\"ok\":true"), "{hello}");
        Exec(client)
    }

    fn run(&mut self, command: &str) -> Value {
        self.0.send(command);
        let line = self.0.read_until("\n");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Runs `threads` and returns the dump's data.
    fn dump(&mut self) -> Value {
        let frame = self.run("threads");
        assert_eq!(frame["ok"], true, "{frame}");
        frame["data"].clone()
    }
}

/// The dump's entry for the thread called `name`.
fn thread<'a>(dump: &'a Value, name: &str) -> &'a Value {
    dump["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| {
            let names: Vec<String> = dump["threads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| format!("{} {} {}", t["name"], t["state"], t["note"]))
                .collect();
            panic!("no thread {name} in the dump: {names:?}")
        })
}

fn frames_text(thread: &Value) -> String {
    thread["frames"].to_string()
}

/// The process is alive and a fresh REPL session answers.
fn still_serving(app: &mut App) {
    assert!(app.alive(), "the process died; stderr {}", app.stderr());
    let mut c = Client::connect(app.socket()).expect("connect");
    c.skip_greeting();
    assert!(c.command("peek").trim().parse::<u64>().is_ok());
}

#[test]
fn threads_created_and_exiting_during_dumps_do_not_hurt() {
    let mut app = App::listening("faults", &["--churn"]);
    let mut exec = Exec::open(&app);
    for _ in 0..20 {
        let dump = exec.dump();
        let churner = thread(&dump, "churner");
        assert!(churner["frames"].as_array().is_some(), "{churner}");
    }
    still_serving(&mut app);
}

#[test]
fn two_thousand_threads_are_all_listed() {
    let mut app = App::listening("faults", &["--threads", "2000"]);
    let mut exec = Exec::open(&app);
    let started = Instant::now();
    let dump = exec.dump();
    let took = started.elapsed();
    let threads = dump["threads"].as_array().unwrap();
    let parked: Vec<&Value> = threads
        .iter()
        .filter(|t| t["name"].as_str().is_some_and(|n| n.starts_with("parked-")))
        .collect();
    assert_eq!(parked.len(), 2000, "counts {}", dump["counts"]);
    let captured = parked.iter().filter(|t| t["method"] == "signal").count();
    assert!(captured >= 1990, "only {captured} of 2000 answered");
    assert!(
        frames_text(parked[0]).contains("faults_parked_thread"),
        "{}",
        parked[0]
    );
    eprintln!("dump of {} threads took {took:?}", threads.len());
    // Growing further while sessions are open works too, and the next dump sees them.
    assert_eq!(exec.run("spawn 100")["ok"], true);
    let dump = exec.dump();
    assert!(dump["counts"]["threads"].as_u64().unwrap() >= 2100);
    still_serving(&mut app);
}

#[test]
fn a_thread_that_blocks_every_signal_is_listed_as_blocked() {
    let mut app = App::listening("faults", &["--block-all"]);
    let mut exec = Exec::open(&app);
    // The thread blocks its signals right after it starts: wait for the dump to see it so.
    let deadline = Instant::now() + manhole_e2e::TIMEOUT;
    loop {
        let dump = exec.dump();
        let blocked = thread(&dump, "all-blocked");
        if blocked["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("signal blocked"))
        {
            assert_eq!(blocked["method"], "proc", "{blocked}");
            assert!(dump["counts"]["blocked"].as_u64().unwrap() >= 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reported as blocked: {blocked}"
        );
    }
    // Still fine afterwards, and nothing was left pending on the blocked thread.
    exec.dump();
    let status = std::fs::read_dir(format!("/proc/{}/task", app.pid()))
        .unwrap()
        .filter_map(|t| {
            let path = t.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            (comm.trim() == "all-blocked").then(|| std::fs::read_to_string(path.join("status")))
        })
        .next()
        .expect("the thread")
        .unwrap();
    let pending = status.lines().find(|l| l.starts_with("ShdPnd:")).unwrap();
    let own = status.lines().find(|l| l.starts_with("SigPnd:")).unwrap();
    assert!(own.ends_with("0000000000000000"), "{own} {pending}");
    still_serving(&mut app);
}

#[test]
fn threads_in_long_and_uninterruptible_system_calls_do_not_stall_the_dump() {
    let mut app = App::listening(
        "faults",
        &[
            "--pipe-reader",
            "--vfork-waiter",
            "--dump-timeout-ms",
            "500",
        ],
    );
    let mut exec = Exec::open(&app);
    // Wait until the vfork waiter is in uninterruptible sleep.
    let in_d_state = manhole_e2e::wait_until(|| {
        let dump = exec.dump();
        let waiter = thread(&dump, "vfork-waiter");
        (waiter["state"] == "D").then(|| dump.clone())
    });
    let dump = in_d_state.expect("the vfork waiter never showed in state D");
    // The pipe reader is interrupted in its read and answers with its own stack.
    let reader = thread(&dump, "pipe-reader");
    assert_eq!(reader["method"], "signal", "{reader}");
    assert!(
        frames_text(reader).contains("faults_pipe_reader"),
        "{reader}"
    );
    // The waiter cannot run a handler: it is listed from /proc with a note saying why.
    let waiter = thread(&dump, "vfork-waiter");
    assert_eq!(waiter["method"], "proc", "{waiter}");
    let note = waiter["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("no answer") || note.contains("pending"),
        "{waiter}"
    );
    // The next dumps do not wait on it again for long, and the session goes on.
    let started = Instant::now();
    exec.dump();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    still_serving(&mut app);
}

#[test]
fn a_value_behind_a_held_lock_answers_lock_is_busy_in_time() {
    let mut app = App::listening("faults", &["--lock-timeout-ms", "200"]);
    let mut c = Client::connect(app.socket()).unwrap();
    c.skip_greeting();
    assert!(c.command("hold-lock 20000").contains("holding the lock"));
    let started = Instant::now();
    let answer = c.command("get guarded");
    let took = started.elapsed();
    assert!(
        answer.starts_with("error: guarded: lock is busy"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // The session goes on, other values answer.
    assert_eq!(c.command("get counter").trim(), "0");
    assert_eq!(c.command("bump").trim(), "1");
    still_serving(&mut app);
}

#[test]
fn a_panicking_command_is_reported_and_nothing_is_poisoned() {
    let mut app = App::listening("faults", &[]);
    let mut c = Client::connect(app.socket()).unwrap();
    c.skip_greeting();
    for _ in 0..3 {
        let answer = c.command("panic");
        assert!(
            answer.starts_with("error: panic: panicked: faults: asked to panic"),
            "{answer}"
        );
    }
    // Later commands and values work; the application's lock was poisoned by its own panic
    // and is read anyway, marked.
    assert_eq!(c.command("bump").trim(), "1");
    assert_eq!(c.command("peek").trim(), "1");
    assert_eq!(c.command("get guarded").trim(), "7 (lock poisoned)");
    assert!(c.command("threads").contains("Threads: "));
    app.wait_for_stderr("asked to panic");
    still_serving(&mut app);
}

#[test]
fn a_command_that_never_returns_times_out_and_the_session_stays_usable() {
    let mut app = App::listening("faults", &["--command-timeout-ms", "300"]);
    let mut c = Client::connect(app.socket()).unwrap();
    c.skip_greeting();
    for _ in 0..3 {
        let started = Instant::now();
        let answer = c.command("hang");
        assert!(
            answer.starts_with("error: hang: still running after 0.3 s"),
            "{answer}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(c.command("get counter").trim(), "0");
    }
    assert_eq!(c.command("bump").trim(), "1");
    // One stuck worker per hung command; the others finish.
    let workers = || {
        app.thread_names()
            .iter()
            .filter(|n| n.starts_with("mh-worker-"))
            .count()
    };
    assert!(
        manhole_e2e::wait_until(|| (workers() == 3).then_some(())).is_some(),
        "{} workers",
        workers()
    );
    drop(c);
    still_serving(&mut app);
}

#[test]
fn forks_from_several_threads_while_sessions_are_open_leave_everyone_well() {
    let mut app = App::listening("faults", &["--command-timeout-ms", "60000"]);
    // Two sessions stay open across the forks, one of them in the middle of nothing.
    let mut idle = Client::connect(app.socket()).unwrap();
    idle.skip_greeting();
    let mut c = Client::connect(app.socket()).unwrap();
    c.skip_greeting();
    let answer = c.command("fork-storm 4 25");
    assert_eq!(answer.trim(), "100 of 100 children exited cleanly");
    // Both sessions still answer, and the socket is still the parent's.
    assert_eq!(c.command("bump").trim(), "1");
    assert_eq!(idle.command("peek").trim(), "1");
    assert!(app.socket().exists());
    still_serving(&mut app);
}

#[test]
fn forks_during_dumps_leave_the_children_and_the_dumps_consistent() {
    let mut app = App::listening("faults", &["--command-timeout-ms", "60000"]);
    let socket = app.socket().to_path_buf();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dumper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut exec = Exec(Client::connect(&socket).unwrap());
            exec.0.send("exec");
            exec.0.read_until("\n");
            let mut dumps = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let dump = exec.dump();
                assert!(dump["counts"]["threads"].as_u64().unwrap() >= 2, "{dump}");
                dumps += 1;
            }
            dumps
        })
    };
    let mut c = Client::connect(app.socket()).unwrap();
    c.skip_greeting();
    let answer = c.command("fork-storm 3 40");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let dumps = dumper.join().expect("the dumping session failed");
    assert_eq!(answer.trim(), "120 of 120 children exited cleanly");
    assert!(dumps >= 1);
    still_serving(&mut app);
}

#[test]
fn a_registered_command_that_overflows_its_stack_gets_rusts_own_report() {
    use std::os::unix::process::ExitStatusExt;
    let mut app = App::listening("faults", &[]);
    let mut c = Client::connect(app.socket()).expect("connect");
    c.skip_greeting();
    c.send("overflow");
    let status = app.wait_exit();
    let stderr = app.stderr();
    // SIGSEGV reached Rust's guard-page handler on the worker's alternate stack, which printed
    // its report and aborted; with SIGSEGV blocked the kernel would have killed the process with
    // a bare SIGSEGV instead.
    assert!(
        stderr.contains("thread 'mh-worker-1' (") && stderr.contains("has overflowed its stack"),
        "{status:?}; stderr {stderr:?}"
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "{status:?} (core dumped: {}); stderr {stderr:?}",
        status.core_dumped()
    );
}
