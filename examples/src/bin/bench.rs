//! `bench`: the manhole benchmark, side by side with `eu-stack` and `gdb`.
//!
//! ```sh
//! cargo run --release -p manhole-examples --bin bench
//! ```
//!
//! It runs `bench_target` (the application) and `manhole-cli` from its own directory
//! (`target/release`), building them first with `cargo build --release -p manhole-examples -p
//! manhole-cli --bins` when they are missing. It prints markdown tables and writes them, with the
//! machine they ran on, between the `bench:begin`/`bench:end` markers of `docs/benchmarks.md`
//! (the text around the markers is kept).
//!
//! What it measures (issue 6): whole-process dumps of 10 to 5,000 threads against `eu-stack -p`
//! and `gdb -p -batch -ex 'thread apply all bt'`; time spent in the capture handler per thread,
//! the bytes of stack it copied and how many stacks went on beyond the 64 KiB copy window (also
//! in the example applications `demo`, `bare`, `tokio_app` and `faults`, section 6);
//! the idle cost of the manhole's threads over 10 s; extra threads, RSS and `install` time; a
//! CPU-bound workload's throughput without a manhole, with an idle one and with 10 dumps a
//! second; the latency of `manhole-cli <pid> info`; and a CPU profile of a known split against
//! `perf record`, with the throughput it costs (`--profile` runs that section alone and prints it;
//! `--dumps [N,N,...]` runs sections 1, 2 and 6 alone, without eu-stack and gdb, and prints them).
//!
//! Environment: `BENCH_QUICK=1` runs fewer repetitions and thread counts (a smoke test, not
//! numbers to publish); `BENCH_GDB_TIMEOUT` caps each gdb run in seconds (default 60);
//! `BENCH_NO_WRITE=1` leaves `docs/benchmarks.md` alone.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../bench_profile.rs"]
mod profile;

// ---------------------------------------------------------------------------------------------
// Statistics

/// Durations of repeated runs, summarised.
#[derive(Debug, Clone, Default)]
struct Sample(Vec<f64>);

impl Sample {
    fn push(&mut self, value: f64) {
        self.0.push(value);
    }
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }
    /// Nearest-rank percentile; NaN when empty.
    fn pct(&self, p: f64) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }
    fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NAN, f64::max)
    }
    fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::NAN, f64::min)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Milliseconds, with precision that suits the size.
fn ms(value: f64) -> String {
    if value.is_nan() {
        "n/a".into()
    } else if value < 1.0 {
        format!("{value:.3}")
    } else if value < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

fn us(value: f64) -> String {
    if value.is_nan() {
        "n/a".into()
    } else if value < 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A finished (or killed) external command.
struct Run {
    wall: Duration,
    success: bool,
    timed_out: bool,
    stdout: Vec<u8>,
}

/// Runs `command`, its stdout captured (or discarded), killing it after `timeout`.
fn run_timed(command: &mut Command, timeout: Duration, capture: bool) -> Run {
    command
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .stdout(if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let started = Instant::now();
    let mut child = command.spawn().expect("spawn a benchmark command");
    let pid = child.id() as libc::pid_t;
    let (done, watch) = mpsc::channel::<()>();
    let killed = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let killed = killed.clone();
        std::thread::spawn(move || {
            if watch.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
                killed.store(true, Ordering::SeqCst);
                // SAFETY: plain kill(2) on our own child, which has not been reaped yet (the
                // main thread reaps it only after this signal or after `done` is sent).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        })
    };
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    let status = child.wait().expect("wait for a benchmark command");
    let wall = started.elapsed();
    let _ = done.send(());
    let _ = watchdog.join();
    Run {
        wall,
        success: status.success(),
        timed_out: killed.load(Ordering::SeqCst),
        stdout,
    }
}

/// A running `bench_target`.
struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pid: u32,
    install_micros: f64,
    threads: usize,
}

impl Target {
    fn start(tools: &Tools, args: &[&str]) -> Target {
        Target::try_start(tools, args)
            .unwrap_or_else(|| panic!("bench_target {args:?} did not start"))
    }

    /// Starts the target; `None` if it exits before saying it is ready.
    fn try_start(tools: &Tools, args: &[&str]) -> Option<Target> {
        let mut child = Command::new(&tools.target)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start bench_target");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.wait();
            return None;
        }
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("bench_target said {line:?}"))
                .to_string()
        };
        let pid: u32 = field("pid").parse().expect("pid");
        let install_micros = field("install_micros").parse().expect("install_micros");
        let threads = field("threads").parse().expect("threads");
        Some(Target {
            child,
            stdin,
            stdout,
            pid,
            install_micros,
            threads,
        })
    }

    /// (CLOCK_MONOTONIC nanos, workload iterations so far).
    fn sample(&mut self) -> (u64, u64) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"sample\n").expect("ask for a sample");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read a sample");
        let field = |key: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("bench_target sampled {line:?}"))
        };
        (field("nanos"), field("iterations"))
    }

    fn rss_kib(&self) -> f64 {
        rss_kib(self.pid)
    }

    fn anon_kib(&self) -> f64 {
        anon_kib(self.pid)
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/manhole-{}", self.pid))
    }

    fn wait_for_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket().exists() {
            assert!(Instant::now() < deadline, "no manhole socket appeared");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // End of input ends the target normally, so the manhole removes its socket.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => break,
            }
        }
        // SAFETY: SIGCONT then SIGKILL to our own unreaped child (a tracer killed on timeout
        // can leave it stopped).
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGCONT);
            libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.socket());
    }
}

