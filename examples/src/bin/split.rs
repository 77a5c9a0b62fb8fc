//! `split`: a workload with a known CPU split, for checking a profiler.
//!
//! One thread `busy` spends 3/4 of its CPU time in `split_hot_three_quarters` and 1/4 in
//! `split_cold_one_quarter`, measured by its own thread CPU clock (`CLOCK_THREAD_CPUTIME_ID`):
//! it alternates 3 units of CPU in the first with 1 unit in the second (a unit drawn
//! between 0.5 and 1.5 ms each round, so the rounds do not beat with a sampler or the tick). Both are distinct functions
//! that are never inlined. Threads `sleeper-<i>` (`--sleepers N`, default 3) sleep in
//! `split_sleeper_loop` and use no CPU. The main thread waits.
//!
//! The busy thread counts the rounds it completes (`rounds`, a registered value): the bench
//! measures throughput with it, profiled and not.
//!
//! Flags: `--socket-path PATH` (default `/tmp/manhole-<pid>`), `--sleepers N`, `--busy N`
//! (busy threads, default 1, named `busy`, `busy-1`, ...), `--profile-hz HZ`,
//! `--fork-child`: a registered command `fork` forks a child that lives until its parent exits
//! and answers `child pid=<pid>`; the child gets its own manhole back on its own
//! (`reinstall_at_fork`, with the default socket path).
//! It prints `manhole listening on PATH`, then runs until killed.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use manhole::{Local, Options};

/// This thread's CPU time, in nanoseconds.
fn thread_cpu_nanos() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer; the calling thread's CPU clock always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Burns `nanos` of this thread's CPU time. The clock is read every 4,096 steps, so the time
/// in `clock_gettime` itself is a small part of each caller's share.
#[inline(always)]
fn burn(nanos: u64, mut state: u64) -> u64 {
    let until = thread_cpu_nanos() + nanos;
    loop {
        for _ in 0..4096 {
            state = black_box(
                state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407),
            );
        }
        if thread_cpu_nanos() >= until {
            return state;
        }
    }
}

/// 3/4 of the busy thread's CPU time: three times the cold part's time.
#[inline(never)]
fn split_hot_three_quarters(unit: u64, state: u64) -> u64 {
    burn(3 * unit, state)
}

/// 1/4 of the busy thread's CPU time.
#[inline(never)]
fn split_cold_one_quarter(unit: u64, state: u64) -> u64 {
    burn(unit, state ^ 0x5555)
}

/// Rounds of 3 units hot then 1 unit cold, the unit drawn between 0.5 and 1.5 ms each round,
/// so the rounds do not beat with a sampler's period or the kernel's tick.
#[inline(never)]
fn split_busy_loop(rounds: &AtomicU64) -> ! {
    let mut state = 1u64;
    let mut draw = thread_cpu_nanos() | 1;
    loop {
        draw = draw.wrapping_mul(6364136223846793005).wrapping_add(1);
        let unit = 500_000 + (draw >> 33) % 1_000_000;
        state = split_hot_three_quarters(unit, state);
        state = split_cold_one_quarter(unit, state);
        rounds.fetch_add(1, Ordering::Relaxed);
    }
}

#[inline(never)]
fn split_sleeper_loop() -> ! {
    loop {
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn number<T: std::str::FromStr>(arg: Option<String>, flag: &str) -> T {
    arg.and_then(|n| n.parse().ok()).unwrap_or_else(|| {
        eprintln!("split: {flag} needs a number");
        std::process::exit(2);
    })
}

fn main() {
    let mut options = Options::new();
    let mut sleepers = 3usize;
    let mut busy = 1usize;
    let mut fork_child = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket-path" => {
                options = options.socket_path(args.next().expect("--socket-path needs a path"))
            }
            "--sleepers" => sleepers = number(args.next(), "--sleepers"),
            "--busy" => busy = number(args.next(), "--busy"),
            "--profile-hz" => options = options.profile_hz(number(args.next(), "--profile-hz")),
            "--fork-child" => fork_child = true,
            other => {
                eprintln!("split: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let rounds = Arc::new(AtomicU64::new(0));
    options = options.local("rounds", Local::atomic(rounds.clone()));
    if fork_child {
        options = options.reinstall_at_fork(true).command(
            "fork",
            "fork a child that lives until its parent exits",
            |_| {
                let parent = std::process::id() as libc::pid_t;
                // SAFETY: the child only makes async-signal-safe calls (sleep, getppid, _exit) on
                // the forking thread; the manhole's fork handlers run as documented.
                match unsafe { libc::fork() } {
                    -1 => Err(format!("fork failed: {}", std::io::Error::last_os_error())),
                    0 => loop {
                        // SAFETY: async-signal-safe calls only; the child ends once reparented.
                        unsafe {
                            libc::sleep(1);
                            if libc::getppid() != parent {
                                libc::_exit(0);
                            }
                        }
                    },
                    child => Ok(format!("child pid={child}")),
                }
            },
        );
    }
    let manhole = manhole_examples::install_or_exit("split", options);
    // Announce only once every thread runs its own code: a thread still being created has its
    // signals blocked and its name unset, and a profile started then would not sample it.
    let running = Arc::new(AtomicUsize::new(0));
    for i in 0..sleepers {
        std::thread::Builder::new()
            .name(format!("sleeper-{i}"))
            .spawn({
                let running = running.clone();
                move || {
                    running.fetch_add(1, Ordering::SeqCst);
                    split_sleeper_loop()
                }
            })
            .expect("spawn a sleeper");
    }
    for i in 0..busy {
        let rounds = rounds.clone();
        let name = if i == 0 {
            "busy".to_string()
        } else {
            format!("busy-{i}")
        };
        std::thread::Builder::new()
            .name(name)
            .spawn({
                let running = running.clone();
                move || {
                    running.fetch_add(1, Ordering::SeqCst);
                    split_busy_loop(&rounds)
                }
            })
            .expect("spawn the busy thread");
    }
    while running.load(Ordering::SeqCst) < sleepers + busy {
        std::thread::sleep(Duration::from_millis(1));
    }
    manhole_examples::announce_listening(&manhole);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
