//! Entry points for the fuzz targets (`manhole/fuzz/`) and the property tests
//! (`manhole/tests/properties.rs`): the code that reads what a client or the environment sends,
//! reachable without a socket or an installation. Not part of the API; hidden from the docs.
//!
//! Each function checks the invariants of what it wraps and panics when one breaks, so a fuzzer
//! only has to look for panics.

use std::time::Duration;

use crate::commands;
use crate::credentials::PeerCred;
use crate::session::{self, MAX_LINE, Settings};
use crate::stackdump::DumpOptions;

/// Splits `chunks` (as they would arrive from the socket) into command lines and checks them:
/// no line holds a newline, a carriage return or a control character other than tab, and none
/// is longer than the longest accepted line after invalid UTF-8 was replaced (3 bytes for each
/// bad byte). Returns the lines (`None` for an over-long line that was skipped).
pub fn session_lines(chunks: &[&[u8]]) -> Vec<Option<String>> {
    let lines = session::read_lines(chunks);
    for line in lines.iter().flatten() {
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "a control character in {line:?}"
        );
        assert!(
            line.len() <= 3 * MAX_LINE + 3,
            "a line of {} bytes",
            line.len()
        );
    }
    lines
}

/// The settings of a session with nothing attached, for running commands in tests.
fn settings() -> Settings {
    Settings {
        handler: crate::ConnectionHandler::Repl,
        lock_timeout: Duration::from_millis(50),
        command_timeout: Duration::from_secs(5),
        task_dumps: false,
        write_timeout: Duration::from_secs(1),
        idle_timeout: None,
        dump: DumpOptions {
            signal: crate::Options::DEFAULT_DUMP_SIGNAL,
            timeout: Duration::from_millis(100),
            max_frames: 16,
            fresh: false,
        },
        profile: crate::profile::ProfileOptions {
            signal: crate::Options::DEFAULT_DUMP_SIGNAL,
            hz: crate::Options::DEFAULT_PROFILE_HZ,
        },
        redirect_stderr: false,
        redirect_stdout: false,
        banner: String::new(),
        runtime: Default::default(),
        policy: Default::default(),
    }
}

/// Runs one command line as a session would and checks the reply: an error is one line, the
/// exec frame is one line of valid JSON with `ok` set as the reply says. Lines whose first word
/// is `threads`, `bt`, `info`, `runtime`, `tasks` or `profile` are skipped (they read the process, not the
/// input, and a dump needs an installation). Returns the exec frame.
pub fn command(line: &str) -> Option<String> {
    let first = line.split_whitespace().next().unwrap_or("");
    if matches!(
        first,
        "threads" | "bt" | "info" | "runtime" | "tasks" | "profile"
    ) {
        return None;
    }
    let peer = PeerCred {
        pid: 1,
        uid: 0,
        gid: 0,
    };
    let reply = commands::run(line, &settings(), &peer);
    if let Err(message) = &reply.result {
        assert!(!message.contains('\n'), "a multi-line error: {message:?}");
    }
    let frame = reply.frame(commands::Forms::BOTH);
    assert!(!frame.contains('\n'), "a multi-line frame: {frame:?}");
    let parsed: serde_json::Value =
        serde_json::from_str(&frame).unwrap_or_else(|e| panic!("invalid frame {frame:?}: {e}"));
    assert_eq!(parsed["ok"], reply.result.is_ok(), "{frame}");
    Some(frame)
}

/// Parses a `MANHOLE` value as the constructor before `main` would (without installing) and
/// checks that an error is one line. Returns the options' `Debug` text or the error.
pub fn manhole_env(value: &str) -> Result<String, String> {
    match crate::envvar::parse(value) {
        Ok(options) => Ok(format!("{options:?}")),
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "a multi-line error: {message:?}");
            Err(message)
        }
    }
}