/// Anonymous resident memory (`Anonymous:` of `/proc/<pid>/smaps_rollup`): the private memory
/// the process allocated. The rest of RSS is file-backed (the binary's code and unwind tables,
/// libraries): shared with other processes of the same binary and reclaimable by the kernel.
/// A `Key:  N kB` field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// Waits (up to 10 s) until process `pid` has no `mh-session-<n>` thread left.
fn wait_sessions_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let busy = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|name| name.starts_with("mh-session-"))
            });
        if !busy {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn anon_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Anonymous:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// One thread's counters from `/proc`: name, CPU ticks (utime+stime), CPU nanoseconds
/// (`se.sum_exec_runtime`, when the kernel has it) and context switches (voluntary+involuntary).
#[derive(Debug, Clone)]
struct TaskCost {
    tid: String,
    name: String,
    ticks: u64,
    exec_nanos: Option<u64>,
    switches: u64,
}

fn task_costs(pid: u32) -> Vec<TaskCost> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let tid = entry.file_name().to_string_lossy().into_owned();
        let base = format!("/proc/{pid}/task/{tid}");
        let name = std::fs::read_to_string(format!("{base}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let stat = std::fs::read_to_string(format!("{base}/stat")).unwrap_or_default();
        let ticks = stat
            .rfind(')')
            .map(|at| {
                let rest: Vec<&str> = stat[at + 1..].split_whitespace().collect();
                // Fields 14 and 15 (utime, stime), counted from 3 after the name.
                let f = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
                f(14).unwrap_or(0) + f(15).unwrap_or(0)
            })
            .unwrap_or(0);
        let status = std::fs::read_to_string(format!("{base}/status")).unwrap_or_default();
        let switches = status
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt")
            })
            .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
            .sum();
        let exec_nanos = std::fs::read_to_string(format!("{base}/sched"))
            .ok()
            .and_then(|s| {
                let value = s
                    .lines()
                    .find(|l| l.starts_with("se.sum_exec_runtime"))?
                    .split(':')
                    .nth(1)?
                    .trim()
                    .parse::<f64>()
                    .ok()?;
                Some((value * 1e6) as u64)
            });
        out.push(TaskCost {
            tid,
            name,
            ticks,
            exec_nanos,
            switches,
        });
    }
    out
}

