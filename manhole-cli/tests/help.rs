//! Snapshot tests of `manhole-cli --help` and `-h`: the help text is the client's user interface
//! (usage, flags, exit codes), so any change to it must show up in review as a diff of
//! `tests/snapshots/*.txt`.
//!
//! Regenerate the snapshots after an intended change with
//! `UPDATE_SNAPSHOTS=1 cargo test -p manhole-cli --test help`.

use std::path::PathBuf;
use std::process::Command;

/// Runs the real binary with `arg` at a fixed width and returns its stdout.
fn help_output(arg: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_manhole-cli"))
        .arg(arg)
        .env("COLUMNS", "100")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .expect("run manhole-cli");
    assert!(
        output.status.success(),
        "{arg} exited with {}",
        output.status
    );
    assert!(
        output.stderr.is_empty(),
        "{arg} wrote to stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

/// Compares `actual` with the committed snapshot `name`, or rewrites it when asked to.
fn check_snapshot(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "cannot read {}: {err} (run with UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (want, got))| want != got)
            .take(5)
            .map(|(n, (want, got))| {
                format!("line {}:\n  snapshot: {want}\n  now:      {got}", n + 1)
            })
            .collect();
        panic!(
            "{name} differs from the committed snapshot ({} vs {} lines):\n{}\n\
             If the change is intended, run UPDATE_SNAPSHOTS=1 cargo test -p manhole-cli --test help",
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

#[test]
fn long_help_matches_the_snapshot() {
    check_snapshot("help.txt", &help_output("--help"));
}

#[test]
fn short_help_matches_the_snapshot() {
    check_snapshot("help-short.txt", &help_output("-h"));
}

#[test]
fn help_documents_every_exit_code() {
    let help = help_output("--help");
    for code in 0..=11 {
        assert!(
            help.contains(&format!("\n{code:>4}  ")),
            "exit code {code} is not documented in --help"
        );
    }
}
