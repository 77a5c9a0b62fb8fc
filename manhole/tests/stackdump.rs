//! Stack dump scenarios, each run in a fresh child process.
//!
//! A dump installs a process-wide signal handler and leaks its slot pools on purpose, and some
//! scenarios break the process's signal setup on purpose, so no two scenarios share a process:
//! `main` re-executes this binary once per scenario with `MANHOLE_STACKDUMP_SCENARIO` set (as
//! `rust-lang/backtrace-rs:tests/concurrent-panics.rs` does). Each child arms `alarm` as a
//! watchdog, so a hang becomes a failure instead of a stuck test run. The parent prints one
//! line per scenario and `N passed, M failed`, and fails if any child did.
//!
//! Threads are synchronised with barriers and channels, never with sleeps; the only polling is
//! for a signal sent by another process, whose arrival cannot be awaited otherwise. Timing is
//! printed (run with `--nocapture`-style output: it is always shown) but never asserted, except
//! that a dump does not wait for a thread it must not signal.

use std::env;
use std::hint::black_box;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use manhole::procfs;
use manhole::stackdump::{CaptureMethod, StackDump, ThreadStack};

const SCENARIO_ENV: &str = "MANHOLE_STACKDUMP_SCENARIO";
/// Set in the children of `exec_during_dumps_never_kills_the_new_program`.
const EXEC_CHILD_ENV: &str = "MANHOLE_STACKDUMP_EXEC_CHILD";
/// Seconds before a child's watchdog kills it.
const WATCHDOG_SECS: u32 = 120;

