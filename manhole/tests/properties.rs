//! Property tests over the code that reads untrusted input: the session's line reader, command
//! parsing and replies, and the `MANHOLE` option parser (through `manhole::__fuzz`, the same
//! entry points the fuzz targets in `manhole/fuzz/` use). Each entry point panics when one of
//! its invariants breaks.
//!
//! The case counts are small so `cargo test` stays fast; `PROPTEST_CASES=N` runs N cases per
//! property for a longer search (see `docs/fuzzing.md`).

use manhole::__fuzz;
use proptest::prelude::*;

/// Bytes a client might send: mostly printable text, newlines, and the awkward bytes (NUL, CR,
/// telnet IAC sequences, invalid UTF-8).
fn client_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => proptest::char::range(' ', '~').prop_map(|c| c as u8),
        2 => Just(b'\n'),
        1 => Just(b'\r'),
        1 => Just(0u8),
        1 => Just(0xFFu8),
        1 => 0xF0u8..=0xFFu8,
        1 => any::<u8>(),
    ];
    proptest::collection::vec(byte, 0..512)
}

/// One of `words`, or a string matching the regex `other`.
fn word_or(words: &'static [&'static str], other: &'static str) -> BoxedStrategy<String> {
    prop_oneof![
        3 => proptest::sample::select(words).prop_map(str::to_string),
        1 => other,
    ]
    .boxed()
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// However the bytes are cut into reads, the same lines come out, each clean.
    #[test]
    fn lines_do_not_depend_on_how_the_input_is_cut(bytes in client_bytes(), cuts in proptest::collection::vec(0usize..512, 0..8)) {
        let whole = __fuzz::session_lines(&[&bytes]);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for cut in cuts {
            chunks.push(&bytes[start..cut]);
            start = cut;
        }
        chunks.push(&bytes[start..]);
        prop_assert_eq!(__fuzz::session_lines(&chunks), whole);
    }

    /// Every printable line without a newline comes back as one line, trimmed of nothing but
    /// carriage returns.
    #[test]
    fn a_printable_line_comes_back_whole(line in "[ -~]{0,200}") {
        let mut bytes = line.clone().into_bytes();
        bytes.extend_from_slice(b"\r\n");
        let lines = __fuzz::session_lines(&[&bytes]);
        prop_assert_eq!(lines, vec![Some(line)]);
    }

    /// Any command line gets a reply whose error is one line and whose frame is valid JSON.
    #[test]
    fn every_command_line_gets_a_well_formed_reply(bytes in client_bytes()) {
        for line in __fuzz::session_lines(&[&bytes]).into_iter().flatten() {
            __fuzz::command(line.trim());
        }
    }

    /// Commands built from the real vocabulary with odd arguments.
    #[test]
    fn known_commands_with_odd_arguments_are_well_formed(
        word in word_or(&["help", "locals", "get", "set", "format", "exec", "exit", "quit", "?"], "[a-z]{1,12}"),
        args in proptest::collection::vec("[^\n\r]{0,30}", 0..4),
    ) {
        __fuzz::command(&format!("{word} {}", args.join(" ")));
    }

    /// The `MANHOLE` parser never panics, and an error is one line.
    #[test]
    fn the_manhole_variable_parser_never_panics(value in "[ -~]{0,120}") {
        let _ = __fuzz::manhole_env(&value);
    }

    /// Values built from the real keys and value shapes.
    #[test]
    fn manhole_values_from_real_keys_parse_or_fail_cleanly(
        pairs in proptest::collection::vec((
            word_or(&["verbose", "socket_path", "activate_on", "oneshot_on", "dump_on", "sigmask", "reinstall_delay", "max_sessions", "strict", "connection_handler", "dump_timeout", "idle_timeout", "patch_fork"], "[a-z_]{1,10}"),
            word_or(&["True", "none", "USR2", "RTMIN+99", "\"/tmp/x\"", "'", "\"", "[USR1, USR2]", "(1,", "[[[", "1.5", "-1", "1e309", "nan", "inf", "18446744073709551616"], "[ -~]{0,12}"),
        ), 0..5),
    ) {
        let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = __fuzz::manhole_env(&text.join(","));
    }
}
