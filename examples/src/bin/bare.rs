//! `bare`: links `manhole` but never calls `install`; a manhole comes only from the `MANHOLE`
//! environment variable. It registers three commands, `echo`, `nap MS` (sleeps MS
//! milliseconds, then answers `napped MS`) and `bye CODE` (`std::process::exit(CODE)` from the
//! command) (registering is not installing: the registry is process-wide and any manhole the
//! variable installs serves it).
//!
//! `--threads N` (default 4) starts threads `sleeper-<i>` blocked inside `bare_sleeper_loop`. It
//! prints `ready pid=<pid>` once they run, then sleeps until killed.
//!
//! More flags, for the lifecycle tests:
//!
//! - `--signalfd SIG`: block SIG in every application thread (in `main`, before any thread is
//!   started) and read it through a `signalfd` on a thread `signalfd-reader`, printing
//!   `usr1 via signalfd count=<n>` after each read (`<sig> via signalfd` in lower case).
//! - `--stderr-every-ms N`: a thread `ticker` writes `tick <n>` to stderr every N ms.
//! - `--stdout-every-ms N`: a thread `tocker` writes `tock <n>` to stdout every N ms (one
//!   `write(2)` per line, so nothing waits in a buffer).
//! - `--sigpipe-default`: put SIGPIPE back to `SIG_DFL` first thing in `main` (std ignores it),
//!   as many command-line programs do.
//! - `--fork N`: after `ready`, fork N children that keep running; each prints
//!   `child pid=<pid>` and dies with its parent.
//! - `--fork-when PATH`: do the `--fork` forks only once PATH exists.
//! - `--fork-exec N`: after `ready`, fork N children that exec `true` at once, reap them, then
//!   print `fork-exec done n=<N> us_each=<mean wall µs per fork+exec+wait> cpu_us_each=<mean CPU
//!   µs, this process's and its children's, per fork+exec+wait> pids=<pid>,<pid>,...` (and
//!   `fork-exec done n=<N>` on stderr, after anything the children wrote there).
//! - `--fork-unshare N`: after `ready`, fork N children that call `unshare(CLONE_NEWUSER)` right
//!   after `fork` returns (what sandboxes and `pre_exec` closures do) and exit with 0 or the
//!   errno; reap them and print `fork-unshare done n=<N> ok=<k> errno=<first failure's errno>`.
//! - `--reinstall-after-fork`: the children of `--fork` and `--daemonize` call
//!   `manhole::reinstall_after_fork()` first (a failure goes to stderr).
//! - `--daemonize`: after `ready`, daemonize as the `daemonize` crate does: fork, `setsid`, fork,
//!   and the middle process exits at once; the grandchild prints `daemon pid=<pid>` and sleeps
//!   until killed; the original process reaps the middle one and prints `daemonized`.
//! - `--exit-when PATH`: once PATH exists, call `std::process::exit(3)`.
//! - `--return-when PATH`: once PATH exists, return from `main` (exit status 0).
//! - `--lock-waiters N`: a thread `lock-holder` locks the `static SHARED_LOCK: Mutex<u64>` and a
//!   `Mutex` on the heap and sleeps holding both; N threads `lock-waiter-<i>` block locking
//!   `SHARED_LOCK`, and two threads `heap-waiter-<i>` the heap one (for the dump's wait view).

use std::path::PathBuf;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;

#[inline(never)]
fn bare_sleeper_loop() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The lock `--lock-waiters` threads wait on.
static SHARED_LOCK: Mutex<u64> = Mutex::new(0);

/// Holds `SHARED_LOCK` and `heap` for ever, once `held` is passed; `n` threads then wait on the
/// first and two on the second.
fn start_lock_waiters(n: usize) {
    let heap = Arc::new(Mutex::new(0u64));
    let held = Arc::new(Barrier::new(2));
    {
        let (heap, held) = (heap.clone(), held.clone());
        std::thread::Builder::new()
            .name("lock-holder".into())
            .spawn(move || {
                let _shared = SHARED_LOCK.lock().expect("not poisoned");
                let _heap = heap.lock().expect("not poisoned");
                held.wait();
                bare_sleeper_loop()
            })
            .expect("spawn the lock holder");
    }
    held.wait();
    for i in 0..n {
        std::thread::Builder::new()
            .name(format!("lock-waiter-{i}"))
            .spawn(|| *SHARED_LOCK.lock().expect("not poisoned") += 1)
            .expect("spawn a lock waiter");
    }
    for i in 0..2 {
        let heap = heap.clone();
        std::thread::Builder::new()
            .name(format!("heap-waiter-{i}"))
            .spawn(move || *heap.lock().expect("not poisoned") += 1)
            .expect("spawn a heap lock waiter");
    }
}

