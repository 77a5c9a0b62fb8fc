//! Safe readers for the few `/proc/self` files the manhole needs.
//!
//! The `info` command reads the process as a whole ([`ProcessInfo`]), and the stack dump reads
//! each thread: its name and state before it is signalled, its signal masks (a thread that blocks
//! the dump signal, or already has it pending, is never signalled again), and for a thread that
//! does not answer its wait channel and `/proc/self/task/<tid>/syscall` line, which still gives a
//! program counter without any code running in that thread.
//!
//! Everything here is plain file reading and parsing: no `unsafe` (the dump's per-thread reads
//! go through nix's safe `openat`, see [`TaskDir`]), nothing that could disturb the process. A thread may exit between listing and reading, so every per-thread
//! reader returns an `io::Result` and callers treat `NotFound` (or `ESRCH`) as "exited".

#![deny(unsafe_code)]

use std::fs;
use std::io::{self, Read, Write};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use std::time::Duration;

/// How much more memory this process can take before a limit stops it, in bytes (`None`: no
/// limit of that kind is known).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Headroom {
    /// `RLIMIT_AS` minus `VmSize`: what new mappings (a mapped file included) may add.
    pub(crate) address_space: Option<u64>,
    /// The least of the cgroup's `memory.max` minus `memory.current` and the system's
    /// `MemAvailable`: what new resident memory may add.
    pub(crate) memory: Option<u64>,
}

/// Reads the limits that [`Headroom`] describes. Plain file reads and `getrlimit`.
pub(crate) fn memory_headroom() -> Headroom {
    let address_space = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_AS)
        .ok()
        .map(|(soft, _hard)| soft)
        .filter(|&soft| soft != nix::sys::resource::RLIM_INFINITY)
        .and_then(|soft| {
            let status = fs::read_to_string("/proc/self/status").ok()?;
            let used = kib_field(&status, "VmSize:")?;
            Some(soft.saturating_sub(used))
        });
    let cgroup = cgroup_memory_left();
    let available = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| kib_field(&meminfo, "MemAvailable:"));
    let memory = match (cgroup, available) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Headroom {
        address_space,
        memory,
    }
}

/// A `Key:   123 kB` field of a `/proc` file, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with(key))?;
    let kib: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `memory.max - memory.current` of this process's cgroup (v2 only; `None` without a limit).
