//! The CPU profile: `profile [SECONDS]` samples the on-CPU stacks of every application thread
//! and answers with where the CPU went.
//!
//! This layer sits above `stackdump/` (it takes its ticks on the dump signal, through the dump
//! handler's tick hook, and symbolizes with its symbolizer) and below `server/`. It owns:
//!
//! - `sampler` (the only `unsafe` here): per-thread CPU-time timers, the tick handler and the
//!   preallocated sample ring it copies registers and a bounded stack window into;
//! - `unwind`: framehop over the copies, on the profiler's thread;
//! - `report`: the aggregation ([`Profile`]): samples per thread, top functions by self and
//!   total share, folded stacks, and their text and JSON forms.
//!
//! # One profile
//!
//! [`run`] runs on the session thread that asked (other sessions go on: each has its own
//! thread). It takes the one-profile-at-a-time flag (a second caller gets a one-line refusal),
//! copies the unwind tables, maps the ring, then until the time is up: every [`RESCAN`] it lists
//! `/proc/self/task` and arms a timer for each application thread it has not seen (a thread
//! created during the profile is sampled from the next rescan on; one that exits keeps a timer
//! that never fires again), checks that the dump handler still owns the signal (if not, it
//! stops at once: a tick must never reach `SIG_DFL`), and between rescans it drains and unwinds
//! the ring while it waits on the client connection (a client that hangs up ends the profile).
//! At the end every timer is deleted, the ring is drained a last time and unmapped, and the
//! addresses are symbolized once each.
//!
//! Sampled: every thread of the process except the manhole's own (listed by `threads::spawn`)
//! and except
//! threads that block the signal (their ticks would stay pending, or reach a `sigwait`). Sleeping
//! threads use no CPU, so their timers never fire: they get no samples by construction.
//!
//! # Fork
//!
//! POSIX timers are not inherited by `fork`. A child forked during a profile forgets the
//! parent's profile ([`after_fork_in_child`]: the flag is cleared and the ring's copy unmapped),
//! so it can run profiles of its own.

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod report;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[allow(unsafe_code)]
mod sampler;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod unwind;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use self::report::Profile;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The default sampling rate (as `perf record -F 99`: off the beat of 100 Hz timers).
pub const DEFAULT_HZ: u32 = 99;
/// The highest sampling rate accepted.
pub const MAX_HZ: u32 = 1000;
/// The default and longest profile.
pub(crate) const DEFAULT_SECONDS: f64 = 5.0;
pub(crate) const MAX_SECONDS: f64 = 60.0;
/// How often the thread list is read again during a profile.
pub(crate) const RESCAN: Duration = Duration::from_millis(200);
/// How often the ring is drained (and the client checked) between rescans.
const DRAIN: Duration = Duration::from_millis(20);

/// A profile is running in this process.
static RUNNING: AtomicBool = AtomicBool::new(false);
/// When the running profile ends, in milliseconds of the monotonic clock (for the refusal).
static RUNNING_UNTIL_MS: AtomicU64 = AtomicU64::new(0);
/// Generation of the latest profile (carried by its ticks, so late ones of an older profile
/// are told apart).
static GENERATION: AtomicU32 = AtomicU32::new(0);

/// What a profile needs from the installation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProfileOptions {
    /// The dump signal (the ticks use it too).
    pub signal: libc::c_int,
    /// Samples per second of each thread's CPU time.
    pub hz: u32,
}

/// In a forked child (async-signal-safe): forget a profile the parent was running.
pub(crate) fn after_fork_in_child() {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    sampler::forget_in_child();
    RUNNING.store(false, Ordering::SeqCst);
}

/// Parses `profile [SECONDS]`'s argument.
pub(crate) fn parse_seconds(args: &[&str]) -> Result<Duration, String> {
    let usage = || {
        format!(
            "usage: profile [SECONDS] (more than 0, at most {MAX_SECONDS}; default {DEFAULT_SECONDS})"
        )
    };
    let seconds = match args {
        [] => DEFAULT_SECONDS,
        [text] => text.parse::<f64>().map_err(|_| usage())?,
        _ => return Err(usage()),
    };
    if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err(usage());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Holds [`RUNNING`] for one profile.
struct Running;

impl Running {
    fn take(duration: Duration) -> Result<Running, String> {
        if RUNNING
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            let left = RUNNING_UNTIL_MS
                .load(Ordering::SeqCst)
                .saturating_sub(monotonic_ms());
            return Err(format!(
                "a profile is already running (about {:.0} s left): one profile at a time",
                (left as f64 / 1000.0).ceil()
            ));
        }
        RUNNING_UNTIL_MS.store(
            monotonic_ms() + duration.as_millis() as u64,
            Ordering::SeqCst,
        );
        Ok(Running)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::SeqCst);
    }
}

