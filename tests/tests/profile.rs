//! `profile [SECONDS]` end to end, against the `split` example: one thread `busy` spending 3/4
//! of its CPU time in `split_hot_three_quarters` and 1/4 in `split_cold_one_quarter`, and
//! sleeping threads `sleeper-<i>`.
//!
//! Each test starts its own `split` on its own socket. The profiles are short (a few seconds)
//! and their checks tolerate a loaded machine: the busy thread gets fewer samples when it gets
//! less CPU, but its split does not change.

use std::path::Path;
use std::process::Command;

use manhole_e2e::{App, Client, TempDir, bin, run_with_timeout, wait_until};
use serde_json::Value;

/// Starts `split` on a socket in `dir` with `args`.
fn split(dir: &TempDir, args: &[&str]) -> App {
    let socket = dir.join("split.sock");
    let mut all = vec!["--socket-path", socket.to_str().unwrap()];
    all.extend_from_slice(args);
    App::listening("split", &all)
}

/// An exec-framed client: one JSON frame per answer, data only.
fn exec_client(socket: &Path) -> Client {
    let mut client = Client::connect(socket).expect("connect");
    client.send("exec data");
    let hello = client.read_until("\n");
    assert!(hello.contains("\"ok\":true"), "{hello}");
    client
}

/// Sends `line` on an exec client and returns its frame.
fn frame(client: &mut Client, line: &str) -> Value {
    client.send(line);
    let text = client.read_until("\n");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("bad frame {text:?}: {e}"))
}

/// Samples of frames whose function name contains `needle`, from a top list (`self`/`total`).
fn samples_of(data: &Value, list: &str, needle: &str) -> u64 {
    data[list]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["function"].as_str().unwrap().contains(needle))
        .map(|f| f["samples"].as_u64().unwrap())
        .max()
        .unwrap_or(0)
}

/// The POSIX timers of process `pid` (`/proc/<pid>/timers` lists one `ID:` line each).
fn timers_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/timers"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("ID:"))
        .count()
}

#[test]
fn the_split_is_found_within_five_points_and_sleepers_get_no_samples() {
    let dir = TempDir::new();
    // 499 Hz: enough samples to judge the split even when a loaded machine gives the busy
    // thread a small part of a CPU (the split is of its CPU time, whatever it gets).
    let app = split(&dir, &["--sleepers", "3", "--profile-hz", "499"]);
    let mut client = exec_client(app.socket());
    let (mut samples, mut hot, mut cold) = (0, 0, 0);
    let mut last = Value::Null;
    for _ in 0..6 {
        let answer = frame(&mut client, "profile 5");
        assert_eq!(answer["ok"], true, "{answer}");
        let data = &answer["data"];
        samples += data["samples"].as_u64().unwrap();
        hot += samples_of(data, "total", "split_hot_three_quarters");
        cold += samples_of(data, "total", "split_cold_one_quarter");
        last = data.clone();
        check_threads(data);
        if samples >= 300 {
            break;
        }
    }
    assert!(samples >= 100, "too few samples to judge: {last}");
    let share = 100.0 * hot as f64 / (hot + cold) as f64;
    assert!(
        (70.0..=80.0).contains(&share),
        "hot share {share:.1}% (hot {hot}, cold {cold} of {samples}), expected 75 +- 5: {last}"
    );
    // Nearly every sample of the busy thread is in one of the two (a few land in the loop).
    assert!(
        (hot + cold) as f64 >= 0.9 * samples as f64,
        "hot {hot} + cold {cold} of {samples}"
    );
    // Nothing is left armed.
    assert_eq!(timers_of(app.pid()), 0, "timers left after the profile");
}

