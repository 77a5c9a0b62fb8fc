//! A session as an operator sees it: banner, every thread's backtrace, each command, bad input,
//! half-close, many sessions, and the exec framing. Each test starts its own `demo` process.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use manhole_e2e::{App, Client, DumpSection, TempDir, dump_sections};
use serde_json::Value;

fn session(app: &App) -> (Client, String) {
    let mut client = Client::connect(app.socket()).expect("connect to the demo");
    let greeting = client.skip_greeting();
    (client, greeting)
}

#[test]
fn greeting_names_the_process_and_dumps_every_worker() {
    let app = App::demo(&[]);
    assert_eq!(
        app.socket(),
        std::path::Path::new(&format!("/tmp/manhole-{}", app.pid()))
    );
    let (mut client, greeting) = session(&app);
    let first = greeting.lines().next().unwrap();
    assert!(first.starts_with("Manhole "), "{first}");
    assert!(first.contains(&format!("pid {}", app.pid())), "{first}");
    assert!(first.contains("demo"), "{first}");
    // The workers share one stack, so they are one group (two if one was caught running):
    // every worker is counted, and each group shows the workers' loop.
    let sections = dump_sections(&greeting);
    let workers: Vec<&DumpSection> = sections
        .iter()
        .filter(|s| s.header.contains("\"worker-"))
        .collect();
    assert_eq!(
        workers.iter().map(|s| s.count).sum::<usize>(),
        4,
        "{greeting}"
    );
    assert!(workers.len() < 4, "the workers are grouped:\n{greeting}");
    for section in &workers {
        assert!(
            section.body.contains("demo_worker_loop"),
            "a worker group without its demo_worker_loop frame:\n{greeting}"
        );
    }
    // Each thread on its own, on request.
    let each = client.command("threads --all");
    for i in 0..4 {
        let section = dump_sections(&each)
            .into_iter()
            .find(|s| s.header.contains(&format!("\"worker-{i}\"")))
            .unwrap_or_else(|| panic!("no worker-{i} in {each}"));
        assert_eq!(section.count, 1);
        assert!(
            section.body.contains("demo_worker_loop"),
            "worker-{i} has no demo_worker_loop frame:\n{each}"
        );
    }
    // Manhole thread names fit the kernel's 15 bytes, so the dump shows them whole.
    assert!(
        greeting.contains("\"mh-session-1\" (R running) [self]"),
        "the session's own thread is listed:\n{greeting}"
    );
}

#[test]
fn each_command_answers() {
    let app = App::demo(&[]);
    let (mut c, _) = session(&app);
    let help = c.command("help");
    for word in [
        "threads",
        "locals",
        "get NAME",
        "set NAME VALUE",
        "info",
        "exit",
        "echo",
    ] {
        assert!(help.contains(word), "help lacks {word}: {help}");
    }
    let locals = c.command("locals");
    for line in ["requests", "config", "log_filter", "echo"] {
        assert!(locals.contains(line), "locals lacks {line}: {locals}");
    }
    assert!(
        locals
            .lines()
            .any(|l| l.starts_with("log_filter") && l.contains("settable")),
        "{locals}"
    );
    assert!(
        locals
            .lines()
            .any(|l| l.starts_with("requests") && l.contains("read-only")),
        "{locals}"
    );
    let requests: u64 = c.command("get requests").trim().parse().expect("a number");
    let later: u64 = manhole_e2e::wait_until(|| {
        let n: u64 = c
            .command("requests")
            .trim()
            .parse()
            .expect("a bare name reads the value");
        (n > requests).then_some(n)
    })
    .expect("the workers keep counting");
    assert!(later > requests);
    let config = c.command("get config");
    assert!(
        config.contains("Config {") && config.contains("workers: 4"),
        "{config}"
    );
    assert_eq!(c.command("get log_filter").trim(), "info");
    assert_eq!(
        c.command("set log_filter debug").trim(),
        "log_filter: info -> debug"
    );
    // From here the demo's DEBUG lines reach the session too (its stderr is mirrored live), so
    // an answer is the last line of what arrives; the filter goes back to info at once.
    let last_line = |text: String| text.trim().lines().last().unwrap_or("").to_string();
    assert_eq!(last_line(c.command("log_filter")), "debug");
    assert_eq!(
        last_line(c.command("set log_filter info")),
        "log_filter: debug -> info"
    );
    assert_eq!(last_line(c.command("echo hello  world")), "hello world");
    let info = c.command("info");
    assert!(info.contains(&format!("pid {}", app.pid())), "{info}");
    for field in ["executable", "uptime", "rss", "threads", "open fds"] {
        assert!(info.contains(field), "info lacks {field}: {info}");
    }
    let one = c.command("threads worker-2");
    assert!(
        one.contains("\"worker-2\"") && !one.contains("\"worker-1\""),
        "{one}"
    );
    assert!(one.contains("demo_worker_loop"), "{one}");
    assert_eq!(c.command("bt worker-3").matches("Thread ").count(), 1);
    c.send("exit");
    assert_eq!(c.read_to_end(), "");
}

