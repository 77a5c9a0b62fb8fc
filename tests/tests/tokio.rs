//! An async application as an operator sees it: `tokio_app`'s runtime metrics, its async command
//! and value, a hanging command cancelled by the command timeout, and (with a build made with
//! `--cfg tokio_unstable`, see `.ci/taskdump.sh`) every task's async backtrace.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use manhole_e2e::{App, Client, TIMEOUT, dump_sections, wait_until};
use serde_json::Value;

/// The environment variable naming a `tokio_app` built with `--cfg tokio_unstable`.
const TASKDUMP_BIN: &str = "MANHOLE_TASKDUMP_BIN";

/// Starts `tokio_app` (this workspace's build, or the one at `exe`) and waits for its socket.
fn start(exe: Option<&Path>, args: &[&str]) -> App {
    let mut app = match exe {
        Some(exe) => App::start_exe(exe, args, &[]),
        None => App::start("tokio_app", args, &[]),
    };
    let line = app.wait_for_line("manhole listening on ");
    app.socket = Some(PathBuf::from(
        line.trim_start_matches("manhole listening on "),
    ));
    app
}

fn session(app: &App) -> (Client, String) {
    let mut client = Client::connect(app.socket()).expect("connect to tokio_app");
    let greeting = client.skip_greeting();
    (client, greeting)
}

/// Runs `line` in a session switched to `format json` and returns the frame's `data`.
fn data(client: &mut Client, line: &str) -> Value {
    let answer = client.command(line);
    let frame: Value = serde_json::from_str(answer.trim())
        .unwrap_or_else(|e| panic!("{line}: not one JSON frame ({e}): {answer}"));
    assert_eq!(frame["ok"], true, "{line}: {frame}");
    frame["data"].clone()
}

#[test]
fn the_greeting_names_the_runtime_the_banner_and_the_worker_threads() {
    let app = start(None, &[]);
    let (_client, greeting) = session(&app);
    assert!(
        greeting.contains("Tokio runtime attached: multi_thread, 2 workers"),
        "{greeting}"
    );
    assert!(
        greeting.contains("tokio_app: a TCP server and a periodic job"),
        "the application's banner follows the built-in one:\n{greeting}"
    );
    // Workers with one stack are one group: count the threads the headers stand for.
    let workers: usize = dump_sections(&greeting)
        .iter()
        .filter(|s| s.header.contains("\"tokio-rt-worker"))
        .map(|s| s.count)
        .sum();
    assert!(
        workers >= 2,
        "two tokio worker threads in the dump:\n{greeting}"
    );
}