type Outcome = Result<(), String>;
/// A scenario: its name (a behaviour sentence) and the function the child runs.
type Scenario = (&'static str, fn() -> Outcome);

const SCENARIOS: &[Scenario] = &[
    (
        "named_threads_appear_in_their_marker_functions",
        named_threads_appear_in_their_marker_functions,
    ),
    (
        "busy_thread_is_captured_at_its_exact_pc",
        busy_thread_is_captured_at_its_exact_pc,
    ),
    (
        "thread_blocking_signals_is_reported_and_never_signalled",
        thread_blocking_signals_is_reported_and_never_signalled,
    ),
    ("deep_recursion_is_truncated", deep_recursion_is_truncated),
    (
        "stack_deeper_than_the_copy_window_is_truncated_with_a_note",
        stack_deeper_than_the_copy_window_is_truncated_with_a_note,
    ),
    (
        "a_dump_leaves_the_calling_threads_scheduling_class_as_it_was",
        a_dump_leaves_the_calling_threads_scheduling_class_as_it_was,
    ),
    (
        "copies_end_at_the_proven_stack_top_and_a_deeper_stack_stays_whole",
        copies_end_at_the_proven_stack_top_and_a_deeper_stack_stays_whole,
    ),
    (
        "thread_churn_during_50_dumps_does_not_crash",
        thread_churn_during_50_dumps_does_not_crash,
    ),
    (
        "a_thousand_threads_are_all_captured",
        a_thousand_threads_are_all_captured,
    ),
    ("foreign_signals_are_ignored", foreign_signals_are_ignored),
    (
        "late_request_is_ignored_and_the_next_dump_is_correct",
        late_request_is_ignored_and_the_next_dump_is_correct,
    ),
    (
        "reset_disposition_makes_capture_refuse_cleanly",
        reset_disposition_makes_capture_refuse_cleanly,
    ),
    (
        "install_refuses_a_signal_with_a_handler",
        install_refuses_a_signal_with_a_handler,
    ),
    (
        "second_dump_gives_the_same_frames",
        second_dump_gives_the_same_frames,
    ),
    (
        "a_parked_thread_is_shown_again_until_it_runs",
        a_parked_thread_is_shown_again_until_it_runs,
    ),
    (
        "handler_stack_use_is_measured_and_within_the_documented_need",
        handler_stack_use_is_measured_and_within_the_documented_need,
    ),
    (
        "threads_parked_near_their_stack_end_survive_and_get_a_note",
        threads_parked_near_their_stack_end_survive_and_get_a_note,
    ),
    (
        "nested_dump_on_a_small_altstack_writes_nothing_below_it",
        nested_dump_on_a_small_altstack_writes_nothing_below_it,
    ),
    (
        "back_to_back_dumps_of_busy_threads_never_report_blocked",
        back_to_back_dumps_of_busy_threads_never_report_blocked,
    ),
    (
        "dumps_while_threads_unwind_with_registered_frames_never_hang",
        dumps_while_threads_unwind_with_registered_frames_never_hang,
    ),
    (
        "install_refuses_dump_signals_that_could_kill_or_stop",
        install_refuses_dump_signals_that_could_kill_or_stop,
    ),
    (
        "what_a_dump_interrupts_is_exactly_what_the_docs_list",
        what_a_dump_interrupts_is_exactly_what_the_docs_list,
    ),
    (
        "exec_during_dumps_never_kills_the_new_program",
        exec_during_dumps_never_kills_the_new_program,
    ),
    (
        "changed_flags_on_the_dump_signal_make_dumps_refuse_and_harm_nothing",
        changed_flags_on_the_dump_signal_make_dumps_refuse_and_harm_nothing,
    ),
    (
        "sig_dfl_restored_during_back_to_back_dumps_of_2000_threads_harms_nothing",
        sig_dfl_restored_during_back_to_back_dumps_of_2000_threads_harms_nothing,
    ),
];

fn main() -> ExitCode {
    if env::var_os(EXEC_CHILD_ENV).is_some() {
        return exec_while_dumping();
    }
    if let Ok(name) = env::var(SCENARIO_ENV) {
        return run_child(&name);
    }
    let filters: Vec<String> = env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let exe = env::current_exe().expect("current_exe");
    let (mut passed, mut failed) = (0, 0);
    for (name, _) in SCENARIOS {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let output = Command::new(&exe)
            .env(SCENARIO_ENV, name)
            .output()
            .expect("spawn the scenario child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            passed += 1;
            println!("scenario {name} ... ok");
            for line in stdout.lines() {
                println!("    {line}");
            }
        } else {
            failed += 1;
            println!("scenario {name} ... FAILED ({})", output.status);
            for line in stdout.lines().chain(stderr.lines()) {
                println!("    | {line}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_child(name: &str) -> ExitCode {
    nix::unistd::alarm::set(WATCHDOG_SECS);
    let Some((_, scenario)) = SCENARIOS.iter().find(|(n, _)| *n == name) else {
        println!("unknown scenario {name}");
        return ExitCode::FAILURE;
    };
    match scenario() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            println!("FAILED: {message}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn dump_signal() -> i32 {
    libc::SIGURG
}

fn install(timeout: Duration, max_frames: usize) -> Result<manhole::Manhole, String> {
    manhole::install(
        manhole::Options::new()
            .thread(false)
            .verbose(false)
            .dump_signal(dump_signal())
            .dump_timeout(timeout)
            .max_frames(max_frames),
    )
    .map_err(|e| format!("install: {e}"))
}

fn dump() -> Result<StackDump, String> {
    checked_dump(manhole::dump_threads)
}

/// A dump that signals every thread, also those not run since the last dump.
fn fresh_dump() -> Result<StackDump, String> {
    checked_dump(manhole::dump_threads_fresh)
}

fn checked_dump(dump_threads: fn() -> manhole::Result<StackDump>) -> Result<StackDump, String> {
    // Scenarios dump hundreds of times: keep the debug info parsed between their dumps.
    static HOLD: std::sync::OnceLock<manhole::stackdump::CacheHold> = std::sync::OnceLock::new();
    HOLD.get_or_init(manhole::stackdump::hold_caches);
    let dump = dump_threads().map_err(|e| format!("dump: {e}"))?;
    check_consistent(&dump)?;
    Ok(dump)
}

/// Properties every dump has, whatever the scenario.
fn check_consistent(dump: &StackDump) -> Outcome {
    let counts = dump.counts();
    let sum = counts.captured() + counts.blocked() + counts.no_answer() + counts.exited();
    ensure(
        counts.threads() == dump.threads().len() && sum == counts.threads(),
        || {
            format!(
                "counts do not add up: {counts:?} for {} threads",
                dump.threads().len()
            )
        },
    )?;
    let me = nix::unistd::gettid().as_raw();
    let own = thread_by_tid(dump, me)?;
    ensure(own.method() == CaptureMethod::SelfThread, || {
        format!("dumping thread not captured directly: {own:?}")
    })?;
    // The dump machinery (the unwinder, `trace_self`, `capture`) must not show on its own stack.
    let machinery = own
        .frames()
        .iter()
        .flat_map(|f| f.symbols())
        .filter_map(|s| s.name())
        .find(|name| {
            [
                "trace_self",
                "trace_unsynchronized",
                "backtrace::",
                "stackdump::capture",
            ]
            .iter()
            .any(|m| name.contains(m))
                || *name == "capture"
        });
    ensure(machinery.is_none(), || {
        format!(
            "dump machinery on the dumping thread's stack: {}",
            describe(own)
        )
    })?;
    // The stack starts at the caller of the dump.
    let first = own
        .frames()
        .first()
        .and_then(|f| f.symbols().last())
        .and_then(|s| s.name());
    ensure(
        first.is_some_and(|n| n.ends_with("dump_threads") || n.ends_with("dump_threads_fresh")),
        || {
            format!(
                "dumping thread does not start at dump_threads: {}",
                describe(own)
            )
        },
    )?;
    for thread in dump.threads() {
        for frame in thread.frames() {
            ensure(
                frame.module().is_some() && frame.module_offset().is_some(),
                || {
                    format!(
                        "frame {:#x} of thread {} has no module: {}",
                        frame.ip(),
                        thread.tid(),
                        describe(thread)
                    )
                },
            )?;
        }
        let captured = matches!(
            thread.method(),
            CaptureMethod::Signal | CaptureMethod::SelfThread
        );
        ensure(captured || thread.note().is_some(), || {
            format!("thread {} not captured and no note", thread.tid())
        })?;
    }
    let json = dump.to_json();
    ensure(
        json["threads"].as_array().map(Vec::len) == Some(dump.threads().len()),
        || "JSON thread count".into(),
    )?;
    ensure(
        dump.to_text()
            .starts_with(&format!("Threads: {} (", counts.threads())),
        || "text header".into(),
    )?;
    Ok(())
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Outcome {
    if condition { Ok(()) } else { Err(message()) }
}

fn thread_by_tid(dump: &StackDump, tid: i32) -> Result<&ThreadStack, String> {
    dump.threads()
        .iter()
        .find(|t| t.tid() == tid)
        .ok_or_else(|| format!("thread {tid} missing from the dump"))
}

fn thread_by_name<'a>(dump: &'a StackDump, name: &str) -> Result<&'a ThreadStack, String> {
    dump.threads()
        .iter()
        .find(|t| t.name() == name)
        .ok_or_else(|| format!("thread {name:?} missing from the dump"))
}

/// Whether any frame of `thread` resolves to a function whose name ends with `function`.
fn has_function(thread: &ThreadStack, function: &str) -> bool {
    thread
        .frames()
        .iter()
        .flat_map(|f| f.symbols())
        .any(|s| s.name().is_some_and(|n| n.ends_with(function)))
}

fn describe(thread: &ThreadStack) -> String {
    let names: Vec<&str> = thread
        .frames()
        .iter()
        .map(|f| f.symbols().last().and_then(|s| s.name()).unwrap_or("??"))
        .collect();
    format!(
        "{} {:?} [{}] note={:?} frames={names:?}",
        thread.tid(),
        thread.name(),
        thread.method(),
        thread.note()
    )
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------------------------------------
// Marker functions: distinct, never inlined, and doing work after the blocking call so the call
// is not a tail call (their frame stays on the stack).

#[inline(never)]
fn park_in_marker_alpha(ready: &mpsc::Sender<i32>, release: &mpsc::Receiver<()>) -> usize {
    ready.send(nix::unistd::gettid().as_raw()).unwrap();
    black_box(release.recv().is_ok()) as usize
}

#[inline(never)]
fn park_in_marker_bravo(ready: &mpsc::Sender<i32>, release: &mpsc::Receiver<()>) -> usize {
    ready.send(nix::unistd::gettid().as_raw()).unwrap();
    black_box(release.recv().is_ok()) as usize + 1
}

#[inline(never)]
fn park_in_marker_charlie(ready: &mpsc::Sender<i32>, release: &mpsc::Receiver<()>) -> usize {
    ready.send(nix::unistd::gettid().as_raw()).unwrap();
    black_box(release.recv().is_ok()) as usize + 2
}

#[inline(never)]
fn park_in_marker_delta(ready: &mpsc::Sender<i32>, release: &mpsc::Receiver<()>) -> usize {
    ready.send(nix::unistd::gettid().as_raw()).unwrap();
    black_box(release.recv().is_ok()) as usize + 3
}

/// Spins until `stop`, with no calls or syscalls in the loop except a check of `stop` once
/// every million rounds (even unoptimized, `+=` and `&` on integers are inline code).
#[inline(never)]
fn spin_in_marker(started: mpsc::Sender<i32>, stop: &AtomicBool) -> u64 {
    let _ = started.send(nix::unistd::gettid().as_raw());
    drop(started);
    let mut n = 0u64;
    loop {
        n += 1;
        if n & 0xf_ffff == 0 && stop.load(Ordering::Relaxed) {
            return n;
        }
    }
}

/// Waits until `/proc` shows thread `tid` asleep (it has reached its blocking call). Only
/// `/proc` can tell, so this polls it, yielding in between, for at most 10 s.
fn wait_until_sleeping(tid: i32) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if procfs::thread_stat(tid)
            .map_err(|e| e.to_string())?
            .1
            .letter()
            == 'S'
        {
            return Ok(());
        }
        thread::yield_now();
    }
    Err(format!("thread {tid} never went to sleep"))
}

#[inline(never)]
fn recurse_then_park(depth: usize, ready: &Barrier, release: &mpsc::Receiver<()>) -> usize {
    if depth == 0 {
        ready.wait();
        return black_box(release.recv().is_ok()) as usize;
    }
    black_box(recurse_then_park(depth - 1, ready, release)) + 1
}

/// Threads parked in marker functions; [`Parked::release`] lets them finish and joins them.
struct Parked {
    releases: Vec<mpsc::Sender<()>>,
    handles: Vec<thread::JoinHandle<usize>>,
}

impl Parked {
    fn release(self) -> Outcome {
        drop(self.releases);
        for handle in self.handles {
            handle.join().map_err(|_| "a marker thread panicked")?;
        }
        Ok(())
    }
}

/// Starts one named thread per marker and returns once each is asleep in its marker's `recv`.
fn park_in_markers<'a>(
    markers: impl IntoIterator<Item = (&'a str, Marker)>,
) -> Result<Parked, String> {
    let (ready, tids) = mpsc::channel();
    let mut parked = Parked {
        releases: Vec::new(),
        handles: Vec::new(),
    };
    for (name, marker) in markers {
        let (release, wait) = mpsc::channel();
        let ready = ready.clone();
        parked.releases.push(release);
        parked.handles.push(
            thread::Builder::new()
                .name(name.into())
                .spawn(move || marker(&ready, &wait))
                .unwrap(),
        );
    }
    // Each thread reports after it has its name and before its only blocking call, so once
    // `/proc` shows it asleep it is parked in `recv`.
    for _ in 0..parked.handles.len() {
        wait_until_sleeping(tids.recv().map_err(|_| "a marker thread did not start")?)?;
    }
    Ok(parked)
}

// ---------------------------------------------------------------------------------------------
// Scenarios

type Marker = fn(&mpsc::Sender<i32>, &mpsc::Receiver<()>) -> usize;

fn named_threads_appear_in_their_marker_functions() -> Outcome {
    install(Duration::from_secs(2), 128)?;
    let markers: [(&str, Marker, &str); 4] = [
        ("marker-alpha", park_in_marker_alpha, "park_in_marker_alpha"),
        ("marker-bravo", park_in_marker_bravo, "park_in_marker_bravo"),
        (
            "marker-charlie",
            park_in_marker_charlie,
            "park_in_marker_charlie",
        ),
        ("marker-delta", park_in_marker_delta, "park_in_marker_delta"),
    ];
    let parked = park_in_markers(markers.iter().map(|&(name, marker, _)| (name, marker)))?;
    let dump = dump()?;
    for (name, _, function) in markers {
        let thread = thread_by_name(&dump, name)?;
        ensure(thread.method() == CaptureMethod::Signal, || {
            format!("not captured by signal: {}", describe(thread))
        })?;
        ensure(has_function(thread, function), || {
            format!("{function} not on {name}'s stack: {}", describe(thread))
        })?;
        for (_, _, other) in markers.iter().filter(|(n, _, _)| *n != name) {
            ensure(!has_function(thread, other), || {
                format!("{other} on {name}'s stack")
            })?;
        }
    }
    parked.release()?;
    let counts = dump.counts();
    println!(
        "{} threads, all captured: {}",
        counts.threads(),
        counts.captured() == counts.threads()
    );
    println!("{}", dump.filtered("marker-alpha").to_text().trim_end());
    Ok(())
}

fn busy_thread_is_captured_at_its_exact_pc() -> Outcome {
    install(Duration::from_secs(2), 128)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (started, started_rx) = mpsc::channel();
    let spinning = stop.clone();
    let handle = thread::Builder::new()
        .name("busy".into())
        .spawn(move || spin_in_marker(started, &spinning))
        .unwrap();
    let tid = started_rx.recv().map_err(|_| "busy thread did not start")?;
    let mut result = Ok(());
    // The loop body has no calls, so the interrupted PC is inside `spin_in_marker` whenever the
    // signal lands in the loop; the very first frame must then be that function itself (the
    // handler and the signal trampoline dropped, no off-by-one into a neighbour).
    for _ in 0..5 {
        let dump = dump()?;
        let thread = thread_by_tid(&dump, tid)?;
        result = ensure(thread.method() == CaptureMethod::Signal, || {
            format!("not captured: {}", describe(thread))
        })
        .and_then(|()| {
            let first = thread
                .frames()
                .first()
                .and_then(|f| f.symbols().last())
                .and_then(|s| s.name());
            ensure(first.is_some_and(|n| n.ends_with("spin_in_marker")), || {
                format!("frame #0 is not spin_in_marker: {}", describe(thread))
            })
        });
        if result.is_ok() {
            println!("{}", dump.filtered(&tid.to_string()).to_text().trim_end());
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    handle.join().map_err(|_| "busy thread panicked")?;
    result
}

fn thread_blocking_signals_is_reported_and_never_signalled() -> Outcome {
    // A long timeout: had the dump signalled the blocked thread it would wait for all of it.
    let timeout = Duration::from_secs(2);
    install(timeout, 128)?;
    let (tid_tx, tid_rx) = mpsc::channel();
    let (release, parked) = mpsc::channel::<()>();
    let handle = thread::Builder::new()
        .name("blocks-all".into())
        .spawn(move || {
            nix::sys::signal::SigSet::all().thread_block().unwrap();
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            black_box(parked.recv().is_ok())
        })
        .unwrap();
    let tid = tid_rx.recv().map_err(|_| "blocking thread did not start")?;
    wait_until_sleeping(tid)?;
    let dump = dump()?;
    let thread = thread_by_tid(&dump, tid)?;
    ensure(thread.method() == CaptureMethod::Proc, || {
        format!("blocked thread captured? {}", describe(thread))
    })?;
    ensure(
        thread.note().is_some_and(|n| n.contains("signal blocked")),
        || format!("note: {}", describe(thread)),
    )?;
    ensure(dump.counts().blocked() == 1, || {
        format!("counts: {:?}", dump.counts())
    })?;
    ensure(
        dump.capture_time() < timeout - Duration::from_millis(100),
        || {
            format!(
                "the dump waited for a thread it never signalled: {}",
                millis(dump.capture_time())
            )
        },
    )?;
    // The thread is in a syscall (futex) so /proc gives a PC, symbolized as one frame.
    ensure(
        thread.syscall().and_then(|s| s.pc()).is_some() && thread.frames().len() == 1,
        || {
            format!(
                "no /proc/.../syscall frame: {:?} {}",
                thread.syscall(),
                describe(thread)
            )
        },
    )?;
    let status = procfs::thread_status(tid).map_err(|e| format!("status: {e}"))?;
    ensure(!status.has_pending(dump_signal()), || {
        "the dump signal is pending on the blocked thread".into()
    })?;
    println!("{}", dump.filtered("blocks-all").to_text().trim_end());
    drop(release);
    handle.join().map_err(|_| "blocking thread panicked")?;
    Ok(())
}

fn deep_recursion_is_truncated() -> Outcome {
    install(Duration::from_secs(2), 32)?;
    let ready = Arc::new(Barrier::new(2));
    let (release, parked) = mpsc::channel();
    let waiting = ready.clone();
    let handle = thread::Builder::new()
        .name("deep".into())
        .stack_size(1 << 20)
        .spawn(move || recurse_then_park(200, &waiting, &parked))
        .unwrap();
    ready.wait();
    let dump = dump()?;
    let thread = thread_by_name(&dump, "deep")?;
    ensure(thread.truncated() && thread.frames().len() == 32, || {
        format!(
            "truncated={} with {} frames",
            thread.truncated(),
            thread.frames().len()
        )
    })?;
    ensure(has_function(thread, "recurse_then_park"), || {
        describe(thread)
    })?;
    ensure(
        dump.to_text().contains("[truncated after 32 frames]"),
        || "no truncation line in the text".into(),
    )?;
    drop(release);
    handle.join().map_err(|_| "deep thread panicked")?;
    Ok(())
}

/// Recurses `depth` times with a 256-byte frame each, then parks.
#[inline(never)]
fn recurse_wide_then_park(depth: usize, ready: &Barrier, release: &mpsc::Receiver<()>) -> usize {
    let pad = black_box([depth as u8; 256]);
    if depth == 0 {
        ready.wait();
        return black_box(release.recv().is_ok()) as usize;
    }
    black_box(recurse_wide_then_park(depth - 1, ready, release)) + pad[1] as usize
}

fn stack_deeper_than_the_copy_window_is_truncated_with_a_note() -> Outcome {
    install(Duration::from_secs(2), 1024)?;
    let ready = Arc::new(Barrier::new(2));
    let (release, parked) = mpsc::channel();
    let waiting = ready.clone();
    // 400 frames of at least 256 bytes: more than the 64 KiB window.
    let handle = thread::Builder::new()
        .name("deeper".into())
        .stack_size(4 << 20)
        .spawn(move || recurse_wide_then_park(400, &waiting, &parked))
        .unwrap();
    ready.wait();
    let dump = dump()?;
    let thread = thread_by_name(&dump, "deeper")?;
    println!(
        "{} frames, {:?} bytes copied, note {:?}",
        thread.frames().len(),
        thread.stack_copy_bytes(),
        thread.note()
    );
    let result = ensure(
        thread.truncated()
            && thread.frames().len() < 400
            && thread.stack_copy_bytes() == Some(64 * 1024)
            && thread
                .note()
                .is_some_and(|n| n.contains("stack deeper than the 64 KiB copied")),
        || {
            format!(
                "not truncated at the window with a note: {}",
                describe(thread)
            )
        },
    )
    .and_then(|()| {
        ensure(
            dump.to_text()
                .contains("stack deeper than the 64 KiB copied"),
            || "no note in the text".into(),
        )
    });
    drop(release);
    handle.join().map_err(|_| "deeper thread panicked")?;
    result
}

/// While it sends, the dumping thread runs in `SCHED_BATCH` (its wake-ups must not preempt the
/// threads answering): a thread of the application that calls `dump_threads` gets its own
/// class back, and one in another class is not touched at all.
fn a_dump_leaves_the_calling_threads_scheduling_class_as_it_was() -> Outcome {
    install(Duration::from_secs(2), 64)?;
    // Enough threads that the dump also starts its second planner.
    let parked =
        park_in_markers((0..260).map(|_| ("sched-parked", park_in_marker_alpha as Marker)))?;
    let policy = || {
        // SAFETY: pid 0 names the calling thread; the call only reads its policy.
        unsafe { libc::sched_getscheduler(0) }
    };
    let set_policy = |policy: i32| {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 names the calling thread; `param` is live; a non-real-time class.
        unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
    };
    let mut result = Ok(());
    for class in [libc::SCHED_OTHER, libc::SCHED_IDLE, libc::SCHED_BATCH] {
        if !set_policy(class) {
            result = Err(format!("cannot move this thread to policy {class}"));
            break;
        }
        let dumped = dump().map(|d| d.threads().len());
        let after = policy();
        if let Err(e) = dumped {
            result = Err(e);
            break;
        }
        if after != class {
            result = Err(format!("policy {class} before the dump, {after} after it"));
            break;
        }
    }
    set_policy(libc::SCHED_OTHER);
    parked.release()?;
    result
}

/// After a dump, a thread's next copy ends just above its outermost frame (where that dump
/// proved it ends) instead of running on to the end of its stack mapping: for the main thread
/// that cuts its arguments and environment. A thread that has gone 100 frames deeper since is
/// still captured whole, down to the same outermost frame.
fn copies_end_at_the_proven_stack_top_and_a_deeper_stack_stays_whole() -> Outcome {
    install(Duration::from_secs(2), 512)?;
    let ready = Arc::new(Barrier::new(2));
    let (tid_sender, tid) = mpsc::channel();
    let (shallow_release, shallow) = mpsc::channel::<()>();
    let (deep_release, deep) = mpsc::channel::<()>();
    let waiting = ready.clone();
    let grower = thread::Builder::new()
        .name("grower".into())
        .stack_size(1 << 20)
        .spawn(move || {
            let _ = tid_sender.send(nix::unistd::gettid().as_raw());
            recurse_wide_then_park(2, &waiting, &shallow)
                + recurse_wide_then_park(100, &waiting, &deep)
        })
        .unwrap();
    let grower_tid = tid.recv().map_err(|_| "the grower did not start")?;
    let main_tid = std::process::id() as i32;
    // Dumped from another thread, so that this (the main) thread is signalled like the others.
    // Fresh: the parked grower is signalled again, to be copied only up to its proven top.
    let dump_from_elsewhere = || -> Result<StackDump, String> {
        thread::spawn(fresh_dump)
            .join()
            .map_err(|_| "the dumping thread panicked".to_string())?
    };
    let functions = |thread: &ThreadStack| -> Vec<String> {
        thread
            .frames()
            .iter()
            .flat_map(|f| f.symbols())
            .map(|s| s.name().unwrap_or("?").to_string())
            .collect()
    };
    ready.wait();
    wait_until_sleeping(grower_tid)?;
    let first = dump_from_elsewhere()?;
    let second = dump_from_elsewhere()?;
    for tid in [grower_tid, main_tid] {
        let (before, after) = (thread_by_tid(&first, tid)?, thread_by_tid(&second, tid)?);
        let copied = |t: &ThreadStack| t.stack_copy_bytes().unwrap_or(0);
        ensure(copied(after) > 0 && copied(after) < copied(before), || {
            format!(
                "thread {tid}: copied {} bytes in the second dump, {} in the first",
                copied(after),
                copied(before)
            )
        })?;
        ensure(functions(after) == functions(before), || {
            format!(
                "thread {tid}: other frames from the shorter copy:\n{}\nthen:\n{}",
                describe(before),
                describe(after)
            )
        })?;
    }
    drop(shallow_release);
    ready.wait();
    wait_until_sleeping(grower_tid)?;
    let deeper = dump_from_elsewhere()?;
    let (shallow_stack, deep_stack) = (
        thread_by_tid(&first, grower_tid)?,
        thread_by_tid(&deeper, grower_tid)?,
    );
    let result = ensure(
        !deep_stack.truncated()
            && deep_stack.note().is_none()
            && deep_stack.frames().len() >= 100
            && functions(deep_stack).last() == functions(shallow_stack).last(),
        || {
            format!(
                "the grower, 100 frames deeper, is not whole: {} frames, truncated={}, note={:?}, \
                 outermost {:?} (was {:?})",
                deep_stack.frames().len(),
                deep_stack.truncated(),
                deep_stack.note(),
                functions(deep_stack).last(),
                functions(shallow_stack).last()
            )
        },
    );
    drop(deep_release);
    grower.join().map_err(|_| "the grower panicked")?;
    result
}

fn thread_churn_during_50_dumps_does_not_crash() -> Outcome {
    install(Duration::from_millis(250), 128)?;
    let stop = Arc::new(AtomicBool::new(false));
    let churning = stop.clone();
    // A new thread takes its name only once it runs: wait for that before the first dump.
    let (started, started_rx) = mpsc::channel();
    let churner = thread::Builder::new()
        .name("churner".into())
        .spawn(move || {
            started.send(()).unwrap();
            let mut spawned = 0u64;
            while !churning.load(Ordering::Relaxed) {
                let child = thread::Builder::new()
                    .name("churn".into())
                    .spawn(|| black_box(1 + 1))
                    .unwrap();
                child.join().unwrap();
                spawned += 1;
            }
            spawned
        })
        .unwrap();
    started_rx.recv().map_err(|_| "churner did not start")?;
    let (mut exited, mut churner_blocked) = (0, 0);
    for round in 0..50 {
        let dump = dump()?;
        exited += dump.counts().exited();
        let churner = thread_by_name(&dump, "churner")?;
        match churner.method() {
            CaptureMethod::Signal => ensure(!churner.frames().is_empty(), || describe(churner))?,
            // glibc blocks every signal around clone() in pthread_create.
            _ if churner.note().is_some_and(|n| n.contains("signal blocked")) => {
                churner_blocked += 1
            }
            _ => {
                return Err(format!(
                    "round {round}: churner not captured: {}",
                    describe(churner)
                ));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let spawned = churner.join().map_err(|_| "churner panicked")?;
    let signal = dump_signal();
    for tid in procfs::thread_ids().map_err(|e| e.to_string())? {
        if let Ok(status) = procfs::thread_status(tid) {
            ensure(!status.has_pending(signal), || {
                format!("dump signal left pending on thread {tid}")
            })?;
        }
    }
    let last = dump()?;
    println!(
        "{spawned} threads churned; {exited} listed as exited over 50 dumps; churner blocked {churner_blocked} times; {} ignored late signals",
        last.ignored_signals()
    );
    Ok(())
}

/// `count` threads `many-<i>` with 64 KiB stacks, all queued on one mutex whose holder waits on
/// a channel: parked in futex waits until [`MutexQueue::release`].
struct MutexQueue {
    release: mpsc::Sender<()>,
    handles: Vec<thread::JoinHandle<bool>>,
}

impl MutexQueue {
    /// Starts them and returns once every one is running.
    fn start(count: usize) -> Result<MutexQueue, String> {
        let ready = Arc::new(Barrier::new(count + 1));
        let (release, release_rx) = mpsc::channel::<()>();
        let queue = Arc::new(std::sync::Mutex::new(release_rx));
        let mut handles = Vec::with_capacity(count);
        for i in 0..count {
            let ready = ready.clone();
            let queue = queue.clone();
            let handle = thread::Builder::new()
                .name(format!("many-{i}"))
                .stack_size(64 * 1024)
                .spawn(move || {
                    ready.wait();
                    // Everyone queues on the mutex; the holder waits on the channel.
                    let guard = queue.lock().unwrap();
                    black_box(guard.recv().is_ok())
                })
                .map_err(|e| format!("spawning thread {i}: {e}"))?;
            handles.push(handle);
        }
        ready.wait();
        Ok(MutexQueue { release, handles })
    }

    /// Lets them all go and joins them.
    fn release(self) -> Outcome {
        drop(self.release);
        for handle in self.handles {
            handle.join().map_err(|_| "a waiting thread panicked")?;
        }
        Ok(())
    }
}

fn a_thousand_threads_are_all_captured() -> Outcome {
    const THREADS: usize = 1000;
    install(Duration::from_secs(2), 128)?;
    let queue = MutexQueue::start(THREADS)?;
    let first = dump()?;
    let second = dump()?;
    for (which, dump) in [("first", &first), ("second", &second)] {
        let counts = dump.counts();
        let many = dump
            .threads()
            .iter()
            .filter(|t| t.name().starts_with("many-"))
            .count();
        ensure(many == THREADS, || {
            format!("{which} dump lists {many} of {THREADS} threads")
        })?;
        ensure(counts.captured() == counts.threads(), || {
            let missing: Vec<String> = dump
                .threads()
                .iter()
                .filter(|t| t.method() == CaptureMethod::Proc)
                .take(5)
                .map(describe)
                .collect();
            format!("{which} dump: {counts:?}; e.g. {missing:?}")
        })?;
        println!(
            "{which} dump of {} threads: capture {}, symbolize {}",
            counts.threads(),
            millis(dump.capture_time()),
            millis(dump.symbolize_time())
        );
    }
    queue.release()
}

fn foreign_signals_are_ignored() -> Outcome {
    install(Duration::from_secs(2), 128)?;
    let signal = dump_signal();
    let before = dump()?.ignored_signals();
    // In-process, thread-directed (tgkill): si_code SI_TKILL, delivered before raise returns.
    // SAFETY: raising a signal whose handler is installed has no memory-safety preconditions.
    let raised = unsafe { libc::raise(signal) };
    ensure(raised == 0, || "raise failed".into())?;
    let after_raise = dump()?.ignored_signals();
    ensure(after_raise > before, || {
        format!("raise not counted as ignored ({before} -> {after_raise})")
    })?;
    // From another process: si_code SI_USER, foreign pid. Its delivery is asynchronous and only
    // visible through the counter, so poll it (bounded).
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(std::process::id().to_string())
        .status()
        .map_err(|e| format!("running kill: {e}"))?;
    ensure(status.success(), || format!("kill exited with {status}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut latest = dump()?;
    while latest.ignored_signals() <= after_raise && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
        latest = dump()?;
    }
    ensure(latest.ignored_signals() > after_raise, || {
        "the kill from another process was not seen".into()
    })?;
    // The process survived, and dumps still work.
    ensure(
        latest.counts().captured() == latest.counts().threads(),
        || format!("{:?}", latest.counts()),
    )?;
    println!(
        "ignored: {before} before, {after_raise} after raise, {} after kill",
        latest.ignored_signals()
    );
    Ok(())
}

fn late_request_is_ignored_and_the_next_dump_is_correct() -> Outcome {
    install(Duration::from_secs(2), 128)?;
    let signal = dump_signal();
    let (tid_tx, tid_rx) = mpsc::channel();
    let (unblock_tx, unblock_rx) = mpsc::channel::<()>();
    let (release, parked) = mpsc::channel::<()>();
    let handle = thread::Builder::new()
        .name("late".into())
        .spawn(move || {
            // Queue ourselves a request that looks like one from a long-gone dump (same pid,
            // SI_QUEUE, a generation no dump has reached) while the signal is blocked.
            nix::sys::signal::SigSet::all().thread_block().unwrap();
            let stale = libc::sigval {
                sival_ptr: (0xfffusize << 20) as *mut libc::c_void,
            };
            // SAFETY: `pthread_self()` is the calling thread, which is alive; the value is plain data.
            let rc = unsafe { libc::pthread_sigqueue(libc::pthread_self(), signal, stale) };
            assert_eq!(rc, 0, "pthread_sigqueue");
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            unblock_rx.recv().unwrap();
            // The stale request is handled right here, before this call returns.
            nix::sys::signal::SigSet::all().thread_unblock().unwrap();
            park_in_marker_delta(&tid_tx, &parked)
        })
        .unwrap();
    let tid = tid_rx.recv().map_err(|_| "late thread did not start")?;
    wait_until_sleeping(tid)?;
    let first = dump()?;
    let late = thread_by_tid(&first, tid)?;
    ensure(
        late.note().is_some_and(|n| n.contains("signal blocked")),
        || describe(late),
    )?;
    let status = procfs::thread_status(tid).map_err(|e| e.to_string())?;
    ensure(status.has_pending(signal), || {
        "the stale request is not pending".into()
    })?;
    unblock_tx.send(()).map_err(|_| "late thread gone")?;
    ensure(tid_rx.recv() == Ok(tid), || {
        "late thread did not reach its marker".into()
    })?;
    wait_until_sleeping(tid)?;
    let second = dump()?;
    let late = thread_by_tid(&second, tid)?;
    ensure(second.ignored_signals() > first.ignored_signals(), || {
        "the stale request was not ignored".into()
    })?;
    ensure(
        late.method() == CaptureMethod::Signal && has_function(late, "park_in_marker_delta"),
        || describe(late),
    )?;
    ensure(
        second.counts().captured() == second.counts().threads(),
        || format!("{:?}", second.counts()),
    )?;
    let status = procfs::thread_status(tid).map_err(|e| e.to_string())?;
    ensure(!status.has_pending(signal), || {
        "the dump signal is still pending".into()
    })?;
    println!(
        "ignored signals: {} after the first dump, {} after the second",
        first.ignored_signals(),
        second.ignored_signals()
    );
    drop(release);
    handle.join().map_err(|_| "late thread panicked")?;
    Ok(())
}

fn reset_disposition_makes_capture_refuse_cleanly() -> Outcome {
    install(Duration::from_secs(2), 128)?;
    let signal = dump_signal();
    let parked = park_in_markers([("bystander", park_in_marker_alpha as Marker)])?;
    ensure(dump()?.counts().captured() == 2, || {
        "baseline dump incomplete".into()
    })?;
    // Somebody resets the dump signal to its default action, which would kill the process.
    // SAFETY: `signal` is a valid signal number and SIG_DFL a valid disposition.
    let previous = unsafe { libc::signal(signal, libc::SIG_DFL) };
    ensure(previous != libc::SIG_ERR, || "signal() failed".into())?;
    let dump = dump()?;
    let bystander = thread_by_name(&dump, "bystander")?;
    ensure(bystander.method() == CaptureMethod::Proc, || {
        describe(bystander)
    })?;
    ensure(
        bystander
            .note()
            .is_some_and(|n| n.contains("not signalled") && n.contains("SIG_DFL")),
        || describe(bystander),
    )?;
    ensure(dump.counts().captured() == 1, || {
        format!("{:?}", dump.counts())
    })?;
    let status = procfs::thread_status(bystander.tid()).map_err(|e| e.to_string())?;
    ensure(!status.has_pending(signal), || {
        "a signal was sent anyway".into()
    })?;
    println!("{}", dump.filtered("bystander").to_text().trim_end());
    parked.release()?;
    Ok(())
}

fn install_refuses_a_signal_with_a_handler() -> Outcome {
    let signal = dump_signal();
    // SAFETY: `signal` is a valid signal number and SIG_IGN a valid disposition.
    let previous = unsafe { libc::signal(signal, libc::SIG_IGN) };
    ensure(previous == libc::SIG_DFL, || {
        "the signal was not at its default".into()
    })?;
    let error = match install(Duration::from_secs(1), 128) {
        Ok(_) => return Err("install replaced an existing disposition".into()),
        Err(e) => e,
    };
    ensure(error.contains("already handled"), || error.clone())?;
    // SAFETY: as above; restoring the default returns the current disposition.
    let current = unsafe { libc::signal(signal, libc::SIG_DFL) };
    ensure(current == libc::SIG_IGN, || {
        "install changed the disposition it refused".into()
    })?;
    println!("{error}");
    Ok(())
}

/// The handler address and flags `signal` has now.
fn disposition_of(signal: i32) -> (usize, i32) {
    // SAFETY: a zeroed sigaction is valid for the kernel to overwrite; a null `act` only reads.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut action);
        (action.sa_sigaction, action.sa_flags)
    }
}

fn install_refuses_dump_signals_that_could_kill_or_stop() -> Outcome {
    let refused = [
        (libc::SIGRTMIN() + 7, "terminates"),
        (libc::SIGTERM, "terminates"),
        (libc::SIGCHLD, "child exits"),
        (libc::SIGPIPE, "closed pipe"),
        (libc::SIGTSTP, "stops the process"),
        (libc::SIGSEGV, "faults"),
    ];
    for (signal, why) in refused {
        let before = disposition_of(signal);
        let error = manhole::install(
            manhole::Options::new()
                .thread(false)
                .verbose(false)
                .dump_signal(signal),
        )
        .err()
        .ok_or_else(|| format!("install accepted signal {signal}"))?;
        ensure(error.kind() == manhole::ErrorKind::Signal, || {
            format!("signal {signal}: {error:?}")
        })?;
        let message = error.to_string();
        ensure(
            message.contains("cannot be the dump signal")
                && message.contains(why)
                && message.contains("SIGURG")
                && !message.contains('\n'),
            || format!("signal {signal}: {message}"),
        )?;
        ensure(disposition_of(signal) == before, || {
            format!("the refused install changed the disposition of signal {signal}")
        })?;
        println!("{message}");
    }
    // The default is SIGURG, and it is ours once installed.
    let _manhole = manhole::install(manhole::Options::new().thread(false).verbose(false))
        .map_err(|e| format!("default install: {e}"))?;
    let dump = dump()?;
    ensure(dump.signal() == libc::SIGURG, || {
        format!("default dump signal {}", dump.signal())
    })?;
    ensure(dump.counts().captured() == dump.counts().threads(), || {
        format!("{:?}", dump.counts())
    })?;
    Ok(())
}

/// Starts a thread called `name` that reports its tid, runs `wait` once, and sends back what
/// came of it and how long it took.
fn waiter(
    name: &str,
    results: &mpsc::Sender<(String, String, Duration)>,
    wait: impl FnOnce() -> String + Send + 'static,
) -> Result<i32, String> {
    let (tid_tx, tid_rx) = mpsc::channel();
    let results = results.clone();
    let label = name.to_string();
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let start = Instant::now();
            let outcome = wait();
            let _ = results.send((label, outcome, start.elapsed()));
        })
        .map_err(|e| e.to_string())?;
    let tid = tid_rx.recv().map_err(|_| "a waiter did not start")?;
    wait_until_sleeping(tid)?;
    Ok(tid)
}

fn what_a_dump_interrupts_is_exactly_what_the_docs_list() -> Outcome {
    use std::io::Read;
    install(Duration::from_secs(2), 16)?;
    let (results, outcomes) = mpsc::channel();
    let long = Duration::from_secs(3);
    let (mut stream, _peer) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(long))
        .map_err(|e| e.to_string())?;
    waiter("unix-read", &results, move || {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => "Interrupted".into(),
            other => format!("{other:?}"),
        }
    })?;
    waiter("epoll-wait", &results, || {
        // SAFETY: plain system calls on a fresh epoll fd and a live local event buffer.
        unsafe {
            let epoll = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            let mut event: libc::epoll_event = std::mem::zeroed();
            let rc = libc::epoll_wait(epoll, &mut event, 1, 3000);
            let errno = *libc::__errno_location();
            libc::close(epoll);
            if rc == -1 && errno == libc::EINTR {
                "EINTR".into()
            } else {
                format!("rc {rc} errno {errno}")
            }
        }
    })?;
    waiter("sem-timedwait", &results, || {
        // SAFETY: an unnamed semaphore in a live local, waited on with an absolute deadline.
        unsafe {
            let mut sem: libc::sem_t = std::mem::zeroed();
            libc::sem_init(&mut sem, 0, 0);
            let mut deadline: libc::timespec = std::mem::zeroed();
            libc::clock_gettime(libc::CLOCK_REALTIME, &mut deadline);
            deadline.tv_sec += 3;
            let rc = libc::sem_timedwait(&mut sem, &deadline);
            let errno = *libc::__errno_location();
            libc::sem_destroy(&mut sem);
            if rc == -1 && errno == libc::EINTR {
                "EINTR".into()
            } else {
                format!("rc {rc} errno {errno}")
            }
        }
    })?;
    waiter("libc-sleep", &results, || {
        // SAFETY: sleep(3) has no preconditions.
        format!("returned {}", unsafe { libc::sleep(10) })
    })?;
    waiter("thread-sleep", &results, move || {
        thread::sleep(long);
        "slept".into()
    })?;
    waiter("condvar-wait", &results, move || {
        let pair = (std::sync::Mutex::new(()), std::sync::Condvar::new());
        let guard = pair.0.lock().unwrap();
        let (_guard, timeout) = pair.1.wait_timeout(guard, long).unwrap();
        format!("timed out {}", timeout.timed_out())
    })?;
    drop(results);
    let dump = dump()?;
    for name in [
        "unix-read",
        "epoll-wait",
        "sem-timedwait",
        "libc-sleep",
        "thread-sleep",
        "condvar-wait",
    ] {
        let thread = thread_by_name(&dump, name)?;
        ensure(thread.method() == CaptureMethod::Signal, || {
            describe(thread)
        })?;
    }
    let mut seen = Vec::new();
    for (name, outcome, took) in outcomes.iter() {
        println!("{name}: {outcome} after {}", millis(took));
        let expected = match name.as_str() {
            "unix-read" => outcome == "Interrupted" && took < long,
            "epoll-wait" | "sem-timedwait" => outcome == "EINTR" && took < long,
            "libc-sleep" => outcome == "returned 9" && took < long,
            "thread-sleep" => outcome == "slept" && took >= long,
            "condvar-wait" => outcome == "timed out true" && took >= long,
            _ => false,
        };
        ensure(expected, || {
            format!("{name}: {outcome} after {}", millis(took))
        })?;
        seen.push(name);
    }
    ensure(seen.len() == 6, || format!("only {seen:?} finished"))?;
    Ok(())
}

/// An exec child: a thread dumps in a loop while the main thread execs `true` a moment (0 to
/// 0.6 ms, different in each child) after the first dump started, when the requests go out. A
/// request queued to the main thread while it is inside `execve` stays pending into the new
/// program, where the dump signal has its default action.
fn exec_while_dumping() -> ExitCode {
    nix::unistd::alarm::set(WATCHDOG_SECS);
    if let Err(e) = install(Duration::from_secs(1), 16) {
        println!("FAILED: {e}");
        return ExitCode::FAILURE;
    }
    static STARTED: AtomicBool = AtomicBool::new(false);
    let parked = park_in_markers([("bystander", park_in_marker_alpha as Marker)]);
    thread::spawn(|| {
        loop {
            STARTED.store(true, Ordering::SeqCst);
            let _ = manhole::dump_threads();
        }
    });
    while !STARTED.load(Ordering::SeqCst) {
        std::hint::spin_loop();
    }
    let delay = Duration::from_micros(u64::from(std::process::id() * 7919 % 600));
    let start = Instant::now();
    while start.elapsed() < delay {
        std::hint::spin_loop();
    }
    let error = Command::new("true").exec_replace();
    drop(parked);
    println!("FAILED: exec: {error}");
    ExitCode::FAILURE
}

/// `Command::exec` under a name that says what it does here.
trait ExecReplace {
    fn exec_replace(&mut self) -> std::io::Error;
}

impl ExecReplace for Command {
    fn exec_replace(&mut self) -> std::io::Error {
        std::os::unix::process::CommandExt::exec(self)
    }
}

fn exec_during_dumps_never_kills_the_new_program() -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    // With SIGRTMIN+7 as the dump signal this killed 2 to 3 of 40 new programs in one run of
    // three (signal 41); 120 runs make a miss of that rate all but impossible.
    const RUNS: usize = 120;
    let exe = env::current_exe().map_err(|e| e.to_string())?;
    let mut killed = Vec::new();
    for _ in 0..RUNS {
        let output = Command::new(&exe)
            .env(EXEC_CHILD_ENV, "1")
            .env_remove(SCENARIO_ENV)
            .output()
            .map_err(|e| format!("spawning an exec child: {e}"))?;
        if let Some(signal) = output.status.signal() {
            killed.push(signal);
        } else if !output.status.success() {
            return Err(format!(
                "an exec child failed: {} {}",
                output.status,
                String::from_utf8_lossy(&output.stdout)
            ));
        }
    }
    ensure(killed.is_empty(), || {
        format!(
            "{} of {RUNS} new programs died of signals {killed:?}",
            killed.len()
        )
    })?;
    println!("{RUNS} execs during dumps: every new program exited 0");
    Ok(())
}

/// Replaces the whole action of `signal` with `action`; returns the one it had.
fn swap_action(signal: i32, action: &libc::sigaction) -> libc::sigaction {
    // SAFETY: `action` is a complete action read from the kernel (or derived from one); the
    // zeroed `old` is valid for the kernel to overwrite.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, action, &mut old);
        old
    }
}

/// The whole current action of `signal`.
fn read_action(signal: i32) -> libc::sigaction {
    // SAFETY: a null `act` only reads; the zeroed `action` is valid for the kernel to overwrite.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut action);
        action
    }
}

/// Sends `signal` to thread `tid` of this process with `tgkill` (a foreign, thread-directed
/// instance: `si_code` SI_TKILL).
fn tgkill(tid: i32, signal: i32) -> Outcome {
    // SAFETY: a plain system call on our own process.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) };
    ensure(rc == 0, || {
        format!("tgkill: {}", std::io::Error::last_os_error())
    })
}

fn changed_flags_on_the_dump_signal_make_dumps_refuse_and_harm_nothing() -> Outcome {
    install(Duration::from_secs(2), 128)?;
    let signal = dump_signal();
    let parked = park_in_markers([("bystander", park_in_marker_alpha as Marker)])?;
    let baseline = dump()?;
    ensure(baseline.counts().captured() == 2, || {
        "baseline dump incomplete".into()
    })?;
    let tid = thread_by_name(&baseline, "bystander")?.tid();
    let ours = read_action(signal);
    // A library re-registers the same handler with SA_RESETHAND added, then with SA_SIGINFO
    // removed: each time the dump sends nothing and says why.
    let mut changes = Vec::new();
    let mut resethand = ours;
    resethand.sa_flags |= libc::SA_RESETHAND;
    changes.push((resethand, "SA_RESETHAND added"));
    let mut no_siginfo = ours;
    no_siginfo.sa_flags &= !libc::SA_SIGINFO;
    changes.push((no_siginfo, "SA_SIGINFO removed"));
    let mut masked = ours;
    // SAFETY: `sa_mask` is an initialised set read from the kernel.
    unsafe { libc::sigaddset(&mut masked.sa_mask, libc::SIGUSR1) };
    changes.push((masked, "mask of the dump handler"));
    for (changed, expected) in changes {
        swap_action(signal, &changed);
        let dump = dump()?;
        let bystander = thread_by_name(&dump, "bystander")?;
        ensure(
            bystander.method() == CaptureMethod::Proc
                && bystander
                    .note()
                    .is_some_and(|n| n.starts_with("not signalled") && n.contains(expected)),
            || format!("{expected}: {}", describe(bystander)),
        )?;
        let status = procfs::thread_status(bystander.tid()).map_err(|e| e.to_string())?;
        ensure(!status.has_pending(signal), || {
            format!("{expected}: a signal was sent anyway")
        })?;
        println!("{}", bystander.note().unwrap_or_default());
        swap_action(signal, &ours);
    }
    // With SA_RESETHAND, a foreign instance resets the signal to SIG_DFL, and the next ones meet
    // the default action: for SIGURG, ignore. The process lives on; the dump refuses.
    swap_action(signal, &resethand);
    tgkill(tid, signal)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_action(signal).sa_sigaction != libc::SIG_DFL && Instant::now() < deadline {
        thread::yield_now();
    }
    ensure(read_action(signal).sa_sigaction == libc::SIG_DFL, || {
        "SA_RESETHAND did not reset the handler".into()
    })?;
    for _ in 0..3 {
        tgkill(tid, signal)?;
    }
    let dump = dump()?;
    let bystander = thread_by_name(&dump, "bystander")?;
    ensure(
        bystander
            .note()
            .is_some_and(|n| n.contains("not signalled") && n.contains("SIG_DFL")),
        || describe(bystander),
    )?;
    parked.release()?;
    Ok(())
}

fn sig_dfl_restored_during_back_to_back_dumps_of_2000_threads_harms_nothing() -> Outcome {
    const THREADS: usize = 2000;
    const ROUNDS: u32 = 12;
    install(Duration::from_secs(2), 16)?;
    let signal = dump_signal();
    let queue = MutexQueue::start(THREADS)?;
    let baseline = dump()?;
    let full = baseline.capture_time();
    let ours = read_action(signal);
    // SAFETY: an all-zero action is SIG_DFL with no flags and an empty mask.
    let default: libc::sigaction = unsafe { std::mem::zeroed() };
    let (mut stopped_dumps, mut unsent) = (0, 0);
    for round in 0..ROUNDS {
        // The application resets the signal at a different point of each dump.
        let delay = full * round / ROUNDS;
        let resetter = thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < delay {
                std::hint::spin_loop();
            }
            swap_action(signal, &default);
        });
        let dump = manhole::dump_threads().map_err(|e| format!("dump: {e}"))?;
        resetter.join().map_err(|_| "resetter panicked")?;
        let stopped = dump
            .threads()
            .iter()
            .filter(|t| {
                t.note()
                    .is_some_and(|n| n.contains("not signalled") && n.contains("SIG_DFL"))
            })
            .count();
        if stopped > 0 {
            stopped_dumps += 1;
            unsent += stopped;
        }
        println!(
            "round {round}: reset after {}, {} captured, {stopped} not signalled after the reset",
            millis(delay),
            dump.counts().captured()
        );
        // Requests already in flight met SIG_DFL (ignore); put our handler back for the next.
        swap_action(signal, &ours);
    }
    // The check repeated during a dump saw the change and stopped sending in at least one of
    // them (the resets are spread over a whole dump's length).
    ensure(stopped_dumps > 0, || {
        "no dump noticed the reset while sending".into()
    })?;
    let last = dump()?;
    // The last resetter was joined, but a joined thread stays in /proc/self/task for a moment
    // after glibc's join returns (the kernel clears the tid before the task is gone): it may be
    // listed as exited. Every live thread must be captured.
    let counts = last.counts();
    ensure(
        counts.captured() + counts.exited() == counts.threads() && counts.exited() <= 1,
        || format!("after the rounds: {counts:?}"),
    )?;
    println!(
        "{ROUNDS} resets to SIG_DFL during dumps of {THREADS} threads: process alive, \
         {stopped_dumps} dumps stopped sending ({unsent} threads not signalled)"
    );
    queue.release()
}

