//! Sample dumps, and the tests of what renders one: the text layouts, the JSON, grouping and
//! filters.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde_json::{Value, json};

use super::dump::*;
use super::*;
use crate::procfs::ThreadState;

/// [`sample`] with its first thread named `name`.
pub(crate) fn sample_named(name: &str) -> StackDump {
    let mut dump = sample();
    dump.threads[0].name = name.into();
    dump
}

/// A small dump of two threads, for the tests of what renders one.
pub(crate) fn sample() -> StackDump {
    let symbol = FrameSymbol {
        name: Some("demo::worker".into()),
        file: Some("src/demo.rs".into()),
        line: Some(40),
    };
    let inlined = FrameSymbol {
        name: Some("demo::inner".into()),
        file: Some("src/demo.rs".into()),
        line: Some(12),
    };
    let frame = Frame {
        ip: 0x5581_f0a1_b2c3,
        module: Some("/usr/bin/demo".into()),
        module_offset: Some(0x1b2c3),
        symbols: vec![inlined, symbol].into(),
    };
    let bare = Frame {
        ip: 0x7f00_0000_1000,
        module: Some("/lib/libc.so.6".into()),
        module_offset: Some(0x1000),
        symbols: Arc::from([]),
    };
    let thread = |tid, name: &str, outcome, method| ThreadStack {
        tid,
        name: name.into(),
        state: ThreadState::from_letter('S'),
        method,
        outcome,
        note: None,
        frames: vec![frame.clone(), bare.clone()],
        truncated: false,
        wchan: Some("futex_wait_queue".into()),
        syscall: None,
        handler_time: Some(Duration::from_nanos(5300)),
        stack_copy: Some((2048, 3200)),
        futex: None,
        manhole: false,
        unchanged: false,
    };
    StackDump {
        pid: 4242,
        signal: 41,
        taken_at: UNIX_EPOCH + Duration::from_millis(1_760_000_000_000),
        capture_time: Duration::from_micros(812),
        symbolize_time: Duration::from_micros(3400),
        ignored_signals: 0,
        threads: vec![
            thread(4242, "demo", Outcome::Captured, CaptureMethod::Signal),
            thread(4243, "worker-1", Outcome::Blocked, CaptureMethod::Proc),
        ],
        notes: Vec::new(),
    }
}

#[test]
fn full_text_matches_the_protocol_shape() {
    let text = sample().to_text_with(TextLayout::full());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "Threads: 2 (1 captured, 1 blocked, 0 without answer) in 812 µs capture + 3.4 ms symbolize"
    );
    assert_eq!(lines[2], "Thread 4242 \"demo\" (S sleeping) [signal]");
    assert_eq!(
        lines[3],
        "  #0  0x00005581f0a1b2c3 demo::inner (src/demo.rs:12) (inlined)"
    );
    assert_eq!(
        lines[4],
        "                         demo::worker (src/demo.rs:40)"
    );
    assert_eq!(lines[5], "  #1  0x00007f0000001000 /lib/libc.so.6+0x1000");

    // Two-digit numbers fill the column; a symbol without a file shows the module+offset.
    let mut dump = sample();
    let frames = &mut dump.threads[0].frames;
    let nameless = Frame {
        symbols: vec![FrameSymbol {
            name: Some("stripped".into()),
            file: None,
            line: None,
        }]
        .into(),
        ..frames[1].clone()
    };
    frames.resize(10, frames[1].clone());
    frames.push(nameless);
    let text = dump.to_text_with(TextLayout::full());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[13], "  #9  0x00007f0000001000 /lib/libc.so.6+0x1000");
    assert_eq!(
        lines[14],
        "  #10 0x00007f0000001000 stripped (/lib/libc.so.6+0x1000)"
    );
}

#[test]
fn json_matches_the_protocol_shape() {
    let json = sample().to_json();
    assert_eq!(
        json["counts"],
        json!({"threads": 2, "captured": 1, "blocked": 1, "no_answer": 0, "exited": 0})
    );
    assert_eq!(json["capture_micros"], 812);
    let thread = &json["threads"][0];
    assert_eq!(thread["state"], "S");
    assert_eq!(thread["method"], "signal");
    assert_eq!(thread["handler_nanos"], 5300);
    assert_eq!(thread["note"], Value::Null);
    assert_eq!(thread["frames"][0]["ip"], "0x5581f0a1b2c3");
    assert_eq!(thread["frames"][0]["module_offset"], "0x1b2c3");
    assert_eq!(
        thread["frames"][0]["symbols"][1],
        json!({"name": "demo::worker", "file": "src/demo.rs", "line": 40})
    );
    assert_eq!(thread["frames"][1]["symbols"], json!([]));
}

