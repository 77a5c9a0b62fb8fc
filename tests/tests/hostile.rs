//! Bad input and hostile clients: each case ends with the process alive, other sessions
//! unaffected, and no file descriptor or thread left behind.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use manhole_e2e::{App, Client};

/// The signals the process ignores (`SigIgn` in `/proc/<pid>/status`).
fn ignored_signals(app: &App) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", app.pid())).unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .expect("SigIgn in /proc/<pid>/status");
    u64::from_str_radix(mask.trim(), 16).unwrap()
}

const SIGPIPE_BIT: u64 = 1 << (libc::SIGPIPE - 1);

/// Runs `attack`, then checks the process survived, a new session works, and the sessions'
/// threads and descriptors are gone again.
fn survives(app: &mut App, attack: impl FnOnce(&App)) {
    let fds_before = app.fd_count();
    let threads_before = app.thread_names().len();
    let ignored_before = ignored_signals(app);
    attack(app);
    assert!(app.alive(), "the process died: {:?}", app.wait_exit());
    assert_eq!(
        ignored_signals(app),
        ignored_before,
        "the manhole changed which signals the process ignores"
    );
    app.wait_sessions_gone();
    let mut c = Client::connect(app.socket()).expect("connect after the attack");
    c.skip_greeting();
    assert_eq!(c.command("echo alive").trim(), "alive");
    drop(c);
    app.wait_sessions_gone();
    assert_eq!(app.fd_count(), fds_before, "file descriptors leaked");
    // The stderr pump ends a moment after the last session detaches.
    let settled =
        manhole_e2e::wait_until(|| (app.thread_names().len() == threads_before).then_some(()));
    assert!(
        settled.is_some(),
        "threads leaked: {threads_before} before, now {:?}",
        app.thread_names()
    );
}

#[test]
fn garbage_input_gets_one_line_errors_and_the_session_goes_on() {
    let mut app = App::demo(&[]);
    survives(&mut app, |app| {
        let mut c = Client::connect(app.socket()).unwrap();
        c.skip_greeting();
        // A megabyte without a newline, then the newline.
        c.send_raw(&vec![b'a'; 1 << 20]).unwrap();
        c.send_raw(b"\n").unwrap();
        assert!(
            c.read_prompt()
                .starts_with("error: line longer than 65536 bytes")
        );
        // NUL bytes, invalid UTF-8 and telnet negotiation are cleaned, never fatal.
        c.send_raw(b"echo a\0b\n").unwrap();
        assert_eq!(c.read_prompt().trim(), "a b");
        c.send_raw(b"echo \xff\xfd\x18\xc3\x28ok\r\n").unwrap();
        assert_eq!(c.read_prompt().trim(), "\u{fffd}(ok");
        c.send_raw(b"\xfe\xfe\xfe\n").unwrap();
        let answer = c.read_prompt();
        assert!(answer.starts_with("error: unknown command"), "{answer:?}");
        assert_eq!(c.command("echo fine").trim(), "fine");
    });
}

