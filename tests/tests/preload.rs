//! The preload library end to end: programs not written in Rust (a C program with worker
//! threads, compiled here with `cc`, a C++ one with `c++`, and `python3`) get a manhole from
//! `LD_PRELOAD=libmanhole_preload.so MANHOLE=...`, their threads show in the dump, and they
//! behave and exit exactly as without it. Also the C API, linked with `-lmanhole_preload`.
//!
//! Each host program runs until a stop file appears, then joins its workers, prints a last
//! line and exits with a status of its own (7 for C, 5 for Python), so "the same as without the
//! library" is checked on stdout, stderr and the exit status. Hosts are killed and their
//! sockets removed on drop, also when a test fails.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Instant;

use manhole_e2e::{TIMEOUT, TempDir, bin, run_cli as cli, wait_until};

/// `target/<profile>/libmanhole_preload.so`, built on first use (`MANHOLE_E2E_NO_BUILD` set:
/// as already built).
fn preload_library() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cli = bin("manhole-cli");
            let dir = cli.parent().expect("target/<profile>").to_path_buf();
            if std::env::var_os("MANHOLE_E2E_NO_BUILD").is_none() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut build = Command::new(cargo);
                build.args(["build", "--quiet", "-p", "manhole-preload"]);
                if dir.ends_with("release") {
                    build.arg("--release");
                }
                assert!(
                    build.status().expect("run cargo build").success(),
                    "building the preload library failed"
                );
            }
            let library = dir.join("libmanhole_preload.so");
            assert!(library.exists(), "{} was not built", library.display());
            library
        })
        .clone()
}

/// The C host: three named worker threads in `c_worker_loop` (calling `c_worker_tick`), `main`
/// waiting for the stop file, exit status 7. With `-DWITH_API` it also installs a manhole and
/// registers a value and a command through the C API.
const C_HOST: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef WITH_API
#include "manhole.h"
#endif

static atomic_int stop;
static _Alignas(8) int64_t ticks;

__attribute__((noinline)) static void c_worker_tick(void) {
    struct timespec pause = {0, 5 * 1000 * 1000};
    nanosleep(&pause, NULL);
    __atomic_fetch_add(&ticks, 1, __ATOMIC_RELAXED);
}

__attribute__((noinline)) static void *c_worker_loop(void *arg) {
    char name[16];
    snprintf(name, sizeof name, "c-worker-%d", (int)(long)arg);
    pthread_setname_np(pthread_self(), name);
    while (!atomic_load(&stop)) c_worker_tick();
    return NULL;
}

#ifdef WITH_API
static int hello(void *context, int argc, const char *const *argv, char *out, size_t size) {
    if (argc < 1) { snprintf(out, size, "hello needs a name"); return -1; }
    snprintf(out, size, "%s %s", (const char *)context, argv[0]);
    return 0;
}
#endif

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: host STOP_FILE\n"); return 2; }
#ifdef WITH_API
    char error[256];
    if (manhole_install("verbose=False", error, sizeof error) != 0) {
        fprintf(stderr, "install: %s\n", error);
        return 3;
    }
    if (manhole_register_i64("ticks", &ticks) != 0) return 4;
    if (manhole_register_command("hello", "say hello", hello, "hello") != 0) return 4;
    if (manhole_install("", error, sizeof error) == 0) return 5;
    printf("second install: %s\n", error);
#endif
    pthread_t workers[3];
    for (long i = 0; i < 3; i++) pthread_create(&workers[i], NULL, c_worker_loop, (void *)i);
    printf("ready\n");
    fflush(stdout);
    struct timespec pause = {0, 10 * 1000 * 1000};
    while (access(argv[1], F_OK) != 0) nanosleep(&pause, NULL);
    atomic_store(&stop, 1);
    for (int i = 0; i < 3; i++) pthread_join(workers[i], NULL);
    printf("done %d workers\n", 3);
    return 7;
}
"#;

/// The C++ host: three `std::thread`s in `host::cpp_worker_loop`, exit status 9 (and an
/// exception thrown and caught in each worker, which unwinds through C++ frames).
const CPP_HOST: &str = r#"
#include <atomic>
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <thread>
#include <unistd.h>
#include <vector>