/// Sleepers and manhole threads get no samples; every sample is the busy thread's; the folded
/// stacks add up to the samples, each rooted at its thread's name.
fn check_threads(data: &Value) {
    let samples = data["samples"].as_u64().unwrap();
    let threads = data["threads"].as_array().unwrap();
    let sleepers: Vec<&Value> = threads
        .iter()
        .filter(|t| t["name"].as_str().unwrap().starts_with("sleeper-"))
        .collect();
    assert_eq!(sleepers.len(), 3, "every sleeper is listed: {data}");
    for sleeper in sleepers {
        assert_eq!(sleeper["samples"], 0, "a sleeper was sampled: {data}");
    }
    assert!(
        !threads
            .iter()
            .any(|t| t["name"].as_str().unwrap().starts_with("mh-")),
        "manhole threads are not sampled: {data}"
    );
    let busy = threads.iter().find(|t| t["name"] == "busy").unwrap();
    assert_eq!(busy["samples"].as_u64().unwrap(), samples, "{data}");
    // The folded stacks add up to the samples, each rooted at its thread's name.
    let folded = data["folded"].as_array().unwrap();
    let mut total = 0;
    for line in folded {
        let line = line.as_str().unwrap();
        let (stack, count) = line.rsplit_once(' ').unwrap();
        assert!(stack.starts_with("busy;"), "{line}");
        total += count.parse::<u64>().unwrap();
    }
    assert_eq!(total, samples);
}

#[test]
fn a_second_profile_is_refused_and_dumps_work_during_a_profile() {
    let dir = TempDir::new();
    let app = split(&dir, &[]);
    let mut first = exec_client(app.socket());
    first.send("profile 4");
    app.wait_for_stderr("Profile started");
    assert!(
        wait_until(|| (timers_of(app.pid()) > 0).then_some(())).is_some(),
        "no timer armed during the profile"
    );

    let mut second = exec_client(app.socket());
    let refused = frame(&mut second, "profile 1");
    assert_eq!(refused["ok"], false, "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains("already running"), "{error}");
    assert!(!error.contains('\n'), "one line: {error:?}");

    // A dump during the profile: every thread, the busy one inside its loop.
    let mut repl = Client::connect(app.socket()).expect("connect");
    repl.skip_greeting();
    let dump = repl.command("threads busy");
    assert!(dump.contains("split_busy_loop"), "{dump}");
    assert!(!dump.contains("error"), "{dump}");

    let text = first.read_until("\n");
    let answer: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(answer["data"]["samples"].as_u64().unwrap() > 0, "{answer}");
    assert_eq!(timers_of(app.pid()), 0, "timers left after the profile");
    // And the next profile runs.
    let again = frame(&mut second, "profile 0.3");
    assert_eq!(again["ok"], true, "{again}");
}

#[test]
fn a_client_that_hangs_up_ends_its_profile_and_disarms_the_timers() {
    let dir = TempDir::new();
    let app = split(&dir, &[]);
    let mut client = exec_client(app.socket());
    client.send("profile 60");
    app.wait_for_stderr("Profile started");
    drop(client);
    // Well before the 60 s: the session noticed, deleted every timer, and a new profile runs.
    app.wait_for_stderr("Profile stopped early: the session ended");
    // The stopped profile still symbolizes its samples before it lets the next one run ("a
    // profile is already running" until then): ask again until it does.
    let mut next = exec_client(app.socket());
    let answer = wait_until(|| {
        let answer = frame(&mut next, "profile 0.3");
        let busy = answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("already running"));
        (!busy).then_some(answer)
    })
    .expect("the next profile runs once the stopped one has finished");
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(timers_of(app.pid()), 0);
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let dir = TempDir::new();
    let app = split(&dir, &[]);
    let mut client = exec_client(app.socket());
    for line in ["profile 0", "profile 61", "profile soon", "profile 1 2"] {
        let answer = frame(&mut client, line);
        assert_eq!(answer["ok"], false, "{line}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .starts_with("usage: profile"),
            "{answer}"
        );
    }
}

