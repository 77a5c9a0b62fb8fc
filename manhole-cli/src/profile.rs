//! `--folded` and `--flamegraph FILE`: run a `profile` command and turn its folded stacks into
//! text for other tools, or into an SVG flame graph (drawn by `inferno`, as `flamegraph.pl` would).
//!
//! The command is sent in exec framing (`exec`, then the command); the answer's `data.folded` is
//! the list of `root;...;leaf COUNT` lines (the root frame is the thread's name, see
//! docs/protocol.md). `--folded` prints them, one a line, and nothing else, so the output pipes
//! into `flamegraph.pl` or `inferno-flamegraph`. `--flamegraph FILE` writes the SVG and prints
//! the profile's text summary.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::escape::escape_line;
use crate::session::{self, Bounds, Outcome, Show};

/// What to make of the folded stacks.
pub enum Output<'a> {
    /// Print them to stdout.
    Folded,
    /// Write a flame graph to this file.
    FlameGraph(&'a Path),
}

/// The command line to send: `profile` if none was given; anything else is refused.
pub fn command_line(command: Option<String>) -> Result<String> {
    let command = command.unwrap_or_else(|| "profile".to_string());
    if command.split_whitespace().next() != Some("profile") {
        return Err(Error::new(
            ErrorKind::Usage,
            format!(
                "--folded and --flamegraph draw the answer of a profile command, not {command:?} \
                 (e.g. manhole-cli --flamegraph app.svg 1234 profile 10)"
            ),
        ));
    }
    Ok(command)
}

/// Runs `command` (a `profile`) and writes its folded stacks as `output` asks.
pub fn run(
    stream: UnixStream,
    command: &str,
    output: Output<'_>,
    bounds: Bounds,
    show: Show,
) -> Result<Outcome> {
    let answer = exchange(&stream, command, bounds)?;
    if answer.get("ok") != Some(&Value::Bool(true)) {
        let error = answer
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the command failed");
        let error = if show.escape_stderr {
            escape_line(error)
        } else {
            error.to_string()
        };
        let _ = writeln!(io::stderr(), "error: {error}");
        return Ok(Outcome::CommandFailed);
    }
    let shown = |text: &str| {
        if show.escape_stdout {
            escape_line(text)
        } else {
            text.to_string()
        }
    };
    let data = answer.get("data").unwrap_or(&Value::Null);
    let Some(folded) = data.get("folded").and_then(Value::as_array) else {
        return Err(Error::new(
            ErrorKind::Other,
            "the answer has no folded stacks (is the server older than the profile command?)",
        ));
    };
    let lines: Vec<&str> = folded.iter().filter_map(Value::as_str).collect();
    match output {
        Output::Folded => {
            let mut out = String::new();
            for line in &lines {
                out.push_str(&shown(line));
                out.push('\n');
            }
            write_stdout(out.as_bytes())?;
        }
        Output::FlameGraph(path) => {
            write_flamegraph(path, &lines, data)?;
            let text = answer.get("text").and_then(Value::as_str).unwrap_or("");
            let mut out = if show.escape_stdout {
                text.lines().map(escape_line).collect::<Vec<_>>().join("\n")
            } else {
                text.to_string()
            };
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("Flame graph written to {}\n", path.display()));
            write_stdout(out.as_bytes())?;
        }
    }
    Ok(Outcome::Success)
}

/// Sends the exec hello and `command`, returns the command's frame as JSON. Every read waits
/// at most `bounds.wait`; a line over `bounds.max_answer` ends the exchange.
fn exchange(stream: &UnixStream, command: &str, bounds: Bounds) -> Result<Value> {
    let request = format!("exec\n{command}\n");
    crate::session::send_request(stream, &request, bounds.wait)?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut first = true;
    let mut skipped = 0usize;
    loop {
        line.clear();
        let limit = bounds.max_answer as u64 + 1;
        match (&mut reader).take(limit).read_until(b'\n', &mut line) {
            Ok(_) if line.len() > bounds.max_answer => {
                return Err(session::too_large(bounds.max_answer));
            }
            Ok(0) => {
                return Err(Error::new(
                    ErrorKind::ServerClosed,
                    "the server closed the connection before answering the profile",
                ));
            }
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    format!(
                        "the server did not answer within {}s (-t sets the wait)",
                        bounds.wait.as_secs_f64()
                    ),
                ));
            }
            Err(err) => return Err(Error::io("reading from the server", &err)),
        }
        let text = String::from_utf8_lossy(&line);
        if first {
            if let Some(err) = session::refusal(&text) {
                return Err(err);
            }
            first = false;
        }
        let Ok(frame) = serde_json::from_str::<Value>(text.trim()) else {
            // A banner and a dump (the hello missed its window) come before the frames, but
            // not without end.
            skipped += line.len();
            if skipped > bounds.max_answer {
                return Err(session::too_large(bounds.max_answer));
            }
            continue;
        };
        if frame.get("command").and_then(Value::as_str) == Some("exec") {
            continue;
        }
        return Ok(frame);
    }
}

/// Draws the folded `lines` into an SVG at `path`.
fn write_flamegraph(path: &Path, lines: &[&str], data: &Value) -> Result<()> {
    let mut options = inferno::flamegraph::Options::default();
    options.title = format!(
        "manhole profile: {:.1} s at {} Hz, {} samples",
        data.get("seconds").and_then(Value::as_f64).unwrap_or(0.0),
        data.get("hz").and_then(Value::as_u64).unwrap_or(0),
        data.get("samples").and_then(Value::as_u64).unwrap_or(0),
    );
    options.count_name = "samples".to_string();
    let file = File::create(path)
        .map_err(|err| Error::io(format_args!("creating {}", path.display()), &err))?;
    let mut writer = BufWriter::new(file);
    inferno::flamegraph::from_lines(&mut options, lines.iter().copied(), &mut writer).map_err(
        |err| {
            Error::new(
                ErrorKind::Other,
                format!("drawing the flame graph into {}: {err}", path.display()),
            )
        },
    )?;
    writer
        .flush()
        .map_err(|err| Error::io(format_args!("writing {}", path.display()), &err))
}

fn write_stdout(data: &[u8]) -> Result<()> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(data)
        .and_then(|()| stdout.flush())
        .map_err(|err| Error::stdout(&err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_profile_has_folded_stacks() {
        assert_eq!(command_line(None).unwrap(), "profile");
        assert_eq!(command_line(Some("profile 3".into())).unwrap(), "profile 3");
        let err = command_line(Some("threads".into())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage);
    }
}