namespace host {
std::atomic<bool> stop{false};

__attribute__((noinline)) void cpp_worker_loop() {
    while (!stop.load()) {
        try { throw std::runtime_error("tick"); } catch (const std::exception &) {}
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    std::vector<std::thread> workers;
    for (int i = 0; i < 3; i++) workers.emplace_back(host::cpp_worker_loop);
    std::printf("ready\n");
    std::fflush(stdout);
    while (access(argv[1], F_OK) != 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    host::stop = true;
    for (auto &worker : workers) worker.join();
    std::printf("done %zu workers\n", workers.size());
    return 9;
}
"#;

/// The Python host: three `py_worker_loop` threads, exit status 5.
const PY_HOST: &str = r#"
import os, sys, threading, time
stop = threading.Event()
def py_worker_loop():
    while not stop.is_set():
        time.sleep(0.005)
workers = [threading.Thread(target=py_worker_loop) for _ in range(3)]
for worker in workers:
    worker.start()
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
stop.set()
for worker in workers:
    worker.join()
print("done", len(workers), "workers")
sys.exit(5)
"#;

/// Compiles the C host into `dir` (`api`: with the C API, linked to the library).
fn compile_c_host(dir: &TempDir, api: bool) -> Option<PathBuf> {
    let source = dir.join("host.c");
    fs::write(&source, C_HOST).unwrap();
    let exe = dir.join(if api { "host-api" } else { "host" });
    let mut cc = Command::new("cc");
    cc.args(["-O1", "-g", "-pthread", "-o"])
        .arg(&exe)
        .arg(&source);
    if api {
        let library = preload_library();
        let lib_dir = library.parent().unwrap();
        let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manhole-preload/include");
        cc.arg("-DWITH_API")
            .arg("-I")
            .arg(include)
            .arg(format!("-L{}", lib_dir.display()))
            .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
            .arg("-lmanhole_preload");
    }
    match cc.output() {
        Ok(out) if out.status.success() => Some(exe),
        Ok(out) => panic!("cc failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => {
            eprintln!("skipped: no C compiler (cc): {e}");
            None
        }
    }
}

/// Compiles the C++ host into `dir`.
fn compile_cpp_host(dir: &TempDir) -> Option<PathBuf> {
    let source = dir.join("host.cc");
    fs::write(&source, CPP_HOST).unwrap();
    let exe = dir.join("host-cpp");
    let out = Command::new("c++")
        .args(["-O1", "-g", "-pthread", "-o"])
        .arg(&exe)
        .arg(&source)
        .output();
    match out {
        Ok(out) if out.status.success() => Some(exe),
        Ok(out) => panic!("c++ failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => {
            eprintln!("skipped: no C++ compiler (c++): {e}");
            None
        }
    }
}

/// The Python interpreter's own executable (not a shim script), if there is one.
fn python() -> Option<PathBuf> {
    if Path::new("/usr/bin/python3").exists() {
        return Some(PathBuf::from("/usr/bin/python3"));
    }
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    path.exists().then_some(path)
}

/// A host program, killed and reaped on drop, its default socket removed.
struct Host {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    stop: PathBuf,
}

impl Host {
    /// Starts `command` (its last argument must be `stop`) with output captured.
    fn start(mut command: Command, stop: PathBuf) -> Host {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the host program");
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        Host {
            child,
            lines,
            stdout,
            stderr,
            stop,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/manhole-{}", self.pid()))
    }

    /// Waits for the `ready` line.
    fn wait_ready(&self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line == "ready" => return,
                Ok(_) => continue,
                Err(_) => panic!(
                    "the host never got ready; stderr {:?}",
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Waits for its manhole socket.
    fn wait_socket(&self) {
        let socket = self.socket();
        assert!(
            wait_until(|| socket.exists().then_some(())).is_some(),
            "{} never appeared; stderr {:?}",
            socket.display(),
            self.stderr.lock().unwrap()
        );
    }

    /// Creates the stop file and waits for the exit: status, stdout, stderr.
    fn stop(mut self) -> (ExitStatus, String, String) {
        fs::write(&self.stop, b"").unwrap();
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the host did not exit");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        // The readers end when the pipes close (the host has exited).
        let closed = wait_until(|| {
            (Arc::strong_count(&self.stderr) == 1 && Arc::strong_count(&self.stdout) == 1)
                .then_some(())
        });
        assert!(closed.is_some(), "the host's output pipes stayed open");
        let stdout = self.stdout.lock().unwrap().clone();
        let stderr = self.stderr.lock().unwrap().clone();
        (status, stdout, stderr)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let socket = self.socket();
        if fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = fs::remove_file(socket);
        }
    }
}

/// `program args... STOP` with the preload library and `MANHOLE=manhole` when given.
fn host_command(program: &Path, args: &[&str], stop: &Path, manhole: Option<&str>) -> Command {
    let mut command = Command::new(program);
    command.args(args).arg(stop).env_remove("MANHOLE");
    if let Some(value) = manhole {
        command
            .env("LD_PRELOAD", preload_library())
            .env("MANHOLE", value);
    }
    command
}

/// Runs the host to its end without the library: status, stdout, stderr.
fn run_plain(program: &Path, args: &[&str], dir: &TempDir) -> (ExitStatus, String, String) {
    let stop = dir.join("stop-plain");
    let host = Host::start(host_command(program, args, &stop, None), stop);
    host.wait_ready();
    host.stop()
}

fn cli_ok(args: &[&str]) -> String {
    let (code, stdout, stderr) = cli(args);
    assert_eq!(code, 0, "manhole-cli {args:?}: {stdout:?} {stderr:?}");
    stdout
}

#[test]
fn a_c_program_gets_a_manhole_and_behaves_as_without_it() {
    let dir = TempDir::new();
    let Some(exe) = compile_c_host(&dir, false) else {
        return;
    };
    let plain = run_plain(&exe, &[], &dir);
    assert_eq!(plain.0.code(), Some(7), "{plain:?}");

    let stop = dir.join("stop");
    let host = Host::start(host_command(&exe, &[], &stop, Some("verbose=False")), stop);
    host.wait_ready();
    host.wait_socket();
    let pid = host.pid().to_string();
    let threads = cli_ok(&[&pid, "threads", "--all"]);
    for needle in [
        "c-worker-0",
        "c-worker-1",
        "c-worker-2",
        "c_worker_loop (",
        "c_worker_tick (",
        "host.c:",
        "main (",
    ] {
        assert!(threads.contains(needle), "{needle} missing: {threads}");
    }
    let info = cli_ok(&[&pid, "info"]);
    assert!(info.contains(&exe.display().to_string()), "{info}");
    // A REPL with nothing registered: the built-ins answer, a value does not exist.
    let help = cli_ok(&[&pid, "help"]);
    assert!(help.contains("threads"), "{help}");
    let (code, _, stderr) = cli(&[&pid, "get", "requests"]);
    assert_eq!(code, 1, "{stderr}");
    let socket = host.socket();
    let with = host.stop();
    assert_eq!(with, plain, "with the library vs without");
    assert!(!socket.exists(), "the socket is removed at exit");
}

#[test]
fn a_c_program_started_with_fds_0_to_2_closed_keeps_them_off_the_manhole() {
    let dir = TempDir::new();
    let Some(exe) = compile_c_host(&dir, false) else {
        return;
    };
    let stop = dir.join("stop");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        // Only the host gets the library (a shell that loads it would listen until its exec).
        .arg(r#"LD_PRELOAD="$2" MANHOLE= exec "$0" "$1" <&- >&- 2>&-"#)
        .arg(&exe)
        .arg(&stop)
        .arg(preload_library())
        .env_remove("MANHOLE");
    let host = Host::start(command, stop);
    host.wait_socket();
    let pid = host.pid();
    for fd in 0..=2 {
        let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "fd {fd}");
    }
    let threads = cli_ok(&[&pid.to_string(), "threads", "c-worker-1"]);
    assert!(threads.contains("c_worker_loop"), "{threads}");
    let socket = host.socket();
    let (status, stdout, _) = host.stop();
    assert_eq!(status.code(), Some(7));
    assert_eq!(stdout, "");
    assert!(!socket.exists());
}

#[test]
fn a_cpp_program_gets_a_manhole_and_behaves_as_without_it() {
    let dir = TempDir::new();
    let Some(exe) = compile_cpp_host(&dir) else {
        return;
    };
    let plain = run_plain(&exe, &[], &dir);
    assert_eq!(plain.0.code(), Some(9), "{plain:?}");
    let stop = dir.join("stop");
    let host = Host::start(host_command(&exe, &[], &stop, Some("verbose=False")), stop);
    host.wait_ready();
    host.wait_socket();
    let pid = host.pid().to_string();
    // Dumps while the workers throw and catch: each must come back whole.
    for _ in 0..5 {
        let threads = cli_ok(&[&pid, "threads", "--all"]);
        let workers = threads
            .split("\n\nThread ")
            .filter(|thread| thread.contains("cpp_worker_loop"))
            .count();
        assert_eq!(workers, 3, "{threads}");
    }
    let socket = host.socket();
    let with = host.stop();
    assert_eq!(with, plain, "with the library vs without");
    assert!(!socket.exists());
}

#[test]
fn python_gets_a_manhole_and_behaves_as_without_it() {
    let Some(python) = python() else {
        eprintln!("skipped: no python3 executable");
        return;
    };
    let dir = TempDir::new();
    let script = dir.join("host.py");
    fs::write(&script, PY_HOST).unwrap();
    let script = script.to_str().unwrap();
    let plain = run_plain(&python, &[script], &dir);
    assert_eq!(plain.0.code(), Some(5), "{plain:?}");

    let stop = dir.join("stop");
    let host = Host::start(
        host_command(&python, &[script], &stop, Some("verbose=False")),
        stop,
    );
    host.wait_ready();
    host.wait_socket();
    let pid = host.pid().to_string();
    let dump: serde_json::Value =
        serde_json::from_str(&cli_ok(&["--json", &pid, "threads"])).expect("JSON");
    let text = dump.to_string();
    // The interpreter's frames in the main thread and the three workers.
    assert!(text.contains("_PyEval_EvalFrameDefault"), "{dump}");
    assert!(text.contains("start_thread"), "{dump}");
    let threads = cli_ok(&[&pid, "threads", "--all"]);
    let evaluating = threads
        .split("\n\nThread ")
        .filter(|thread| thread.contains("_PyEval_EvalFrameDefault"))
        .count();
    assert!(evaluating >= 4, "main and 3 workers: {threads}");
    let info = cli_ok(&[&pid, "info"]);
    assert!(info.contains("python"), "{info}");
    let socket = host.socket();
    let with = host.stop();
    assert_eq!(with, plain, "with the library vs without");
    assert!(!socket.exists());
}

#[test]
fn the_c_api_installs_and_registers() {
    let dir = TempDir::new();
    let Some(exe) = compile_c_host(&dir, true) else {
        return;
    };
    let stop = dir.join("stop");
    let host = Host::start(host_command(&exe, &[], &stop, None), stop);
    host.wait_ready();
    host.wait_socket();
    let pid = host.pid().to_string();
    let ticks: u64 = cli_ok(&[&pid, "get", "ticks"]).trim().parse().unwrap();
    let later = wait_until(|| {
        let now: u64 = cli_ok(&[&pid, "get", "ticks"]).trim().parse().unwrap();
        (now > ticks).then_some(now)
    });
    assert!(later.is_some(), "the counter is read live");
    assert_eq!(cli_ok(&[&pid, "hello", "world"]), "hello world\n");
    let (code, _, stderr) = cli(&[&pid, "hello"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("hello needs a name"), "{stderr}");
    let threads = cli_ok(&[&pid, "threads", "c-worker-0"]);
    assert!(threads.contains("c_worker_loop"), "{threads}");
    let (status, stdout, stderr) = host.stop();
    assert_eq!(status.code(), Some(7), "{stderr}");
    assert!(
        stdout.starts_with("second install: ") && stdout.contains("already installed"),
        "{stdout}"
    );
}