#[test]
fn bad_input_gets_one_error_line_and_the_session_goes_on() {
    let app = App::demo(&[]);
    let (mut c, _) = session(&app);
    let cases = [
        ("frobnicate", "error: unknown command \"frobnicate\""),
        ("get", "error: usage: get NAME"),
        ("get nosuch", "error: no local named \"nosuch\""),
        ("set requests 5", "error: requests is read-only"),
        ("set log_filter", "error: usage: set NAME VALUE"),
        ("set nosuch 1", "error: no local named \"nosuch\""),
        ("format yaml", "error: usage: format json|text"),
        ("requests 5", "error: requests is a value"),
    ];
    for (line, expected) in cases {
        let answer = c.command(line);
        assert!(answer.starts_with(expected), "{line:?} answered {answer:?}");
        assert_eq!(
            answer.trim_end().lines().count(),
            1,
            "{line:?} answered {answer:?}"
        );
    }
    // Telnet-style line endings and a line that is too long.
    c.send_raw(b"echo crlf\r\n").unwrap();
    assert_eq!(c.read_prompt().trim(), "crlf");
    c.send_raw(&vec![b'x'; 70 * 1024]).unwrap();
    c.send_raw(b"\n").unwrap();
    let answer = c.read_prompt();
    assert!(answer.starts_with("error: line longer than"), "{answer:?}");
    assert_eq!(c.command("echo still here").trim(), "still here");
}

#[test]
fn json_format_answers_frames() {
    let app = App::demo(&[]);
    let (mut c, _) = session(&app);
    c.command("format json");
    let frame: Value = serde_json::from_str(c.command("get requests").trim()).unwrap();
    assert_eq!(frame["ok"], true);
    assert_eq!(frame["data"]["name"], "requests");
    assert_eq!(frame["data"]["type"], "AtomicU64");
    let bad: Value = serde_json::from_str(c.command("get nosuch").trim()).unwrap();
    assert_eq!(bad["ok"], false);
    assert!(bad["error"].as_str().unwrap().contains("nosuch"));
    let dump: Value = serde_json::from_str(c.command("threads").trim()).unwrap();
    let threads = dump["data"]["threads"].as_array().unwrap();
    let worker = threads
        .iter()
        .find(|t| t["name"] == "worker-0")
        .expect("worker-0 in the JSON dump");
    let names: Vec<&str> = worker["frames"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["symbols"].as_array().unwrap())
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        names.iter().any(|n| n.contains("demo_worker_loop")),
        "{names:?}"
    );
    c.command("format text");
    assert_eq!(c.command("echo back").trim(), "back");
}

#[test]
fn exec_hello_skips_the_greeting_and_frames_each_answer() {
    let app = App::demo(&[]);
    let mut c = Client::connect(app.socket()).unwrap();
    c.send("exec");
    c.send("get log_filter");
    c.send("");
    c.send("nosuch");
    c.send("exit");
    let out = c.read_to_end();
    let frames: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(frames.len(), 4, "{out}");
    assert_eq!(frames[0]["command"], "exec");
    assert_eq!(frames[0]["data"]["pid"], app.pid());
    assert_eq!(frames[1]["data"]["value"], "info");
    assert_eq!(frames[2]["ok"], false);
    assert_eq!(frames[3]["command"], "exit");
}