fn second_dump_gives_the_same_frames() -> Outcome {
    install(Duration::from_secs(2), 128)?;
    let parked = park_in_markers([
        ("same-bravo", park_in_marker_bravo as Marker),
        ("same-charlie", park_in_marker_charlie),
    ])?;
    let first = dump()?;
    // Fresh: signalled again, not shown again from the first dump.
    let second = fresh_dump()?;
    for name in ["same-bravo", "same-charlie"] {
        let (a, b) = (
            thread_by_name(&first, name)?,
            thread_by_name(&second, name)?,
        );
        let key = |t: &ThreadStack| -> Vec<(usize, Vec<Option<String>>)> {
            t.frames()
                .iter()
                .map(|f| {
                    (
                        f.ip(),
                        f.symbols()
                            .iter()
                            .map(|s| s.name().map(String::from))
                            .collect(),
                    )
                })
                .collect()
        };
        // Parked threads are interrupted at the same place, so both dumps agree frame for frame.
        ensure(key(a) == key(b), || {
            format!("dumps differ:\n{}\n{}", describe(a), describe(b))
        })?;
    }
    println!(
        "first dump: capture {}, symbolize {}; second: capture {}, symbolize {}",
        millis(first.capture_time()),
        millis(first.symbolize_time()),
        millis(second.capture_time()),
        millis(second.symbolize_time())
    );
    parked.release()?;
    Ok(())
}