fn number(arg: Option<String>, flag: &str) -> usize {
    arg.and_then(|n| n.parse().ok()).unwrap_or_else(|| {
        eprintln!("bare: {flag} needs a number");
        std::process::exit(2);
    })
}

/// Writes a line to stdout with one `write(2)`: safe in a fork child, where the stdout lock may
/// have been held by another thread at the fork.
fn raw_line(line: &str) {
    let _ = nix::unistd::write(std::io::stdout(), line.as_bytes());
}

/// In a fork child with `--reinstall-after-fork`: brings the manhole back.
fn reinstall(on: bool) {
    if !on {
        return;
    }
    if let Err(e) = manhole::reinstall_after_fork() {
        // Formatting allocates; glibc's malloc is usable in a fork child.
        let line = format!("bare: reinstall_after_fork failed: {e}\n");
        let _ = nix::unistd::write(std::io::stderr(), line.as_bytes());
    }
}

/// Forks `n` children that stay alive (until their parent dies) after printing their pid.
fn fork_children(n: usize, reinstall_after_fork: bool) {
    for _ in 0..n {
        // SAFETY: the child only makes async-signal-safe calls (getpid, prctl, write, pause)
        // before it ends with its parent; the manhole's own fork handlers run as documented.
        match unsafe { libc::fork() } {
            -1 => {
                eprintln!("bare: fork failed: {}", std::io::Error::last_os_error());
                std::process::exit(1);
            }
            0 => {
                // SAFETY: prctl and getpid have no memory-safety requirements.
                let pid = unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    libc::getpid()
                };
                reinstall(reinstall_after_fork);
                let mut buf = [0u8; 32];
                let line = format_pid_line(&mut buf, b"child pid=", pid);
                raw_line(line);
                loop {
                    // SAFETY: pause has no requirements; the child sleeps until killed.
                    unsafe { libc::pause() };
                }
            }
            _ => {}
        }
    }
}

/// `<prefix><pid>\n` formatted into `buf` without allocating (we are in a fork child).
fn format_pid_line<'a>(buf: &'a mut [u8; 32], prefix: &[u8], pid: i32) -> &'a str {
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let mut n = pid.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut at = prefix.len();
    for i in (0..len).rev() {
        buf[at] = digits[i];
        at += 1;
    }
    buf[at] = b'\n';
    std::str::from_utf8(&buf[..=at]).unwrap_or("pid=?\n")
}

/// fork, `setsid`, fork, and the middle process exits at once (the `daemonize` crate's order).
fn daemonize(reinstall_after_fork: bool) {
    // SAFETY: the middle process only calls setsid, fork and _exit; the grandchild only calls
    // what is safe after fork (getpid, write, pause, and with `--reinstall-after-fork` the
    // manhole's reinstall, which needs glibc's fork-safe malloc).
    let middle = unsafe { libc::fork() };
    if middle == 0 {
        // SAFETY: see above.
        unsafe {
            libc::setsid();
            if libc::fork() != 0 {
                libc::_exit(0);
            }
        }
        reinstall(reinstall_after_fork);
        // SAFETY: getpid has no requirements.
        let pid = unsafe { libc::getpid() };
        let mut buf = [0u8; 32];
        raw_line(format_pid_line(&mut buf, b"daemon pid=", pid));
        loop {
            // SAFETY: pause has no requirements; the daemon sleeps until killed.
            unsafe { libc::pause() };
        }
    }
    if middle < 0 {
        eprintln!("bare: fork failed: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(middle), None);
    println!("daemonized");
}

/// Forks `n` children that call `unshare(CLONE_NEWUSER)` at once and exit with its outcome.
fn fork_unshare_children(n: usize) {
    let mut ok = 0;
    let mut failed_errno = 0;
    for _ in 0..n {
        // SAFETY: the child only calls unshare and _exit (async-signal-safe).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: unshare and _exit have no memory-safety requirements.
            unsafe {
                let code = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                    0
                } else {
                    *libc::__errno_location()
                };
                libc::_exit(code);
            }
        }
        if pid < 0 {
            eprintln!("bare: fork failed: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => ok += 1,
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) if failed_errno == 0 => {
                failed_errno = code;
            }
            _ => {}
        }
    }
    println!("fork-unshare done n={n} ok={ok} errno={failed_errno}");
}