#[test]
fn runtime_figures_are_present_and_plausible() {
    let app = start(None, &[]);
    let (mut client, _) = session(&app);
    let text = client.command("runtime");
    assert!(
        text.starts_with("Runtime: multi_thread, 2 workers, "),
        "{text}"
    );
    assert!(text.contains("  worker 1: busy "), "{text}");
    client.command("format json");
    let runtime = data(&mut client, "runtime");
    assert_eq!(runtime["flavor"], "multi_thread", "{runtime}");
    assert_eq!(runtime["workers"], 2, "{runtime}");
    let alive = runtime["alive_tasks"].as_u64().expect("alive_tasks");
    assert!(
        alive >= 2,
        "accept_loop and periodic_job are alive: {runtime}"
    );
    assert!(runtime["global_queue_depth"].is_u64(), "{runtime}");
    let workers = runtime["worker_stats"].as_array().expect("worker_stats");
    assert_eq!(workers.len(), 2, "{runtime}");
    for worker in workers {
        assert!(
            worker["busy_secs"].as_f64().is_some_and(|b| b >= 0.0),
            "{worker}"
        );
        assert!(worker["park_count"].is_u64(), "{worker}");
    }
    // The periodic job wakes a worker ten times a second: parks add up.
    let parks = |runtime: &Value| -> u64 {
        runtime["worker_stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["park_count"].as_u64().unwrap())
            .sum()
    };
    let before = parks(&runtime);
    wait_until(|| (parks(&data(&mut client, "runtime")) > before).then_some(()))
        .expect("the workers' park counts grow");
}

#[test]
fn an_async_command_and_an_async_value_answer_from_the_runtime() {
    let mut app = start(None, &[]);
    let (mut client, _) = session(&app);
    let status = client.command("job_status");
    assert!(status.starts_with("periodic_job: "), "{status}");
    assert!(status.contains(" ticks in "), "{status}");

    let address = app.wait_for_line("tcp listening on ");
    let address = address.trim_start_matches("tcp listening on ");
    let stream = TcpStream::connect(address).expect("connect to the app's TCP server");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut hello = String::new();
    BufReader::new(stream).read_line(&mut hello).unwrap();
    assert_eq!(hello, "hello, connection 1\n");
    assert_eq!(client.command("connections").trim(), "1");
    let peers = client.command("recent_peers");
    assert!(peers.starts_with("[127.0.0.1:"), "{peers}");

    let locals = client.command("locals");
    assert!(
        locals
            .lines()
            .any(|l| l.starts_with("job_status") && l.contains("async command")),
        "{locals}"
    );
}

#[test]
fn a_hanging_async_command_is_cancelled_at_the_timeout_and_the_session_goes_on() {
    let app = start(None, &["--command-timeout-ms", "300"]);
    let (mut client, _) = session(&app);
    let started = Instant::now();
    let answer = client.command("hang");
    let waited = started.elapsed();
    assert!(
        answer.starts_with("error: hang: timed out after 0.3 s and was cancelled"),
        "{answer}"
    );
    assert!(
        waited >= Duration::from_millis(300),
        "answered after {waited:?}"
    );
    // The future was dropped, not left running: its drop guard counted it.
    assert_eq!(client.command("cancelled_hangs").trim(), "1");
    // The same session goes on, async and blocking commands alike.
    let status = client.command("job_status");
    assert!(status.starts_with("periodic_job: "), "{status}");
    let answer = client.command("hang_sync");
    assert!(
        answer.starts_with("error: hang_sync: still running after 0.3 s"),
        "{answer}"
    );
    assert!(client.command("runtime").starts_with("Runtime: "));
    assert_eq!(client.command("hang").lines().count(), 1);
    assert_eq!(client.command("cancelled_hangs").trim(), "2");
}

#[test]
fn tasks_says_how_to_enable_task_dumps_in_a_stable_build() {
    if cfg!(tokio_unstable) {
        return; // This build has task dumps; the test below covers them.
    }
    let app = start(None, &[]);
    let (mut client, _) = session(&app);
    let answer = client.command("tasks");
    assert_eq!(answer.lines().count(), 1, "{answer}");
    assert!(answer.starts_with("error: task dumps need "), "{answer}");
    assert!(answer.contains("--cfg tokio_unstable"), "{answer}");
}

/// Files of the frames of one task in the `tasks` data.
fn task_files(task: &Value) -> Vec<String> {
    task["backtraces"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|bt| bt.as_array().unwrap().iter())
        .flat_map(|frame| frame["symbols"].as_array().unwrap().iter())
        .filter_map(|symbol| symbol["file"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn tasks_lists_the_named_tasks_with_the_examples_own_frames() {
    let Some(exe) = std::env::var_os(TASKDUMP_BIN) else {
        eprintln!("{TASKDUMP_BIN} is not set: skipped (.ci/taskdump.sh runs it)");
        return;
    };
    // Task dumps are opt-in: tokio's dump can wedge a busy worker (tokio-rs/tokio#8370).
    let default = start(Some(Path::new(&exe)), &[]);
    let (mut client, _) = session(&default);
    let off = client.command("tasks");
    assert!(
        off.starts_with("error: task dumps are off") && off.contains("task_dumps"),
        "{off}"
    );
    assert_eq!(off.trim_end().lines().count(), 1, "{off}");
    drop(client);
    drop(default);

    // One worker: with two, that tokio bug can hang a dump on a loaded machine.
    let app = start(Some(Path::new(&exe)), &["--task-dumps", "--workers", "1"]);
    let (mut client, _) = session(&app);
    let text = client.command("tasks");
    assert!(text.starts_with("Tasks: "), "{text}");
    // The select! closures keep their function's path in the debug info; async fn bodies show as
    // `{async_fn#0}` with their file and line.
    assert!(text.contains("tokio_app::accept_loop::"), "{text}");
    assert!(text.contains("tokio_app::periodic_job::"), "{text}");
    assert!(text.contains("tokio_app.rs:"), "{text}");
    assert!(
        text.contains(r#" "accept-loop" ("#),
        "tasks show their names: {text}"
    );
    assert!(text.contains(r#" "periodic-job" ("#), "{text}");

    client.command("format json");
    let dump = data(&mut client, "tasks");
    let tasks = dump["tasks"].as_array().expect("tasks");
    let own = |needle: &str| {
        tasks.iter().any(|task| {
            let files = task_files(task);
            files
                .iter()
                .any(|f| f.ends_with("examples/src/bin/tokio_app.rs"))
                && files.iter().any(|f| f.contains(needle))
        })
    };
    assert!(
        own("sync/watch.rs"),
        "accept_loop waits on its shutdown channel: {text}"
    );
    assert!(
        own("time/interval.rs") || own("sync/mpsc"),
        "periodic_job waits on its interval or channel: {text}"
    );
    let runtime = data(&mut client, "runtime");
    assert_eq!(runtime["unstable_metrics"], true, "{runtime}");
    assert!(runtime["blocking_threads"].is_u64(), "{runtime}");

    let named = |name: &str| tasks.iter().filter(|t| t["name"] == name).count();
    assert_eq!(named("accept-loop"), 1, "{dump}");
    assert_eq!(named("periodic-job"), 1, "{dump}");
    let filtered = data(&mut client, "tasks accept_loop");
    let matching = filtered["tasks"].as_array().unwrap().len();
    assert!(
        matching >= 1 && matching < tasks.len(),
        "the filter keeps the accept loop only: {filtered}"
    );
    // A tokio dump lists only the tasks it could trace at that moment (seen once in CI: 1 task,
    // the periodic job mid-poll): ask until the job is in one, then check the filter.
    let by_name = wait_until(|| {
        let frame: Value =
            serde_json::from_str(client.command("tasks periodic-job").trim()).ok()?;
        (frame["ok"] == true).then(|| frame["data"].clone())
    })
    .expect("a task dump lists the periodic job");
    let by_name = by_name["tasks"].as_array().unwrap();
    assert_eq!(
        by_name.len(),
        1,
        "a filter matches a task's name: {by_name:?}"
    );
    assert_eq!(by_name[0]["name"], "periodic-job");
}

#[test]
fn a_forked_child_does_not_use_the_parents_runtime() {
    let mut app = start(None, &["--fork", "--command-timeout-ms", "20000"]);
    let line = app.wait_for_line("child pid=");
    let child: u32 = line.trim_start_matches("child pid=").parse().unwrap();
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill has no memory-safety requirements.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
            let _ = std::fs::remove_file(manhole_e2e::default_path(self.0));
        }
    }
    let _child = Kill(child);
    let path = manhole_e2e::default_path(child);
    manhole_e2e::wait_for_socket(&path);
    let mut client = Client::connect(&path).expect("connect to the child");
    let greeting = client.skip_greeting();
    assert!(greeting.contains(&format!("pid {child}")), "{greeting}");
    assert!(!greeting.contains("Tokio runtime attached"), "{greeting}");
    // Each answers at once instead of waiting on workers that do not exist in the child.
    let started = Instant::now();
    for line in ["runtime", "tasks", "job_status", "get recent_peers"] {
        let answer = client.command(line);
        // A stable build's `tasks` says first that it has no task dumps at all.
        let no_dumps = line == "tasks" && answer.contains("tokio_unstable");
        assert!(
            answer.contains("forked child") || no_dumps,
            "{line}: {answer}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // What needs no runtime still works.
    assert!(client.command("get ticks").trim().parse::<u64>().is_ok());
    // The parent still has its runtime.
    let (mut parent, greeting) = session(&app);
    assert!(greeting.contains("Tokio runtime attached"), "{greeting}");
    assert!(parent.command("job_status").contains("ticks"));
}
