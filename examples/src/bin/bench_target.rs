//! `bench_target`: the application the benchmark (`bench`) measures.
//!
//! * `--threads N` (default 10): threads `parked-<i>`, each a few frames deep
//!   (`bench_park_level` calls itself `--depth` times, default 4, then parks in `bench_parked`).
//! * `--workload N` (default 0): CPU-bound threads `work-<i>` that count iterations of a small
//!   arithmetic loop, each in its own cache line.
//! * `--no-manhole`: do not install a manhole (the baseline); `--activate-on SIG`: install it
//!   with `activate_on(SIG)`, so nothing listens until SIG arrives; otherwise the listener is
//!   always on. `--socket-path PATH` as in `demo`.
//!
//! Once every thread runs it prints one line, then serves its stdin, one request a line:
//!
//! ```text
//! ready pid=4242 install_micros=183 threads=1003 socket=/tmp/manhole-4242
//! sample                  <- stdin
//! sample nanos=123456789 iterations=987654321
//! ```
//!
//! `nanos` is `CLOCK_MONOTONIC` and `iterations` the sum over the workload threads. The main
//! thread sleeps in `read` between requests, so the target itself adds no wake-ups; end of
//! input ends the process.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use manhole::Options;

/// Stack size of the parked threads: enough for the dump handler and the unwinder, small
/// enough that 5,000 of them map little.
const PARKED_STACK: usize = 256 * 1024;
/// Iterations between two updates of a workload counter.
const CHUNK: u64 = 4096;

/// One workload counter, alone in its cache line so the threads do not slow each other down.
#[repr(align(64))]
struct Counter(AtomicU64);

#[inline(never)]
fn bench_parked() -> ! {
    loop {
        std::thread::park();
    }
}

#[inline(never)]
fn bench_park_level(depth: usize) {
    if depth == 0 {
        bench_parked();
    }
    bench_park_level(depth - 1);
    // Keeps the call above from becoming a tail call, so every level stays on the stack.
    std::hint::black_box(depth);
}

#[inline(never)]
fn bench_workload(counter: &Counter) -> ! {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    loop {
        for _ in 0..CHUNK {
            // xorshift64: cheap, dependent, not optimizable away.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
        counter.0.fetch_add(CHUNK, Ordering::Relaxed);
    }
}

fn number(flag: &str, arg: Option<String>) -> usize {
    arg.and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("bench_target: {flag} needs a number");
        std::process::exit(2);
    })
}

fn monotonic_nanos() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn main() {
    let mut threads = 10;
    let mut depth = 4;
    let mut workload = 0;
    let mut with_manhole = true;
    let mut activate_on: Option<String> = None;
    let mut socket_path: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--threads" => threads = number("--threads", args.next()),
            "--depth" => depth = number("--depth", args.next()),
            "--workload" => workload = number("--workload", args.next()),
            "--no-manhole" => with_manhole = false,
            "--activate-on" => activate_on = args.next(),
            "--socket-path" => socket_path = args.next(),
            other => {
                eprintln!("bench_target: unknown argument {other:?} (see the source's docs)");
                std::process::exit(2);
            }
        }
    }

    let started = Arc::new(Barrier::new(threads + 1));
    for i in 0..threads {
        let started = started.clone();
        std::thread::Builder::new()
            .name(format!("parked-{i}"))
            .stack_size(PARKED_STACK)
            .spawn(move || {
                started.wait();
                bench_park_level(depth);
            })
            .expect("spawn a parked thread");
    }
    started.wait();
    let counters: Arc<Vec<Counter>> =
        Arc::new((0..workload).map(|_| Counter(AtomicU64::new(0))).collect());
    for i in 0..workload {
        let counters = counters.clone();
        std::thread::Builder::new()
            .name(format!("work-{i}"))
            .spawn(move || bench_workload(&counters[i]))
            .expect("spawn a workload thread");
    }

    let mut install_micros = 0;
    let mut socket = String::from("-");
    if with_manhole {
        let mut options = Options::new().verbose(false);
        if let Some(path) = socket_path {
            options = options.socket_path(path);
        }
        if let Some(signal) = activate_on {
            options = options.activate_on(signal);
        }
        let clock = Instant::now();
        let installed = manhole::install(options);
        install_micros = clock.elapsed().as_micros();
        match installed {
            Ok(manhole) => {
                if let Some(path) = manhole.socket_path() {
                    socket = path.display().to_string();
                }
                // Keep the handle alive for the whole run.
                std::mem::forget(manhole);
            }
            Err(e) => {
                eprintln!("bench_target: cannot install the manhole: {e}");
                std::process::exit(1);
            }
        }
    }

    let total_threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "ready pid={} install_micros={install_micros} threads={total_threads} socket={socket}",
        std::process::id()
    );
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "sample" {
            let iterations: u64 = counters.iter().map(|c| c.0.load(Ordering::Relaxed)).sum();
            let _ = writeln!(
                out,
                "sample nanos={} iterations={iterations}",
                monotonic_nanos()
            );
            let _ = out.flush();
        }
    }
}
