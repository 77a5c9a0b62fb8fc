//! The benchmark's profile section: `profile` against `perf record -F 99 -g` on one process with a
//! known split, and the workload's throughput while profiled.
//!
//! The process is the `split` example: one thread `busy` spends 3/4 of its CPU time in
//! `split_hot_three_quarters` and 1/4 in `split_cold_one_quarter` (by its thread CPU clock), and
//! three `sleeper-<i>` threads use no CPU. Both profilers sample the same process for the same
//! time, one after the other; a function's share is the busy thread's samples with it on the
//! stack over all of the busy thread's samples. Throughput is the busy thread's completed rounds per second in interleaved windows,
//! unprofiled and profiled at 99 Hz, as the throughput table does for dumps.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Sample, Tools, run_timed};

const HOT: &str = "split_hot_three_quarters";
const COLD: &str = "split_cold_one_quarter";
/// What the app's own CPU clock says the hot function gets.
const EXPECTED_HOT: f64 = 75.0;

/// What one profiler found.
pub struct Found {
    pub tool: &'static str,
    /// Busy thread's samples, and the hot and cold shares of them (percent).
    pub busy_samples: u64,
    pub hot: f64,
    pub cold: f64,
    /// Samples of the sleeping threads.
    pub sleeper_samples: u64,
    /// Why this profiler gave nothing, when it did not run.
    pub failure: Option<String>,
}

pub struct ProfileReport {
    pub seconds: u64,
    pub found: Vec<Found>,
    /// Mean and p99 handler time per sample, and mean unwinding time, in µs (manhole).
    pub handler_mean_us: f64,
    pub handler_p99_us: f64,
    pub unwind_mean_us: f64,
    /// Rounds per second of the busy thread, window by window.
    pub unprofiled: Sample,
    pub profiled: Sample,
    pub window_secs: u64,
}

/// The `split` app, reaped when dropped.
struct Split {
    child: Child,
    socket: PathBuf,
}