/// Reports its tid, then parks in `recv` at one call site, again after every wake-up.
#[inline(never)]
fn park_in_a_loop(ready: &mpsc::Sender<i32>, wake: &mpsc::Receiver<()>) -> usize {
    let mut woken = 0;
    loop {
        if ready.send(nix::unistd::gettid().as_raw()).is_err() {
            return woken;
        }
        match black_box(wake.recv()) {
            Ok(()) => woken += 1,
            Err(_) => return woken,
        }
    }
}

/// Checks that `dump` (named `which` in the error) signalled each of the threads `names`.
fn signalled<'a>(
    dump: &StackDump,
    names: impl IntoIterator<Item = &'a str>,
    which: &str,
) -> Outcome {
    for name in names {
        let thread = thread_by_name(dump, name)?;
        ensure(
            !thread.unchanged() && thread.handler_time().is_some(),
            || format!("{which} did not signal it: {}", describe(thread)),
        )?;
    }
    Ok(())
}

fn a_parked_thread_is_shown_again_until_it_runs() -> Outcome {
    install(Duration::from_secs(2), 128)?;
    let parked = park_in_markers([("still", park_in_marker_bravo as Marker)])?;
    let (ready, readies) = mpsc::channel();
    let (wake, wakes) = mpsc::channel();
    let looper = thread::Builder::new()
        .name("looper".into())
        .spawn(move || park_in_a_loop(&ready, &wakes))
        .unwrap();
    let looper_tid = readies.recv().map_err(|_| "the looper did not start")?;
    wait_until_sleeping(looper_tid)?;
    let ips = |t: &ThreadStack| t.frames().iter().map(|f| f.ip()).collect::<Vec<_>>();
    let first = dump()?;
    signalled(&first, ["still", "looper"], "the first dump")?;
    // The signal put each thread on a CPU once, and each went back into the same `futex` wait:
    // from now on it is shown again, not signalled.
    let mut dumps = vec![first];
    for _ in 0..2 {
        dumps.push(dump()?);
    }
    let last = dumps.last().ok_or("no dumps")?;
    for name in ["still", "looper"] {
        let (before, now) = (
            thread_by_name(&dumps[0], name)?,
            thread_by_name(last, name)?,
        );
        ensure(
            now.unchanged()
                && now.method() == CaptureMethod::Signal
                && now.handler_time().is_none()
                && ips(now) == ips(before),
            || {
                format!(
                    "not shown again unchanged:\n{}\nfirst:\n{}",
                    describe(now),
                    describe(before)
                )
            },
        )?;
    }
    ensure(
        last.notes()
            .iter()
            .any(|n| n.contains("not signalled again")),
        || format!("no note on the threads shown again: {:?}", last.notes()),
    )?;
    // The looper runs and parks again at the very same call site: it is signalled again.
    wake.send(()).map_err(|_| "the looper is gone")?;
    readies
        .recv()
        .map_err(|_| "the looper did not park again")?;
    wait_until_sleeping(looper_tid)?;
    let after_run = dump()?;
    let (looper_now, still_now) = (
        thread_by_name(&after_run, "looper")?,
        thread_by_name(&after_run, "still")?,
    );
    ensure(
        !looper_now.unchanged() && looper_now.handler_time().is_some(),
        || {
            format!(
                "the looper ran, yet was not signalled: {}",
                describe(looper_now)
            )
        },
    )?;
    ensure(still_now.unchanged(), || {
        format!("the still thread was signalled: {}", describe(still_now))
    })?;
    let fresh = fresh_dump()?;
    signalled(&fresh, ["still", "looper"], "a fresh dump")?;
    // What the fresh dump captured is shown again by the next.
    let after_fresh = dump()?;
    for name in ["still", "looper"] {
        let thread = thread_by_name(&after_fresh, name)?;
        ensure(thread.unchanged(), || {
            format!("not shown again after a fresh dump: {}", describe(thread))
        })?;
    }
    println!(
        "shown again: capture {} (every thread signalled: {})",
        millis(last.capture_time()),
        millis(fresh.capture_time())
    );
    drop(wake);
    looper.join().map_err(|_| "the looper panicked")?;
    parked.release()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Stack room: threads parked at a chosen distance from the end of their stack, with the memory
// below them painted, so that what a dump writes there can be seen.

/// The byte painted below a parked thread's stack pointer.
const PAINT: u8 = 0xa5;

/// The lowest address of the mapping that holds `address`, from `/proc/self/maps`.
fn mapping_start(address: usize) -> Result<usize, String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    for line in maps.lines() {
        let range = line.split_whitespace().next().unwrap_or("");
        let (start, end) = range.split_once('-').unwrap_or(("", ""));
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        if (start..end).contains(&address) {
            return Ok(start);
        }
    }
    Err(format!("{address:#x} is in no mapping"))
}

