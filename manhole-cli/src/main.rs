//! `manhole-cli`: the operator's client for a manhole (see `--help` and docs/cli.md).
//!
//! `main` is boring on purpose: parse the arguments, call [`run`], print the error (one line and
//! maybe a hint) and turn it into the exit code. `run` reads as the steps of a connection:
//! resolve TARGET, check the process, send the signal if asked, connect and check the peer, then
//! hand the socket to the session mode that fits (one-shot, piped or interactive).

#![forbid(unsafe_code)]

mod args;
mod connect;
mod error;
mod escape;
mod evidence;
mod manpage;
mod namespace;
mod profile;
mod session;
mod target;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use crate::args::Args;
use crate::connect::Expect;
use crate::error::{EXIT_COMMAND_FAILED, ErrorKind, Result, note};
use crate::session::{Bounds, NameSource, Outcome, Show};

/// The least time the client waits while the server owes an answer (one-shot and piped modes):
/// a stack dump of a big process on a loaded machine takes seconds.
const MIN_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args = match args::parse() {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                ErrorKind::Usage.exit_code()
            } else {
                0
            });
        }
    };
    if let Some(shell) = args.completions {
        return generated(manpage::print_completions(shell));
    }
    if args.man {
        return generated(manpage::print_man_page());
    }
    match run(&args) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::CommandFailed) => ExitCode::from(EXIT_COMMAND_FAILED),
        Err(err) if err.kind() == ErrorKind::StdoutClosed => ExitCode::SUCCESS,
        Err(err) => {
            note!("manhole-cli: {err}");
            if let Some(hint) = err.hint() {
                note!("manhole-cli: hint: {hint}");
            }
            ExitCode::from(err.exit_code())
        }
    }
}

/// The exit code after printing a completion script or the man page.
fn generated(printed: std::io::Result<()>) -> ExitCode {
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            note!("manhole-cli: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Does what the command line asks.
fn run(args: &Args) -> Result<Outcome> {
    if args.list {
        target::list(&args.dir, args.prune, args.json)?;
        return Ok(Outcome::Success);
    }
    let Some(target) = &args.target else {
        unreachable!("clap requires TARGET unless --list");
    };
    let signal = args.signal();
    // A process in a container: its socket through its root, with its host pid.
    let target = &namespace::refine(target.clone());
    let container = namespace::Container::of(target, &args.dir)?;
    let path = container
        .as_ref()
        .map_or_else(|| target.socket_path(&args.dir), |c| c.path.clone());
    // A socket path without a pid: the activation file next to it names the process to signal
    // (and is checked against that process before anything is sent).
    let target = &match (signal, target.pid()) {
        (Some(signal), None) => match evidence::pid_named(&path) {
            Some(pid) => target::Target::Path {
                path: path.clone(),
                pid: Some(pid),
            },
            None => {
                return Err(error::Error::new(
                    ErrorKind::Usage,
                    format!(
                        "sending {} needs a pid: TARGET {target} names no process and no {} names one (use a pid or .../manhole-<pid>)",
                        signal.as_str(),
                        evidence::path_for(&path).display()
                    ),
                ));
            }
        },
        _ => target.clone(),
    };
    let status = target::check_process(target, &path)?;
    let process = target.pid().zip(status.as_ref());
    if let (Some(signal), Some((pid, status))) = (signal, process) {
        // In a container the file names the pid the process sees, next to its socket as seen
        // from here through its root.
        let (evidence_socket, pid_in_file) = match &container {
            Some(c) => (
                std::path::PathBuf::from(format!("/proc/{}/root", c.host_pid))
                    .join(c.inner_path.strip_prefix("/").unwrap_or(&c.inner_path)),
                c.ns_pid,
            ),
            None => (path.clone(), pid),
        };
        target::send_signal(pid, status, signal, &evidence_socket, pid_in_file)?;
    }
    let acting = container
        .as_ref()
        .map(namespace::Container::act_as_owner)
        .transpose()?;
    let stream = connect::open(
        &path,
        args.timeout,
        &Expect {
            process,
            signal_sent: signal,
        },
    )
    .map_err(|err| match &container {
        Some(container) => container.explain(err),
        None => err,
    })?;
    drop(acting);
    let show = Show {
        escape_stdout: !args.raw && std::io::stdout().is_terminal(),
        escape_stderr: !args.raw && std::io::stderr().is_terminal(),
    };
    let bounds = Bounds {
        // A `profile SECONDS` is silent for its SECONDS.
        wait: session::answer_wait(
            args.command_line().as_deref(),
            args.timeout.max(MIN_ANSWER_TIMEOUT),
        ),
        max_answer: args.max_answer,
    };
    if args.folded || args.flamegraph.is_some() {
        let command = profile::command_line(args.command_line())?;
        let output = match &args.flamegraph {
            Some(path) => profile::Output::FlameGraph(path),
            None => profile::Output::Folded,
        };
        return profile::run(stream, &command, output, bounds, show);
    }
    if let Some(command) = args.command_line() {
        return session::one_shot(stream, &command, args.json, bounds, show);
    }
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        let names = NameSource {
            path,
            pid: target.pid(),
        };
        session::interactive(stream, show, Some(names))
    } else {
        session::piped(stream, bounds, show)
    }
}