fn manhole_tasks(pid: u32) -> Vec<TaskCost> {
    task_costs(pid)
        .into_iter()
        .filter(|t| t.name.starts_with("manhole"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The machine and the tools

struct Tools {
    target: PathBuf,
    cli: PathBuf,
    eu_stack: Option<String>,
    gdb: Option<String>,
}

fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

fn find_tools() -> Tools {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir").to_path_buf();
    let target = dir.join("bench_target");
    let cli = dir.join("manhole-cli");
    if !target.exists() || !cli.exists() {
        // target/release/bench -> target/
        let target_dir = dir.parent().expect("target dir");
        eprintln!("bench: building bench_target and manhole-cli (cargo build --release)");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "-p",
                "manhole-examples",
                "-p",
                "manhole-cli",
                "--bins",
            ])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(workspace_root())
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build failed");
    }
    let eu_stack = first_line("eu-stack", &["--version"]);
    let gdb = first_line("gdb", &["--version"]);
    Tools {
        target,
        cli,
        eu_stack,
        gdb,
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// What a plain loop sees of this machine's own stalls (the hypervisor taking the CPU away,
/// interrupts), with nothing else running: the gaps between two clock reads over `secs`. A stop
/// of the dump handler as long as these cannot be told from one of them.
fn machine_stalls(secs: u64) -> String {
    let start = Instant::now();
    let (mut last, mut longest) = (start, Duration::ZERO);
    // Gaps over 20 µs, 50 µs, 0.5 ms and 1 ms: the short ones are what a 2 µs handler can meet.
    let bounds = [
        Duration::from_micros(20),
        Duration::from_micros(50),
        Duration::from_micros(500),
        Duration::from_millis(1),
    ];
    let mut over = [0usize; 4];
    while start.elapsed() < Duration::from_secs(secs) {
        let now = Instant::now();
        let gap = now - last;
        last = now;
        for (count, bound) in over.iter_mut().zip(bounds) {
            *count += usize::from(gap > bound);
        }
        longest = longest.max(gap);
    }
    let [over_20_us, over_50_us, over_half_ms, over_one_ms] = over;
    format!(
        "a loop reading the clock for {secs} s, nothing else running, was held up {over_20_us} \
         times over 20 µs, {over_50_us} over 50 µs, {over_half_ms} over 0.5 ms, {over_one_ms} \
         over 1 ms, at most {:.0} µs",
        longest.as_secs_f64() * 1e6
    )
}

fn machine(tools: &Tools) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map(|m| m.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let glibc = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) }
        .to_string_lossy()
        .into_owned();
    let missing = "not installed (`apt-get install gdb elfutils`)";
    vec![
        ("CPU".into(), format!("{model}, {cores} cores")),
        ("the machine's own stalls".into(), machine_stalls(10)),
        ("kernel".into(), kernel),
        ("glibc".into(), glibc),
        (
            "rustc".into(),
            first_line("rustc", &["-V"]).unwrap_or_else(|| "unknown".into()),
        ),
        (
            "gdb".into(),
            tools.gdb.clone().unwrap_or_else(|| missing.into()),
        ),
        (
            "eu-stack".into(),
            tools.eu_stack.clone().unwrap_or_else(|| missing.into()),
        ),
        (
            "date".into(),
            first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
        ),
        (
            "load average at start".into(),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: whole-process dumps and how long the application is stopped

/// A dump as the JSON of `manhole-cli --json <pid> threads` reports it.
struct DumpData {
    capture_ms: f64,
    symbolize_ms: f64,
    /// Handler time of every thread that answered the signal, in microseconds.
    handler_us: Vec<f64>,
    /// Bytes of stack each answering thread's handler copied.
    copy_bytes: Vec<f64>,
    /// Answering threads whose stack went on beyond the copy window (shown truncated).
    window_truncated: usize,
    /// Live threads that did not answer (exited ones do not count: a previous session's
    /// thread may be finishing).
    no_answer: usize,
    /// Threads shown again from an earlier dump's capture (they had not run since).
    unchanged: usize,
}

fn parse_dump(bytes: &[u8]) -> Option<DumpData> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let micros = |key: &str| value[key].as_f64().map(|v| v / 1000.0);
    let handler_us = value["threads"]
        .as_array()?
        .iter()
        .filter_map(|t| t["handler_nanos"].as_f64())
        .map(|n| n / 1000.0)
        .collect();
    let threads = value["threads"].as_array()?;
    let copy_bytes = threads
        .iter()
        .filter_map(|t| t["stack_copy_bytes"].as_f64())
        .collect();
    let window_truncated = threads
        .iter()
        .filter(|t| t["note"].as_str().is_some_and(is_window_note))
        .count();
    Some(DumpData {
        capture_ms: micros("capture_micros")?,
        symbolize_ms: micros("symbolize_micros")?,
        handler_us,
        copy_bytes,
        window_truncated,
        // The manhole's own threads keep the dump signal blocked by design (listed from /proc);
        // every other live thread must have answered. (Counting all "blocked" threads made this
        // always false: the listener is one.)
        unchanged: threads
            .iter()
            .filter(|t| t["unchanged"].as_bool() == Some(true))
            .count(),
        no_answer: threads
            .iter()
            .filter(|t| {
                t["manhole"].as_bool() != Some(true)
                    && t["method"].as_str() == Some("proc")
                    && !t["note"].as_str().is_some_and(|n| n.starts_with("exited"))
            })
            .count(),
    })
}

/// `n of m (p %)`.
fn truncation(truncated: usize, answered: usize) -> String {
    if answered == 0 {
        return "n/a".into();
    }
    format!(
        "{truncated} of {answered} ({:.2} %)",
        100.0 * truncated as f64 / answered as f64
    )
}

/// Whether a thread's note says its stack went on beyond the copy window.
fn is_window_note(note: &str) -> bool {
    note.starts_with("stack deeper than the")
}

/// A tool's runs: wall times, or the cap it hit.
#[derive(Default)]
struct ToolRuns {
    wall_ms: Sample,
    timed_out: Option<f64>,
    failed: usize,
}

impl ToolRuns {
    fn cell(&self) -> String {
        match self.timed_out {
            Some(cap) => format!("> {:.0} s", cap / 1000.0),
            None if self.wall_ms.is_empty() => "failed".into(),
            None => ms(self.wall_ms.median()),
        }
    }
    /// The median, or the cap as a lower bound.
    fn lower_bound_ms(&self) -> f64 {
        self.timed_out.unwrap_or_else(|| self.wall_ms.median())
    }
}

struct DumpRow {
    threads: usize,
    target_threads: usize,
    first_cli_ms: f64,
    first_capture_ms: f64,
    first_symbolize_ms: f64,
    warm_cli_ms: Sample,
    warm_capture_ms: Sample,
    warm_symbolize_ms: Sample,
    warm_total_ms: Sample,
    /// Warm dumps that signal every thread (`threads --fresh`): capture + symbolize.
    fresh_total_ms: Sample,
    /// Threads shown again (not signalled) per warm dump.
    shown_again: Sample,
    handler_us: Sample,
    copy_bytes: Sample,
    window_truncated: usize,
    captured_ok: bool,
    rss_before_kib: f64,
    rss_first_kib: f64,
    /// Peak RSS (`VmHWM`) once the first dump's session ended.
    hwm_first_kib: f64,
    rss_after_kib: f64,
    anon_before_kib: f64,
    anon_first_kib: f64,
    anon_after_kib: f64,
    eu_stack: Option<ToolRuns>,
    gdb: Option<ToolRuns>,
}

fn run_tool(mut make: impl FnMut() -> Command, runs: usize, timeout: Duration) -> ToolRuns {
    let mut out = ToolRuns::default();
    for _ in 0..runs {
        let run = run_timed(&mut make(), timeout, false);
        if run.timed_out {
            out.timed_out = Some(timeout.as_secs_f64() * 1000.0);
            break;
        }
        if run.success {
            out.wall_ms.push(run.wall.as_secs_f64() * 1000.0);
        } else {
            out.failed += 1;
        }
    }
    out
}

/// The library's cache grace after the last session (`stackdump::CACHE_GRACE`, 5 s), and time
/// for the listener to act on it.
const CACHE_GRACE_AND_MARGIN: Duration = Duration::from_millis(6500);

fn measure_dumps(tools: &Tools, threads: usize, config: &Config) -> DumpRow {
    eprintln!("bench: dumps of {threads} threads");
    let target = Target::start(tools, &["--threads", &threads.to_string()]);
    target.wait_for_socket();
    std::thread::sleep(Duration::from_millis(200));
    let pid = target.pid.to_string();
    let cli_with = |json: bool, flags: &[&str]| {
        let mut c = Command::new(&tools.cli);
        if json {
            c.arg("--json");
        }
        c.args([pid.as_str(), "threads"]);
        c.args(flags);
        c
    };
    let cli = |json: bool| cli_with(json, &[]);
    let timeout = Duration::from_secs(60);
    let rss_before_kib = target.rss_kib();
    let anon_before_kib = target.anon_kib();

    let first = run_timed(&mut cli(true), timeout, true);
    let first_data = parse_dump(&first.stdout).expect("the first dump's JSON");
    // The session's caches go 5 s after it ends (the next manhole-cli call finds them warm till
    // then): measure after its thread is gone and that grace is over.
    wait_sessions_gone(target.pid);
    std::thread::sleep(CACHE_GRACE_AND_MARGIN);
    let hwm_first_kib = status_kib(target.pid, "VmHWM:");
    let rss_first_kib = target.rss_kib();
    let anon_first_kib = target.anon_kib();
    let mut row = DumpRow {
        threads,
        target_threads: target.threads,
        first_cli_ms: first.wall.as_secs_f64() * 1000.0,
        first_capture_ms: first_data.capture_ms,
        first_symbolize_ms: first_data.symbolize_ms,
        warm_cli_ms: Sample::default(),
        warm_capture_ms: Sample::default(),
        warm_symbolize_ms: Sample::default(),
        warm_total_ms: Sample::default(),
        fresh_total_ms: Sample::default(),
        shown_again: Sample::default(),
        handler_us: Sample::default(),
        copy_bytes: Sample::default(),
        window_truncated: 0,
        captured_ok: first_data.no_answer == 0,
        rss_before_kib,
        rss_first_kib,
        hwm_first_kib,
        rss_after_kib: f64::NAN,
        anon_before_kib,
        anon_first_kib,
        anon_after_kib: f64::NAN,
        eu_stack: None,
        gdb: None,
    };
    let repeats = config.warm_runs(threads);
    for _ in 0..repeats {
        // Every thread signalled: the handler's times and copies, and the capture when every
        // thread ran since the last dump.
        let fresh = run_timed(&mut cli_with(true, &["--fresh"]), timeout, true);
        let data = parse_dump(&fresh.stdout).expect("a fresh dump's JSON");
        row.captured_ok &= data.no_answer == 0;
        row.fresh_total_ms.push(data.capture_ms + data.symbolize_ms);
        for h in data.handler_us {
            row.handler_us.push(h);
        }
        for c in data.copy_bytes {
            row.copy_bytes.push(c);
        }
        row.window_truncated += data.window_truncated;
        // End to end, as an operator types it: text output.
        let text = run_timed(&mut cli(false), timeout, false);
        assert!(text.success, "manhole-cli threads failed");
        row.warm_cli_ms.push(text.wall.as_secs_f64() * 1000.0);
        // The same dump as data: capture and symbolization apart, handler times.
        let json = run_timed(&mut cli(true), timeout, true);
        let data = parse_dump(&json.stdout).expect("a dump's JSON");
        row.captured_ok &= data.no_answer == 0;
        row.warm_capture_ms.push(data.capture_ms);
        row.warm_symbolize_ms.push(data.symbolize_ms);
        row.warm_total_ms.push(data.capture_ms + data.symbolize_ms);
        row.shown_again.push(data.unchanged as f64);
    }
    wait_sessions_gone(target.pid);
    wait_sessions_gone(target.pid);
    std::thread::sleep(CACHE_GRACE_AND_MARGIN);
    row.rss_after_kib = target.rss_kib();
    row.anon_after_kib = target.anon_kib();

    if tools.eu_stack.is_some() {
        let runs = config.tool_runs(threads);
        row.eu_stack = Some(run_tool(
            || {
                let mut c = Command::new("eu-stack");
                c.args(["-p", pid.as_str()]);
                c
            },
            runs,
            Duration::from_secs(120),
        ));
    }
    if tools.gdb.is_some() {
        let runs = if threads >= 1000 {
            1
        } else {
            config.tool_runs(threads)
        };
        row.gdb = Some(run_tool(
            || {
                let mut c = Command::new("gdb");
                c.args([
                    "-nx",
                    "-p",
                    pid.as_str(),
                    "-batch",
                    "-iex",
                    "set debuginfod enabled off",
                    "-ex",
                    "thread apply all bt",
                ])
                .env_remove("DEBUGINFOD_URLS");
                c
            },
            runs,
            config.gdb_timeout,
        ));
    }
    drop(target);
    row
}

// ---------------------------------------------------------------------------------------------
// 6: stacks deeper than the copy window in the example applications

/// Dumps of one example application: how many stacks were copied and how many went on beyond
/// the copy window.
struct AppStacks {
    app: &'static str,
    dumps: usize,
    answered: usize,
    window_truncated: usize,
    copy_bytes: Sample,
    most_frames: usize,
}

/// Starts each example application as a user would (`bare` through `MANHOLE`), waits for its
/// socket, takes `dumps` dumps with `manhole-cli --json PID threads` and counts.
fn measure_example_stacks(tools: &Tools, dumps: usize) -> Vec<AppStacks> {
    let apps: [(&'static str, &[&str], bool); 4] = [
        ("demo", &[], false),
        ("bare", &["--threads", "4"], true),
        ("tokio_app", &[], false),
        ("faults", &["--threads", "4"], false),
    ];
    let mut out = Vec::new();
    for (app, args, from_env) in apps {
        eprintln!("bench: stacks of {app}");
        let mut command = Command::new(tools.target.with_file_name(app));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if from_env {
            command.env("MANHOLE", "");
        }
        let Ok(mut child) = command.spawn() else {
            eprintln!(
                "bench: cannot start {app}; build it with `cargo build --release --workspace --bins`"
            );
            continue;
        };
        let socket = PathBuf::from(format!("/tmp/manhole-{}", child.id()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut row = AppStacks {
            app,
            dumps: 0,
            answered: 0,
            window_truncated: 0,
            copy_bytes: Sample::default(),
            most_frames: 0,
        };
        for _ in 0..dumps {
            let run = run_timed(
                // Fresh: every thread copied in every dump, none shown again.
                Command::new(&tools.cli).args([
                    "--json",
                    &child.id().to_string(),
                    "threads",
                    "--fresh",
                ]),
                Duration::from_secs(30),
                true,
            );
            let Ok(value) = serde_json::from_slice::<Value>(&run.stdout) else {
                continue;
            };
            row.dumps += 1;
            for thread in value["threads"].as_array().into_iter().flatten() {
                let Some(copied) = thread["stack_copy_bytes"].as_f64() else {
                    continue;
                };
                row.answered += 1;
                row.copy_bytes.push(copied);
                if thread["note"].as_str().is_some_and(is_window_note) {
                    row.window_truncated += 1;
                }
                let frames = thread["frames"].as_array().map_or(0, Vec::len);
                row.most_frames = row.most_frames.max(frames);
            }
        }
        // SAFETY: SIGKILL to our own unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = child.wait();
        // Killed, it could not remove its socket: the bench started it, so the bench does.
        let _ = std::fs::remove_file(&socket);
        out.push(row);
    }
    out
}

/// Sections 1 and 2: the dumps and how long the application is stopped.
fn dumps_markdown(o: &mut String, dumps: &[DumpRow]) {
    let _ = writeln!(
        o,
        "\n### 1. Whole-process stack dump (ms; warm = median of repeated dumps, p90 in brackets)\n"
    );
    let _ = writeln!(
        o,
        "| threads | `manhole-cli threads` first | `manhole-cli threads` warm | capture first | symbolize first | capture warm | symbolize warm | capture+symbolize warm | threads shown again | capture+symbolize warm, every thread signalled (`--fresh`) | `eu-stack -p` | `gdb -p … bt` | eu-stack / manhole-cli warm | gdb / manhole-cli warm |"
    );
    let _ = writeln!(
        o,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in dumps {
        let ratio = |tool: &Option<ToolRuns>| match tool {
            None => "skipped".to_string(),
            Some(t) if t.timed_out.is_some() => {
                format!("> {:.0}x", t.lower_bound_ms() / r.warm_cli_ms.median())
            }
            Some(t) if t.wall_ms.is_empty() => "n/a".into(),
            Some(t) => format!("{:.0}x", t.lower_bound_ms() / r.warm_cli_ms.median()),
        };
        let cell = |tool: &Option<ToolRuns>| {
            tool.as_ref()
                .map_or_else(|| "skipped".to_string(), ToolRuns::cell)
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} ({}) | {} | {} | {} ({}) | {} ({}) | {} ({}) | {:.0} | {} ({}) | {} | {} | {} | {} |",
            r.threads,
            ms(r.first_cli_ms),
            ms(r.warm_cli_ms.median()),
            ms(r.warm_cli_ms.pct(90.0)),
            ms(r.first_capture_ms),
            ms(r.first_symbolize_ms),
            ms(r.warm_capture_ms.median()),
            ms(r.warm_capture_ms.pct(90.0)),
            ms(r.warm_symbolize_ms.median()),
            ms(r.warm_symbolize_ms.pct(90.0)),
            ms(r.warm_total_ms.median()),
            ms(r.warm_total_ms.pct(90.0)),
            r.shown_again.median(),
            ms(r.fresh_total_ms.median()),
            ms(r.fresh_total_ms.pct(90.0)),
            cell(&r.eu_stack),
            cell(&r.gdb),
            ratio(&r.eu_stack),
            ratio(&r.gdb),
        );
    }
    let _ = writeln!(
        o,
        "\n`threads` is the number of parked application threads; the process has {} in all (main thread and the manhole's listener and session included) at the largest size. Every live thread answered in every dump: {}.",
        dumps.last().map_or(0, |r| r.target_threads + 1),
        if dumps.iter().all(|r| r.captured_ok) {
            "yes"
        } else {
            "NO"
        }
    );
    let _ = writeln!(
        o,
        "\nMemory of the target (KiB): RSS, and in brackets its anonymous part (`smaps_rollup`; the rest is file-backed: the binary's pages, shared and reclaimable):\n"
    );
    let _ = writeln!(
        o,
        "| threads | before any dump | peak RSS during the first (`VmHWM`) | 6.5 s after the first dump's session (caches given back) | the same after all dumps | growth after the first dump |"
    );
    let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|");
    for r in dumps {
        let _ = writeln!(
            o,
            "| {} | {:.0} ({:.0}) | {:.0} (+{:.0}) | {:.0} ({:.0}) | {:.0} ({:.0}) | {:+.0} ({:+.0}) |",
            r.threads,
            r.rss_before_kib,
            r.anon_before_kib,
            r.hwm_first_kib,
            r.hwm_first_kib - r.rss_before_kib,
            r.rss_first_kib,
            r.anon_first_kib,
            r.rss_after_kib,
            r.anon_after_kib,
            r.rss_after_kib - r.rss_first_kib,
            r.anon_after_kib - r.anon_first_kib
        );
    }

    let _ = writeln!(
        o,
        "\n### 2. How long the application is stopped (µs)\n\nOurs: time inside the capture handler per thread (entry to the last store before it reports done), over every thread of every warm dump that signals them all (`threads --fresh`: a plain warm dump signals only the threads that ran since the last one). gdb and eu-stack stop every thread for the whole attach-to-detach run (shown: their median wall time, an upper bound of that stop). A handler held up by the machine itself (see \"the machine's own stalls\" under Machine) counts as stopped that long.\n"
    );
    let _ = writeln!(
        o,
        "| threads | handler p50 | handler p99 | handler max = longest stop | stack copied p50 (bytes) | stack copied p99 (bytes) | truncated at the 64 KiB window | eu-stack stop | gdb stop |"
    );
    let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in dumps {
        let stop = |tool: &Option<ToolRuns>| match tool {
            None => "skipped".to_string(),
            Some(t) => t
                .timed_out
                .map(|c| format!("> {:.0} s", c / 1000.0))
                .unwrap_or_else(|| format!("{} ms", ms(t.wall_ms.median()))),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} |",
            r.threads,
            us(r.handler_us.median()),
            us(r.handler_us.pct(99.0)),
            us(r.handler_us.max()),
            r.copy_bytes.median(),
            r.copy_bytes.pct(99.0),
            truncation(r.window_truncated, r.copy_bytes.0.len()),
            stop(&r.eu_stack),
            stop(&r.gdb),
        );
    }
}

fn example_stacks_markdown(o: &mut String, rows: &[AppStacks]) {
    let _ = writeln!(
        o,
        "\n### 6. Stacks deeper than the 64 KiB copy window in the example applications\n\nEach application started as a user would (`bare` through `MANHOLE`), dumped with `manhole-cli --json PID threads --fresh`; every stack copied by the dump handler counts.\n"
    );
    let _ = writeln!(
        o,
        "| application | dumps | stacks copied | truncated at the window | stack copied p50 (bytes) | max (bytes) | most frames |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {} |",
            r.app,
            r.dumps,
            r.answered,
            truncation(r.window_truncated, r.answered),
            r.copy_bytes.median(),
            r.copy_bytes.max(),
            r.most_frames
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3: idle cost

struct IdleRow {
    mode: &'static str,
    install_us: Sample,
    rss_kib: Sample,
    anon_kib: Sample,
    threads: usize,
    manhole_threads: Vec<String>,
    cpu_ticks: u64,
    cpu_nanos: Option<u64>,
    switches: u64,
}

fn idle_args(mode: &str) -> Vec<&'static str> {
    match mode {
        "no manhole" => vec!["--threads", "10", "--no-manhole"],
        "signal-activated (USR2)" => vec!["--threads", "10", "--activate-on", "USR2"],
        _ => vec!["--threads", "10"],
    }
}

fn measure_idle(tools: &Tools, config: &Config) -> Vec<IdleRow> {
    eprintln!("bench: idle cost ({} s observation)", config.idle_secs);
    let mut modes = vec![
        "no manhole",
        "always-on listener",
        "signal-activated (USR2)",
    ];
    if Target::try_start(tools, &idle_args(modes[2])).is_none() {
        eprintln!("bench: this build has no signal-activated mode (Options::activate_on); skipped");
        modes.pop();
    }
    let mut rows: Vec<IdleRow> = modes
        .iter()
        .map(|&mode| IdleRow {
            mode,
            install_us: Sample::default(),
            rss_kib: Sample::default(),
            anon_kib: Sample::default(),
            threads: 0,
            manhole_threads: Vec::new(),
            cpu_ticks: 0,
            cpu_nanos: None,
            switches: 0,
        })
        .collect();
    // Install time and RSS: many short-lived starts, modes interleaved.
    for _ in 0..config.idle_starts {
        for row in &mut rows {
            let target = Target::start(tools, &idle_args(row.mode));
            std::thread::sleep(Duration::from_millis(100));
            row.install_us.push(target.install_micros);
            row.rss_kib.push(target.rss_kib());
            row.anon_kib.push(target.anon_kib());
            row.threads = target.threads;
        }
    }
    // CPU and wake-ups: one process per mode, observed over the same window.
    let targets: Vec<Target> = rows
        .iter()
        .map(|row| Target::start(tools, &idle_args(row.mode)))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before: Vec<Vec<TaskCost>> = targets.iter().map(|t| manhole_tasks(t.pid)).collect();
    std::thread::sleep(Duration::from_secs(config.idle_secs));
    for ((row, target), before) in rows.iter_mut().zip(&targets).zip(&before) {
        let after = manhole_tasks(target.pid);
        row.manhole_threads = after.iter().map(|t| t.name.clone()).collect();
        for a in &after {
            let b = before.iter().find(|b| b.tid == a.tid);
            row.cpu_ticks += a.ticks - b.map_or(0, |b| b.ticks);
            row.switches += a.switches - b.map_or(0, |b| b.switches);
            if let (Some(an), Some(bn)) = (a.exec_nanos, b.and_then(|b| b.exec_nanos)) {
                *row.cpu_nanos.get_or_insert(0) += an - bn;
            }
        }
        if after.iter().any(|a| !before.iter().any(|b| b.tid == a.tid)) {
            // A thread appeared during the window: that is a cost too.
            row.switches += 1;
        }
    }
    drop(targets);
    rows
}

// ---------------------------------------------------------------------------------------------
// 4: the application's own throughput

struct ThroughputRow {
    mode: &'static str,
    /// Iterations per second, one per window.
    rate: Sample,
    dumps: usize,
}

/// A client that keeps one exec session open and asks for `threads` every `period`, as a
/// monitoring tool would: `exec data`, the dump as JSON only.
fn dumper(socket: PathBuf, period: Duration, stop: Arc<AtomicBool>, count: Arc<AtomicUsize>) {
    let stream = UnixStream::connect(&socket).expect("connect to the manhole");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    writer.write_all(b"exec data\n").expect("hello");
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("read") == 0 {
            return;
        }
        if line.contains("\"command\":\"exec\"") {
            break;
        }
    }
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        writer.write_all(b"threads\n").expect("ask for a dump");
        line.clear();
        if reader.read_line(&mut line).expect("read a dump") == 0 {
            return;
        }
        count.fetch_add(1, Ordering::Relaxed);
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

fn measure_throughput(tools: &Tools, config: &Config) -> Vec<ThroughputRow> {
    eprintln!(
        "bench: workload throughput ({} rounds of {} s per mode)",
        config.rounds, config.window_secs
    );
    let modes = ["no manhole", "idle manhole", "10 dumps/s"];
    let mut rows: Vec<ThroughputRow> = modes
        .iter()
        .map(|&mode| ThroughputRow {
            mode,
            rate: Sample::default(),
            dumps: 0,
        })
        .collect();
    let workload = config.workload.to_string();
    for _ in 0..config.rounds {
        for row in &mut rows {
            let mut args = vec!["--threads", "100", "--workload", workload.as_str()];
            if row.mode == "no manhole" {
                args.push("--no-manhole");
            }
            let mut target = Target::start(tools, &args);
            let stop = Arc::new(AtomicBool::new(false));
            let count = Arc::new(AtomicUsize::new(0));
            let client = (row.mode == "10 dumps/s").then(|| {
                target.wait_for_socket();
                let (socket, stop, count) = (target.socket(), stop.clone(), count.clone());
                std::thread::spawn(move || dumper(socket, Duration::from_millis(100), stop, count))
            });
            // Let the first (cold) dump and the threads' start-up pass.
            std::thread::sleep(Duration::from_millis(700));
            let dumps_before = count.load(Ordering::Relaxed);
            let (t0, i0) = target.sample();
            std::thread::sleep(Duration::from_secs(config.window_secs));
            let (t1, i1) = target.sample();
            row.dumps += count.load(Ordering::Relaxed) - dumps_before;
            stop.store(true, Ordering::Relaxed);
            if let Some(client) = client {
                let _ = client.join();
            }
            row.rate.push((i1 - i0) as f64 / ((t1 - t0) as f64 / 1e9));
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// 5: connection latency

fn measure_connect(tools: &Tools, config: &Config) -> Sample {
    eprintln!("bench: connection latency");
    let target = Target::start(tools, &["--threads", "10"]);
    target.wait_for_socket();
    let pid = target.pid.to_string();
    let mut latency = Sample::default();
    for _ in 0..config.connect_runs {
        let run = run_timed(
            Command::new(&tools.cli).args([pid.as_str(), "info"]),
            Duration::from_secs(10),
            false,
        );
        assert!(run.success, "manhole-cli info failed");
        latency.push(run.wall.as_secs_f64() * 1000.0);
    }
    latency
}

// ---------------------------------------------------------------------------------------------
// Configuration, report

struct Config {
    quick: bool,
    thread_counts: Vec<usize>,
    gdb_timeout: Duration,
    idle_secs: u64,
    idle_starts: usize,
    rounds: usize,
    window_secs: u64,
    workload: usize,
    connect_runs: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = std::env::var_os("BENCH_QUICK").is_some_and(|v| v != "0");
        let gdb_timeout = std::env::var("BENCH_GDB_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 10 } else { 60 });
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Config {
            quick,
            thread_counts: if quick {
                vec![10, 1000]
            } else {
                vec![10, 100, 1000, 5000]
            },
            gdb_timeout: Duration::from_secs(gdb_timeout),
            idle_secs: if quick { 2 } else { 10 },
            idle_starts: if quick { 3 } else { 9 },
            rounds: if quick { 1 } else { 5 },
            window_secs: if quick { 1 } else { 3 },
            workload: cores.min(2),
            connect_runs: if quick { 5 } else { 30 },
        }
    }
    fn warm_runs(&self, threads: usize) -> usize {
        match (self.quick, threads) {
            (true, _) => 3,
            (false, t) if t >= 5000 => 5,
            _ => 10,
        }
    }
    /// Dumps of each example application in section 6.
    fn example_dumps(&self) -> usize {
        if self.quick { 5 } else { 20 }
    }
    fn tool_runs(&self, threads: usize) -> usize {
        match (self.quick, threads) {
            (true, _) => 1,
            (false, t) if t >= 1000 => 3,
            _ => 5,
        }
    }
}

struct Report {
    profile: profile::ProfileReport,
    machine: Vec<(String, String)>,
    dumps: Vec<DumpRow>,
    idle: Vec<IdleRow>,
    throughput: Vec<ThroughputRow>,
    connect: Sample,
    examples: Vec<AppStacks>,
    tools: (bool, bool),
    idle_secs: u64,
    window_secs: u64,
    workload: usize,
}

impl Report {
    fn markdown(&self) -> String {
        let mut out = String::new();
        let o = &mut out;
        let _ = writeln!(o, "### Machine\n");
        let _ = writeln!(o, "| | |\n|---|---|");
        for (key, value) in &self.machine {
            let _ = writeln!(o, "| {key} | {value} |");
        }
        let (has_eu, has_gdb) = self.tools;
        if !has_eu || !has_gdb {
            let _ = writeln!(
                o,
                "\nSome comparison columns are skipped: install the tools with `apt-get install gdb elfutils`."
            );
        }

        dumps_markdown(o, &self.dumps);

        let _ = writeln!(
            o,
            "\n### 3. Idle cost (target with 10 parked threads; manhole threads observed for {} s)\n",
            self.idle_secs
        );
        let _ = writeln!(
            o,
            "| mode | threads | manhole threads | CPU ticks (utime+stime) | CPU time (sched) | context switches | RSS median (KiB) | extra RSS (KiB) | extra anonymous (KiB) | `install` median (µs) | `install` p90 (µs) |"
        );
        let _ = writeln!(o, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let base_rss = self.idle.first().map_or(f64::NAN, |r| r.rss_kib.median());
        let base_anon = self.idle.first().map_or(f64::NAN, |r| r.anon_kib.median());
        for r in &self.idle {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {:+.0} | {:+.0} | {} | {} |",
                r.mode,
                r.threads,
                if r.manhole_threads.is_empty() {
                    "none".to_string()
                } else {
                    r.manhole_threads.join(", ")
                },
                r.cpu_ticks,
                r.cpu_nanos
                    .map_or_else(|| "n/a".into(), |n| format!("{} µs", n / 1000)),
                r.switches,
                r.rss_kib.median(),
                r.rss_kib.median() - base_rss,
                r.anon_kib.median() - base_anon,
                if r.mode == "no manhole" {
                    "-".into()
                } else {
                    us(r.install_us.median())
                },
                if r.mode == "no manhole" {
                    "-".into()
                } else {
                    us(r.install_us.pct(90.0))
                },
            );
        }

        let _ = writeln!(
            o,
            "\n### 4. Workload throughput ({} CPU-bound threads + 100 parked; {} windows of {} s per mode, modes interleaved)\n",
            self.workload,
            self.throughput.first().map_or(0, |r| r.rate.0.len()),
            self.window_secs
        );
        let _ = writeln!(
            o,
            "| mode | median (M iterations/s) | min | max | vs no manhole | dumps done |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
        let base = self
            .throughput
            .first()
            .map_or(f64::NAN, |r| r.rate.median());
        for r in &self.throughput {
            let _ = writeln!(
                o,
                "| {} | {:.1} | {:.1} | {:.1} | {:+.2} % | {} |",
                r.mode,
                r.rate.median() / 1e6,
                r.rate.min() / 1e6,
                r.rate.max() / 1e6,
                (r.rate.median() / base - 1.0) * 100.0,
                r.dumps
            );
        }

        let _ = writeln!(
            o,
            "\n### 5. Connection latency: `manhole-cli <pid> info`, start to exit ({} runs)\n",
            self.connect.0.len()
        );
        let _ = writeln!(o, "| median | p90 | max |\n|---:|---:|---:|");
        let _ = writeln!(
            o,
            "| {} ms | {} ms | {} ms |",
            ms(self.connect.median()),
            ms(self.connect.pct(90.0)),
            ms(self.connect.max())
        );
        self.profile.markdown(o);
        example_stacks_markdown(o, &self.examples);

        let _ = writeln!(o, "\n### Targets\n");
        let _ = writeln!(o, "| target | measured | result |\n|---|---|---|");
        for (target, measured, ok) in self.targets() {
            let _ = writeln!(o, "| {target} | {measured} | {} |", pass(ok));
        }
        out
    }

    fn targets(&self) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        if let Some(r) = self.dumps.iter().find(|r| r.threads == 1000) {
            let total = r.warm_total_ms.median();
            out.push((
                "warm 1,000-thread dump, capture + symbolize < 20 ms".into(),
                format!(
                    "{} ms ({:.0} threads shown again; every thread signalled, `--fresh`: {} ms)",
                    ms(total),
                    r.shown_again.median(),
                    ms(r.fresh_total_ms.median())
                ),
                total < 20.0,
            ));
            let cli = r.warm_cli_ms.median();
            for (name, tool) in [("eu-stack", &r.eu_stack), ("gdb", &r.gdb)] {
                if let Some(tool) = tool {
                    let bound = tool.lower_bound_ms();
                    let ratio = bound / cli;
                    let vs_total = bound / total;
                    out.push((
                        format!("1,000 threads: >= 30x faster than {name}"),
                        format!(
                            "{}{ratio:.0}x end to end (manhole-cli {} ms vs {}), {}{vs_total:.0}x capture + symbolize",
                            if tool.timed_out.is_some() { "> " } else { "" },
                            ms(cli),
                            tool.cell(),
                            if tool.timed_out.is_some() { "> " } else { "" },
                        ),
                        ratio >= 30.0,
                    ));
                }
            }
        }
        if let Some(r) = self.dumps.iter().max_by_key(|r| r.threads) {
            let growth = r.rss_after_kib - r.rss_first_kib;
            out.push((
                format!("{} threads work, memory bounded", r.threads),
                format!(
                    "all captured: {}; RSS +{:.0} KiB on the first dump, {:+.0} KiB over the next dumps ({:+.0} KiB anonymous)",
                    r.captured_ok,
                    r.rss_first_kib - r.rss_before_kib,
                    growth,
                    r.anon_after_kib - r.anon_first_kib
                ),
                r.captured_ok && growth <= 1024.0,
            ));
        }
        let mut handler = Sample::default();
        for r in &self.dumps {
            for &h in &r.handler_us.0 {
                handler.push(h);
            }
        }
        if !handler.is_empty() {
            let p99 = handler.pct(99.0);
            out.push((
                "handler time per thread p99 ≤ 10 µs".into(),
                format!("{} µs (all sizes)", us(p99)),
                p99 <= 10.0,
            ));
            let max = handler.max();
            out.push((
                "no application thread stopped > 1 ms".into(),
                format!("longest handler {} µs", us(max)),
                max < 1000.0,
            ));
        } else {
            out.push((
                "handler time per thread".into(),
                "not measured: this build's dump JSON has no handler_nanos".into(),
                false,
            ));
        }
        for r in self.idle.iter().skip(1) {
            out.push((
                format!("idle ({}): zero CPU, zero wake-ups", r.mode),
                format!(
                    "{} ticks, {}, {} context switches",
                    r.cpu_ticks,
                    r.cpu_nanos
                        .map_or_else(|| "n/a".into(), |n| format!("{} µs", n / 1000)),
                    r.switches
                ),
                r.cpu_ticks == 0 && r.cpu_nanos.unwrap_or(0) == 0 && r.switches == 0,
            ));
            // Judged on anonymous memory: the rest of the extra RSS is pages of the binary
            // (the manhole's code and the unwind tables the install warm-up reads), file-backed,
            // shared and reclaimable.
            let extra = r.rss_kib.median() - self.idle[0].rss_kib.median();
            let anon = r.anon_kib.median() - self.idle[0].anon_kib.median();
            out.push((
                format!("idle ({}): < 256 KiB extra RSS (anonymous)", r.mode),
                format!("{anon:+.0} KiB anonymous ({extra:+.0} KiB RSS with file-backed pages)"),
                anon < 256.0,
            ));
            let install = r.install_us.median();
            out.push((
                format!("`install` ({}) < 1 ms", r.mode),
                format!("{} µs", us(install)),
                install < 1000.0,
            ));
        }
        if let [none, idle, dumping] = &self.throughput[..] {
            let base = none.rate.median();
            // The run-to-run spread of the baseline itself is the noise.
            let noise = ((none.rate.max() - none.rate.min()) / base).max(0.01);
            let idle_change = idle.rate.median() / base - 1.0;
            out.push((
                "throughput with an idle manhole unchanged within noise".into(),
                format!(
                    "{:+.2} % (noise: baseline spread {:.2} %)",
                    idle_change * 100.0,
                    noise * 100.0
                ),
                idle_change.abs() <= noise,
            ));
            let dump_change = dumping.rate.median() / base - 1.0;
            out.push((
                "throughput within 3 % during 10 dumps/s".into(),
                format!("{:+.2} %", dump_change * 100.0),
                dump_change >= -0.03,
            ));
        }
        out
    }
}

const BEGIN: &str = "<!-- bench:begin (generated by `cargo run --release -p manhole-examples --bin bench`; edit outside these markers) -->";
const END: &str = "<!-- bench:end -->";

fn write_doc(markdown: &str) -> std::io::Result<PathBuf> {
    let path = workspace_root().join("docs").join("benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = format!("{BEGIN}\n\n{markdown}\n{END}");
    let new = match (old.find("<!-- bench:begin"), old.find(END)) {
        (Some(start), Some(end)) if start < end => {
            format!("{}{generated}{}", &old[..start], &old[end + END.len()..])
        }
        _ => format!("# Benchmarks\n\n{generated}\n"),
    };
    std::fs::write(&path, new)?;
    Ok(path)
}

fn main() {
    let config = Config::from_env();
    let tools = find_tools();
    let profile_secs = if config.quick { 3 } else { 10 };
    let profile_windows = if config.quick { 1 } else { config.rounds };
    if std::env::args().any(|a| a == "--profile") {
        // The profile section alone, printed (docs/benchmarks.md is written by a whole run).
        let report = profile::measure(&tools, profile_secs, profile_windows, config.window_secs);
        let mut markdown = String::new();
        report.markdown(&mut markdown);
        println!("{markdown}");
        return;
    }
    if let Some(at) = std::env::args().position(|a| a == "--dumps") {
        // Sections 1, 2 and 6 alone, without eu-stack and gdb, printed: a quick check of the
        // dump rows on a shared machine (docs/benchmarks.md is written by a whole run).
        let counts: Vec<usize> = std::env::args()
            .nth(at + 1)
            .map(|list| list.split(',').filter_map(|n| n.parse().ok()).collect())
            .filter(|c: &Vec<usize>| !c.is_empty())
            .unwrap_or_else(|| config.thread_counts.clone());
        let tools = Tools {
            eu_stack: None,
            gdb: None,
            ..tools
        };
        eprintln!("bench: --dumps: sections 1, 2 and 6 only, without eu-stack and gdb, printed");
        let dumps: Vec<DumpRow> = counts
            .iter()
            .map(|&n| measure_dumps(&tools, n, &config))
            .collect();
        let examples = measure_example_stacks(&tools, config.example_dumps());
        let mut markdown = String::new();
        dumps_markdown(&mut markdown, &dumps);
        example_stacks_markdown(&mut markdown, &examples);
        println!("{markdown}");
        return;
    }
    if tools.eu_stack.is_none() || tools.gdb.is_none() {
        eprintln!(
            "bench: {} missing: those columns are skipped. Install them with `apt-get install gdb elfutils`.",
            match (tools.eu_stack.is_none(), tools.gdb.is_none()) {
                (true, true) => "eu-stack and gdb are",
                (true, false) => "eu-stack is",
                _ => "gdb is",
            }
        );
    }
    let machine = machine(&tools);
    let started = Instant::now();
    let dumps = config
        .thread_counts
        .iter()
        .map(|&n| measure_dumps(&tools, n, &config))
        .collect();
    let idle = measure_idle(&tools, &config);
    let throughput = measure_throughput(&tools, &config);
    let connect = measure_connect(&tools, &config);
    let profile = profile::measure(&tools, profile_secs, profile_windows, config.window_secs);
    let examples = measure_example_stacks(&tools, config.example_dumps());
    let report = Report {
        profile,
        examples,
        machine,
        dumps,
        idle,
        throughput,
        connect,
        tools: (tools.eu_stack.is_some(), tools.gdb.is_some()),
        idle_secs: config.idle_secs,
        window_secs: config.window_secs,
        workload: config.workload,
    };
    let markdown = report.markdown();
    println!("{markdown}");
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    if config.quick || std::env::var_os("BENCH_NO_WRITE").is_some() {
        eprintln!("bench: docs/benchmarks.md not written (BENCH_QUICK or BENCH_NO_WRITE)");
    } else {
        match write_doc(&markdown) {
            Ok(path) => eprintln!("bench: wrote {}", path.display()),
            Err(e) => eprintln!("bench: cannot write docs/benchmarks.md: {e}"),
        }
    }
}
