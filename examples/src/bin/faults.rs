//! `faults`: an application that misbehaves on request, for the hardening tests.
//!
//! It prints `manhole listening on <path>` and runs until killed. Its stderr is not shown in
//! sessions (`redirect_stderr(false)`). Its manhole shows `guarded` (a
//! `u64` behind a `Mutex`), `counter` (a settable atomic) and these commands:
//!
//! - `hold-lock MS`: a thread takes `guarded`'s lock and keeps it MS milliseconds; the command
//!   returns once the lock is held;
//! - `panic`: panics while holding `guarded`'s lock (so the lock ends up poisoned);
//! - `hang`: never returns;
//! - `overflow`: recurses until its worker thread overflows its stack (the process then dies of
//!   Rust's own "has overflowed its stack" abort, which needs SIGSEGV unblocked in the worker);
//! - `bump`: adds one to `counter` (a command that changes state);
//! - `peek`: a query (read-only command) that shows `counter`;
//! - `spawn N`: starts N more threads `parked-<i>` and returns once they run;
//! - `fork-storm T N`: T threads fork N children each, at once; each child exits at once (after
//!   the manhole's fork handlers ran in it) and the command reports how the children ended.
//!
//! Flags: `--socket-path PATH`, `--threads N` (N threads `parked-<i>` parked in
//! `faults_parked_thread` before install), `--churn` (a `churner` thread that spawns and joins
//! short-lived `churn` threads without pause), `--block-all` (a thread `all-blocked` that blocks
//! every signal), `--pipe-reader` (a thread `pipe-reader` blocked in `read(2)` on a pipe nobody
//! writes), `--vfork-waiter` (a thread `vfork-waiter` in uninterruptible sleep: it waits for a
//! `CLONE_VFORK` child that sleeps a minute), `--read-only`, `--allowed-uid UID`,
//! `--allowed-gid GID`, `--lock-timeout-ms N`, `--command-timeout-ms N`, `--dump-timeout-ms N`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use manhole::{Local, Options};

#[inline(never)]
fn faults_parked_thread() -> ! {
    loop {
        std::thread::park();
    }
}

/// Starts `n` threads `parked-<first>`... and returns once they all run.
fn spawn_parked(first: usize, n: usize) {
    let (running_tx, running_rx) = std::sync::mpsc::channel();
    for i in first..first + n {
        let running_tx = running_tx.clone();
        std::thread::Builder::new()
            .name(format!("parked-{i}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = running_tx.send(());
                faults_parked_thread()
            })
            .expect("spawn a parked thread");
    }
    for _ in 0..n {
        let _ = running_rx.recv();
    }
}

#[inline(never)]
fn faults_churn_loop() -> ! {
    let mut n = 0u64;
    loop {
        let worker = std::thread::Builder::new()
            .name("churn".into())
            .stack_size(64 * 1024)
            .spawn(move || std::hint::black_box(n.wrapping_mul(3)));
        if let Ok(worker) = worker {
            let _ = worker.join();
        }
        n += 1;
    }
}

/// Recurses for ever, a page of stack per call (the stack overflows long before `depth` wraps).
#[inline(never)]
fn faults_recurse(depth: u64) -> u64 {
    let page = std::hint::black_box([depth as u8; 4096]);
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    faults_recurse(depth + 1).wrapping_add(u64::from(page[0]))
}

#[inline(never)]
fn faults_all_blocked() -> ! {
    let all = nix::sys::signal::SigSet::all();
    nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&all), None)
        .expect("block every signal");
    loop {
        std::thread::park();
    }
}

#[inline(never)]
fn faults_pipe_reader(reader: std::os::fd::OwnedFd) {
    let mut byte = [0u8; 1];
    // Nobody writes: this read blocks for ever (a signal handler interrupts it, and it is
    // restarted or retried).
    loop {
        match nix::unistd::read(&reader, &mut byte) {
            Ok(0) => return,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("pipe read failed: {e}"),
        }
    }
}

/// The `CLONE_VFORK` child: sleeps, then exits. It shares the parent's memory, so it only makes
/// raw system calls on its own stack.
extern "C" fn vfork_child(_: *mut libc::c_void) -> libc::c_int {
    let pause = libc::timespec {
        tv_sec: 60,
        tv_nsec: 0,
    };
    // SAFETY: raw system calls with valid arguments; PR_SET_PDEATHSIG makes the child die with
    // the thread that cloned it, so a killed test leaves no sleeper behind.
    unsafe {
        libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::syscall(
            libc::SYS_nanosleep,
            &pause as *const libc::timespec,
            std::ptr::null_mut::<libc::timespec>(),
        );
        libc::syscall(libc::SYS_exit, 0);
    }
    0
}

/// Waits in `clone(CLONE_VFORK)` for a child that sleeps a minute: the kernel keeps this thread
/// in uninterruptible sleep (`D`) until the child exits, so it cannot run a signal handler.
#[inline(never)]
fn faults_vfork_waiter() -> ! {
    loop {
        let mut stack = vec![0u8; 64 * 1024];
        // SAFETY: the stack pointer is the end of a live 64 KiB buffer (16-byte aligned below),
        // which outlives the child: with CLONE_VFORK this call returns only after the child
        // exits. The child runs `vfork_child`, which makes raw system calls only.
        let pid = unsafe {
            let top = stack.as_mut_ptr().add(stack.len()) as usize & !15;
            libc::clone(
                vfork_child,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::null_mut(),
            )
        };
        assert!(pid > 0, "clone failed");
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        drop(stack);
    }
}