fn cgroup_memory_left() -> Option<u64> {
    let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|line| line.strip_prefix("0::"))?;
    let dir = format!("/sys/fs/cgroup{}", path.trim_end_matches('/'));
    let max: u64 = fs::read_to_string(format!("{dir}/memory.max"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let current: u64 = fs::read_to_string(format!("{dir}/memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(max.saturating_sub(current))
}

/// The kernel's clock tick for `/proc` times (`USER_HZ`). It is 100 on every Linux architecture
/// that Rust supports; `sysconf(_SC_CLK_TCK)` returns the same constant.
const USER_HZ: u64 = 100;

/// Facts about the current process, as the `info` command shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Path of the executable (`/proc/self/exe`); empty if it cannot be read.
    pub exe: String,
    /// The command line, one entry per argument.
    pub cmdline: Vec<String>,
    /// Real user id.
    pub uid: u32,
    /// Effective user id.
    pub euid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective group id.
    pub egid: u32,
    /// How long the process has been running.
    pub uptime: Duration,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Number of threads.
    pub threads: usize,
    /// Number of open file descriptors.
    pub fds: usize,
}

impl ProcessInfo {
    /// Reads the current process's facts from `/proc/self`.
    ///
    /// Fails only when `/proc/self/stat` or `/proc/self/status` cannot be read (no `/proc`);
    /// the executable path and command line are best effort.
    pub fn read() -> io::Result<ProcessInfo> {
        let stat = Stat::parse(&fs::read_to_string("/proc/self/stat")?)?;
        let status = fs::read_to_string("/proc/self/status")?;
        let ids = |key: &str| -> io::Result<(u32, u32)> {
            let line = status_field(&status, key).ok_or_else(|| missing(key))?;
            let mut values = line.split_whitespace().map(str::parse::<u32>);
            match (values.next(), values.next()) {
                (Some(Ok(real)), Some(Ok(effective))) => Ok((real, effective)),
                _ => Err(invalid(key)),
            }
        };
        let (uid, euid) = ids("Uid")?;
        let (gid, egid) = ids("Gid")?;
        let rss_kib = status_field(&status, "VmRSS")
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let threads = status_field(&status, "Threads")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let exe = fs::read_link("/proc/self/exe")
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let cmdline = fs::read("/proc/self/cmdline")
            .map(|raw| {
                raw.split(|&b| b == 0)
                    .filter(|arg| !arg.is_empty())
                    .map(|arg| String::from_utf8_lossy(arg).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        Ok(ProcessInfo {
            pid: std::process::id(),
            ppid: stat.ppid,
            exe,
            cmdline,
            uid,
            euid,
            gid,
            egid,
            uptime: process_uptime(stat.start_ticks).unwrap_or_default(),
            rss_bytes: rss_kib * 1024,
            threads,
            fds: open_fd_count().unwrap_or(0),
        })
    }
}

/// When this process started: field 22 of `/proc/self/stat`, in clock ticks since boot (what
/// the activation evidence carries, so a reused pid cannot pass for this process).
pub(crate) fn own_start_ticks() -> io::Result<u64> {
    Ok(Stat::parse(&fs::read_to_string("/proc/self/stat")?)?.start_ticks)
}

/// Time since the process started: `/proc/uptime` minus the start time from `/proc/self/stat`.
fn process_uptime(start_ticks: u64) -> io::Result<Duration> {
    let uptime = fs::read_to_string("/proc/uptime")?;
    let system_secs: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| invalid("/proc/uptime"))?;
    let started_secs = start_ticks as f64 / USER_HZ as f64;
    Ok(Duration::from_secs_f64(
        (system_secs - started_secs).max(0.0),
    ))
}

/// Open descriptors, not counting the one used to list them.
fn open_fd_count() -> io::Result<usize> {
    let listed = fs::read_dir("/proc/self/fd")?
        .filter(|entry| entry.is_ok())
        .count();
    Ok(listed.saturating_sub(1))
}

/// The fields of a `stat` line we use. The name sits in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the *last* `)`.
struct Stat {
    name: String,
    state: char,
    ppid: u32,
    start_ticks: u64,
}

impl Stat {
    fn parse(line: &str) -> io::Result<Stat> {
        let open = line.find('(').ok_or_else(|| invalid("stat"))?;
        let close = line.rfind(')').ok_or_else(|| invalid("stat"))?;
        let name = line
            .get(open + 1..close)
            .ok_or_else(|| invalid("stat"))?
            .to_string();
        // Fields after the name, numbered from 3 as in proc_pid_stat(5).
        let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
        let field = |n: usize| rest.get(n - 3).copied().ok_or_else(|| invalid("stat"));
        let state = field(3)?.chars().next().ok_or_else(|| invalid("stat"))?;
        let ppid = field(4)?.parse().map_err(|_| invalid("stat"))?;
        let start_ticks = field(22)?.parse().map_err(|_| invalid("stat"))?;
        Ok(Stat {
            name,
            state,
            ppid,
            start_ticks,
        })
    }
}

/// The value of `Key:` in a `status` file, without the key.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("cannot parse {what} in /proc"),
    )
}

fn missing(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("no {what} line in /proc status"),
    )
}

fn task_path(tid: i32, file: &str) -> String {
    format!("/proc/self/task/{tid}/{file}")
}

/// The ids of every thread of the process, from `/proc/self/task`, in the kernel's order (the
/// main thread first).
pub fn thread_ids() -> io::Result<Vec<i32>> {
    let mut tids = Vec::new();
    for entry in fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        if let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// The thread's name (`comm`, at most 15 bytes; the main thread's is the program name).
pub fn thread_name(tid: i32) -> io::Result<String> {
    let comm = fs::read(task_path(tid, "comm"))?;
    let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
    Ok(String::from_utf8_lossy(comm).into_owned())
}

/// The scheduler state of a thread: the one-letter code of `ps` and `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThreadState(char);

impl ThreadState {
    /// A state from its letter (`R`, `S`, `D`, ...). Unknown letters are kept as they are.
    pub fn from_letter(letter: char) -> ThreadState {
        ThreadState(letter)
    }

    /// The letter, e.g. `S`.
    pub fn letter(self) -> char {
        self.0
    }

    /// The name, e.g. `sleeping` (as in `/proc/<pid>/status`), or `unknown`.
    pub fn name(self) -> &'static str {
        match self.0 {
            'R' => "running",
            'S' => "sleeping",
            'D' => "disk sleep",
            'T' => "stopped",
            't' => "tracing stop",
            'X' | 'x' => "dead",
            'Z' => "zombie",
            'P' => "parked",
            'I' => "idle",
            'W' => "waking",
            'K' => "wakekill",
            _ => "unknown",
        }
    }

    /// Whether the thread has exited and only its entry remains (`Z` or `X`).
    pub fn is_gone(self) -> bool {
        matches!(self.0, 'Z' | 'X' | 'x')
    }
}

/// The thread's name and state, read from its `stat` file in one go.
pub fn thread_stat(tid: i32) -> io::Result<(String, ThreadState)> {
    let stat = Stat::parse(&fs::read_to_string(task_path(tid, "stat"))?)?;
    Ok((stat.name, ThreadState(stat.state)))
}

/// The kernel function a sleeping thread waits in (`/proc/self/task/<tid>/wchan`), or `None`
/// when it is running, the kernel hides it, or it reads as `0`.
pub fn thread_wchan(tid: i32) -> io::Result<Option<String>> {
    let wchan = fs::read_to_string(task_path(tid, "wchan"))?;
    let wchan = wchan.trim();
    Ok(if wchan.is_empty() || wchan == "0" {
        None
    } else {
        Some(wchan.to_string())
    })
}

/// A thread's name, state and signal masks from `/proc/self/task/<tid>/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadStatus {
    /// The thread name (`Name:`).
    pub name: String,
    /// The scheduler state (`State:`).
    pub state: ThreadState,
    /// Signals the thread blocks (`SigBlk:`), bit `n - 1` for signal `n`.
    pub blocked: u64,
    /// Signals pending for this thread alone (`SigPnd:`), bit `n - 1` for signal `n`.
    pub pending: u64,
    /// When the thread started, in clock ticks after boot (`stat`'s field 22): with the tid,
    /// it names one thread even after its tid is reused. `None` when read from `status`,
    /// which does not show it.
    pub started: Option<u64>,
}