/// CPU time (user + system) of this process and of its reaped children so far.
fn cpu_time() -> Duration {
    let of = |who| {
        // SAFETY: getrusage fills the zeroed `rusage` it is given a pointer to.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(who, &mut usage);
            usage
        };
        let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
        t(usage.ru_utime) + t(usage.ru_stime)
    };
    of(libc::RUSAGE_SELF) + of(libc::RUSAGE_CHILDREN)
}

/// Forks `n` children that exec `true` at once, and reaps them.
fn fork_exec_children(n: usize) {
    let program = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a `true` program");
    let program = std::ffi::CString::new(program).expect("no NUL");
    let argv = [program.as_ptr(), std::ptr::null()];
    let mut children = Vec::with_capacity(n);
    let mut elapsed = Duration::ZERO;
    let cpu_before = cpu_time();
    for _ in 0..n {
        let started = std::time::Instant::now();
        // SAFETY: the child only calls execv (async-signal-safe) with pointers prepared before
        // the fork, and _exit if that fails.
        match unsafe { libc::fork() } {
            -1 => {
                eprintln!("bare: fork failed: {}", std::io::Error::last_os_error());
                std::process::exit(1);
            }
            0 => {
                // SAFETY: `argv` is a NULL-terminated array of valid C strings that outlive the
                // call; `_exit` ends the child without running the parent's exit handlers.
                unsafe {
                    libc::execv(program.as_ptr(), argv.as_ptr());
                    libc::_exit(127);
                }
            }
            pid => {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::wait::waitpid(pid, None);
                elapsed += started.elapsed();
                children.push(pid);
            }
        }
    }
    let pids: Vec<String> = children.iter().map(|p| p.to_string()).collect();
    // Also on stderr, which the children shared: whatever they wrote there comes before it.
    eprintln!("fork-exec done n={n}");
    let per_fork = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    println!(
        "fork-exec done n={n} us_each={:.0} cpu_us_each={:.0} pids={}",
        per_fork(elapsed),
        per_fork(cpu_time().saturating_sub(cpu_before)),
        pids.join(",")
    );
}

fn read_through_signalfd(signal: Signal) {
    let mut mask = SigSet::empty();
    mask.add(signal);
    let fd = SignalFd::new(&mask).expect("create a signalfd");
    let name = signal
        .as_str()
        .trim_start_matches("SIG")
        .to_ascii_lowercase();
    let mut count = 0u64;
    loop {
        match fd.read_signal() {
            Ok(Some(_)) => {
                count += 1;
                println!("{name} via signalfd count={count}");
            }
            Ok(None) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                eprintln!("bare: reading the signalfd failed: {e}");
                std::process::exit(1);
            }
        }
    }
}

