//! Manholes in containers, reached from the host by host pid: the demo runs in a container made
//! with `unshare --pid --mount --fork --mount-proc` and a private tmpfs on `/tmp` (and, where the
//! machine allows, a user namespace whose root is host uid 100000), and the real client finds it
//! by its host pid, through `/proc/<pid>/root`, with every check on.
//!
//! These tests need root (CI runs as root) and `unshare`; without them they print why and pass.
//! Every container is killed through its init (the demo, pid 1 inside), which takes the
//! namespaces and their tmpfs with it, and `unshare --kill-child` does the same if the test
//! process dies first.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use manhole_e2e::{TIMEOUT, bin, run_cli as cli, wait_until};

/// The host uid (and gid) of root inside the user-namespace container.
const CONTAINER_ROOT: u32 = 100_000;

/// Why these tests cannot run here, if they cannot.
fn unsupported() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: making namespaces needs root".into());
    }
    let probe = Command::new("unshare")
        .args(["--pid", "--mount", "--fork", "--mount-proc", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Ok(status) if status.success() => None,
        Ok(status) => Some(format!("unshare --pid --mount fails here ({status})")),
        Err(e) => Some(format!("no unshare: {e}")),
    }
}

macro_rules! require_namespaces {
    () => {
        if let Some(why) = unsupported() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// A demo in a container: the `unshare` process and the demo's host pid. Dropping it kills the
/// demo (the namespace's init: everything in the container dies with it) and reaps `unshare`.
struct Container {
    launcher: Child,
    /// The demo's pid on the host.
    host_pid: i32,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

/// How the container is made.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// PID and mount namespaces.
    Plain,
    /// Also a user namespace mapping 0..65536 inside to `CONTAINER_ROOT`.. on the host.
    UserNs,
}

impl Container {
    /// Starts `demo DEMO_ARGS` as pid 1 of a container with a private tmpfs on /tmp, and waits
    /// for it to listen.
    fn start(kind: Kind, demo_args: &str) -> Container {
        let demo = bin("demo");
        // The private tmpfs is made on /mnt and moved onto /tmp, so that a build under /tmp (a
        // CI clone there) stays reachable: its directory is bind-mounted into the new tmpfs at
        // the same path first. All of it happens in the container's own mount namespace.
        let build_dir = demo.parent().expect("the demo's directory");
        let keep_build = match build_dir.strip_prefix("/tmp") {
            Ok(inside) => format!(
                "mkdir -p /mnt/{inside} && mount -n --bind {build} /mnt/{inside} && ",
                inside = inside.display(),
                build = build_dir.display()
            ),
            Err(_) => String::new(),
        };
        let script = format!(
            "mount -n -t tmpfs tmpfs /mnt && mkdir /mnt/app && {keep_build}mount -n --move /mnt /tmp \
             && exec {} {demo_args}",
            demo.display()
        );
        let mut command = Command::new("unshare");
        command
            .args([
                "--pid",
                "--mount",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("MANHOLE");
        if kind == Kind::UserNs {
            enter_user_namespace(&mut command);
        }
        let mut launcher = command.spawn().expect("start unshare");
        let (tx, lines) = mpsc::channel();
        let stdout = launcher.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let err_pipe = launcher.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut container = Container {
            host_pid: 0,
            launcher,
            stderr,
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with("manhole waiting for ") => break,
                Ok(line) if line.starts_with("manhole listening on ") => {
                    if !demo_args.contains("--socket-path") {
                        assert_eq!(
                            line, "manhole listening on /tmp/manhole-1",
                            "the demo is pid 1 in its container"
                        );
                    }
                    break;
                }
                Ok(_) => continue,
                Err(_) => panic!(
                    "the demo in the container never listened; stderr {:?}",
                    container.stderr()
                ),
            }
        }
        let launcher_pid = container.launcher.id();
        container.host_pid =
            fs::read_to_string(format!("/proc/{launcher_pid}/task/{launcher_pid}/children"))
                .expect("read the children of unshare")
                .split_whitespace()
                .next()
                .and_then(|pid| pid.parse().ok())
                .expect("unshare has forked the container's init");
        assert_eq!(
            fs::read_to_string(format!("/proc/{}/comm", container.host_pid))
                .unwrap()
                .trim(),
            "demo"
        );
        container
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn pid(&self) -> String {
        self.host_pid.to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.host_pid > 0 {
            // The namespace's init: SIGKILL from the host always reaches it, and its death
            // kills every other process of the container.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.host_pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.launcher.kill();
        let _ = self.launcher.wait();
    }
}

/// Makes `command` start in a new user namespace where uids and gids 0..65536 are
/// `CONTAINER_ROOT`.. on the host, as root of that namespace (without newuidmap: the parent,
/// being root, writes the maps while the child waits before exec).
fn enter_user_namespace(command: &mut Command) {
    let (ready_read, ready_write) = nix::unistd::pipe().expect("pipe");
    let (go_read, go_write) = nix::unistd::pipe().expect("pipe");
    let ready_read = fs::File::from(ready_read);
    let go_write = fs::File::from(go_write);
    // The helper writes the maps once the child says it is in its namespace.
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut ready_read = ready_read;
        let mut go_write = go_write;
        let mut pid = [0u8; 4];
        if ready_read.read_exact(&mut pid).is_err() {
            return;
        }
        let pid = i32::from_ne_bytes(pid);
        let map = format!("0 {CONTAINER_ROOT} 65536\n");
        let mapped = fs::write(format!("/proc/{pid}/uid_map"), &map)
            .and_then(|()| fs::write(format!("/proc/{pid}/gid_map"), &map));
        let _ = go_write.write_all(&[u8::from(mapped.is_ok())]);
    });
    // SAFETY: the closure runs in the forked child before exec and makes only async-signal-safe
    // system calls (unshare, getpid, write, read, setresgid, setresuid) on memory it owns.
    unsafe {
        command.pre_exec(move || {
            use std::os::fd::AsRawFd;
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(ready_write.as_raw_fd(), pid.as_ptr().cast(), 4) != 4 {
                return Err(std::io::Error::last_os_error());
            }
            let mut mapped = 0u8;
            if libc::read(go_read.as_raw_fd(), (&raw mut mapped).cast(), 1) != 1 || mapped != 1 {
                return Err(std::io::Error::other("the id maps were not written"));
            }
            // Root inside (host uid CONTAINER_ROOT), so exec keeps the namespace's capabilities.
            if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Asserts the client succeeded and returns its stdout.
fn cli_ok(args: &[&str]) -> String {
    let (code, stdout, stderr) = cli(args);
    assert_eq!(
        code, 0,
        "manhole-cli {args:?}: stdout {stdout:?} stderr {stderr:?}"
    );
    stdout
}

#[test]
fn a_demo_in_a_container_is_reached_by_its_host_pid() {
    require_namespaces!();
    let container = Container::start(Kind::Plain, "");
    let pid = container.pid();
    assert_ne!(container.host_pid, 1);
    // The socket lives in the container's private /tmp only.
    let inside = format!("/proc/{pid}/root/tmp/manhole-1");
    assert!(Path::new(&inside).exists());

    let requests = cli_ok(&[&pid, "get", "requests"]);
    assert!(
        requests.trim().parse::<u64>().is_ok(),
        "requests is a number: {requests:?}"
    );
    let threads = cli_ok(&[&pid, "threads", "--all"]);
    for needle in ["worker-0", "worker-3", "demo_worker_loop"] {
        assert!(threads.contains(needle), "{needle} missing: {threads}");
    }
    // The path form, with the host pid taken from /proc/<pid>/root.
    let info = cli_ok(&[&inside, "info"]);
    assert!(!info.is_empty());
    // The server saw a client from outside its PID namespace (pid 0) and let it in as root.
    let log = wait_until(|| {
        let log = container.stderr();
        log.contains("from pid 0 (outside this pid namespace)")
            .then_some(log)
    });
    assert!(log.is_some(), "server log: {}", container.stderr());

    let list = cli_ok(&["--list"]);
    let row = list
        .lines()
        .find(|line| line.split_whitespace().next() == Some(pid.as_str()))
        .unwrap_or_else(|| panic!("--list lacks host pid {pid}: {list}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields[1], "1", "the NSPID column: {list}");
    assert_eq!(fields.last(), Some(&inside.as_str()), "{list}");
    assert!(list.starts_with("PID "), "{list}");
    assert!(list.lines().next().unwrap().contains("NSPID"), "{list}");

    let json: serde_json::Value =
        serde_json::from_str(&cli_ok(&["--list", "--json"])).expect("--list --json is JSON");
    let entry = json
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["pid"] == container.host_pid)
        .unwrap_or_else(|| panic!("--list --json lacks {pid}: {json}"));
    assert_eq!(entry["ns_pid"], 1);
    assert_eq!(entry["path"], inside.as_str());
    assert_eq!(entry["alive"], true);
}

#[test]
fn a_custom_socket_path_in_a_container_works_and_is_hinted() {
    require_namespaces!();
    let container = Container::start(Kind::Plain, "--socket-path /tmp/app/manhole.sock");
    let pid = container.pid();
    let path = format!("/proc/{pid}/root/tmp/app/manhole.sock");
    let requests = cli_ok(&[&path, "get", "requests"]);
    assert!(requests.trim().parse::<u64>().is_ok(), "{requests:?}");
    // By pid alone: not at the default place, and the hint names the path that works.
    let (code, _, stderr) = cli(&[&pid, "get", "requests"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("in a container, where it is pid 1") && stderr.contains(&path),
        "{stderr}"
    );
}

#[test]
fn a_container_with_its_own_user_namespace_is_reached_as_its_user() {
    require_namespaces!();
    if !Path::new("/proc/self/uid_map").exists() {
        eprintln!("skipped: no user namespaces on this kernel");
        return;
    }
    let container = Container::start(Kind::UserNs, "");
    let pid = container.pid();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains(&format!("Uid:\t{CONTAINER_ROOT}\t{CONTAINER_ROOT}")),
        "{status}"
    );
    // The socket belongs to the container's root, which is uid 100000 here.
    let socket = format!("/proc/{pid}/root/tmp/manhole-1");
    assert_eq!(fs::metadata(&socket).unwrap().uid(), CONTAINER_ROOT);
    // Host root is not mapped in there (the server would see uid 65534 and refuse): the client
    // connects as the process's own user, and is admitted.
    let requests = cli_ok(&[&pid, "get", "requests"]);
    assert!(requests.trim().parse::<u64>().is_ok(), "{requests:?}");
    let threads = cli_ok(&[&pid, "threads", "worker-1"]);
    assert!(threads.contains("demo_worker_loop"), "{threads}");
    let list = cli_ok(&["--list"]);
    assert!(
        list.lines()
            .any(|line| line.starts_with(&format!("{pid} ")) && line.ends_with(&socket)),
        "{list}"
    );
}

#[test]
fn a_signal_activated_manhole_in_a_container_is_started_from_the_host() {
    require_namespaces!();
    let container = Container::start(Kind::Plain, "--activate-on USR2");
    let pid = container.pid();
    let socket = format!("/proc/{pid}/root/tmp/manhole-1");
    assert!(
        !Path::new(&socket).exists(),
        "not listening before the signal"
    );
    // The evidence names pid 1 (what the process sees) next to its socket in its /tmp; the
    // signal goes to the host pid.
    let requests = cli_ok(&["-s", "USR2", &pid, "get", "requests"]);
    assert!(requests.trim().parse::<u64>().is_ok(), "{requests:?}");
    assert!(Path::new(&socket).exists());
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(container.host_pid), None).is_ok(),
        "the demo survived its activation"
    );
}