impl ThreadStatus {
    /// Whether the thread blocks `signal`.
    pub fn blocks(&self, signal: i32) -> bool {
        mask_has(self.blocked, signal)
    }

    /// Whether `signal` is already pending for the thread.
    pub fn has_pending(&self, signal: i32) -> bool {
        mask_has(self.pending, signal)
    }
}

fn mask_has(mask: u64, signal: i32) -> bool {
    (1..=64).contains(&signal) && mask & (1u64 << (signal - 1)) != 0
}

/// Reads a thread's name, state and signal masks.
pub fn thread_status(tid: i32) -> io::Result<ThreadStatus> {
    parse_status(&fs::read_to_string(task_path(tid, "status"))?)
}

/// `/proc/self/task` kept open for one pass over every thread, as a stack dump makes it: the
/// thread ids are listed from this one descriptor and each thread's `status` is opened relative
/// to it (`openat("<tid>/status")`, the path formatted on the stack) and read into one buffer
/// that is reused, so reading a thousand threads allocates nothing per thread but its name.
pub struct TaskDir {
    dir: fs::File,
    /// At least [`TASK_FILE_BUFFER`] bytes, zeroed once; the last file read is `..filled`.
    buffer: Vec<u8>,
    filled: usize,
}

/// Room for one `status` or `syscall` file in one read (`status` is about 1.5 KiB).
const TASK_FILE_BUFFER: usize = 8192;

