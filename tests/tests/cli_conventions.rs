//! manhole-cli's shell completions and man page: generated from the same clap definitions as
//! `--help`, loaded into the real shells (bash, zsh, fish), and the committed
//! `docs/manhole-cli.1` is what the binary prints.
//!
//! The shells come from `.ci/run` (`apt-get install zsh fish`); a missing shell fails the test
//! rather than skipping it.

use std::path::{Path, PathBuf};
use std::process::Command;

use manhole_e2e::{TempDir, bin, run_with_timeout};

fn cli(args: &[&str]) -> String {
    let output = run_with_timeout(Command::new(bin("manhole-cli")).args(args));
    assert!(
        output.status.success(),
        "manhole-cli {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The completion script for `shell`, written to a file in `dir`.
fn completion_script(dir: &TempDir, shell: &str) -> PathBuf {
    let path = dir.join(&format!("manhole-cli.{shell}"));
    std::fs::write(&path, cli(&["--completions", shell])).expect("write the script");
    path
}

/// Runs `shell` with `args`; panics with its output unless it succeeds.
fn shell(shell: &str, args: &[&str]) -> String {
    let output = run_with_timeout(Command::new(shell).args(args));
    assert!(
        output.status.success(),
        "{shell} {args:?} failed (is {shell} installed? .ci/run installs it): {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What bash's completion for `manhole-cli` offers for the words of `line` (the last is the
/// word being completed), run through the function the script registered with `complete -F`.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let program = format!(
        r#"source "$1" || exit 1
spec=$(complete -p manhole-cli) || exit 1
function=$(sed -E 's/.*-F ([^ ]+) .*/\1/' <<<"$spec")
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
"$function" manhole-cli "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        words = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    shell(
        "bash",
        &["--norc", "-c", &program, "bash", script.to_str().unwrap()],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
fn bash_completion_offers_the_flags_and_the_shells() {
    let dir = TempDir::new();
    let script = completion_script(&dir, "bash");
    let flags = bash_complete(&script, &["manhole-cli", "--"]);
    for flag in [
        "--json",
        "--list",
        "--timeout",
        "--signal",
        "--completions",
        "--man",
    ] {
        assert!(flags.iter().any(|f| f == flag), "no {flag} in {flags:?}");
    }
    let shells = bash_complete(&script, &["manhole-cli", "--completions", ""]);
    for name in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|s| s == name), "no {name} in {shells:?}");
    }
}

#[test]
fn fish_completion_offers_the_flags_and_the_shells() {
    let dir = TempDir::new();
    let script = completion_script(&dir, "fish");
    let script = script.to_str().unwrap();
    let complete = |line: &str| -> Vec<String> {
        shell(
            "fish",
            &[
                "--no-config",
                "-c",
                &format!("source {script}; and complete -C '{line}'"),
            ],
        )
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").to_owned())
        .collect()
    };
    let flags = complete("manhole-cli --");
    for flag in ["--json", "--list", "--completions", "--man", "--dir"] {
        assert!(flags.iter().any(|f| f == flag), "no {flag} in {flags:?}");
    }
    let shells = complete("manhole-cli --completions ");
    for name in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|s| s == name), "no {name} in {shells:?}");
    }
}

#[test]
fn zsh_completion_parses_and_names_every_flag() {
    let dir = TempDir::new();
    let script = completion_script(&dir, "zsh");
    shell("zsh", &["-f", "-n", script.to_str().unwrap()]);
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.starts_with("#compdef manhole-cli"), "{text}");
    // compsys loads it: `_manhole-cli` is defined once the file is sourced after compinit.
    let loaded = shell(
        "zsh",
        &[
            "-f",
            "-c",
            &format!(
                "autoload -U compinit && compinit -u -D && source {} && whence -w _manhole-cli",
                script.display()
            ),
        ],
    );
    assert!(loaded.contains("_manhole-cli: function"), "{loaded}");
    for flag in [
        "--json",
        "--list",
        "--prune",
        "--dir",
        "--completions",
        "--man",
    ] {
        assert!(
            text.contains(&format!("{flag}[")) || text.contains(&format!("{flag}=[")),
            "no {flag} in {text}"
        );
    }
}

#[test]
fn the_committed_man_page_is_what_the_binary_prints() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/manhole-cli.1");
    let committed = std::fs::read_to_string(&committed).expect("docs/manhole-cli.1");
    let printed = cli(&["--man"]);
    assert!(
        printed == committed,
        "docs/manhole-cli.1 is stale: regenerate it with \
         `cargo run -q -p manhole-cli -- --man > docs/manhole-cli.1`"
    );
    assert!(printed.contains(".TH manhole-cli 1"), "{printed}");
    // The same definitions as --help: every long flag of the help is in the page.
    let help = cli(&["--help"]);
    for flag in help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
    {
        let flag = flag.trim_end_matches([',', ')', '`']);
        let flag = flag.split(['=', '<', '`']).next().unwrap();
        if flag.len() > 2 {
            assert!(
                printed.contains(&flag.replace('-', "\\-")),
                "{flag} is in --help, not in the man page"
            );
        }
    }
}