#[test]
fn json_text_escapes_like_serde_json() {
    let mut dump = sample();
    dump.threads[0].name = "quote\" back\\ nl\n tab\t bell\u{7} é ∑".into();
    dump.threads[0].note = Some("line\r\nend".into());
    let text = dump.to_json_string();
    assert!(!text.contains('\n'), "one line: {text}");
    let parsed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed["threads"][0]["name"], json!(dump.threads[0].name));
    assert_eq!(parsed["threads"][0]["note"], json!("line\r\nend"));
    assert_eq!(parsed, dump.to_json());
}

#[test]
fn filter_by_tid_or_name_substring() {
    let dump = sample();
    assert_eq!(dump.filtered("4243").threads().len(), 1);
    assert_eq!(dump.filtered("work").threads()[0].tid(), 4243);
    assert_eq!(dump.filtered("de").counts().threads(), 1);
    assert!(dump.filtered("nothing").threads().is_empty());
}

#[test]
fn a_whole_name_wins_over_substrings() {
    let mut dump = sample();
    let worker = dump.threads[1].clone();
    dump.threads = [9, 99, 990, 999]
        .iter()
        .map(|&i| ThreadStack {
            tid: 5000 + i,
            name: format!("sleeper-{i}"),
            ..worker.clone()
        })
        .collect();
    let names = |filter: &str| -> Vec<String> {
        let kept = dump.filtered(filter);
        kept.threads()
            .iter()
            .map(|t| t.name().to_string())
            .collect()
    };
    assert_eq!(names("sleeper-99"), ["sleeper-99"]);
    assert_eq!(names("sleeper-9"), ["sleeper-9"]);
    assert_eq!(names("sleeper-99 "), Vec::<String>::new());
    assert_eq!(
        names("per-99"),
        ["sleeper-99", "sleeper-990", "sleeper-999"]
    );
    assert_eq!(names("5099"), ["sleeper-99"]);
}

fn symbol(name: &str, file: &str) -> FrameSymbol {
    FrameSymbol {
        name: Some(name.into()),
        file: Some(file.into()),
        line: Some(1),
    }
}

fn frame(ip: usize, symbols: Vec<FrameSymbol>) -> Frame {
    Frame {
        ip,
        module: Some("/usr/bin/demo".into()),
        module_offset: Some(ip - 0x1000),
        symbols: symbols.into(),
    }
}

fn moved_by_two(stack: &[Frame]) -> Vec<Frame> {
    let mut moved = stack.to_vec();
    moved[0].ip += 2;
    moved
}

/// Three workers with one stack (their loop, then std's and libc's start-up), one alone on
/// another, and a manhole thread.
fn grouped_sample() -> StackDump {
    let mut dump = sample();
    let template = dump.threads[0].clone();
    let stack = vec![
        frame(0x2000, vec![symbol("demo::worker_loop", "src/demo.rs")]),
        frame(
            0x3000,
            vec![symbol(
                "std::sys::backtrace::__rust_begin_short_backtrace<demo::main::{closure_env#0}, ()>",
                "library/std/src/sys/backtrace.rs",
            )],
        ),
        frame(
            0x4000,
            vec![
                symbol(
                    "catch_unwind<(), core::panic::unwind_safe::AssertUnwindSafe<std::thread::lifecycle::spawn_unchecked::{closure#1}::{closure_env#0}<demo::main::{closure_env#0}, ()>>>",
                    "library/std/src/panicking.rs",
                ),
                symbol(
                    "{closure#1}<demo::main::{closure_env#0}, ()>",
                    "library/std/src/thread/lifecycle.rs",
                ),
            ],
        ),
        frame(
            0x5000,
            vec![symbol("start_thread", "./nptl/pthread_create.c")],
        ),
        frame(0x6000, vec![symbol("clone3", "./misc/clone3.S")]),
    ];
    let thread = |tid: i32, name: &str, frames: Vec<Frame>, manhole: bool| ThreadStack {
        tid,
        name: name.into(),
        frames,
        manhole,
        ..template.clone()
    };
    dump.threads = vec![
        thread(10, "worker-1", stack.clone(), false),
        thread(11, "worker-2", stack.clone(), false),
        thread(12, "other", stack[1..].to_vec(), false),
        // Stopped two bytes further on, at the same line: the same place.
        thread(13, "worker-3", moved_by_two(&stack), false),
        thread(14, "mh-listener", stack.clone(), true),
    ];
    dump
}