impl TaskDir {
    /// Opens `/proc/self/task`.
    pub fn open() -> io::Result<TaskDir> {
        // std opens with O_CLOEXEC; a directory opens read-only like any file.
        let dir = fs::File::open("/proc/self/task")?;
        Ok(TaskDir {
            dir,
            buffer: vec![0; TASK_FILE_BUFFER],
            filled: 0,
        })
    }

    /// The ids of every thread, in the kernel's order (the main thread first).
    pub fn thread_ids(&self) -> io::Result<Vec<i32>> {
        thread_ids()
    }

    /// A thread's name, state and signal masks, as [`thread_status`] reads them.
    pub fn status(&mut self, tid: i32) -> io::Result<ThreadStatus> {
        self.read(tid, "status")?;
        let status = &self.buffer[..self.filled];
        match std::str::from_utf8(status) {
            Ok(status) => parse_status(status),
            // A thread name is any bytes but NUL and `/`.
            Err(_) => parse_status(&String::from_utf8_lossy(status)),
        }
    }

    /// As [`TaskDir::status`], for a caller that cares about signals 1 to 31 only (the dump
    /// signals, SIGURG and SIGWINCH, are): read from `stat` rather than `status`, which the
    /// kernel makes in about half the time (9.5 against 17 µs a thread, measured on 1,000 threads)
    /// and which a dump reads for every thread. Its masks hold only signals 1 to 31 (`stat`'s
    /// legacy fields); its name is escaped as `status` escapes it.
    pub fn status_low_signals(&mut self, tid: i32) -> io::Result<ThreadStatus> {
        self.read(tid, "stat")?;
        stat_status_from(&self.buffer[..self.filled])
    }

    /// Where a thread is blocked, as [`thread_syscall`] reads it.
    pub fn syscall(&mut self, tid: i32) -> io::Result<SyscallState> {
        self.read(tid, "syscall")?;
        syscall_from(&self.buffer[..self.filled])
    }

    /// Reads `<tid>/<file>` (`stat`, `syscall`) into `into` with one read and nothing
    /// allocated, for [`stat_status_from`] and [`syscall_from`] to parse later, perhaps on
    /// another thread: the bytes read. Takes `&self`: other threads may read through the same
    /// directory at once. Fails, as for a thread that has exited, when the file does not fit.
    pub(crate) fn read_into(&self, tid: i32, file: &str, into: &mut [u8]) -> io::Result<usize> {
        let read = self.open_file(tid, file)?.read(into)?;
        if read == into.len() {
            return Err(invalid(file));
        }
        Ok(read)
    }