#[inline(always)]
fn stack_pointer() -> usize {
    let marker = 0u8;
    black_box(&marker) as *const u8 as usize
}

/// A futex word a parked thread sleeps on until it is set.
struct Gate(std::sync::atomic::AtomicU32);

impl Gate {
    const fn new() -> Gate {
        Gate(std::sync::atomic::AtomicU32::new(0))
    }

    /// Sleeps in a raw `futex` system call (a small frame below the caller) until opened.
    #[inline(never)]
    fn wait(&self) {
        while self.0.load(Ordering::Acquire) == 0 {
            // SAFETY: FUTEX_WAIT on a live, aligned u32 that we only read; no timeout.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.0.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    0u32,
                    std::ptr::null::<libc::timespec>(),
                );
            }
        }
    }

    fn open(&self) {
        self.0.store(1, Ordering::Release);
        // SAFETY: FUTEX_WAKE only uses the address as a key.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.0.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            );
        }
    }
}

/// Paints `[low, high)` with [`PAINT`].
///
/// # Safety
///
/// The range must be writable memory nobody else uses while it is painted and checked.
unsafe fn paint(low: usize, high: usize) {
    for address in low..high {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::write_volatile(address as *mut u8, PAINT) };
    }
}

/// The lowest address in `[low, high)` that no longer holds the paint, if any.
///
/// # Safety
///
/// The range must be readable memory that nobody writes while it is checked.
unsafe fn lowest_overwritten(low: usize, high: usize) -> Option<usize> {
    // SAFETY: the caller's contract.
    (low..high).find(|&address| unsafe { std::ptr::read_volatile(address as *const u8) } != PAINT)
}

