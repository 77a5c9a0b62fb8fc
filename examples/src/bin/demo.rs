//! `demo`: an application with a manhole installed in code.
//!
//! Four workers (`worker-0` .. `worker-3`) count requests inside `demo_worker_loop`; the manhole
//! shows `requests` (the counter), `config` (a struct), `log_filter` (the live tracing filter) and
//! a command `echo`. It prints `manhole listening on <path>` and runs until killed.
//!
//! It logs to stderr through `tracing-subscriber`, filtered by an `EnvFilter` that starts at
//! `info` (whatever `RUST_LOG` says, so a run always starts the same): an INFO event `demo
//! started`, then, from each worker, a DEBUG event per batch of ten requests, which only shows
//! after `set log_filter debug`.
//!
//! Flags: `--socket-path PATH` (listen there instead of `/tmp/manhole-<pid>`), `--exec` (serve
//! the exec handler instead of the REPL), `--extra-threads N` (N more threads `idle-<i>` parked
//! in `demo_idle_thread`, for big dumps), `--write-timeout-ms N`, `--idle-timeout-ms N`,
//! `--max-sessions N` (the manhole options of the same names), `--not-strict` (`strict(false)`:
//! take over a manhole installed from `MANHOLE`), `--fork N` (after the listening line, fork N
//! children that keep running until their parent dies; each calls
//! `manhole::reinstall_after_fork()` and prints `child pid=<pid>`), `--reinstall-at-fork` (the
//! option of that name: the children do not call it, the fork handler starts their reinstall),
//! `--handle-oneshot` (`thread(false)`; print `manhole oneshot at <path>`, then serve one-shot
//! sessions from `main` with `Manhole::handle_oneshot`, printing `oneshot served` after each),
//! `--own-handler SIG` (before installing, give SIG a plain `sigaction` handler of the
//! application's that counts; a thread prints `own handler count=<n>` when the count changes),
//! `--hook-after SIG` (after installing, register a counting handler for SIG through
//! signal-hook, which chains to the handler it finds; the same count and report),
//! `--activate-on SIG` (the option of that name; prints `manhole waiting for SIG` instead of the
//! listening line), `--sigpipe-default` (before installing, put SIGPIPE back to `SIG_DFL`, which
//! kills the process, as C programs and Rust programs that want `| head` to work have it, and
//! install with an empty `sigmask`, so a write to a vanished client that raised SIGPIPE would
//! kill the demo: only `MSG_NOSIGNAL` stands between them), `--log-to-tracing` (the option of that
//! name: the manhole's event log becomes INFO events of target `manhole` in the demo's log).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use manhole::{ConnectionHandler, Local, Options};
use tracing_subscriber::{EnvFilter, Registry, prelude::*, reload};

/// Requests a worker serves between two DEBUG events.
const BATCH: u64 = 10;

#[derive(Debug)]
#[allow(dead_code)] // Read through its Debug text in the manhole.
struct Config {
    name: &'static str,
    workers: usize,
    tick: Duration,
}

#[inline(never)]
fn demo_worker_loop(worker: usize, requests: &AtomicU64, tick: Duration) -> ! {
    let mut served = 0u64;
    loop {
        let total = requests.fetch_add(1, Ordering::Relaxed) + 1;
        served += 1;
        if served.is_multiple_of(BATCH) {
            tracing::debug!(
                worker,
                batch = BATCH,
                served,
                total,
                "served a batch of requests"
            );
        }
        std::thread::sleep(tick);
    }
}

/// Logs to stderr through an `EnvFilter` at `info` behind a reload layer; the handle lets the
/// manhole's `log_filter` change the filter live.
fn init_logging() -> reload::Handle<EnvFilter, Registry> {
    let (filter, handle) = reload::Layer::new(EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    handle
}

#[inline(never)]
fn demo_idle_thread() -> ! {
    loop {
        std::thread::park();
    }
}

fn number<T: std::str::FromStr>(arg: Option<String>) -> T {
    arg.and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("demo: this flag needs a number");
        std::process::exit(2);
    })
}

fn signal_arg(arg: Option<String>) -> i32 {
    arg.and_then(|a| manhole::parse_signal(&a).ok())
        .unwrap_or_else(|| {
            eprintln!("demo: this flag needs a signal name like USR2");
            std::process::exit(2);
        })
}

/// Signals counted by the application's own handler.
static OWN_HANDLER_COUNT: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    OWN_HANDLER_COUNT.fetch_add(1, Ordering::Relaxed);
}

/// Installs the application's own handler for `signal` with a plain `sigaction`, as a program
/// that knows nothing of signal-hook would, and reports its count on stdout.
fn install_own_handler(signal: i32) {
    // SAFETY: a zeroed sigaction with a valid `extern "C"` handler that only does an atomic add
    // (async-signal-safe); the pointers are to live locals.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = count_signal as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = libc::SA_RESTART;
        assert_eq!(
            libc::sigaction(signal, &action, std::ptr::null_mut()),
            0,
            "sigaction"
        );
    }
    report_own_handler_count();
}

