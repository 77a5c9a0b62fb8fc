//! The command line: every flag, its help text and its validation, and nothing else.
//!
//! Parsing is clap's (derive). Two spellings clap cannot express are rewritten before clap sees
//! them: python-manhole's single-dash `-USR1`/`-USR2` become `--usr1`/`--usr2` (only among the
//! options before COMMAND, so a command's own arguments are never touched). Values are parsed
//! into their final types here (`Target`, `Signal`, `Duration`), so a bad value is a usage error
//! with clap's usual message and exit code 2.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use nix::sys::signal::Signal;

use crate::error::EXIT_CODES_HELP;
use crate::target::Target;

const ABOUT: &str = "Connect to a manhole: a live debugging session inside a running process.";

const USAGE: &str = "manhole-cli [OPTIONS] TARGET [COMMAND [ARGS...]]\n       \
                     manhole-cli --list [--prune] [--json] [--dir DIR]\n       \
                     manhole-cli --completions SHELL | --man";

const LONG_ABOUT: &str = "\
Connect to a manhole: a live debugging session inside a running process.

Without COMMAND, an interactive session: with a terminal, line editing and history
(~/.manhole_history), the server's prompt, Ctrl-C clears the line or stops waiting for an answer,
Ctrl-D ends the session. With stdin from a pipe or a file, every line is sent, then everything the
server answers is printed until it closes: `echo threads | manhole-cli 1234`.

With COMMAND, that one command runs and only its output is printed (no banner, no stack dump):
`manhole-cli 1234 get requests`, `manhole-cli --json 1234 threads | jq`.";

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "manhole-cli",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    override_usage = USAGE,
    after_help = EXIT_CODES_HELP,
    max_term_width = 100
)]
pub struct Args {
    /// The process: a pid (1234), its socket (/tmp/manhole-1234), or any socket path (./app.sock)
    #[arg(
        value_name = "TARGET",
        value_parser = Target::from_str,
        required_unless_present_any = ["list", "completions", "man"]
    )]
    pub target: Option<Target>,

    /// Run this one command, print its output and exit (0 if it succeeded, 1 if it failed)
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    pub command: Vec<String>,

    /// How long to keep retrying the connection, and (at least 10 s) the longest silence while the server owes an answer, in seconds
    #[arg(
        short,
        long,
        value_name = "SECONDS",
        default_value = "1",
        value_parser = parse_timeout
    )]
    pub timeout: Duration,

    /// Send SIGUSR1 to the process before connecting (also -USR1)
    #[arg(short = '1', long = "usr1", group = "signal_choice")]
    pub usr1: bool,

    /// Send SIGUSR2 to the process before connecting (also -USR2)
    #[arg(short = '2', long = "usr2", group = "signal_choice")]
    pub usr2: bool,

    /// Send this signal (USR2, SIGUSR2, 12) before connecting; refused unless the process published that its manhole waits for it
    #[arg(
        short = 's',
        long = "signal",
        value_name = "SIGNAL",
        value_parser = parse_signal,
        group = "signal_choice"
    )]
    pub signal: Option<Signal>,

    /// With COMMAND: print the command's JSON `data` (the whole frame if it failed). With --list: a JSON array
    #[arg(long)]
    pub json: bool,

    /// Run COMMAND (`profile [SECONDS]`, the default) and print its folded stacks, one `root;...;leaf COUNT` line each
    #[arg(long, conflicts_with_all = ["list", "json", "flamegraph"])]
    pub folded: bool,

    /// Run COMMAND (`profile [SECONDS]`, the default) and write its flame graph to FILE (SVG)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["list", "json"])]
    pub flamegraph: Option<PathBuf>,

    /// List the manhole sockets in DIR this user can connect to: pid, process, user, status, path
    #[arg(long, conflicts_with_all = ["target", "command", "signal_choice"])]
    pub list: bool,

    /// With --list: remove this user's sockets whose process is gone and where nothing listens
    #[arg(long, requires = "list")]
    pub prune: bool,

    /// Print what the server sends byte for byte, even on a terminal (by default control characters are shown escaped there)
    #[arg(long)]
    pub raw: bool,

    /// The largest line or answer accepted from the server, in MiB
    #[arg(long, value_name = "MIB", default_value = "256", value_parser = parse_max_answer)]
    pub max_answer: usize,

    /// Where `manhole-<pid>` sockets live (the help text says the same without the backticks).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/tmp",
        help = "Where manhole-<pid> sockets live: for --list and for a pid TARGET"
    )]
    pub dir: PathBuf,

    /// Print a completion script for SHELL and exit (e.g. `manhole-cli --completions bash`)
    #[arg(long, value_name = "SHELL", exclusive = true)]
    pub completions: Option<clap_complete::Shell>,

    /// Print the man page (roff) and exit: `manhole-cli --man | man -l -`
    #[arg(long, exclusive = true)]
    pub man: bool,
}