fn wait_for_file(path: &std::path::Path) {
    while !path.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main() {
    let mut threads = 4usize;
    let mut signalfd = None;
    let mut stderr_every = None;
    let mut stdout_every = None;
    let mut forks = 0;
    let mut fork_execs = 0;
    let mut fork_unshares = 0;
    let mut daemon = false;
    let mut reinstall_after_fork = false;
    let mut exit_when: Option<PathBuf> = None;
    let mut fork_when: Option<PathBuf> = None;
    let mut return_when: Option<PathBuf> = None;
    let mut lock_waiters = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--threads" => threads = number(args.next(), "--threads"),
            "--signalfd" => {
                let name = args.next().unwrap_or_default();
                let signal = manhole::parse_signal(&name)
                    .ok()
                    .and_then(|n| Signal::try_from(n).ok())
                    .unwrap_or_else(|| {
                        eprintln!("bare: --signalfd needs a signal name like USR1");
                        std::process::exit(2);
                    });
                signalfd = Some(signal);
            }
            "--stderr-every-ms" => stderr_every = Some(number(args.next(), "--stderr-every-ms")),
            "--stdout-every-ms" => stdout_every = Some(number(args.next(), "--stdout-every-ms")),
            "--sigpipe-default" => {
                // SAFETY: setting a standard signal's disposition to SIG_DFL has no memory-safety
                // requirements.
                unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            }
            "--fork" => forks = number(args.next(), "--fork"),
            "--fork-exec" => fork_execs = number(args.next(), "--fork-exec"),
            "--fork-unshare" => fork_unshares = number(args.next(), "--fork-unshare"),
            "--daemonize" => daemon = true,
            "--reinstall-after-fork" => reinstall_after_fork = true,
            "--exit-when" => exit_when = args.next().map(PathBuf::from),
            "--fork-when" => fork_when = args.next().map(PathBuf::from),
            "--return-when" => return_when = args.next().map(PathBuf::from),
            "--lock-waiters" => lock_waiters = number(args.next(), "--lock-waiters"),
            other => {
                eprintln!("bare: unknown argument {other:?} (see the flags in the source's docs)");
                std::process::exit(2);
            }
        }
    }
    let _echo =
        manhole::register_command(
            "echo",
            "print the arguments back",
            |args| Ok(args.join(" ")),
        );
    let _nap = manhole::register_command("nap", "sleep MS milliseconds, then answer", |args| {
        let ms: u64 = args
            .first()
            .and_then(|a| a.parse().ok())
            .ok_or("usage: nap MS")?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok(format!("napped {ms}"))
    });
    let _bye = manhole::register_command("bye", "exit the process with CODE", |args| {
        let code: i32 = args
            .first()
            .and_then(|a| a.parse().ok())
            .ok_or("usage: bye CODE")?;
        std::process::exit(code)
    });
    if let Some(signal) = signalfd {
        // Blocked here, before any application thread exists, so every one inherits it; the
        // manhole's threads (started before main from MANHOLE) block it through `sigmask`.
        let mut mask = SigSet::empty();
        mask.add(signal);
        mask.thread_block().expect("block the signal in main");
    }
    let started = Arc::new(Barrier::new(threads + 1));
    for i in 0..threads {
        let started = started.clone();
        std::thread::Builder::new()
            .name(format!("sleeper-{i}"))
            .spawn(move || {
                started.wait();
                bare_sleeper_loop()
            })
            .expect("spawn a sleeper");
    }
    started.wait();
    if lock_waiters > 0 {
        start_lock_waiters(lock_waiters);
    }
    if let Some(signal) = signalfd {
        std::thread::Builder::new()
            .name("signalfd-reader".into())
            .spawn(move || read_through_signalfd(signal))
            .expect("spawn the signalfd reader");
    }
    if let Some(every) = stderr_every {
        std::thread::Builder::new()
            .name("ticker".into())
            .spawn(move || {
                for n in 0u64.. {
                    eprintln!("tick {n}");
                    std::thread::sleep(Duration::from_millis(every as u64));
                }
            })
            .expect("spawn the ticker");
    }
    if let Some(every) = stdout_every {
        std::thread::Builder::new()
            .name("tocker".into())
            .spawn(move || {
                for n in 0u64.. {
                    raw_line(&format!("tock {n}\n"));
                    std::thread::sleep(Duration::from_millis(every as u64));
                }
            })
            .expect("spawn the tocker");
    }
    println!("ready pid={}", std::process::id());
    if forks > 0 {
        if let Some(path) = &fork_when {
            wait_for_file(path);
        }
        fork_children(forks, reinstall_after_fork);
    }
    if fork_execs > 0 {
        fork_exec_children(fork_execs);
    }
    if fork_unshares > 0 {
        fork_unshare_children(fork_unshares);
    }
    if daemon {
        daemonize(reinstall_after_fork);
    }
    if let Some(path) = exit_when {
        wait_for_file(&path);
        std::process::exit(3);
    }
    if let Some(path) = return_when {
        wait_for_file(&path);
        return;
    }
    loop {
        std::thread::park();
    }
}