#[test]
fn a_fork_during_a_profile_leaves_the_child_clean() {
    let dir = TempDir::new();
    // The default socket path: the child listens at /tmp/manhole-<childpid> (reinstall_at_fork).
    let mut app = App::start("split", &["--fork-child"], &[]);
    let line = app.wait_for_line("manhole listening on ");
    let socket = std::path::PathBuf::from(line.trim_start_matches("manhole listening on "));
    app.socket = Some(socket.clone());
    let mut profiling = exec_client(&socket);
    profiling.send("profile 3");
    app.wait_for_stderr("Profile started");
    let mut other = exec_client(&socket);
    let forked = frame(&mut other, "fork");
    assert_eq!(forked["ok"], true, "{forked}");
    let output = forked["data"]["output"].as_str().unwrap();
    let child: u32 = output.trim_start_matches("child pid=").parse().unwrap();
    struct ChildSocket(std::path::PathBuf);
    impl Drop for ChildSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let child_socket = ChildSocket(format!("/tmp/manhole-{child}").into());
    let _ = &dir;
    // No timer in the child (POSIX timers are not inherited), and the child is not stuck in
    // its parent's profile: it runs one of its own.
    assert_eq!(timers_of(child), 0);
    let connected = wait_until(|| Client::connect(&child_socket.0).ok()).expect("child listens");
    drop(connected);
    let mut in_child = exec_client(&child_socket.0);
    let answer = frame(&mut in_child, "profile 0.3");
    assert_eq!(answer["ok"], true, "the child refused a profile: {answer}");
    assert_eq!(timers_of(child), 0);
    let parent = profiling.read_until("\n");
    assert!(parent.contains("\"ok\":true"), "{parent}");
    // The child exits once its parent is gone (when `app` drops).
}

/// `manhole-cli` with `args` and then the socket and `profile SECONDS`.
fn cli_profile(args: &[&str], socket: &Path, seconds: &str) -> std::process::Output {
    let mut command = Command::new(bin("manhole-cli"));
    command
        .args(args)
        .arg(socket)
        .args(["profile", seconds])
        .env_remove("MANHOLE");
    run_with_timeout(&mut command)
}

#[test]
fn the_cli_writes_folded_stacks_that_inferno_reads_and_a_flame_graph_naming_the_hot_functions() {
    let dir = TempDir::new();
    let app = split(&dir, &[]);
    let folded = cli_profile(&["--folded"], app.socket(), "3");
    assert!(folded.status.success(), "{folded:?}");
    let text = String::from_utf8(folded.stdout).unwrap();
    assert!(text.lines().count() > 0, "no folded stacks");
    for line in text.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("STACK COUNT");
        assert!(count.parse::<u64>().is_ok(), "{line}");
        assert!(stack.starts_with("busy;"), "{line}");
    }
    assert!(text.contains("split_hot_three_quarters"), "{text}");
    // inferno reads the lines as they are.
    let mut options = inferno::flamegraph::Options::default();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, text.lines(), &mut svg)
        .expect("inferno parses the folded output");
    assert!(String::from_utf8_lossy(&svg).contains("split_hot_three_quarters"));

    let path = dir.join("app.svg");
    let drawn = cli_profile(&["--flamegraph", path.to_str().unwrap()], app.socket(), "3");
    assert!(drawn.status.success(), "{drawn:?}");
    let summary = String::from_utf8(drawn.stdout).unwrap();
    assert!(summary.contains("Flame graph written to"), "{summary}");
    assert!(summary.contains("Samples per thread"), "{summary}");
    let svg = std::fs::read_to_string(&path).expect("the SVG was written");
    assert!(
        svg.starts_with("<?xml") || svg.contains("<svg"),
        "not an SVG"
    );
    assert!(
        svg.contains("split_hot_three_quarters"),
        "hot function missing"
    );
    assert!(
        svg.contains("split_cold_one_quarter"),
        "cold function missing"
    );

    // Not a profile: a usage error, nothing written.
    let mut command = Command::new(bin("manhole-cli"));
    command
        .args(["--folded"])
        .arg(app.socket())
        .arg("threads")
        .env_remove("MANHOLE");
    let refused = run_with_timeout(&mut command);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
}

#[test]
fn a_piped_client_waits_out_a_profile_longer_than_its_answer_timeout() {
    // Piped mode gives up after max(--timeout, 10 s) of silence while an answer is owed; a
    // `profile 11` is silent for 11 s, and the line after it gets the usual wait again.
    let dir = TempDir::new();
    let app = split(&dir, &[]);
    let input = dir.join("input");
    std::fs::write(&input, "profile 11\ninfo\n").unwrap();
    let mut command = Command::new(bin("manhole-cli"));
    command
        .arg(app.socket())
        .stdin(std::fs::File::open(&input).unwrap())
        .env_remove("MANHOLE");
    let output = run_with_timeout(&mut command);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("Profile: 11.0 s"), "{stdout}");
    assert!(
        stdout.contains(&format!("pid {} (ppid", app.pid())),
        "{stdout}"
    );
}