#[test]
fn short_text_groups_identical_stacks_and_folds_the_start_up() {
    let dump = grouped_sample();
    let groups = dump.groups();
    assert_eq!(
        groups.iter().map(|g| g.tids().to_vec()).collect::<Vec<_>>(),
        [vec![10, 11, 13], vec![12], vec![14]]
    );
    let text = dump.to_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1],
        "3 distinct stacks; \"threads --all\" lists each thread, \"threads --full\" shows every frame"
    );
    assert_eq!(
        lines[3],
        "3 threads \"worker-1..3\" (S sleeping) [signal], tids 10..11, 13"
    );
    assert_eq!(
        lines[4],
        "  #0  0x0000000000002000 demo::worker_loop (src/demo.rs:1)"
    );
    assert_eq!(
        lines[5],
        "  ... 4 start-up frames hidden (std runtime, libc)"
    );
    // A stack of start-up frames only keeps its innermost frame.
    assert_eq!(lines[7], "Thread 12 \"other\" (S sleeping) [signal]");
    assert!(
        lines[8].starts_with(
            "  #0  0x0000000000003000 std::sys::backtrace::__rust_begin_short_backtrace<…> ("
        ),
        "{text}"
    );
    assert_eq!(
        lines[9],
        "  ... 3 start-up frames hidden (std runtime, libc)"
    );
    assert_eq!(
        lines[11],
        "Thread 14 \"mh-listener\" (S sleeping) [signal]: the manhole's own thread, 5 frames hidden"
    );
    assert_eq!(lines.len(), 12, "{text}");

    // Each thread on its own, still short.
    let each = dump.to_text_with(TextLayout::short().every_thread(true));
    assert_eq!(each.matches("\nThread ").count(), 5, "{each}");
    assert_eq!(each.matches("start-up frames hidden").count(), 4, "{each}");
    // Everything: every frame and the full names.
    let full = dump.to_text_with(TextLayout::full());
    assert!(!full.contains("hidden"), "{full}");
    assert!(full.contains("catch_unwind<(), core::panic"), "{full}");
    assert_eq!(full.matches(" clone3 (").count(), 5, "{full}");
}

#[test]
fn a_group_of_scattered_names_and_tids_fits_in_a_line() {
    let mut dump = grouped_sample();
    let template = dump.threads[0].clone();
    dump.threads = (0..600)
        .map(|i| ThreadStack {
            tid: 10 + 3 * i,
            name: format!("a-rather-long-name-{}", 2 * i),
            ..template.clone()
        })
        .chain([ThreadStack {
            name: "mh-worker-1".into(),
            manhole: true,
            ..template.clone()
        }])
        .collect();
    let text = dump.to_text();
    let header = text.lines().nth(3).unwrap();
    assert!(
        header.starts_with("600 threads \"a-rather-long-name-0,2,4,"),
        "{header}"
    );
    assert!(
        text.lines().all(|l| l.chars().count() <= MAX_LINE),
        "{text}"
    );
    let json = dump.to_json();
    assert_eq!(json["groups"][0]["tids"].as_array().unwrap().len(), 600);
}

#[test]
fn json_keeps_every_thread_and_adds_the_groups() {
    let dump = grouped_sample();
    let json = dump.to_json();
    assert_eq!(json["threads"].as_array().unwrap().len(), 5);
    assert_eq!(json["threads"][4]["manhole"], true);
    assert_eq!(json["threads"][0]["futex"], Value::Null);
    let groups = json["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    assert_eq!(
        groups[0],
        json!({"count": 3, "tids": [10, 11, 13], "names": "worker-1..3", "state": "S",
               "method": "signal", "manhole": false, "frames": 5, "startup_frames": 4,
               "futex": null})
    );
    assert_eq!(groups[2]["manhole"], true);
}

#[test]
fn threads_waiting_on_one_futex_are_grouped_by_it() {
    let mut dump = grouped_sample();
    let lock = |address, static_name: Option<&str>| {
        Some(FutexWait {
            address,
            static_name: static_name.map(Into::into),
        })
    };
    dump.threads[0].futex = lock(0x1234, Some("app::SHARED_LOCK"));
    dump.threads[1].futex = lock(0x1234, Some("app::SHARED_LOCK"));
    // Alone on its word (a parked thread's own): grouped by its stack only.
    dump.threads[3].futex = lock(0x9999, None);
    let groups = dump.groups();
    assert_eq!(groups[0].tids(), [10, 11]);
    assert_eq!(groups[2].tids(), [13]);
    let text = dump.to_text();
    assert!(
        text.contains("2 threads \"worker-1..2\" (S sleeping) [signal], tids 10..11\n  2 waiting on app::SHARED_LOCK (futex 0x1234, in a static)\n"),
        "{text}"
    );
    assert!(text.contains("\n  waiting on futex 0x9999\n"), "{text}");
    let json = dump.to_json();
    assert_eq!(
        json["groups"][0]["futex"],
        json!({"address": "0x1234", "static": "app::SHARED_LOCK"})
    );
    assert_eq!(
        json["threads"][3]["futex"],
        json!({"address": "0x9999", "static": null})
    );
}