    /// Opens `<tid>/<file>` relative to the directory, the path formatted on the stack.
    fn open_file(&self, tid: i32, file: &str) -> io::Result<fs::File> {
        let mut path = [0u8; 32];
        let mut cursor = io::Cursor::new(&mut path[..]);
        write!(cursor, "{tid}/{file}").map_err(|_| invalid("tid"))?;
        let end = cursor.position() as usize;
        let file = openat(
            &self.dir,
            &path[..end],
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(fs::File::from(file))
    }

    /// Reads `<tid>/<file>` into the reused buffer.
    fn read(&mut self, tid: i32, file: &str) -> io::Result<()> {
        let mut file = self.open_file(tid, file)?;
        // One read: both files are made whole by one `show` of the kernel (`single_open`), so a
        // read with room to spare returns all of it, and the read that would return 0 is saved
        // (a dump reads two files per thread). A full buffer reads on to the end.
        self.filled = file.read(&mut self.buffer[..TASK_FILE_BUFFER])?;
        if self.filled == TASK_FILE_BUFFER {
            self.buffer.truncate(TASK_FILE_BUFFER);
            file.read_to_end(&mut self.buffer)?;
            self.filled = self.buffer.len();
        }
        Ok(())
    }
}

/// [`TaskDir::status_low_signals`] of a `stat` file's bytes read before ([`TaskDir::read_into`]).
pub(crate) fn stat_status_from(bytes: &[u8]) -> io::Result<ThreadStatus> {
    parse_stat_status(&String::from_utf8_lossy(bytes))
}

/// [`TaskDir::syscall`] of a `syscall` file's bytes read before ([`TaskDir::read_into`]).
pub(crate) fn syscall_from(bytes: &[u8]) -> io::Result<SyscallState> {
    parse_syscall(std::str::from_utf8(bytes).map_err(|_| invalid("syscall"))?)
}

/// How many times the thread has been put on a CPU, from a `schedstat` file's bytes
/// (`<run time> <wait time> <times run>`, see sched-stats in the kernel docs): it grows each
/// time the thread is scheduled in, so an unchanged count proves the thread has not run.
/// `None` for a kernel without scheduler statistics (which prints zeros).
pub(crate) fn schedstat_runs(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    // The run time may still read 0 for a thread that has just started: the count alone says
    // whether the kernel keeps the statistics (a running thread has been put on a CPU).
    let runs: u64 = text.split_ascii_whitespace().nth(2)?.parse().ok()?;
    (runs > 0).then_some(runs)
}

/// The state letter of a `stat` file's bytes (after the name, which ends at the last `)`),
/// found without allocating.
pub(crate) fn stat_state_letter(bytes: &[u8]) -> Option<u8> {
    let close = bytes.iter().rposition(|&b| b == b')')?;
    bytes
        .get(close + 1..)?
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace())
}

/// A [`ThreadStatus`] from `/proc/.../stat`: `pid (comm) state` and then space-separated
/// fields, of which the 31st and 32nd of the line are the pending and blocked signals 1 to 31,
/// in decimal (proc_pid_stat(5)). The name may hold spaces and parentheses: it ends at the
/// last `)`.
fn parse_stat_status(stat: &str) -> io::Result<ThreadStatus> {
    let open = stat.find('(').ok_or_else(|| invalid("stat"))?;
    let close = stat.rfind(')').ok_or_else(|| invalid("stat"))?;
    let name = stat.get(open + 1..close).ok_or_else(|| invalid("stat"))?;
    // Fields from the state on: the state is field 3, so field n is at index n - 3.
    let fields: Vec<&str> = stat
        .get(close + 1..)
        .unwrap_or_default()
        .split_ascii_whitespace()
        .collect();
    let field = |n: usize| -> io::Result<&str> {
        fields.get(n - 3).copied().ok_or_else(|| invalid("stat"))
    };
    let mask = |n: usize| -> io::Result<u64> { field(n)?.parse().map_err(|_| invalid("stat")) };
    Ok(ThreadStatus {
        name: escape_like_status(name),
        state: ThreadState(field(3)?.chars().next().unwrap_or('?')),
        blocked: mask(32)?,
        pending: mask(31)?,
        started: field(22)?.parse().ok(),
    })
}