/// The frames of one exec session: `hello`, then `lines`, then end of input.
fn exec_frames(app: &App, hello: &str, lines: &[&str]) -> Vec<Value> {
    let mut c = Client::connect(app.socket()).unwrap();
    c.send(hello);
    for line in lines {
        c.send(line);
    }
    c.shutdown_write();
    let out = c.read_to_end();
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn exec_text_and_exec_data_send_only_that_part_of_each_answer() {
    let app = App::demo(&[]);
    let text = exec_frames(&app, "exec text", &["threads", "get requests", "nosuch"]);
    assert_eq!(text.len(), 4, "{text:?}");
    assert_eq!(text[0]["command"], "exec");
    assert_eq!(
        text[0]["data"]["pid"],
        app.pid(),
        "the handshake has its data"
    );
    assert!(
        text[1]["text"]
            .as_str()
            .unwrap()
            .contains("demo_worker_loop")
    );
    assert!(text[1].get("data").is_none(), "no data after exec text");
    assert!(text[2]["text"].is_string() && text[2].get("data").is_none());
    assert_eq!(text[3]["ok"], false);
    assert!(text[3]["error"].is_string(), "errors are unchanged");

    let data = exec_frames(&app, "exec data", &["threads", "get requests"]);
    assert_eq!(data.len(), 3, "{data:?}");
    assert_eq!(data[0]["data"]["pid"], app.pid());
    let threads = data[1]["data"]["threads"].as_array().unwrap();
    assert!(threads.len() >= 5, "{data:?}");
    assert!(data[1].get("text").is_none(), "no text after exec data");
    assert_eq!(data[2]["data"]["name"], "requests");

    // A bad argument is no hello: the session greets as a REPL and answers it with an error.
    let mut c = Client::connect(app.socket()).unwrap();
    c.send("exec sideways");
    let greeting = c.skip_greeting();
    assert!(greeting.contains("demo_worker_loop"), "{greeting}");
    let answer = c.read_prompt();
    assert!(
        answer.contains("error: usage: exec [text|data]"),
        "{answer}"
    );
}

#[test]
fn an_exec_hello_in_pieces_or_without_its_newline_is_still_a_hello() {
    let app = App::demo(&[]);
    // The newline after a whole `exec data` comes in a second packet (a short pause; the
    // server waits up to 200 ms for the rest of a hello).
    for pieces in [
        &["exec data", "\ninfo\n"][..],
        &["ex", "ec te", "xt\ninfo\n"][..],
    ] {
        let mut c = Client::connect(app.socket()).unwrap();
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            c.send_raw(piece.as_bytes()).unwrap();
        }
        c.shutdown_write();
        let out = c.read_to_end();
        let frames: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{pieces:?}: {l:?}: {e}")))
            .collect();
        assert_eq!(frames.len(), 2, "{pieces:?}: {out}");
        assert_eq!(frames[0]["command"], "exec");
        assert_eq!(frames[1]["command"], "info");
    }
    // A hello that is the whole input, without a newline, gets its frame and nothing else.
    let mut c = Client::connect(app.socket()).unwrap();
    c.send_raw(b"exec data").unwrap();
    c.shutdown_write();
    let out = c.read_to_end();
    let frame: Value =
        serde_json::from_str(out.trim_end()).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    assert_eq!(frame["data"]["pid"], app.pid(), "{out}");
}

#[test]
fn exec_handler_serves_frames_from_the_start() {
    let app = App::demo(&["--exec"]);
    let mut c = Client::connect(app.socket()).unwrap();
    c.send("echo a b");
    c.shutdown_write();
    let out = c.read_to_end();
    let frame: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(frame["text"], "a b");
}

