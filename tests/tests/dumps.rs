//! Dumps a person can read, end to end: the greeting of 1,000 identical threads, the JSON that
//! keeps every thread besides the groups, std's start-up frames folded in the demo, threads
//! waiting on one lock grouped by it, `threads NAME` matching a whole name first, and sleepers
//! that have not run since a dump shown again from it (`--fresh` signals them).

use std::collections::HashSet;

use manhole_e2e::{App, Client, asleep, dump_sections, run_cli, wait_for_socket, wait_until};
use serde_json::Value;

/// The longest line the short layout may print.
const MAX_LINE: usize = 200;

/// Frames of std's and libc's start-up, as the issue lists them, and the call shims between.
const SCAFFOLDING: &[&str] = &[
    "__rust_begin_short_backtrace",
    "__rust_end_short_backtrace",
    "lang_start",
    "catch_unwind",
    "do_call",
    "__rust_try",
    "spawn_unchecked",
    "thread_start",
    "start_thread",
    "clone3",
    "__libc_start_main",
    "__libc_start_call_main",
    "call_once",
    " _start (",
];

/// `bare` with `args` and a manhole from `MANHOLE`, once its socket is there and its sleepers
/// all sleep in `clock_nanosleep` (`ready` comes when they pass a barrier, not when they sleep:
/// a dump at once would catch some on their way, in other frames or running).
fn bare(args: &[&str]) -> App {
    let app = manhole_e2e::bare(Some(""), args);
    wait_for_socket(app.socket());
    let sleepers = args
        .windows(2)
        .find(|w| w[0] == "--threads")
        .map_or(4, |w| w[1].parse().unwrap());
    wait_until(|| (asleep(app.pid(), "sleeper-") == sleepers).then_some(()))
        .expect("the sleepers fall asleep");
    app
}

fn greeting(app: &App) -> (Client, String) {
    let mut client = Client::connect(app.socket()).expect("connect");
    let greeting = client.skip_greeting();
    (client, greeting)
}

/// The number in the dump's summary line `Threads: N (...`.
fn summary_count(text: &str) -> usize {
    let line = text
        .lines()
        .find(|l| l.starts_with("Threads: "))
        .unwrap_or_else(|| panic!("no summary line in {text}"));
    line["Threads: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"))
}

/// The frame lines of a dump's text: numbered ones and the inlined ones under them.
fn frame_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("  #") || l.starts_with(&" ".repeat(25)))
        .collect()
}