/// Where a thread parked: the bottom of its stack mapping and the painted range below it.
#[derive(Debug, Clone, Copy)]
struct LowPark {
    tid: i32,
    stack_low: usize,
    painted: (usize, usize),
}

/// Recurses until fewer than `left` bytes (plus what parking takes) remain above the bottom of
/// the stack, paints what is below, reports and sleeps on `gate`.
#[inline(never)]
fn descend_then_park(
    stack_low: usize,
    left: usize,
    report: &mpsc::Sender<LowPark>,
    gate: &Gate,
) -> usize {
    let pad = black_box([0u8; 64]);
    let sp = stack_pointer();
    if sp > stack_low + left + 160 {
        return black_box(descend_then_park(stack_low, left, report, gate)) + pad[0] as usize;
    }
    // Leave the top 512 bytes below here to this frame and the calls that park.
    let painted = (stack_low, sp - 512);
    let _ = report.send(LowPark {
        tid: nix::unistd::gettid().as_raw(),
        stack_low,
        painted,
    });
    // Painted after the send, which may have used more stack than parking does.
    // SAFETY: the range lies in this thread's own stack mapping, below every live frame of it
    // (the frames of `paint` and `Gate::wait` stay within the 512 bytes left out).
    unsafe { paint(painted.0, painted.1) };
    gate.wait();
    black_box(pad[1] as usize)
}