/// Registers a counting handler for `signal` through signal-hook (as tokio and most Rust
/// programs do), and reports its count on stdout.
fn hook_own_handler(signal: i32) {
    // SAFETY: the action is one atomic add, async-signal-safe.
    let registered = unsafe {
        signal_hook::low_level::register(signal, || {
            OWN_HANDLER_COUNT.fetch_add(1, Ordering::Relaxed);
        })
    };
    registered.expect("register through signal-hook");
    report_own_handler_count();
}

/// A thread prints `own handler count=<n>` each time the count changes.
fn report_own_handler_count() {
    std::thread::Builder::new()
        .name("own-handler".into())
        .spawn(|| {
            let mut seen = 0;
            loop {
                let now = OWN_HANDLER_COUNT.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    println!("own handler count={now}");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .expect("spawn the own-handler reporter");
}

/// SIGPIPE back to its default action (terminate). Rust's runtime ignores it before `main`.
fn sigpipe_default() {
    // SAFETY: `signal` with `SIG_DFL` installs no handler; called from `main` before any other
    // thread exists.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    assert_ne!(previous, libc::SIG_ERR, "signal(SIGPIPE, SIG_DFL)");
}

fn main() {
    let log_filter = init_logging();
    let mut options = Options::new();
    let mut extra_threads = 0;
    let mut forks = 0usize;
    let mut reinstall_at_fork = false;
    let mut handle_oneshot = false;
    let mut own_handler = None;
    let mut hook_after = None;
    let mut activate_on = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket-path" => {
                options = options.socket_path(args.next().expect("--socket-path needs a path"))
            }
            "--exec" => options = options.connection_handler(ConnectionHandler::Exec),
            "--extra-threads" => extra_threads = number(args.next()),
            "--write-timeout-ms" => {
                options = options.write_timeout(Duration::from_millis(number(args.next())))
            }
            "--idle-timeout-ms" => {
                options = options.idle_timeout(Some(Duration::from_millis(number(args.next()))))
            }
            "--max-sessions" => options = options.max_sessions(number(args.next())),
            "--not-strict" => options = options.strict(false),
            "--log-to-tracing" => options = options.log_to_tracing(true),
            "--fork" => forks = number(args.next()),
            "--reinstall-at-fork" => {
                reinstall_at_fork = true;
                options = options.reinstall_at_fork(true);
            }
            "--own-handler" => own_handler = Some(signal_arg(args.next())),
            "--hook-after" => hook_after = Some(signal_arg(args.next())),
            "--activate-on" => {
                let signal = signal_arg(args.next());
                activate_on = Some(signal);
                options = options.activate_on(signal);
            }
            "--sigpipe-default" => {
                sigpipe_default();
                options = options.sigmask(std::iter::empty::<i32>());
            }
            "--handle-oneshot" => {
                handle_oneshot = true;
                options = options.thread(false);
            }
            other => {
                eprintln!("demo: unknown argument {other:?} (see the flags in the source's docs)");
                std::process::exit(2);
            }
        }
    }
    let config = Arc::new(Config {
        name: "demo",
        workers: 4,
        tick: Duration::from_millis(100),
    });
    let requests = Arc::new(AtomicU64::new(0));
    tracing::info!(
        workers = config.workers,
        tick_ms = config.tick.as_millis() as u64,
        "demo started"
    );
    // Every thread is running (named, with its signal mask set up) before the listening line: a
    // thread still being created blocks every signal and would show in a dump without its stack.
    let started = Arc::new(Barrier::new(config.workers + extra_threads + 1));
    for i in 0..config.workers {
        let requests = requests.clone();
        let tick = config.tick;
        let started = started.clone();
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                started.wait();
                demo_worker_loop(i, &requests, tick)
            })
            .expect("spawn a worker");
    }
    for i in 0..extra_threads {
        let started = started.clone();
        std::thread::Builder::new()
            .name(format!("idle-{i}"))
            .spawn(move || {
                started.wait();
                demo_idle_thread()
            })
            .expect("spawn an idle thread");
    }
    started.wait();
    let options = options
        .local("requests", Local::atomic(requests))
        .local("config", Local::debug(config))
        .local("log_filter", Local::log_filter(log_filter))
        .command(
            "echo",
            "print the arguments back",
            |args| Ok(args.join(" ")),
        );
    if let Some(signal) = own_handler {
        install_own_handler(signal);
    }
    let manhole = manhole_examples::install_or_exit("demo", options);
    if let Some(signal) = hook_after {
        hook_own_handler(signal);
    }
    if let Some(signal) = activate_on {
        println!("manhole waiting for {signal}");
        loop {
            std::thread::park();
        }
    }
    if handle_oneshot {
        let path = manhole::default_socket_path(std::process::id());
        println!("manhole oneshot at {}", path.display());
        loop {
            match manhole.handle_oneshot() {
                Ok(()) => println!("oneshot served"),
                Err(e) => {
                    eprintln!("demo: one-shot session failed: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    manhole_examples::announce_listening(&manhole);
    for _ in 0..forks {
        // SAFETY: the child runs `forked_child_life`: prctl, getpid, write, pause and the
        // manhole's reinstall, which needs glibc's fork-safe malloc (as its formatting does).
        if unsafe { libc::fork() } == 0 {
            manhole_examples::forked_child_life("demo", !reinstall_at_fork);
        }
    }
    loop {
        std::thread::park();
    }
}