#[test]
fn half_close_delivers_every_answer_then_ends() {
    let app = App::demo(&[]);
    let mut c = Client::connect(app.socket()).unwrap();
    c.send_raw(b"echo one\nthreads\necho last-without-newline")
        .unwrap();
    c.shutdown_write();
    let out = c.read_to_end();
    assert!(out.contains("one\n"), "{out}");
    assert_eq!(
        out.matches("Threads: ").count(),
        2,
        "greeting dump and threads dump: {out}"
    );
    assert!(
        out.matches("demo_worker_loop").count() >= 2,
        "greeting dump and threads dump: {out}"
    );
    assert!(
        out.trim_end().ends_with(">>>") || out.contains("last-without-newline\n"),
        "{out}"
    );
    assert!(out.contains("last-without-newline\n"), "{out}");
}

#[test]
fn twenty_sessions_one_after_another() {
    let app = App::demo(&[]);
    for i in 0..20 {
        let (mut c, _) = session(&app);
        assert_eq!(c.command(&format!("echo {i}")).trim(), i.to_string());
        c.send("quit");
        c.read_to_end();
    }
}

#[test]
fn eight_sessions_at_once_and_the_ninth_is_refused() {
    let app = App::demo(&[]);
    let mut clients: Vec<Client> = (0..8).map(|_| session(&app).0).collect();
    let mut ninth = Client::connect(app.socket()).unwrap();
    assert_eq!(
        ninth.read_to_end(),
        "manhole: too many sessions (8 open), try again later\n"
    );
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.command(&format!("echo {i}")).trim(), i.to_string());
    }
    let mut last = clients.pop().unwrap();
    last.send("exit");
    last.read_to_end();
    // The freed slot is taken by a new client (the session count drops once the thread ends).
    let again = manhole_e2e::wait_until(|| {
        let mut c = Client::connect(app.socket()).ok()?;
        let text = c.read_until("\n");
        (!text.starts_with("manhole: too many")).then_some(c)
    });
    assert!(again.is_some(), "a slot frees up after a session ends");
}

#[test]
fn socket_is_0600_and_owned_by_us() {
    let app = App::demo(&[]);
    let meta = std::fs::symlink_metadata(app.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
}

#[test]
fn custom_socket_path_replaces_a_stale_socket() {
    let dir = TempDir::new();
    let path = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let app = App::demo(&["--socket-path", path.to_str().unwrap()]);
    assert_eq!(app.socket(), path);
    let (mut c, _) = session(&app);
    assert_eq!(c.command("echo fresh").trim(), "fresh");
}

#[test]
fn a_socket_left_by_a_killed_process_is_replaced_by_the_next_one() {
    let dir = TempDir::new();
    let path = dir.join("app.sock");
    let arg = ["--socket-path", path.to_str().unwrap()];
    let mut killed = App::demo(&arg);
    killed.signal(libc::SIGKILL);
    assert!(!killed.wait_exit().success());
    // SIGKILL runs no exit hook: the dead process's socket file stays, and nobody listens.
    killed.socket = None;
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert!(std::os::unix::net::UnixStream::connect(&path).is_err());
    let app = App::demo(&arg);
    let (mut c, _) = session(&app);
    assert_eq!(c.command("echo replaced").trim(), "replaced");
}

#[test]
fn a_symlink_at_the_path_is_refused_and_left_alone() {
    let dir = TempDir::new();
    let target = dir.join("precious");
    std::fs::write(&target, "keep me").unwrap();
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mut app = manhole_e2e::App::start("demo", &["--socket-path", link.to_str().unwrap()], &[]);
    let status = app.wait_exit();
    assert!(!status.success());
    assert!(app.stderr().contains("symlink"), "{}", app.stderr());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_regular_file_at_the_path_is_refused_and_left_alone() {
    let dir = TempDir::new();
    let file = dir.join("file.sock");
    std::fs::write(&file, "data").unwrap();
    let mut app = App::start("demo", &["--socket-path", file.to_str().unwrap()], &[]);
    assert!(!app.wait_exit().success());
    assert!(app.stderr().contains("not a socket"), "{}", app.stderr());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
}

/// The tid of the thread of `app` named `name`, from `/proc`.
fn tid_of(app: &App, name: &str) -> i32 {
    std::fs::read_dir(format!("/proc/{}/task", app.pid()))
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim_end() == name).then(|| t.file_name().to_str()?.parse().ok())?
        })
        .next()
        .unwrap_or_else(|| panic!("no thread {name} in /proc"))
}

