//! What a dump costs the host's memory, end to end: the anonymous memory a host keeps after a
//! session that dumped (a raw client and `manhole-cli`, on the demo and on `bare`), and a host
//! under a tight `RLIMIT_AS` that answers `threads` without symbols, saying why, instead of
//! being aborted by a failed allocation.

use manhole_e2e::{App, Client, run_cli, wait_for_socket, wait_until};

/// What a session that dumped may leave behind (issue 12: at most 2 MiB).
const RETAINED_LIMIT_KIB: u64 = 2 * 1024;

/// The process's anonymous memory (`Anonymous` of `/proc/PID/smaps_rollup`), in KiB.
fn anonymous_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("an Anonymous line")
}

/// A raw client (a plain unix socket, as socat or nc): the greeting, one `threads`, then gone.
fn raw_session(app: &App) {
    let mut client = Client::connect(app.socket()).expect("connect");
    let greeting = client.skip_greeting();
    assert!(greeting.contains("Threads: "), "{greeting}");
    let threads = client.command("threads");
    assert!(threads.contains("Threads: "), "{threads}");
}

/// `manhole-cli SOCKET threads`.
fn cli_session(app: &App) {
    let socket = app.socket().display().to_string();
    let (code, out, err) = run_cli(&[&socket, "threads"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Threads: "), "{out}");
}

/// Runs `session` twice on `app` and checks what each left behind once it ended.
fn retained_after_sessions(app: &App, what: &str, session: fn(&App)) {
    for round in 1..=2 {
        let before = anonymous_kib(app.pid());
        session(app);
        app.wait_sessions_gone();
        // The caches stay a few seconds after the last session (stackdump::CACHE_GRACE), then
        // they are dropped and the heap trimmed.
        let mut after = anonymous_kib(app.pid());
        wait_until(|| {
            after = anonymous_kib(app.pid());
            (after.saturating_sub(before) <= RETAINED_LIMIT_KIB).then_some(())
        });
        let kept = after.saturating_sub(before);
        println!("{what}, session {round}: anonymous {before} -> {after} KiB (+{kept} KiB)");
        assert!(
            kept <= RETAINED_LIMIT_KIB,
            "{what}, session {round}: the host kept {kept} KiB more anonymous memory \
             ({before} -> {after} KiB)"
        );
    }
}

#[test]
fn the_demo_gives_back_what_a_raw_session_and_a_cli_session_took() {
    let app = App::demo(&[]);
    retained_after_sessions(&app, "demo, raw client", raw_session);
    retained_after_sessions(&app, "demo, manhole-cli", cli_session);
}

#[test]
fn bare_gives_back_what_a_raw_session_and_a_cli_session_took() {
    let app = manhole_e2e::bare(Some(""), &[]);
    wait_for_socket(app.socket());
    retained_after_sessions(&app, "bare, raw client", raw_session);
    retained_after_sessions(&app, "bare, manhole-cli", cli_session);
}

/// `VmSize` of process `pid`, in bytes.
fn vm_size(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("a VmSize line");
    kib * 1024
}

#[test]
fn a_host_under_a_tight_address_space_limit_answers_without_symbols_and_says_why() {
    let mut app = App::demo(&[]);
    // The demo's threads make their malloc arenas (64 MiB of address space each) when they
    // first allocate, at any time: a limit computed before one of them would lie below the
    // process's size once it is set. So the limit is set again until the size it was computed
    // from is still the size after it was set.
    let mut size = vm_size(app.pid());
    loop {
        let limit = size + (30 << 20);
        let rlimit = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: prlimit on our own child with a valid new limit and no old-limit pointer.
        let rc = unsafe {
            libc::prlimit(
                app.pid() as libc::pid_t,
                libc::RLIMIT_AS,
                &rlimit,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
        let now = vm_size(app.pid());
        if now <= size {
            break;
        }
        size = now;
    }
    let socket = app.socket().display().to_string();
    let (code, out, err) = run_cli(&[&socket, "threads"]);
    assert!(app.alive(), "the host died: {out}{err}{}", app.stderr());
    assert_eq!(code, 0, "{out}{err}{}", app.stderr());
    assert!(out.contains("Threads: "), "{out}");
    let note = out
        .lines()
        .find(|l| l.starts_with("Note: no symbols for") && l.contains("RLIMIT_AS"))
        .unwrap_or_else(|| panic!("no note on the missing symbols:\n{out}"));
    println!("{note}");
    // Frames still locate themselves: module + offset.
    assert!(out.contains("demo+0x"), "{out}");
    // And the host goes on serving.
    let (code, out, err) = run_cli(&[&socket, "threads"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(app.alive());
}
