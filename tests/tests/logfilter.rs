//! The demo's live log filter: `log_filter` is a `Local::settable_fn` over a tracing-subscriber
//! reload handle. Changing it changes what the demo writes to its stderr; a directive that does
//! not parse is refused in one line and the filter in force stays.

use manhole_e2e::{App, Client, wait_until};

/// Requests a demo worker serves between two DEBUG events (`BATCH` in demo.rs), times the four
/// workers: once the counter passed this, at least one worker logged a batch.
const ONE_BATCH_SOMEWHERE: u64 = 4 * 10;

/// The answer to `line`, without the demo's log lines: the session also shows the process's
/// stderr (`redirect_stderr`), so at DEBUG the batch events arrive between the answers, and with
/// `--log-to-tracing` the manhole's own events.
fn answer(client: &mut Client, line: &str) -> String {
    client
        .command(line)
        .lines()
        .filter(|l| !is_batch_event(l) && !l.contains(" INFO manhole: "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_batch_event(line: &str) -> bool {
    line.contains(" DEBUG demo: served a batch of requests")
}

fn requests(client: &mut Client) -> u64 {
    answer(client, "get requests")
        .trim()
        .parse()
        .expect("requests is a number")
}

/// Waits until the demo served `more` requests from now.
fn wait_for_requests(client: &mut Client, more: u64) {
    let start = requests(client);
    wait_until(|| (requests(client) >= start + more).then_some(()))
        .expect("the workers keep counting");
}

fn debug_lines(app: &App) -> usize {
    app.stderr().lines().filter(|l| is_batch_event(l)).count()
}

#[test]
fn set_log_filter_debug_makes_debug_lines_appear_and_a_bad_directive_is_refused() {
    let app = App::demo(&[]);
    app.wait_for_stderr(" INFO demo: demo started workers=4");
    let mut c = Client::connect(app.socket()).expect("connect to the demo");
    c.skip_greeting();
    assert_eq!(answer(&mut c, "get log_filter").trim(), "info");

    // At INFO, batches are served and not logged.
    wait_for_requests(&mut c, ONE_BATCH_SOMEWHERE);
    assert_eq!(debug_lines(&app), 0, "{}", app.stderr());

    assert_eq!(
        answer(&mut c, "set log_filter debug").trim(),
        "log_filter: info -> debug"
    );
    wait_until(|| (debug_lines(&app) > 0).then_some(()))
        .unwrap_or_else(|| panic!("no DEBUG line after the change: {}", app.stderr()));
    assert_eq!(answer(&mut c, "get log_filter").trim(), "debug");

    // A directive that does not parse: one error line, and DEBUG stays on.
    let refused = answer(&mut c, "set log_filter info,demo=loud");
    assert_eq!(refused.lines().count(), 1, "{refused}");
    assert!(
        refused.starts_with("error: log_filter: invalid filter \"info,demo=loud\""),
        "{refused}"
    );
    assert_eq!(answer(&mut c, "get log_filter").trim(), "debug");
    let before = debug_lines(&app);
    wait_until(|| (debug_lines(&app) > before).then_some(()))
        .unwrap_or_else(|| panic!("DEBUG lines stopped after a refused set: {}", app.stderr()));

    // Per-target directives, shown in the filter's own order (most specific first).
    assert_eq!(
        answer(&mut c, "set log_filter warn,demo=debug").trim(),
        "log_filter: debug -> demo=debug,warn"
    );
    let json = answer(&mut c, "format json");
    assert!(!json.contains("error"), "{json}");
    let frame: serde_json::Value =
        serde_json::from_str(answer(&mut c, "get log_filter").trim()).expect("a JSON frame");
    assert_eq!(frame["data"]["value"], "demo=debug,warn", "{frame}");
}

#[test]
fn log_to_tracing_sends_the_event_log_through_the_applications_filter() {
    let app = App::demo(&["--log-to-tracing"]);
    let mut first = Client::connect(app.socket()).expect("connect to the demo");
    first.skip_greeting();
    app.wait_for_stderr(" INFO manhole: Accepted session 1 from pid ");
    assert!(app.stderr().contains(" INFO manhole: Manhole UDS path: "));
    // The application's filter decides: at warn, a connection is not logged.
    assert_eq!(
        answer(&mut first, "set log_filter warn"),
        "log_filter: info -> warn"
    );
    let mut second = Client::connect(app.socket()).expect("connect again");
    second.skip_greeting();
    assert_eq!(
        answer(&mut first, "set log_filter info"),
        "log_filter: warn -> info"
    );
    assert_eq!(answer(&mut second, "echo after").trim(), "after");
    // Events are written in order, so once the later one is in, the earlier would be too.
    app.wait_for_stderr(" INFO manhole: Session of pid ");
    let stderr = app.wait_for_stderr("runs command echo after");
    assert!(!stderr.contains("Accepted session 2"), "{stderr}");
    assert!(
        stderr.contains("set log_filter from warn to info"),
        "{stderr}"
    );
    // None of it went to the descriptor.
    assert!(!stderr.contains("Manhole["), "{stderr}");
}