impl Split {
    fn start(binary: &Path) -> Split {
        let socket =
            std::env::temp_dir().join(format!("manhole-bench-split-{}", std::process::id()));
        let mut child = Command::new(binary)
            .args(["--sleepers", "3", "--socket-path"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start split");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        while stdout.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("manhole listening") {
            line.clear();
        }
        assert!(line.contains("manhole listening"), "split did not start");
        Split { child, socket }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The busy thread's completed rounds, read through the manhole.
    fn rounds(&self, cli: &Path) -> u64 {
        let run = run_timed(
            Command::new(cli).arg(&self.socket).args(["get", "rounds"]),
            Duration::from_secs(10),
            true,
        );
        String::from_utf8_lossy(&run.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!("split's rounds: {:?}", String::from_utf8_lossy(&run.stdout))
            })
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Runs the section: `seconds` of profile per profiler, `windows` throughput windows of each kind.
pub fn measure(tools: &Tools, seconds: u64, windows: usize, window_secs: u64) -> ProfileReport {
    eprintln!("bench: profile of `split` ({seconds} s each, manhole and perf), and its throughput");
    let binary = tools.target.with_file_name("split");
    let split = Split::start(&binary);

    let run = run_timed(
        Command::new(&tools.cli)
            .arg("--json")
            .arg(&split.socket)
            .args(["profile", &seconds.to_string()]),
        Duration::from_secs(seconds + 30),
        true,
    );
    let answer: Value = serde_json::from_slice(&run.stdout).unwrap_or(Value::Null);
    // `--json` prints a profile's data itself (an `exec` frame would wrap it in `data`).
    let data = answer.get("data").unwrap_or(&answer);
    let cost = |key: &str| data["cost"][key].as_f64().unwrap_or(f64::NAN) / 1000.0;
    let mut found = vec![manhole_found(data, run.success)];
    found.push(perf_found(split.pid(), seconds));

    let mut unprofiled = Sample::default();
    let mut profiled = Sample::default();
    for _ in 0..windows {
        unprofiled.push(rate(&split, &tools.cli, window_secs, None));
        profiled.push(rate(&split, &tools.cli, window_secs, Some(window_secs + 2)));
    }
    ProfileReport {
        seconds,
        found,
        handler_mean_us: cost("handler_ns_mean"),
        handler_p99_us: cost("handler_ns_p99"),
        unwind_mean_us: cost("unwind_ns_mean"),
        unprofiled,
        profiled,
        window_secs,
    }
}

/// Rounds per second over one window; with `profile`, inside a profile of that many seconds.
fn rate(split: &Split, cli: &Path, window_secs: u64, profile: Option<u64>) -> f64 {
    let profiler = profile.map(|secs| {
        Command::new(cli)
            .arg("--json")
            .arg(&split.socket)
            .args(["profile", &secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a profile")
    });
    if profiler.is_some() {
        // The profile's setup (unwind tables, timers) is before the window.
        std::thread::sleep(Duration::from_millis(700));
    }
    let started = Instant::now();
    let first = split.rounds(cli);
    std::thread::sleep(Duration::from_secs(window_secs));
    let last = split.rounds(cli);
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(mut profiler) = profiler {
        let _ = profiler.wait();
    }
    (last - first) as f64 / elapsed
}

fn manhole_found(data: &Value, success: bool) -> Found {
    let mut found = Found {
        tool: "manhole `profile`",
        busy_samples: 0,
        hot: f64::NAN,
        cold: f64::NAN,
        sleeper_samples: 0,
        failure: (!success).then(|| "manhole-cli profile failed".to_string()),
    };
    for thread in data["threads"].as_array().into_iter().flatten() {
        let samples = thread["samples"].as_u64().unwrap_or(0);
        match thread["name"].as_str().unwrap_or("") {
            "busy" => found.busy_samples += samples,
            name if name.starts_with("sleeper-") => found.sleeper_samples += samples,
            _ => {}
        }
    }
    // Folded lines are `thread;root;...;leaf COUNT`. The split's helpers are inlined into the two
    // functions, so a function's share is the busy samples with it on the stack.
    let (mut hot, mut cold) = (0, 0);
    for line in data["folded"].as_array().into_iter().flatten() {
        let line = line.as_str().unwrap_or("");
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        if !stack.starts_with("busy;") {
            continue;
        }
        let count: u64 = count.parse().unwrap_or(0);
        hot += u64::from(stack.contains(HOT)) * count;
        cold += u64::from(stack.contains(COLD)) * count;
    }
    share(&mut found, hot, cold);
    found
}

fn share(found: &mut Found, hot: u64, cold: u64) {
    if found.busy_samples > 0 {
        found.hot = 100.0 * hot as f64 / found.busy_samples as f64;
        found.cold = 100.0 * cold as f64 / found.busy_samples as f64;
    }
}

/// `perf record -F 99 -g -p PID` for `seconds`, then `perf script`'s samples, counted the same way.
fn perf_found(pid: u32, seconds: u64) -> Found {
    let mut found = Found {
        tool: "`perf record -F 99 -g`",
        busy_samples: 0,
        hot: f64::NAN,
        cold: f64::NAN,
        sleeper_samples: 0,
        failure: None,
    };
    let data = std::env::temp_dir().join(format!("manhole-bench-perf-{}.data", std::process::id()));
    let record = Command::new("perf")
        .args(["record", "-F", "99", "-g", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string(), "--", "sleep", &seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let record = match record {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            let why = String::from_utf8_lossy(&out.stderr);
            found.failure = Some(
                why.lines()
                    .next()
                    .unwrap_or("perf record failed")
                    .to_string(),
            );
            let _ = std::fs::remove_file(&data);
            return found;
        }
        Err(e) => {
            found.failure = Some(format!("perf not runnable: {e}"));
            return found;
        }
    };
    drop(record);
    let script = Command::new("perf")
        .args(["script", "-F", "comm,tid,ip,sym", "-i"])
        .arg(&data)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let _ = std::fs::remove_file(&data);
    let Ok(script) = script else {
        found.failure = Some("perf script failed".into());
        return found;
    };
    // A sample is a header line (`comm tid`), its frames (a tab, ip and symbol, leaf first),
    // then a blank line.
    let (mut hot, mut cold) = (0, 0);
    let text = String::from_utf8_lossy(&script.stdout);
    for sample in text.split("\n\n") {
        let mut lines = sample.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else { continue };
        let frames: Vec<&str> = lines.collect();
        let on_stack = |name: &str| u64::from(frames.iter().any(|f| f.contains(name)));
        match header.split_whitespace().next().unwrap_or("") {
            "busy" => {
                found.busy_samples += 1;
                hot += on_stack(HOT);
                cold += on_stack(COLD);
            }
            name if name.starts_with("sleeper-") => found.sleeper_samples += 1,
            _ => {}
        }
    }
    share(&mut found, hot, cold);
    found
}

impl ProfileReport {
    pub fn markdown(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\n### CPU profile: a known split, against perf\n\n\
             The `split` example: thread `busy` spends {EXPECTED_HOT:.0} % of its CPU time in \
             `{HOT}` and {:.0} % in `{COLD}` by its own thread CPU clock; three sleepers use no \
             CPU. Each profiler sampled it for {} s at 99 Hz, one after the other. A share is the \
             busy thread's samples with the function on the stack (its helpers are inlined into \
             it) over all the busy thread's samples.\n",
            100.0 - EXPECTED_HOT,
            self.seconds
        );
        let _ = writeln!(
            o,
            "| profiler | busy samples | `{HOT}` | `{COLD}` | error (points) | sleeper samples | within ±5 |\n|---|---:|---:|---:|---:|---:|---|"
        );
        for found in &self.found {
            if let Some(why) = &found.failure {
                let _ = writeln!(
                    o,
                    "| {} | did not run: {} | | | | | |",
                    found.tool,
                    why.replace('|', "/")
                );
                continue;
            }
            let error = found.hot - EXPECTED_HOT;
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} % | {:.1} % | {:+.1} | {} | {} |",
                found.tool,
                found.busy_samples,
                found.hot,
                found.cold,
                error,
                found.sleeper_samples,
                super::pass(error.abs() <= 5.0 && found.sleeper_samples == 0),
            );
        }
        let (base, with) = (self.unprofiled.median(), self.profiled.median());
        let change = 100.0 * (with - base) / base;
        let _ = writeln!(
            o,
            "\nCost per sample (manhole): handler {:.1} µs mean, {:.1} µs p99 on the sampled \
             thread; unwinding {:.1} µs on the profiler's thread.\n\n\
             Throughput of the busy thread, rounds/s, {} interleaved windows of {} s each:\n\n\
             | | median | min | max |\n|---|---:|---:|---:|\n\
             | unprofiled | {:.0} | {:.0} | {:.0} |\n\
             | profiled at 99 Hz | {:.0} | {:.0} | {:.0} |\n\n\
             Change while profiled: {change:+.1} % (target: within 2 %: {}).",
            self.handler_mean_us,
            self.handler_p99_us,
            self.unwind_mean_us,
            self.unprofiled.0.len(),
            self.window_secs,
            base,
            self.unprofiled.min(),
            self.unprofiled.max(),
            with,
            self.profiled.min(),
            self.profiled.max(),
            super::pass(change.abs() <= 2.0),
        );
    }
}