/// A raw thread name (`stat`, `comm`) as `status` shows it: the kernel escapes `\\` and the
/// whitespace controls there (`ESCAPE_SPACE | ESCAPE_SPECIAL`), so a name can never break a line.
fn escape_like_status(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\t' => escaped.push_str("\\t"),
            '\r' => escaped.push_str("\\r"),
            '\x0b' => escaped.push_str("\\v"),
            '\x0c' => escaped.push_str("\\f"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn parse_status(status: &str) -> io::Result<ThreadStatus> {
    let mask = |key: &str| -> io::Result<u64> {
        let value = status_field(status, key).ok_or_else(|| missing(key))?;
        u64::from_str_radix(value, 16).map_err(|_| invalid(key))
    };
    let name = status_field(status, "Name").unwrap_or_default().to_string();
    let state = status_field(status, "State")
        .and_then(|s| s.chars().next())
        .unwrap_or('?');
    Ok(ThreadStatus {
        name,
        state: ThreadState(state),
        blocked: mask("SigBlk")?,
        pending: mask("SigPnd")?,
        started: None,
    })
}

/// What `/proc/self/task/<tid>/syscall` says about a thread (see proc_pid_syscall(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallState {
    /// The thread is running on a CPU; no registers are available.
    Running,
    /// The thread is blocked but not in a system call (e.g. a page fault); its user stack
    /// pointer and program counter.
    Blocked {
        /// User stack pointer.
        sp: u64,
        /// User program counter.
        pc: u64,
    },
    /// The thread is blocked in system call `nr`.
    InSyscall {
        /// System call number.
        nr: i64,
        /// The six argument registers.
        args: [u64; 6],
        /// User stack pointer.
        sp: u64,
        /// User program counter (just after the system call instruction).
        pc: u64,
    },
}

impl SyscallState {
    /// The user program counter, when the thread is not running.
    pub fn pc(&self) -> Option<u64> {
        match *self {
            SyscallState::Running => None,
            SyscallState::Blocked { pc, .. } | SyscallState::InSyscall { pc, .. } => Some(pc),
        }
    }

    /// The user stack pointer, when the thread is not running.
    pub fn sp(&self) -> Option<u64> {
        match *self {
            SyscallState::Running => None,
            SyscallState::Blocked { sp, .. } | SyscallState::InSyscall { sp, .. } => Some(sp),
        }
    }
}

/// Reads where a thread is blocked. Same-process access passes the kernel's ptrace-mode check,
/// so this works without any privilege.
pub fn thread_syscall(tid: i32) -> io::Result<SyscallState> {
    parse_syscall(&fs::read_to_string(task_path(tid, "syscall"))?)
}

fn parse_syscall(line: &str) -> io::Result<SyscallState> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let hex = |w: &str| {
        u64::from_str_radix(w.trim_start_matches("0x"), 16).map_err(|_| invalid("syscall"))
    };
    match words.as_slice() {
        ["running"] => Ok(SyscallState::Running),
        [nr, sp, pc] if *nr == "-1" => Ok(SyscallState::Blocked {
            sp: hex(sp)?,
            pc: hex(pc)?,
        }),
        [nr, a0, a1, a2, a3, a4, a5, sp, pc] => Ok(SyscallState::InSyscall {
            nr: nr.parse().map_err(|_| invalid("syscall"))?,
            args: [hex(a0)?, hex(a1)?, hex(a2)?, hex(a3)?, hex(a4)?, hex(a5)?],
            sp: hex(sp)?,
            pc: hex(pc)?,
        }),
        _ => Err(invalid("syscall")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_name_may_hold_parentheses_and_spaces() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 7 0 123456 1 2";
        let stat = Stat::parse(line).unwrap();
        assert_eq!(stat.name, "a (b) c");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.start_ticks, 123456);
    }

    #[test]
    fn schedstat_runs_is_the_third_field_and_zeros_mean_no_statistics() {
        assert_eq!(schedstat_runs(b"39300692 3879322 115\n"), Some(115));
        assert_eq!(schedstat_runs(b"0 0 0\n"), None);
        assert_eq!(schedstat_runs(b"0 14094 1\n"), Some(1));
        assert_eq!(schedstat_runs(b"12 3\n"), None);
        // This thread has run, and the kernel counts it.
        let own = std::fs::read("/proc/thread-self/schedstat").unwrap();
        assert!(schedstat_runs(&own).is_some(), "{own:?}");
    }

    #[test]
    fn syscall_lines_of_all_three_shapes() {
        assert_eq!(parse_syscall("running\n").unwrap(), SyscallState::Running);
        assert_eq!(
            parse_syscall("-1 0x7ffc0 0x401000\n").unwrap(),
            SyscallState::Blocked {
                sp: 0x7ffc0,
                pc: 0x401000
            }
        );
        let line = "202 0x7f00 0x80 0x0 0x0 0x0 0x0 0x7ffd10 0x7f1234\n";
        match parse_syscall(line).unwrap() {
            SyscallState::InSyscall { nr, args, sp, pc } => {
                assert_eq!((nr, args[1], sp, pc), (202, 0x80, 0x7ffd10, 0x7f1234));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn status_masks_are_hex_bits_per_signal() {
        let status = "Name:\tworker\nState:\tS (sleeping)\nSigPnd:\t0000000000000000\nShdPnd:\t0\n\
                      SigBlk:\t0000000200000000\n";
        let parsed = parse_status(status).unwrap();
        assert_eq!(parsed.name, "worker");
        assert_eq!(parsed.state.name(), "sleeping");
        assert!(parsed.blocks(34));
        assert!(!parsed.blocks(35) && !parsed.has_pending(34));
    }

    #[test]
    fn stat_gives_the_low_signal_masks_that_status_gives() {
        // A thread that blocks SIGURG and SIGWINCH, with SIGURG pending for it alone.
        let (ready, tid) = std::sync::mpsc::channel();
        let (checked, release) = std::sync::mpsc::channel::<()>();
        let blocker = std::thread::spawn(move || {
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(nix::sys::signal::Signal::SIGURG);
            set.add(nix::sys::signal::Signal::SIGWINCH);
            set.thread_block().unwrap();
            // raise() sends to the calling thread, which blocks the signal: it stays pending.
            nix::sys::signal::raise(nix::sys::signal::Signal::SIGURG).unwrap();
            ready.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = release.recv();
            // Leaves the pending SIGURG to the thread's exit (its default action is to ignore it).
        });
        let tid = tid.recv().unwrap();
        let mut tasks = TaskDir::open().unwrap();
        let full = tasks.status(tid).unwrap();
        let low = tasks.status_low_signals(tid).unwrap();
        checked.send(()).unwrap();
        blocker.join().unwrap();
        assert_eq!(low.name, full.name);
        assert_eq!(low.state.letter(), full.state.letter());
        assert_eq!(low.blocked, full.blocked & 0x7fff_ffff);
        assert_eq!(low.pending, full.pending & 0x7fff_ffff);
        assert!(low.blocks(libc::SIGURG) && low.blocks(libc::SIGWINCH));
        assert!(low.has_pending(libc::SIGURG) && !low.has_pending(libc::SIGWINCH));
        let line = "7 (a (b) c) S 1 2 3 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 6 7 8 9 10 11 12 13 4194304 2048 0 0";
        let parsed = parse_stat_status(line).unwrap();
        assert_eq!(
            (parsed.name.as_str(), parsed.pending),
            ("a (b) c", 4_194_304)
        );
        assert!(parsed.has_pending(libc::SIGURG) && parsed.blocks(12));
        assert_eq!(parsed.started, Some(5));
        assert!(low.started.is_some() && full.started.is_none());
        let odd = parse_stat_status(
            "8 (a\nb\\c) S 1 2 3 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 6 7 8 9 10 11 12 13 0 0",
        )
        .unwrap();
        assert_eq!(odd.name, "a\\nb\\\\c");
    }

    #[test]
    fn reads_this_process() {
        let info = ProcessInfo::read().unwrap();
        assert_eq!(info.pid, std::process::id());
        assert!(info.threads >= 1 && info.fds >= 3 && info.rss_bytes > 0);
        let me = nix::unistd::gettid().as_raw();
        assert!(thread_ids().unwrap().contains(&me));
        assert_eq!(thread_stat(me).unwrap().1.letter(), 'R');
        assert!(thread_status(me).is_ok());
        let mut tasks = TaskDir::open().unwrap();
        assert!(tasks.thread_ids().unwrap().contains(&me));
        assert_eq!(tasks.status(me).unwrap(), thread_status(me).unwrap());
        assert!(tasks.status(i32::MAX).is_err());
        // A parked thread is in a system call, with its stack pointer.
        let (parked, release) = std::sync::mpsc::channel::<()>();
        let (ready, tid) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            ready.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = release.recv();
        });
        let tid = tid.recv().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while thread_stat(tid).unwrap().1.letter() != 'S' && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        let state = tasks.syscall(tid).unwrap();
        assert!(state.sp().is_some_and(|sp| sp != 0), "{state:?}");
        assert_eq!(state, thread_syscall(tid).unwrap());
        drop(parked);
        waiter.join().unwrap();
    }
}