fn monotonic_ms() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Profiles the process for `duration`. `wait(d)` sleeps up to `d` and returns false when the
/// profile should stop early (the client left, the manhole is uninstalled).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn run(
    options: &ProfileOptions,
    duration: Duration,
    wait: &mut dyn FnMut(Duration) -> bool,
) -> Result<Profile, String> {
    use std::collections::HashMap;
    use std::time::Instant;

    use crate::procfs;

    let _running = Running::take(duration)?;
    crate::log::log_event!(
        "Profile started: {:.1} s at {} Hz",
        duration.as_secs_f64(),
        options.hz
    );
    let signal = options.signal;
    let hz = options.hz.clamp(1, MAX_HZ);
    if !crate::stackdump::handler_owns_signal(signal) {
        return Err(format!(
            "cannot profile: signal {signal} is no longer handled by manhole"
        ));
    }
    sampler::stack_copy_works().map_err(|e| {
        format!("cannot profile: copying a stack with process_vm_readv fails here ({e})")
    })?;
    crate::stackdump::set_tick_handler(sampler::on_tick);
    let generation = GENERATION.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
    let value = sampler::MARKER | u64::from(generation);
    let period = Duration::from_nanos(1_000_000_000 / u64::from(hz));

    let started = Instant::now();
    let mut unwinder = unwind::SampleUnwinder::new();
    let setup = started.elapsed();
    let me = nix::unistd::gettid().as_raw();
    let tids = procfs::thread_ids().unwrap_or_default();
    // Room for several drains' worth of ticks of every thread.
    let slots = (tids.len() * 4).clamp(32, 256);
    let ring = sampler::Ring::create(slots, generation)
        .map_err(|e| format!("cannot profile: no memory for the sample ring ({e})"))?;

    let mut report = report::Builder::new(hz);
    let mut timers: HashMap<i32, sampler::ThreadTimer> = HashMap::new();
    let mut skipped: HashMap<i32, String> = HashMap::new();
    let mut raw = Vec::new();
    let deadline = Instant::now() + duration;
    let mut next_scan = Instant::now();
    let mut stopped_early = None;
    loop {
        let now = Instant::now();
        if now >= next_scan {
            if !crate::stackdump::handler_owns_signal(signal) {
                stopped_early = Some(format!(
                    "stopped early: signal {signal} is no longer handled by manhole"
                ));
                break;
            }
            scan(
                me,
                signal,
                value,
                period,
                &mut timers,
                &mut skipped,
                &mut report,
            );
            next_scan = now + RESCAN;
        }
        if now >= deadline {
            break;
        }
        let nap = DRAIN
            .min(deadline - now)
            .min(next_scan.saturating_duration_since(now));
        if !wait(nap) {
            stopped_early = Some("stopped early: the session ended".to_string());
            break;
        }
        ring.drain(&mut raw);
        report.add_all(&mut unwinder, &mut raw);
    }
    let elapsed = started.elapsed();
    drop(timers);
    ring.drain(&mut raw);
    report.add_all(&mut unwinder, &mut raw);
    let counts = ring.counts();
    drop(ring);
    for (tid, why) in skipped {
        report.note(format!("thread {tid} not sampled: {why}"));
    }
    if let Some(why) = &stopped_early {
        crate::log::log_event!("Profile {why}; every timer deleted");
        report.note(why.clone());
    }
    let profile = report.finish(
        elapsed,
        setup,
        counts.lost,
        counts.copy_failed,
        unwinder.modules(),
    );
    crate::log::log_event!(
        "Profile done: {} samples in {:.1} s, every timer deleted",
        profile.samples,
        elapsed.as_secs_f64()
    );
    Ok(profile)
}

/// Arms a timer for every application thread not seen yet; forgets the threads that exited.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn scan(
    me: i32,
    signal: libc::c_int,
    value: u64,
    period: Duration,
    timers: &mut std::collections::HashMap<i32, sampler::ThreadTimer>,
    skipped: &mut std::collections::HashMap<i32, String>,
    report: &mut report::Builder,
) {
    use crate::procfs;
    let Ok(tids) = procfs::thread_ids() else {
        return;
    };
    // Threads that exited: their timers are deleted now (they would never fire again).
    timers.retain(|tid, _| tids.contains(tid));
    for tid in tids {
        if tid == me || timers.contains_key(&tid) || skipped.contains_key(&tid) {
            continue;
        }
        let Ok(name) = procfs::thread_name(tid) else {
            continue;
        };
        if crate::threads::is_manhole_thread(tid, &name) {
            continue;
        }
        match procfs::thread_status(tid) {
            Ok(status) if status.blocks(signal) => {
                skipped.insert(tid, format!("{name} blocks signal {signal}"));
                report.thread(tid, &name);
                continue;
            }
            Ok(_) => {}
            Err(_) => continue,
        }
        report.thread(tid, &name);
        match sampler::ThreadTimer::arm(tid, signal, value, period) {
            Ok(timer) => {
                timers.insert(tid, timer);
            }
            // ESRCH/EINVAL: it exited since the listing.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH | libc::EINVAL)) => {}
            Err(e) => {
                skipped.insert(tid, format!("no CPU-time timer for {name}: {e}"));
            }
        }
    }
}

/// Other architectures: no unwinder for the samples.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) fn run(
    _options: &ProfileOptions,
    _duration: Duration,
    _wait: &mut dyn FnMut(Duration) -> bool,
) -> Result<std::convert::Infallible, String> {
    Err("profiles are supported on x86_64 and aarch64 only".to_string())
}