impl Args {
    /// The signal to send before connecting, if any.
    pub fn signal(&self) -> Option<Signal> {
        if self.usr1 {
            Some(Signal::SIGUSR1)
        } else if self.usr2 {
            Some(Signal::SIGUSR2)
        } else {
            self.signal
        }
    }

    /// The one-shot command line to send, if COMMAND was given: the words joined by one space.
    pub fn command_line(&self) -> Option<String> {
        if self.command.is_empty() {
            None
        } else {
            Some(self.command.join(" "))
        }
    }
}

/// Parses the process's command line; `Err` is clap's error (usage, `--help`, `--version`).
pub fn parse() -> Result<Args, clap::Error> {
    parse_from(std::env::args_os())
}

/// Parses `argv` (including the program name); see [`parse`].
pub fn parse_from<I>(argv: I) -> Result<Args, clap::Error>
where
    I: IntoIterator<Item = OsString>,
{
    let args = Args::try_parse_from(normalize(argv.into_iter().collect()))?;
    validate(&args)?;
    Ok(args)
}

/// Checks what clap's attributes cannot say.
fn validate(args: &Args) -> Result<(), clap::Error> {
    let usage =
        |message: String| Args::command().error(clap::error::ErrorKind::ArgumentConflict, message);
    if args.json && !args.list && args.command.is_empty() {
        return Err(usage("--json needs a COMMAND (or --list)".to_owned()));
    }
    if let Some(line) = args.command_line() {
        if line.trim().is_empty() {
            return Err(usage("COMMAND is empty".to_owned()));
        }
        if line.contains(['\n', '\r']) {
            return Err(usage(
                "COMMAND must be one line (it contains a line break)".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Options that take a value in the next argument (their value must not be rewritten or taken
/// for a positional).
const OPTIONS_WITH_VALUE: [&str; 7] = [
    "-t",
    "--timeout",
    "-s",
    "--signal",
    "--dir",
    "--max-answer",
    "--flamegraph",
];

/// Rewrites `-USR1`/`-USR2` (any case, one or two dashes) to `--usr1`/`--usr2` among the
/// arguments before COMMAND; everything from COMMAND on is left as it is.
fn normalize(argv: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(argv.len());
    let mut positionals = 0;
    let mut rest = argv.into_iter();
    if let Some(program) = rest.next() {
        out.push(program);
    }
    while let Some(arg) = rest.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            break;
        }
        match text.trim_start_matches('-').to_ascii_lowercase().as_str() {
            "usr1" if text.starts_with('-') => out.push("--usr1".into()),
            "usr2" if text.starts_with('-') => out.push("--usr2".into()),
            _ if OPTIONS_WITH_VALUE.contains(&text) => {
                out.push(arg);
                if let Some(value) = rest.next() {
                    out.push(value);
                }
            }
            _ if text.starts_with('-') && text.len() > 1 => out.push(arg),
            _ => {
                out.push(arg);
                positionals += 1;
                // The second positional is COMMAND: leave it and its arguments alone.
                if positionals == 2 {
                    break;
                }
            }
        }
    }
    out.extend(rest);
    out
}

/// Parses `--max-answer`: a whole number of MiB, at least 1, turned into bytes.
fn parse_max_answer(text: &str) -> Result<usize, String> {
    let mib: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of MiB"))?;
    if mib == 0 {
        return Err("--max-answer must be at least 1 (MiB)".to_owned());
    }
    mib.checked_mul(1 << 20)
        .ok_or_else(|| format!("{text:?} MiB is too large"))
}

/// Parses `-t`: seconds, fractional allowed, not negative.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("{text:?} is not a usable number of seconds (0 or more)"))
}

/// Parses a signal: a name in any case with or without `SIG` (`usr2`, `SIGUSR2`) or a number.
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let text = text.trim();
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number)
            .map_err(|_| format!("invalid signal number {number}: expected 1 to 31 (real-time signals are not supported)"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| {
        format!("invalid signal name {text:?}: expected a name like USR2 or SIGUSR2, or a number")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<Args, clap::Error> {
        parse_from(
            std::iter::once("manhole-cli")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn signal_names_and_numbers_parse() {
        assert_eq!(parse_signal("USR2"), Ok(Signal::SIGUSR2));
        assert_eq!(parse_signal("usr2"), Ok(Signal::SIGUSR2));
        assert_eq!(parse_signal("SIGUSR1"), Ok(Signal::SIGUSR1));
        assert_eq!(parse_signal("sigusr1"), Ok(Signal::SIGUSR1));
        assert_eq!(parse_signal("12"), Ok(Signal::SIGUSR2));
        assert_eq!(parse_signal("Quit"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal(" 10 "), Ok(Signal::SIGUSR1));
    }

    #[test]
    fn bad_signals_are_refused_with_a_reason() {
        assert!(
            parse_signal("FOO")
                .unwrap_err()
                .contains("invalid signal name")
        );
        assert!(
            parse_signal("SIG")
                .unwrap_err()
                .contains("invalid signal name")
        );
        assert!(
            parse_signal("0")
                .unwrap_err()
                .contains("invalid signal number 0")
        );
        assert!(
            parse_signal("12341234")
                .unwrap_err()
                .contains("invalid signal number")
        );
        assert!(
            parse_signal("-2")
                .unwrap_err()
                .contains("invalid signal number")
        );
        assert!(parse_signal("40").unwrap_err().contains("real-time"));
    }

    #[test]
    fn timeouts_parse_as_seconds() {
        assert_eq!(parse_timeout("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_timeout("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_timeout("0"), Ok(Duration::ZERO));
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("inf").is_err());
    }

    #[test]
    fn single_dash_usr_flags_are_rewritten_only_before_command() {
        assert_eq!(
            normalize(os(&["m", "-USR2", "1234", "set", "x", "-USR1"])),
            os(&["m", "--usr2", "1234", "set", "x", "-USR1"])
        );
        assert_eq!(
            normalize(os(&["m", "1234", "-usr1"])),
            os(&["m", "1234", "--usr1"])
        );
        assert_eq!(
            normalize(os(&["m", "-t", "-USR1", "1"])),
            os(&["m", "-t", "-USR1", "1"])
        );
        assert_eq!(
            normalize(os(&["m", "--", "-USR1"])),
            os(&["m", "--", "-USR1"])
        );
    }

    #[test]
    fn signal_flags_select_the_signal() {
        assert_eq!(
            parse_args(&["-USR2", "1234"]).unwrap().signal(),
            Some(Signal::SIGUSR2)
        );
        assert_eq!(
            parse_args(&["-1", "1234"]).unwrap().signal(),
            Some(Signal::SIGUSR1)
        );
        assert_eq!(
            parse_args(&["-2", "1234"]).unwrap().signal(),
            Some(Signal::SIGUSR2)
        );
        assert_eq!(
            parse_args(&["-s", "usr1", "1234"]).unwrap().signal(),
            Some(Signal::SIGUSR1)
        );
        assert_eq!(parse_args(&["1234"]).unwrap().signal(), None);
    }

    #[test]
    fn signal_flags_are_mutually_exclusive() {
        for args in [
            &["-1", "-2", "1234"][..],
            &["-2", "-s", "USR2", "1234"],
            &["-USR1", "-USR2", "1234"],
        ] {
            let err = parse_args(args).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{args:?}"
            );
        }
    }

    #[test]
    fn a_signal_to_a_path_is_checked_later() {
        // The pid may come from the activation file next to the socket (see main).
        assert!(parse_args(&["-2", "./app.sock"]).is_ok());
        assert!(parse_args(&["-2", "/run/x/manhole-77"]).is_ok());
    }

    #[test]
    fn command_words_are_kept_verbatim() {
        let args = parse_args(&["-t", "2", "1234", "set", "level", "-5", "--json"]).unwrap();
        assert_eq!(args.command_line().as_deref(), Some("set level -5 --json"));
        assert!(!args.json);
        assert_eq!(args.timeout, Duration::from_secs(2));
        let args = parse_args(&["--json", "1234", "threads"]).unwrap();
        assert!(args.json);
        assert_eq!(args.command_line().as_deref(), Some("threads"));
    }

    #[test]
    fn usage_errors() {
        assert!(parse_args(&[]).is_err());
        assert!(parse_args(&["abc"]).is_err());
        assert!(parse_args(&["--json", "1234"]).is_err());
        assert!(parse_args(&["1234", ""]).is_err());
        assert!(parse_args(&["1234", "get\nexit"]).is_err());
        assert!(parse_args(&["--list", "1234"]).is_err());
        assert!(parse_args(&["--prune"]).is_err());
        assert!(parse_args(&["--list", "-2"]).is_err());
    }

    #[test]
    fn completions_and_man_stand_alone() {
        let args = parse_args(&["--completions", "zsh"]).unwrap();
        assert_eq!(args.completions, Some(clap_complete::Shell::Zsh));
        assert!(parse_args(&["--man"]).unwrap().man);
        assert!(parse_args(&["--man", "1234"]).is_err());
        assert!(parse_args(&["--completions", "bash", "--list"]).is_err());
        assert!(parse_args(&["--completions", "tcsh"]).is_err());
    }

    #[test]
    fn list_needs_no_target() {
        let args = parse_args(&["--list", "--prune", "--dir", "/run/x"]).unwrap();
        assert!(args.list && args.prune);
        assert_eq!(args.dir, PathBuf::from("/run/x"));
        assert!(parse_args(&["--list", "--json"]).unwrap().json);
    }

    #[test]
    fn invalid_target_names_the_accepted_forms() {
        let err = parse_args(&["12ab"]).unwrap_err().to_string();
        assert!(
            err.contains("1234") && err.contains("/tmp/manhole-1234"),
            "{err}"
        );
    }
}