/// `threads` threads fork `each` children each; returns how many children exited with 0.
fn fork_storm(threads: usize, each: usize) -> Result<String, String> {
    let forkers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::Builder::new()
                .name(format!("forker-{t}"))
                .spawn(move || {
                    let mut clean = 0;
                    for _ in 0..each {
                        // SAFETY: the child makes one async-signal-safe call, `_exit`, after the
                        // fork handlers (the manhole's among them) have run in it.
                        match unsafe { libc::fork() } {
                            -1 => return Err(std::io::Error::last_os_error().to_string()),
                            // SAFETY: see above.
                            0 => unsafe { libc::_exit(0) },
                            pid => {
                                let status =
                                    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                                if matches!(status, Ok(nix::sys::wait::WaitStatus::Exited(_, 0))) {
                                    clean += 1;
                                }
                            }
                        }
                    }
                    Ok(clean)
                })
                .expect("spawn a forker")
        })
        .collect();
    let mut clean = 0;
    for forker in forkers {
        clean += forker.join().map_err(|_| "a forker panicked")??;
    }
    Ok(format!(
        "{clean} of {} children exited cleanly",
        threads * each
    ))
}

fn number<T: std::str::FromStr>(arg: Option<String>) -> T {
    arg.and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("faults: this flag needs a number");
        std::process::exit(2);
    })
}

/// Starts a thread called `name` and returns once it runs (so it shows under its name).
fn named(name: &str, body: impl FnOnce() + Send + 'static) {
    let (running_tx, running_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = running_tx.send(());
            body()
        })
        .expect("spawn a thread");
    let _ = running_rx.recv();
}

fn main() {
    // The panics it is asked for go to stderr; showing stderr in sessions would mix them into
    // the answers the tests read.
    let mut options = Options::new().redirect_stderr(false);
    let mut threads = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket-path" => {
                options = options.socket_path(args.next().expect("--socket-path needs a path"))
            }
            "--threads" => threads = number(args.next()),
            "--churn" => named("churner", || faults_churn_loop()),
            "--block-all" => named("all-blocked", || faults_all_blocked()),
            "--pipe-reader" => {
                let (reader, writer) = nix::unistd::pipe().expect("a pipe");
                // Keep the write end open so the read never sees end of file.
                std::mem::forget(writer);
                named("pipe-reader", move || faults_pipe_reader(reader));
            }
            "--vfork-waiter" => named("vfork-waiter", || faults_vfork_waiter()),
            "--read-only" => options = options.read_only(true),
            "--allowed-uid" => options = options.allowed_uids([number(args.next())]),
            "--allowed-gid" => options = options.allowed_gids([number(args.next())]),
            "--lock-timeout-ms" => {
                options = options.lock_timeout(Duration::from_millis(number(args.next())))
            }
            "--command-timeout-ms" => {
                options = options.command_timeout(Duration::from_millis(number(args.next())))
            }
            "--dump-timeout-ms" => {
                options = options.dump_timeout(Duration::from_millis(number(args.next())))
            }
            other => {
                eprintln!(
                    "faults: unknown argument {other:?} (see the flags in the source's docs)"
                );
                std::process::exit(2);
            }
        }
    }
    spawn_parked(0, threads);
    let parked = Arc::new(AtomicU64::new(threads as u64));
    let guarded = Arc::new(Mutex::new(7u64));
    let counter = Arc::new(AtomicU64::new(0));
    let options = options
        .local("guarded", Local::locked(guarded.clone()))
        .local("counter", Local::settable_atomic(counter.clone()))
        .command("hold-lock", "hold guarded's lock for MS milliseconds", {
            let guarded = guarded.clone();
            move |args| {
                let millis: u64 = args
                    .first()
                    .and_then(|a| a.parse().ok())
                    .ok_or("usage: hold-lock MS")?;
                let (taken_tx, taken_rx) = std::sync::mpsc::channel();
                let guarded = guarded.clone();
                named("lock-holder", move || {
                    let _held = guarded.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = taken_tx.send(());
                    std::thread::sleep(Duration::from_millis(millis));
                });
                taken_rx.recv().map_err(|_| "the holder died")?;
                Ok(format!("holding the lock for {millis} ms"))
            }
        })
        .command("panic", "panic while holding guarded's lock", {
            let guarded = guarded.clone();
            move |_| {
                let _held = guarded.lock();
                panic!("faults: asked to panic");
            }
        })
        .command("hang", "never return", |_| {
            loop {
                std::thread::park();
            }
        })
        .command(
            "overflow",
            "recurse until the stack overflows (kills the process)",
            |_| Ok(faults_recurse(0).to_string()),
        )
        .command("bump", "add one to counter", {
            let counter = counter.clone();
            move |_| Ok((counter.fetch_add(1, Ordering::SeqCst) + 1).to_string())
        })
        .query("peek", "show counter", {
            let counter = counter.clone();
            move |_| Ok(counter.load(Ordering::SeqCst).to_string())
        })
        .command("fork-storm", "T threads fork N children each", |args| {
            let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
            match numbers[..] {
                [threads, each] => fork_storm(threads, each),
                _ => Err("usage: fork-storm T N".into()),
            }
        })
        .command("spawn", "start N more parked threads", move |args| {
            let n: usize = args
                .first()
                .and_then(|a| a.parse().ok())
                .ok_or("usage: spawn N")?;
            let first = parked.fetch_add(n as u64, Ordering::SeqCst) as usize;
            spawn_parked(first, n);
            Ok(format!("{n} more threads"))
        });
    let manhole = manhole_examples::install_or_exit("faults", options);
    manhole_examples::announce_listening(&manhole);
    loop {
        std::thread::park();
    }
}