fn longest_line(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

fn dump_json(app: &App, args: &[&str]) -> Value {
    let pid = app.pid().to_string();
    let mut all = vec!["--json", &pid, "threads"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = run_cli(&all);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Checks that `dump`'s groups hold every thread exactly once, and returns the groups.
fn groups_account_for_every_thread(dump: &Value) -> &Vec<Value> {
    let threads = dump["threads"].as_array().expect("threads");
    assert_eq!(threads.len() as u64, dump["counts"]["threads"], "{dump}");
    let groups = dump["groups"].as_array().expect("groups");
    let mut seen = HashSet::new();
    for group in groups {
        let tids = group["tids"].as_array().unwrap();
        assert_eq!(group["count"], tids.len(), "{group}");
        for tid in tids {
            assert!(seen.insert(tid.as_i64().unwrap()), "{tid} in two groups");
        }
    }
    let all: HashSet<i64> = threads.iter().map(|t| t["tid"].as_i64().unwrap()).collect();
    assert_eq!(seen, all, "the groups hold exactly the dump's threads");
    groups
}

#[test]
fn a_thousand_identical_threads_greet_in_150_lines_and_every_one_is_counted() {
    let app = bare(&["--threads", "1000"]);
    let (_client, greeting) = greeting(&app);
    let lines = greeting.lines().count();
    println!(
        "1,000-thread greeting: {lines} lines, {} bytes, longest line {}",
        greeting.len(),
        longest_line(&greeting)
    );
    assert!(lines <= 150, "{lines} lines:\n{greeting}");
    assert!(longest_line(&greeting) <= MAX_LINE, "{greeting}");
    let total = summary_count(&greeting);
    assert!(total >= 1001, "{greeting}");
    let sections = dump_sections(&greeting);
    assert_eq!(
        sections.iter().map(|s| s.count).sum::<usize>(),
        total,
        "the groups account for every thread of the summary:\n{greeting}"
    );
    let sleepers = sections
        .iter()
        .find(|s| s.header.contains("\"sleeper-"))
        .unwrap_or_else(|| panic!("no sleepers in {greeting}"));
    assert!(
        sleepers
            .header
            .starts_with("1000 threads \"sleeper-0..999\" (S sleeping) [signal], tids "),
        "{greeting}"
    );
    assert!(sleepers.body.contains("bare_sleeper_loop"), "{greeting}");

    // Each thread on its own, on request: a thousand sleepers' headers.
    let pid = app.pid().to_string();
    let (code, each, _) = run_cli(&[&pid, "threads", "--all"]);
    assert_eq!(code, 0);
    let each = dump_sections(&each);
    assert!(each.iter().all(|s| s.count == 1));
    assert_eq!(
        each.iter()
            .filter(|s| s.header.contains("\"sleeper-"))
            .count(),
        1000
    );
}

#[test]
fn the_json_keeps_every_thread_and_full_names_and_adds_the_groups() {
    let app = bare(&["--threads", "1000"]);
    let dump = dump_json(&app, &[]);
    let groups = groups_account_for_every_thread(&dump);
    let sleepers = groups
        .iter()
        .find(|g| g["names"] == "sleeper-0..999")
        .unwrap_or_else(|| panic!("no sleepers' group in {groups:?}"));
    assert_eq!(sleepers["count"], 1000);
    assert_eq!(sleepers["state"], "S");
    assert!(
        sleepers["startup_frames"].as_u64().unwrap() > 0,
        "{sleepers}"
    );
    // Every frame with its full name: the start-up that the text folds, generics and all.
    let sleeper = dump["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "sleeper-7")
        .unwrap();
    let names: Vec<&str> = sleeper["frames"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["symbols"].as_array().unwrap())
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        names.iter().any(|n| n.contains("start_thread")),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.contains("catch_unwind<") && n.len() > 100),
        "{names:?}"
    );
    assert!(names.iter().all(|n| !n.contains('…')), "{names:?}");
    assert_eq!(
        sleeper["frames"].as_array().unwrap().len() as u64,
        sleepers["frames"].as_u64().unwrap()
    );

    // The same in a session's `format json`, however the text is asked for.
    let mut client = Client::connect(app.socket()).expect("connect");
    client.skip_greeting();
    client.command("format json");
    let frame: Value = serde_json::from_str(client.command("threads --all").trim()).unwrap();
    groups_account_for_every_thread(&frame["data"]);
}

#[test]
fn a_sleeper_shows_libc_names_and_its_own_file_lines_with_inlined_frames() {
    let app = bare(&["--threads", "4"]);
    let dump = dump_json(&app, &[]);
    let sleeper = dump["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "sleeper-2")
        .unwrap_or_else(|| panic!("no sleeper-2 in {dump}"));
    let frames = sleeper["frames"].as_array().unwrap();
    let symbols = |f: &Value| f["symbols"].as_array().unwrap().clone();
    let names: Vec<String> = frames
        .iter()
        .flat_map(symbols)
        .filter_map(|s| s["name"].as_str().map(String::from))
        .collect();
    // libc's frames are named from libc6-dbg's symbol table: the public name of each, without
    // a symbol version, and no file or line (its DWARF is not read).
    for (at, name) in [(0, "clock_nanosleep"), (frames.len() - 2, "start_thread")] {
        let frame = &frames[at];
        assert!(
            frame["module"].as_str().unwrap().contains("libc.so"),
            "{frame}"
        );
        assert_eq!(symbols(frame)[0]["name"], name, "{names:?}");
        assert_eq!(symbols(frame)[0]["file"], Value::Null, "{frame}");
    }
    assert_eq!(
        symbols(frames.last().unwrap())[0]["name"],
        "clone3",
        "{names:?}"
    );
    // The program's own frames: file and line, and std's inlined frames.
    let own = frames
        .iter()
        .flat_map(symbols)
        .find(|s| s["name"] == "bare::bare_sleeper_loop")
        .unwrap_or_else(|| panic!("{names:?}"));
    assert!(
        own["file"]
            .as_str()
            .unwrap()
            .ends_with("examples/src/bin/bare.rs")
            && own["line"].is_u64(),
        "{own}"
    );
    let sleep = frames
        .iter()
        .find(|f| {
            symbols(f)
                .iter()
                .any(|s| s["name"] == "std::thread::functions::sleep")
        })
        .unwrap_or_else(|| panic!("{names:?}"));
    assert!(symbols(sleep).len() > 1, "no inlined frames in {sleep}");
    assert!(symbols(sleep).iter().all(|s| s["line"].is_u64()), "{sleep}");
}

#[test]
fn std_start_up_frames_are_folded_in_the_demo_greeting() {
    let app = App::demo(&[]);
    let (mut client, greeting) = greeting(&app);
    let frames = frame_lines(&greeting);
    let scaffolding = |lines: &[&str]| {
        lines
            .iter()
            .filter(|l| SCAFFOLDING.iter().any(|s| l.contains(s)))
            .count()
    };
    let folded = scaffolding(&frames);
    println!(
        "demo greeting: {} lines, {} frame lines, {folded} of them start-up scaffolding, longest line {}",
        greeting.lines().count(),
        frames.len(),
        longest_line(&greeting)
    );
    assert!(!frames.is_empty(), "{greeting}");
    assert!(
        folded * 100 <= frames.len() * 30,
        "{folded} of {} frame lines are scaffolding:\n{greeting}",
        frames.len()
    );
    assert!(longest_line(&greeting) <= MAX_LINE, "{greeting}");
    assert!(
        greeting.contains(" start-up frames hidden (std runtime, libc)"),
        "{greeting}"
    );
    // The manhole's own threads are one line each.
    let sections = dump_sections(&greeting);
    let own: Vec<_> = sections
        .iter()
        .filter(|s| s.header.contains("\"mh-"))
        .collect();
    assert!(own.len() >= 2, "listener and session: {greeting}");
    for section in own {
        assert!(
            section.header.contains(": the manhole's own thread"),
            "{section:?}"
        );
        assert!(section.body.is_empty(), "{section:?}");
    }

    // `--full` shows everything, so the same measure finds the scaffolding there.
    let full = client.command("threads --full");
    let full_frames = frame_lines(&full);
    let unfolded = scaffolding(&full_frames);
    println!(
        "demo threads --full: {} lines, {} frame lines, {unfolded} scaffolding, longest line {}",
        full.lines().count(),
        full_frames.len(),
        longest_line(&full)
    );
    assert!(unfolded * 100 > full_frames.len() * 30, "{full}");
    assert!(!full.contains("hidden"), "{full}");
    // The manhole's threads in full too (the session's own stack; the others block the dump
    // signal and are listed from /proc).
    assert!(
        full.contains("\"mh-session-1\" (R running) [self]\n  #0 "),
        "{full}"
    );
}

#[test]
fn threads_waiting_on_a_static_lock_are_one_group_that_names_it() {
    let app = bare(&["--threads", "1", "--lock-waiters", "8"]);
    // The waiters block on the lock some time after `ready`: dump until all eight wait.
    let dump = wait_until(|| {
        let dump = dump_json(&app, &[]);
        let waiting = dump["threads"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| {
                t["name"].as_str().unwrap().starts_with("lock-waiter-") && t["futex"].is_object()
            })
            .count();
        (waiting == 8).then_some(dump)
    })
    .expect("eight threads waiting on the lock");
    let groups = groups_account_for_every_thread(&dump);
    let waiters = groups
        .iter()
        .find(|g| g["names"] == "lock-waiter-0..7")
        .unwrap_or_else(|| panic!("the waiters are not one group: {groups:?}"));
    assert_eq!(waiters["count"], 8);
    let address = waiters["futex"]["address"].as_str().unwrap();
    assert_eq!(waiters["futex"]["static"], "bare::SHARED_LOCK", "{waiters}");
    let holder = dump["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "lock-holder")
        .unwrap();
    assert_eq!(
        holder["futex"],
        Value::Null,
        "the holder sleeps, holding it"
    );

    let pid = app.pid().to_string();
    let (code, text, _) = run_cli(&[&pid, "threads"]);
    assert_eq!(code, 0);
    let sections = dump_sections(&text);
    let group = sections
        .iter()
        .find(|s| {
            s.header
                .starts_with("8 threads \"lock-waiter-0..7\" (S sleeping)")
        })
        .unwrap_or_else(|| panic!("{text}"));
    let wait_line = group.body.lines().next().unwrap();
    assert_eq!(
        wait_line,
        format!("  8 waiting on bare::SHARED_LOCK (futex {address}, in a static)"),
        "{text}"
    );
    // A lock on the heap: the address only.
    let heap = sections
        .iter()
        .find(|s| s.header.starts_with("2 threads \"heap-waiter-0..1\""))
        .unwrap_or_else(|| panic!("{text}"));
    let heap_line = heap.body.lines().next().unwrap();
    assert!(heap_line.starts_with("  2 waiting on futex 0x"), "{text}");
    assert!(!heap_line.contains(address), "{text}");
    assert!(!heap_line.contains("static"), "{text}");
}

#[test]
fn a_whole_thread_name_is_matched_before_substrings() {
    let app = bare(&["--threads", "1000"]);
    let pid = app.pid().to_string();
    let (code, one, _) = run_cli(&[&pid, "threads", "sleeper-99"]);
    assert_eq!(code, 0);
    assert_eq!(summary_count(&one), 1, "{one}");
    let sections = dump_sections(&one);
    assert_eq!(sections.len(), 1, "{one}");
    assert!(sections[0].header.contains(" \"sleeper-99\" "), "{one}");
    // No whole name equals it: every name containing it.
    let (code, some, _) = run_cli(&[&pid, "threads", "eeper-99"]);
    assert_eq!(code, 0);
    assert_eq!(
        summary_count(&some),
        11,
        "sleeper-99 and sleeper-990..999: {some}"
    );
}

/// The sleepers of `dump`, by name: (unchanged, handler_nanos is set, frame addresses).
fn sleepers(dump: &Value) -> Vec<(String, bool, bool, Vec<String>)> {
    dump["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"].as_str().unwrap().starts_with("sleeper-"))
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["unchanged"].as_bool().expect("unchanged is a bool"),
                t["handler_nanos"].is_u64(),
                t["frames"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["ip"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn sleepers_that_have_not_run_are_shown_again_and_fresh_signals_them() {
    let app = bare(&["--threads", "20"]);
    let first = dump_json(&app, &[]);
    let signalled = sleepers(&first);
    assert_eq!(signalled.len(), 20, "{first}");
    assert!(
        signalled
            .iter()
            .all(|(_, unchanged, handled, _)| !unchanged && *handled),
        "the first dump signals every sleeper: {signalled:?}"
    );
    // The sleepers went back to sleep after the signal and stay there: a later dump shows them
    // from the first, without a signal.
    let again = wait_until(|| {
        let dump = dump_json(&app, &[]);
        sleepers(&dump)
            .iter()
            .all(|(_, unchanged, _, _)| *unchanged)
            .then_some(dump)
    })
    .expect("the sleepers are shown again");
    for ((name, _, handled, frames), (_, _, _, before)) in sleepers(&again).iter().zip(&signalled) {
        assert!(!handled, "{name} shown again has no handler time");
        assert_eq!(
            frames, before,
            "{name} shown again with the first dump's frames"
        );
    }
    let notes = again["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap().contains("not signalled again")),
        "{notes:?}"
    );
    let pid = app.pid().to_string();
    let (code, text, _) = run_cli(&[&pid, "threads"]);
    assert_eq!(code, 0);
    assert!(
        text.lines()
            .any(|l| l.starts_with("Note: ") && l.contains("have not run since an earlier dump")),
        "{text}"
    );
    let fresh = dump_json(&app, &["--fresh"]);
    assert!(
        sleepers(&fresh)
            .iter()
            .all(|(_, unchanged, handled, _)| !unchanged && *handled),
        "--fresh signals every sleeper: {fresh}"
    );
}
