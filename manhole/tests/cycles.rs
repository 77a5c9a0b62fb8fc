//! 1,000 install/uninstall cycles with `strict(false)`: nothing may leak.
//!
//! A `harness = false` test, so the process is this test's alone: its descriptor and thread
//! counts are not disturbed by other tests. The cycles mix an explicit `uninstall`, an `install`
//! that takes over from the previous installation (`strict(false)`), installations with an
//! activation signal instead of a listener, and installations with a client connected while
//! they are torn down. Afterwards the process must have the same open descriptors, the same
//! threads and no socket file left: counts are taken after one warm-up cycle of each kind (the
//! dump signal's handler, its preallocated pools and the signals' self-pipe stay for the life of
//! the process on purpose).
//!
//! `MANHOLE_SOAK_CYCLES=N` runs N cycles instead of 1,000.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use manhole::Options;

fn fds() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some(format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect()
}

fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim_end().to_string())
        .collect()
}

/// Waits until `f` holds, up to 30 s.
fn settle(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

fn options(path: &Path) -> Options {
    Options::new()
        .strict(false)
        .verbose(false)
        .redirect_stderr(false)
        .patch_fork(false)
        .socket_path(path)
}

/// One cycle of kind `i % 4`.
fn cycle(i: usize, dir: &Path) -> Result<(), String> {
    let path: PathBuf = dir.join(format!("s{}", i % 3));
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("cycle {i}: {what}: {e}");
    match i % 4 {
        // Install and uninstall.
        0 => {
            let m = manhole::install(options(&path)).map_err(|e| fail("install", &e))?;
            m.uninstall().map_err(|e| fail("uninstall", &e))?;
        }
        // Install and leave it to the next install to take over.
        1 => {
            let m = manhole::install(options(&path)).map_err(|e| fail("install", &e))?;
            drop(m);
        }
        // An activation signal instead of a listener.
        2 => {
            let m = manhole::install(options(&path).activate_on("USR2"))
                .map_err(|e| fail("install", &e))?;
            m.uninstall().map_err(|e| fail("uninstall", &e))?;
        }
        // A client connected (every 25th cycle it waits for the greeting) during teardown.
        _ => {
            let m = manhole::install(options(&path)).map_err(|e| fail("install", &e))?;
            let mut client = UnixStream::connect(&path).map_err(|e| fail("connect", &e))?;
            if i % 25 == 3 {
                client
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let mut greeting = Vec::new();
                let mut buf = [0u8; 4096];
                while !greeting.ends_with(b">>> ") {
                    // The greeting's dump interrupts this thread's read too (EINTR).
                    let n = match client.read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        other => other.map_err(|e| fail("read", &e))?,
                    };
                    if n == 0 {
                        return Err(fail("read", &"closed before the prompt"));
                    }
                    greeting.extend_from_slice(&buf[..n]);
                }
            }
            m.uninstall().map_err(|e| fail("uninstall", &e))?;
        }
    }
    Ok(())
}

fn run() -> Result<String, String> {
    let cycles: usize = std::env::var("MANHOLE_SOAK_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let dir = PathBuf::from(format!("/tmp/mh-cycles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _remove = Remove(dir.clone());
    // Warm-up, one cycle of each kind: the dump handler and its pools, and the signals'
    // self-pipe, are set up once per process and stay on purpose.
    for i in 0..4 {
        cycle(i, &dir)?;
    }
    settle(|| !threads().iter().any(|t| t.starts_with("mh-")));
    let (fds_before, threads_before) = (fds(), threads());
    let started = Instant::now();
    let mut slowest = (Duration::ZERO, 0);
    for i in 0..cycles {
        let t = Instant::now();
        cycle(i, &dir)?;
        slowest = slowest.max((t.elapsed(), i));
    }
    // The last installation (kind 1 leaves one behind only if it was last) goes too.
    if let Ok(m) = manhole::install(options(&dir.join("last"))) {
        m.uninstall().map_err(|e| e.to_string())?;
    }
    let took = started.elapsed();
    let threads_ok = settle(|| threads().len() == threads_before.len());
    let fds_ok = settle(|| fds().len() == fds_before.len());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    if !threads_ok {
        return Err(format!(
            "threads leaked: before {threads_before:?}, after {:?}",
            threads()
        ));
    }
    if !fds_ok {
        return Err(format!(
            "descriptors leaked: before {fds_before:?}, after {:?}",
            fds()
        ));
    }
    if !left.is_empty() {
        return Err(format!("files left in the socket directory: {left:?}"));
    }
    Ok(format!(
        "{cycles} cycles in {took:.1?} (slowest: cycle {} in {:.1?}); {} fds and {} threads before and after",
        slowest.1,
        slowest.0,
        fds_before.len(),
        threads_before.len()
    ))
}

fn main() -> ExitCode {
    // Watchdog: a hang is a failure, not a stuck test run.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(600));
        eprintln!("install_uninstall_cycles: watchdog: still running after 600 s");
        std::process::abort();
    });
    match run() {
        Ok(summary) => {
            println!("test install_uninstall_cycles_leak_nothing ... ok ({summary})");
            println!("\ntest result: ok. 1 passed; 0 failed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("test install_uninstall_cycles_leak_nothing ... FAILED\n{e}");
            println!("\ntest result: FAILED. 0 passed; 1 failed");
            ExitCode::FAILURE
        }
    }
}