/// A thread with a 64 KiB stack parked with about `left` bytes of stack below its stack
/// pointer, with the memory below painted; returns where it parked (its stack pointer in the
/// `futex` call from `/proc`) and its handle.
fn park_with_left(
    name: &str,
    left: usize,
    gate: Arc<Gate>,
) -> Result<(LowPark, usize, thread::JoinHandle<usize>), String> {
    let (report, parked) = mpsc::channel();
    let handle = thread::Builder::new()
        .name(name.into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let stack_low = mapping_start(stack_pointer()).expect("own stack mapping");
            descend_then_park(stack_low, left, &report, &gate)
        })
        .unwrap();
    let park = parked.recv().map_err(|_| format!("{name} did not park"))?;
    wait_until_sleeping(park.tid)?;
    let sp = match procfs::thread_syscall(park.tid).map_err(|e| e.to_string())? {
        procfs::SyscallState::InSyscall { sp, .. } => sp as usize,
        other => return Err(format!("{name} not in a system call: {other:?}")),
    };
    Ok((park, sp, handle))
}

fn handler_stack_use_is_measured_and_within_the_documented_need() -> Outcome {
    install(Duration::from_secs(2), 128)?;
    let need = manhole::stackdump::signal_stack_needed();
    let gate = Arc::new(Gate::new());
    let (park, sp, handle) = park_with_left("roomy", 40 * 1024, gate.clone())?;
    let dump = dump()?;
    let thread = thread_by_tid(&dump, park.tid)?;
    // SAFETY: the painted range is below the parked thread's stack pointer, which only the
    // kernel and the dump handler wrote to; the thread sleeps until the gate opens.
    let lowest = unsafe { lowest_overwritten(park.painted.0, park.painted.1) };
    gate.open();
    handle.join().map_err(|_| "roomy thread panicked")?;
    ensure(thread.method() == CaptureMethod::Signal, || {
        describe(thread)
    })?;
    let lowest = lowest.ok_or("the signal wrote nothing below the stack pointer")?;
    let used = sp - lowest;
    let frame = kernel_signal_frame_bytes();
    // SAFETY: getauxval only reads the auxiliary vector.
    let reported = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) } as usize;
    let red_zone = if cfg!(target_arch = "x86_64") { 128 } else { 0 };
    let handler_reserve = need.saturating_sub(reported + red_zone);
    println!(
        "stack written below the interrupted stack pointer: {used} bytes = kernel signal frame \
         {frame} (AT_MINSIGSTKSZ {reported}) + handler {} ({} build); handler_stack_bytes {:?}; \
         documented need {need}, of it handler {handler_reserve}",
        used.saturating_sub(frame),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        thread.handler_stack_bytes(),
    );
    ensure(used <= need, || {
        format!("the handler used {used} bytes, more than the {need} it claims to need")
    })?;
    ensure(used.saturating_sub(frame) <= handler_reserve, || {
        format!("the handler itself used more than its reserve of {handler_reserve}")
    })
}

/// The stack pointer at the entry of [`record_signal_frame`]'s last run, and the interrupted
/// one.
static FRAME_PROBE: [std::sync::atomic::AtomicUsize; 2] = [
    std::sync::atomic::AtomicUsize::new(0),
    std::sync::atomic::AtomicUsize::new(0),
];

extern "C" fn record_signal_frame(_: i32, _: *mut libc::siginfo_t, context: *mut std::ffi::c_void) {
    // SAFETY: SA_SIGINFO passes the kernel-built ucontext of the interrupted code.
    let context_ref = unsafe { &*context.cast::<libc::ucontext_t>() };
    #[cfg(target_arch = "x86_64")]
    let sp = context_ref.uc_mcontext.gregs[libc::REG_RSP as usize] as usize;
    #[cfg(target_arch = "aarch64")]
    let sp = context_ref.uc_mcontext.sp as usize;
    // x86_64: the frame starts with the return address the handler was entered with, right
    // below the ucontext; arm64: the ucontext is at the bottom of the frame.
    let entry = if cfg!(target_arch = "x86_64") {
        context as usize - 8
    } else {
        context as usize
    };
    FRAME_PROBE[0].store(entry, Ordering::SeqCst);
    FRAME_PROBE[1].store(sp, Ordering::SeqCst);
}

/// What the kernel's signal frame takes below the interrupted stack pointer, measured with a
/// handler of our own on a spare real-time signal.
fn kernel_signal_frame_bytes() -> usize {
    let signal = libc::SIGRTMIN() + 3;
    // SAFETY: a zeroed sigaction with an SA_SIGINFO handler that only stores two atomics.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = record_signal_frame
            as extern "C" fn(i32, *mut libc::siginfo_t, *mut std::ffi::c_void)
            as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(signal, &action, std::ptr::null_mut());
        libc::raise(signal);
    }
    FRAME_PROBE[1].load(Ordering::SeqCst) - FRAME_PROBE[0].load(Ordering::SeqCst)
}

fn threads_parked_near_their_stack_end_survive_and_get_a_note() -> Outcome {
    install(Duration::from_secs(2), 128)?;
    let need = manhole::stackdump::signal_stack_needed();
    let gate = Arc::new(Gate::new());
    let mut parked = Vec::new();
    for left in [3000, 5000, need.saturating_sub(200), need + 600] {
        parked.push(park_with_left(&format!("left-{left}"), left, gate.clone())?);
    }
    let mut result = Ok(());
    for round in 0..3 {
        let dump = dump()?;
        for (park, sp, _) in &parked {
            let thread = thread_by_tid(&dump, park.tid)?;
            let left = sp - park.stack_low;
            if round == 0 {
                println!("{left} bytes left (need {need}): {}", describe(thread));
            }
            let checked = if left < need {
                ensure(
                    thread.method() == CaptureMethod::Proc
                        && thread
                            .note()
                            .is_some_and(|n| n.contains("bytes left below its stack pointer"))
                        && !thread.frames().is_empty(),
                    || {
                        format!(
                            "{left} bytes left, not skipped with a note and PC: {}",
                            describe(thread)
                        )
                    },
                )
            } else {
                ensure(thread.method() == CaptureMethod::Signal, || {
                    format!(
                        "{left} bytes left (need {need}) but not captured: {}",
                        describe(thread)
                    )
                })
            };
            result = result.and(checked);
            // SAFETY: below the parked thread's stack pointer; it sleeps until the gate opens.
            let lowest = unsafe { lowest_overwritten(park.painted.0, park.painted.1) };
            if let Some(lowest) = lowest
                && lowest < sp - need
            {
                result = result.and(Err(format!(
                    "{left} bytes left: written {} bytes below the stack pointer",
                    sp - lowest
                )));
            }
        }
    }
    if let Some(thread) = dump()?.threads().iter().find(|t| t.name() == "left-3000") {
        println!("{}", thread_text(thread));
    }
    gate.open();
    for (_, _, handle) in parked {
        handle.join().map_err(|_| "a parked thread panicked")?;
    }
    result
}

fn thread_text(thread: &ThreadStack) -> String {
    format!(
        "{} note: {:?}, {} frame(s)",
        thread.tid(),
        thread.note(),
        thread.frames().len()
    )
}

/// Where the SA_ONSTACK handler of the altstack scenario parks, and how many are parked.
static ALTSTACK_GATE: Gate = Gate::new();
static ALTSTACK_PARKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const ALTSTACK_SIZE: usize = 8 * 1024;

/// An application's SA_ONSTACK handler with a 1 KiB frame that sleeps until the gate opens.
extern "C" fn park_on_altstack(_: i32) {
    let frame = black_box([0u8; 1024]);
    ALTSTACK_PARKED.fetch_add(1, Ordering::SeqCst);
    ALTSTACK_GATE.wait();
    black_box(frame[7]);
}

/// The same with a small frame: on an 8 KiB alternate stack a dump signal's frame then still
/// fits below it, but not the stack copy. (With a 512-byte frame, on a CPU whose signal frame is
/// 3.4 KiB, AVX-512, the registers-only answer itself had 368 bytes left, too few in a debug
/// build: it wrote below the alternate stack.)
extern "C" fn park_on_altstack_small(_: i32) {
    let frame = black_box([0u8; 64]);
    ALTSTACK_PARKED.fetch_add(1, Ordering::SeqCst);
    ALTSTACK_GATE.wait();
    black_box(frame[7]);
}

/// Installs `handler` for `signal` with SA_ONSTACK.
fn install_onstack(signal: i32, handler: extern "C" fn(i32)) -> Outcome {
    // SAFETY: a zeroed sigaction with a plain handler on the alternate stack.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_ONSTACK;
        ensure(
            libc::sigaction(signal, &action, std::ptr::null_mut()) == 0,
            || "sigaction".into(),
        )
    }
}

/// A thread with an 8 KiB alternate signal stack, right above 8 KiB of painted memory in the
/// same mapping (so a write below the altstack lands in the paint instead of faulting). It
/// waits for `go`, then raises the SA_ONSTACK signal at itself and sleeps in its handler.
fn altstack_thread(
    name: &str,
    signal: i32,
    go: Arc<Gate>,
) -> Result<(i32, usize, thread::JoinHandle<()>), String> {
    let (report, reported) = mpsc::channel();
    let handle = thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // SAFETY: a fresh private anonymous mapping; the thread owns it until it exits
            // (leaked then: a late reader must not fault).
            let map = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    2 * ALTSTACK_SIZE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(map, libc::MAP_FAILED);
            let below = map as usize;
            // SAFETY: the lower half of our own mapping, used by nothing else.
            unsafe { paint(below, below + ALTSTACK_SIZE) };
            let stack = libc::stack_t {
                ss_sp: (below + ALTSTACK_SIZE) as *mut libc::c_void,
                ss_flags: 0,
                ss_size: ALTSTACK_SIZE,
            };
            // SAFETY: the upper half of the mapping is ours and stays mapped.
            let set = unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) };
            assert_eq!(set, 0);
            let tid = nix::unistd::gettid().as_raw();
            report.send((tid, below)).unwrap();
            go.wait();
            // SAFETY: tgkill to this very thread; the handler is installed.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) };
            let off = libc::stack_t {
                ss_sp: std::ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            // SAFETY: disabling the alternate stack of this thread.
            unsafe { libc::sigaltstack(&off, std::ptr::null_mut()) };
        })
        .unwrap();
    let (tid, below) = reported
        .recv()
        .map_err(|_| format!("{name} did not start"))?;
    Ok((tid, below, handle))
}