#[test]
fn threads_by_tid_and_a_filter_that_matches_nothing() {
    let app = App::demo(&[]);
    let (mut c, _) = session(&app);
    let tid = tid_of(&app, "worker-1");
    let one = c.command(&format!("threads {tid}"));
    assert!(one.starts_with("Threads: 1 "), "{one}");
    assert!(one.contains(&format!("Thread {tid} \"worker-1\"")), "{one}");
    assert!(one.contains("demo_worker_loop"), "{one}");
    assert_eq!(one.matches("\nThread ").count(), 1, "{one}");
    // A filter that matches no thread is a one-line error, and the session goes on.
    for line in ["threads no-such-thread", "bt 999999999"] {
        let answer = c.command(line);
        assert!(
            answer.starts_with("error: no thread has tid "),
            "{line:?} answered {answer:?}"
        );
        assert_eq!(answer.trim_end().lines().count(), 1, "{answer:?}");
    }
    assert_eq!(c.command("echo on").trim(), "on");
}

#[test]
fn a_bad_value_for_a_settable_number_is_one_error_line_and_changes_nothing() {
    let app = App::listening("faults", &[]);
    let (mut c, _) = session(&app);
    assert_eq!(c.command("set counter 3").trim(), "counter: 0 -> 3");
    let long = "9".repeat(10_000);
    for (value, expected) in [
        ("nine", "error: counter: cannot parse \"nine\" as u64"),
        ("-1", "error: counter: cannot parse \"-1\" as u64"),
        (long.as_str(), "error: counter: cannot parse \"999"),
    ] {
        let answer = c.command(&format!("set counter {value}"));
        assert!(
            answer.starts_with(expected),
            "{value:.20} answered {answer:.200}"
        );
        assert_eq!(answer.trim_end().lines().count(), 1, "{answer:.200}");
        assert!(
            answer.len() < 300,
            "the error quotes the value short: {answer:.200}"
        );
    }
    assert_eq!(c.command("get counter").trim(), "3");
}

#[test]
fn info_agrees_with_proc() {
    let app = App::demo(&[]);
    let (mut c, _) = session(&app);
    c.command("format json");
    let frame: Value = serde_json::from_str(c.command("info").trim()).unwrap();
    let info = &frame["data"];
    let pid = app.pid();
    assert_eq!(info["pid"], pid);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: u32 = stat
        .rsplit(") ")
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(info["ppid"], ppid);
    assert_eq!(info["ppid"], std::process::id());
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(info["exe"], exe.display().to_string());
    let cmdline: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split_terminator('\0')
        .map(str::to_string)
        .collect();
    assert_eq!(info["cmdline"], serde_json::json!(cmdline));
    let me = nix::unistd::geteuid().as_raw();
    assert_eq!(info["uid"], me);
    assert_eq!(info["euid"], me);
    // Threads and fds: the session is idle, so what /proc says now is what info saw, give or
    // take the directory info itself had open and a worker thread that was ending.
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count() as u64;
    let reported = info["threads"].as_u64().unwrap();
    assert!(
        reported.abs_diff(threads) <= 1,
        "info {reported}, /proc {threads}"
    );
    let fds = app.fd_count() as u64;
    let reported = info["fds"].as_u64().unwrap();
    assert!(reported.abs_diff(fds) <= 1, "info {reported}, /proc {fds}");
    let rss = info["rss_bytes"].as_u64().unwrap() / 1024;
    let now = app.rss_kib();
    assert!(
        rss > 0 && rss.abs_diff(now) < now / 2,
        "info {rss} KiB, /proc {now} KiB"
    );
    let uptime = info["uptime_secs"].as_f64().unwrap();
    assert!((0.0..60.0).contains(&uptime), "{uptime}");
}