#[test]
fn ten_thousand_pipelined_commands_are_all_answered_in_order() {
    let mut app = App::demo(&[]);
    survives(&mut app, |app| {
        let mut stream = UnixStream::connect(app.socket()).unwrap();
        let mut batch = String::from("exec\n");
        for i in 0..10_000 {
            batch.push_str(&format!("echo {i}\n"));
        }
        let writer = {
            let mut stream = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                stream.write_all(batch.as_bytes()).unwrap();
                stream.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        stream.set_read_timeout(Some(manhole_e2e::TIMEOUT)).unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        writer.join().unwrap();
        let frames: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(frames.len(), 10_001);
        for (i, frame) in frames[1..].iter().enumerate() {
            assert_eq!(frame["text"], i.to_string());
        }
    });
}

#[test]
fn clients_vanishing_in_the_middle_of_a_big_dump_do_not_hurt_the_process() {
    // SIGPIPE kills this demo, and its manhole threads do not block it.
    let mut app = App::demo(&["--extra-threads", "300", "--sigpipe-default"]);
    assert_eq!(ignored_signals(&app) & SIGPIPE_BIT, 0);
    survives(&mut app, |app| {
        // The greeting groups the 300 idle threads into a few lines: the big dump is
        // `threads --full`, and each client leaves while it is being written.
        for _ in 0..20 {
            let mut c = Client::connect(app.socket()).unwrap();
            c.skip_greeting();
            c.send("threads --full");
            c.read_until("Thread ");
            drop(c);
        }
        // And one that asks for a dump and leaves before reading it.
        let mut c = Client::connect(app.socket()).unwrap();
        c.skip_greeting();
        c.send("threads --full");
        drop(c);
    });
}

#[test]
fn a_client_that_never_reads_is_dropped_after_the_write_timeout() {
    let mut app = App::demo(&["--write-timeout-ms", "300", "--sigpipe-default"]);
    survives(&mut app, |app| {
        let mut bystander = Client::connect(app.socket()).unwrap();
        bystander.skip_greeting();
        let mut stuck = UnixStream::connect(app.socket()).unwrap();
        stuck
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // Ask for big answers and never read: the socket buffer fills and the server's send
        // times out.
        let big = format!("echo {}\n", "x".repeat(60_000));
        for _ in 0..200 {
            if stuck.write_all(big.as_bytes()).is_err() {
                break;
            }
        }
        app.wait_for_stderr("the client stopped reading");
        assert_eq!(bystander.command("echo unaffected").trim(), "unaffected");
    });
}

/// The time of the process's first log line containing `needle`
/// (`Manhole[pid:2026-12-02T07:40:33.123Z]: ...`), in seconds since the start of the month.
fn log_time(stderr: &str, needle: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no log line with {needle:?} in {stderr:?}"));
    let stamp = line
        .split_once(':')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(stamp, _)| stamp)
        .unwrap_or_else(|| panic!("no time stamp in {line:?}"));
    let (date, time) = stamp.trim_end_matches('Z').split_once('T').unwrap();
    let day: f64 = date.rsplit('-').next().unwrap().parse().unwrap();
    let hms: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    day * 86_400.0 + hms[0] * 3600.0 + hms[1] * 60.0 + hms[2]
}

#[test]
fn a_client_that_stops_reading_a_big_dump_is_dropped_after_one_write_timeout_not_two() {
    // The full dump of 300 more threads (`threads --full`; the greeting groups them into a few
    // lines) is far bigger than the socket buffer. A blocking send with SO_SNDTIMEO used to wait
    // the timeout twice: once in the send that filled the buffer (which then returned what it
    // had copied), once more in the next send.
    let mut app = App::demo(&["--write-timeout-ms", "2000", "--extra-threads", "300"]);
    survives(&mut app, |app| {
        // A first session reads its whole greeting, so the symbolizer is warm and the stuck
        // session's dump takes milliseconds, not the cold symbolization's second on a loaded
        // machine: the gap below is then almost all write timeout.
        let mut warm = Client::connect(app.socket()).unwrap();
        warm.skip_greeting();
        drop(warm);
        let mut stuck = UnixStream::connect(app.socket()).unwrap();
        stuck.write_all(b"threads --full\n").unwrap();
        let stderr = app.wait_for_stderr("the client stopped reading");
        let waited = log_time(&stderr, "the client stopped reading")
            - log_time(&stderr, "Accepted session 2 ");
        assert!(
            (1.9..3.5).contains(&waited),
            "the session gave up {waited:.2} s after it was accepted, write timeout 2 s"
        );
        drop(stuck);
    });
}

#[test]
fn a_silent_client_is_closed_after_the_idle_timeout() {
    let mut app = App::demo(&["--idle-timeout-ms", "300"]);
    survives(&mut app, |app| {
        let mut silent = Client::connect(app.socket()).unwrap();
        silent.skip_greeting();
        assert!(silent.read_to_end().contains("manhole: idle for too long"));
        app.wait_for_stderr("idle timeout");
    });
}

#[test]
fn two_hundred_connections_at_once_respect_the_cap_and_the_rest_are_served_afterwards() {
    let mut app = App::demo(&[]);
    survives(&mut app, |app| {
        let mut streams: Vec<UnixStream> = (0..200)
            .map(|_| UnixStream::connect(app.socket()).unwrap())
            .collect();
        let mut first_lines = Vec::new();
        for stream in &mut streams {
            stream.set_read_timeout(Some(manhole_e2e::TIMEOUT)).unwrap();
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).unwrap();
            first_lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let refused = first_lines
            .iter()
            .filter(|l| l.starts_with("manhole: too many sessions"))
            .count();
        let served = first_lines
            .iter()
            .filter(|l| l.starts_with("Manhole "))
            .count();
        assert_eq!(served, 8, "{first_lines:?}");
        assert_eq!(refused, 192);
        drop(streams);
    });
}