/// Waits (bounded) until `count` threads sleep in the SA_ONSTACK handler.
fn wait_parked_on_altstack(count: usize, tids: &[i32]) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ALTSTACK_PARKED.load(Ordering::SeqCst) < count {
        ensure(Instant::now() < deadline, || "handler never ran".into())?;
        thread::yield_now();
    }
    for &tid in tids {
        wait_until_sleeping(tid)?;
    }
    Ok(())
}

fn nested_dump_on_a_small_altstack_writes_nothing_below_it() -> Outcome {
    install(Duration::from_secs(2), 128)?;
    let (signal, small_signal) = (libc::SIGRTMIN() + 4, libc::SIGRTMIN() + 5);
    install_onstack(signal, park_on_altstack)?;
    install_onstack(small_signal, park_on_altstack_small)?;
    let intact = |below: usize| {
        // SAFETY: the painted lower half of the thread's mapping; only a stray write changes it.
        unsafe { lowest_overwritten(below, below + ALTSTACK_SIZE) }.is_none()
    };
    let left_on_altstack = |tid: i32, below: usize| -> Result<usize, String> {
        let sp = procfs::thread_syscall(tid)
            .map_err(|e| e.to_string())?
            .sp()
            .ok_or("not in a system call")? as usize;
        Ok(sp - (below + ALTSTACK_SIZE))
    };
    let need = manhole::stackdump::signal_stack_needed();
    let (go_deep, go_shallow) = (Arc::new(Gate::new()), Arc::new(Gate::new()));
    let (deep, deep_below, deep_handle) = altstack_thread("alt-deep", signal, go_deep.clone())?;
    let (shallow, shallow_below, shallow_handle) =
        altstack_thread("alt-shallow", small_signal, go_shallow.clone())?;
    // `alt-shallow` is inside its (small) handler before any dump saw it, so the dump cannot
    // know it runs on an alternate stack: it is signalled, and the handler, finding itself on
    // the alternate stack with less room than a copy needs, takes the registers only.
    // `alt-deep` is dumped once on its normal stack first, so the dump knows its alternate stack.
    go_shallow.open();
    wait_parked_on_altstack(1, &[shallow])?;
    wait_until_sleeping(deep)?;
    let first = dump()?;
    let mut result = Ok(());
    let thread = thread_by_tid(&first, shallow)?;
    let left = left_on_altstack(shallow, shallow_below)?;
    println!(
        "first dump, alt-shallow ({left} bytes left on its altstack): {}",
        thread_text(thread)
    );
    result = result.and(ensure(
        thread.method() == CaptureMethod::Signal
            && thread
                .note()
                .is_some_and(|n| n.contains("on its alternate signal stack"))
            && !thread.frames().is_empty(),
        || {
            format!(
                "{left} bytes left, not registers-only with a note: {}",
                describe(thread)
            )
        },
    ));
    result = result.and(ensure(intact(shallow_below), || {
        "the first dump wrote below alt-shallow's alternate stack".into()
    }));
    // Now `alt-deep` enters its 1 KiB handler on its 8 KiB alternate stack.
    go_deep.open();
    wait_parked_on_altstack(2, &[deep, shallow])?;
    for round in 0..3 {
        let dump = dump()?;
        for (tid, below) in [(deep, deep_below), (shallow, shallow_below)] {
            let thread = thread_by_tid(&dump, tid)?;
            let left = left_on_altstack(tid, below)?;
            if round == 0 {
                println!(
                    "nested dump ({left} bytes left on the altstack): {}",
                    thread_text(thread)
                );
            }
            // Both alternate stacks are known now: a thread with less room than a signal needs
            // is not signalled.
            result = result.and(ensure(
                left >= need
                    || (thread.method() == CaptureMethod::Proc
                        && thread
                            .note()
                            .is_some_and(|n| n.contains("on its alternate signal stack"))),
                || {
                    format!(
                        "{left} bytes left, signalled or no note: {}",
                        describe(thread)
                    )
                },
            ));
            result = result.and(ensure(intact(below), || {
                format!(
                    "a nested dump wrote below the alternate stack of {}",
                    thread.name()
                )
            }));
        }
    }
    ALTSTACK_GATE.open();
    deep_handle.join().map_err(|_| "alt-deep panicked")?;
    shallow_handle.join().map_err(|_| "alt-shallow panicked")?;
    result
}

fn back_to_back_dumps_of_busy_threads_never_report_blocked() -> Outcome {
    install(Duration::from_secs(2), 128)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (started, started_rx) = mpsc::channel();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (started, stop) = (started.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("busy-{i}"))
                .spawn(move || spin_in_marker(started, &stop))
                .unwrap()
        })
        .collect();
    drop(started);
    for _ in 0..handles.len() {
        started_rx
            .recv()
            .map_err(|_| "a busy thread did not start")?;
    }
    let (mut blocked, mut captured_all, mut first_blocked) = (0, 0, None);
    for _ in 0..500 {
        let dump = dump()?;
        if dump.counts().blocked() > 0 {
            blocked += 1;
            first_blocked.get_or_insert_with(|| dump.to_text());
        }
        if dump.counts().captured() == dump.counts().threads() {
            captured_all += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.join().map_err(|_| "a busy thread panicked")?;
    }
    println!(
        "500 dumps: {blocked} reported a blocked thread, {captured_all} captured every thread"
    );
    ensure(blocked == 0, || {
        format!(
            "{blocked} of 500 dumps reported a blocked thread; the first:\n{}",
            first_blocked.unwrap_or_default()
        )
    })
}

unsafe extern "C" {
    /// libgcc: registers a frame table with the unwinder (as JITs do); from then on every FDE
    /// lookup of libgcc < 13 takes its global `object_mutex`.
    fn __register_frame_info(begin: *const u8, object: *mut u8);
}

/// The start of this executable's own `.eh_frame`, from its `PT_GNU_EH_FRAME` header.
fn own_eh_frame() -> Option<usize> {
    unsafe extern "C" fn first_object(
        info: *mut libc::dl_phdr_info,
        _: libc::size_t,
        found: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info; `found` is our `Option<usize>`.
        let (info, found) = unsafe { (&*info, &mut *found.cast::<Option<usize>>()) };
        // SAFETY: the program headers of a loaded object, `dlpi_phnum` of them.
        let headers =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        if let Some(header) = headers.iter().find(|h| h.p_type == libc::PT_GNU_EH_FRAME) {
            let hdr = info.dlpi_addr as usize + header.p_vaddr as usize;
            // SAFETY: `.eh_frame_hdr` is mapped: version, eh_frame_ptr encoding, two more
            // encodings, then the encoded pointer.
            let (encoding, offset) = unsafe {
                (
                    *((hdr + 1) as *const u8),
                    std::ptr::read_unaligned((hdr + 4) as *const i32),
                )
            };
            // DW_EH_PE_pcrel | DW_EH_PE_sdata4, what every linker writes.
            if encoding == 0x1b {
                *found = Some((hdr + 4).wrapping_add_signed(offset as isize));
            }
        }
        1 // the first object is the executable
    }
    let mut found: Option<usize> = None;
    // SAFETY: the callback only reads the headers it is given and writes `found`.
    unsafe {
        libc::dl_iterate_phdr(
            Some(first_object),
            (&mut found as *mut Option<usize>).cast(),
        )
    };
    found
}

fn dumps_while_threads_unwind_with_registered_frames_never_hang() -> Outcome {
    install(Duration::from_secs(2), 128)?;
    let eh_frame = own_eh_frame().ok_or("no .eh_frame_hdr in this executable")?;
    // libgcc keeps the object for as long as the frames are registered: leaked.
    let object: &'static mut [usize; 16] = Box::leak(Box::new([0usize; 16]));
    // SAFETY: `eh_frame` is this executable's mapped `.eh_frame`; `object` is writable, big
    // enough for libgcc's `struct object` and never freed.
    unsafe { __register_frame_info(eh_frame as *const u8, object.as_mut_ptr().cast()) };
    std::panic::set_hook(Box::new(|_| {}));
    let stop = Arc::new(AtomicBool::new(false));
    let rounds: Arc<[std::sync::atomic::AtomicUsize; 4]> = Arc::new(Default::default());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            thread::Builder::new()
                .name(format!("unwinder-{i}"))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if i % 2 == 0 {
                            let _ = black_box(std::backtrace::Backtrace::force_capture());
                        } else {
                            let _ = black_box(std::panic::catch_unwind(|| panic!("unwind")));
                        }
                        rounds[i].fetch_add(1, Ordering::Relaxed);
                    }
                })
                .unwrap()
        })
        .collect();
    let mut captured = 0;
    for _ in 0..200 {
        let dump = dump()?;
        for thread in dump.threads() {
            if !thread.name().starts_with("unwinder-") {
                continue;
            }
            if thread.method() == CaptureMethod::Signal {
                captured += 1;
            } else {
                println!("not captured: {}", describe(thread));
            }
        }
    }
    // Every unwinder still makes progress after the dumps (none is stuck on libgcc's mutex).
    let before: Vec<usize> = rounds.iter().map(|r| r.load(Ordering::Relaxed)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rounds
        .iter()
        .zip(&before)
        .any(|(r, &b)| r.load(Ordering::Relaxed) == b)
    {
        ensure(Instant::now() < deadline, || {
            "an unwinding thread is stuck".into()
        })?;
        thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.join().map_err(|_| "an unwinding thread panicked")?;
    }
    let _ = std::panic::take_hook();
    println!(
        "200 dumps with registered frames: {captured} of 800 unwinder stacks captured, rounds {:?}",
        rounds
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    );
    // The point is that no dump hangs (the watchdog) and every unwinder goes on; a thread the
    // loaded machine kept from answering in time is listed with a note (`check_consistent`).
    ensure(captured >= 792, || {
        format!("only {captured} of 800 unwinder stacks captured")
    })
}
