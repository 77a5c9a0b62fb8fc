//! The command language of a session: parsing a line and running it.
//!
//! Every command produces a [`Reply`]: on success the text the REPL prints and the same answer as
//! JSON data (see `docs/protocol.md`), on failure one line saying what was wrong. Nothing a client
//! types can end the session except `exit`/`quit` or closing the connection: an unknown command
//! or a bad argument is an error reply and the next line is read as usual.

use std::fmt::{self, Write as _};

use serde_json::{Value, json};

use crate::credentials::PeerCred;
use crate::local::Access;
use crate::log::log_event;
use crate::registry::{self, Entry, shorten};
use crate::runtime;
use crate::session::Settings;
use crate::stackdump::{self, JsonEscaped, StackDump, TextLayout, write_json_str};
use crate::threads::run_bounded;

/// What the session does after sending a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Continue,
    Exit,
    /// Answer with JSON frames (`true`) or text (`false`) from now on.
    JsonFormat(bool),
    /// Switch to exec framing, with frames carrying these parts of each answer.
    Exec(Forms),
}

/// Which parts of an answer an exec frame carries: the text, the data, or both (plain `exec`
/// and `format json`). A part left out is never written: a stack dump's JSON is several times
/// the size of its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forms {
    pub text: bool,
    pub data: bool,
}

impl Forms {
    pub(crate) const BOTH: Forms = Forms {
        text: true,
        data: true,
    };
    pub(crate) const TEXT: Forms = Forms {
        text: true,
        data: false,
    };
    pub(crate) const DATA: Forms = Forms {
        text: false,
        data: true,
    };

    /// The forms `exec [text|data]` asks for; `None` for other arguments.
    pub(crate) fn for_exec(args: &[&str]) -> Option<Forms> {
        match args {
            [] => Some(Forms::BOTH),
            ["text"] => Some(Forms::TEXT),
            ["data"] => Some(Forms::DATA),
            _ => None,
        }
    }
}

/// A successful answer: what the REPL prints, and the same as data.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Built already.
    Built { text: String, data: Value },
    /// A stack dump, written out only as the session sends it: the text and JSON of a big
    /// process are megabytes, and building them whole would leave that much in the session
    /// thread's malloc arena (glibc's `malloc_trim` does not shrink a thread arena's top).
    Dump(StackDump, TextLayout),
}

impl Answer {
    /// Writes what the REPL prints (without the prompt).
    fn write_text<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        match self {
            Answer::Built { text, .. } => out.write_str(text),
            Answer::Dump(dump, layout) => dump.write_text(*layout, out),
        }
    }

    /// Writes the data as JSON.
    fn write_data<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        match self {
            Answer::Built { data, .. } => write!(out, "{data}"),
            Answer::Dump(dump, _) => dump.write_json(out),
        }
    }
}

/// The reply to one command line.
#[derive(Debug)]
pub(crate) struct Reply {
    pub command: String,
    pub result: Result<Answer, String>,
    pub action: Action,
}

impl Reply {
    fn ok(command: &str, text: impl Into<String>, data: Value) -> Reply {
        Reply {
            command: command.to_string(),
            result: Ok(Answer::Built {
                text: text.into(),
                data,
            }),
            action: Action::Continue,
        }
    }

    fn err(command: &str, message: impl Into<String>) -> Reply {
        Reply {
            command: command.to_string(),
            result: Err(message.into()),
            action: Action::Continue,
        }
    }

    fn then(mut self, action: Action) -> Reply {
        self.action = action;
        self
    }

    /// The exec-mode frame, with the parts of the answer `forms` names: one line of JSON
    /// without the trailing newline.
    pub(crate) fn frame(&self, forms: Forms) -> String {
        let mut frame = String::new();
        let _ = self.write_frame(forms, &mut frame);
        frame
    }

    /// Writes [`frame`](Reply::frame) into `out` piece by piece (a dump's parts are never
    /// built whole).
    pub(crate) fn write_frame<W: fmt::Write>(&self, forms: Forms, out: &mut W) -> fmt::Result {
        out.write_str("{\"ok\":")?;
        out.write_str(if self.result.is_ok() { "true" } else { "false" })?;
        out.write_str(",\"command\":")?;
        write_json_str(out, &self.command)?;
        match &self.result {
            // In the documented key order: ok, command, then text and data, or error.
            Err(message) => {
                out.write_str(",\"error\":")?;
                write_json_str(out, message)?;
            }
            Ok(answer) => {
                if forms.text {
                    out.write_str(",\"text\":\"")?;
                    answer.write_text(&mut JsonEscaped(out))?;
                    out.write_char('"')?;
                }
                if forms.data {
                    out.write_str(",\"data\":")?;
                    answer.write_data(out)?;
                }
            }
        }
        out.write_char('}')
    }

    /// Writes the REPL form of the reply: the answer's text, ending with a newline unless it
    /// is empty, or one line `error: ...`.
    pub(crate) fn write_repl<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        match &self.result {
            Ok(Answer::Built { text, .. }) => {
                out.write_str(text)?;
                if !text.is_empty() && !text.ends_with('\n') {
                    out.write_char('\n')?;
                }
                Ok(())
            }
            // Always ends with a newline.
            Ok(answer @ Answer::Dump(..)) => answer.write_text(out),
            Err(message) => writeln!(out, "error: {message}"),
        }
    }
}

/// The built-in commands: name, usage, one-line description.
pub(crate) const BUILTINS: &[(&str, &str, &str)] = &[
    ("help", "help", "list the commands and registered commands"),
    (
        "threads",
        "threads [--all|--full] [--fresh] [TID|NAME]",
        "backtraces (alias: bt), identical stacks grouped; --all: each thread, --full: every frame, --fresh: signal idle threads again",
    ),
    (
        "locals",
        "locals",
        "list the registered values and commands",
    ),
    (
        "get",
        "get NAME",
        "show a registered value (a bare NAME works too)",
    ),
    (
        "set",
        "set NAME VALUE",
        "change a settable registered value",
    ),
    (
        "info",
        "info",
        "pid, executable, command line, user, uptime, memory, threads, fds",
    ),
    (
        "format",
        "format json|text",
        "answer with JSON frames or with text",
    ),
    (
        "exec",
        "exec [text|data]",
        "switch to exec framing: one JSON frame per answer (only its text or data), no prompt",
    ),
    (
        "runtime",
        "runtime",
        "the tokio runtime: workers, alive tasks, queues, busy time",
    ),
    (
        "tasks",
        "tasks [FILTER]",
        "every tokio task's async backtrace (needs --cfg tokio_unstable)",
    ),
    (
        "profile",
        "profile [SECONDS]",
        "sample every thread's on-CPU stack for SECONDS (default 5, at most 60): where the CPU goes",
    ),
    ("exit", "exit", "end the session (alias: quit)"),
];

/// The other words a session reads as built-in commands (see `run`), besides the names in
/// [`BUILTINS`].
const ALIASES: &[&str] = &["?", "bt", "quit"];

/// Why a registered name could not be used from a session, if it could not: a session splits
/// lines at white space (and reads every control character as a space), and a command named
/// like a built-in one is never reached (a value named so still is, with `get NAME`).
pub(crate) fn unusable_name(name: &str, is_command: bool) -> Option<String> {
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Some(format!(
            "the name {name:?} cannot be typed in a session: it is empty or has white space or \
             control characters"
        ));
    }
    let builtin = BUILTINS.iter().any(|&(word, ..)| word == name) || ALIASES.contains(&name);
    if is_command && builtin {
        return Some(format!(
            "a command named {name:?} would never run: {name:?} is a built-in command"
        ));
    }
    None
}

/// Splits a command line into words: white space separates them; a word that starts with `"`
/// runs to the next `"` not escaped by a backslash (inside, `\"` is `"` and `\\` is `\`), one
/// that starts with `'` runs to the next `'` (no escapes). Elsewhere quotes and backslashes are
/// plain characters, so `{"a":1}` stays one word as typed. A closing quote must end the word.
pub(crate) fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(first) = chars.next() else {
            return Ok(words);
        };
        let mut word = String::new();
        if first == '"' || first == '\'' {
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' if first == '"' && matches!(chars.peek(), Some('"' | '\\')) => {
                        word.extend(chars.next());
                    }
                    c if c == first => {
                        closed = true;
                        break;
                    }
                    c => word.push(c),
                }
            }
            if !closed {
                return Err(format!("unterminated {first} quote"));
            }
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return Err(format!(
                    "a closing {first} quote must end the word (put the whole word in quotes)"
                ));
            }
        } else {
            word.push(first);
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        words.push(word);
    }
}

/// Runs one command line for a session.
pub(crate) fn run(line: &str, settings: &Settings, peer: &PeerCred) -> Reply {
    run_waiting(line, settings, peer, &mut |pause| {
        std::thread::sleep(pause);
        true
    })
}

/// Runs one command line; a long command (`profile`) waits with `wait(pause)`, which sleeps up
/// to `pause` and returns false when the session should stop (the client left, uninstall).
pub(crate) fn run_waiting(
    line: &str,
    settings: &Settings,
    peer: &PeerCred,
    wait: &mut dyn FnMut(std::time::Duration) -> bool,
) -> Reply {
    let owned = match split_words(line) {
        Ok(words) => words,
        Err(message) => return Reply::err("", message),
    };
    let words: Vec<&str> = owned.iter().map(String::as_str).collect();
    let Some((&word, args)) = words.split_first() else {
        return Reply::ok("", "", Value::Null);
    };
    match word {
        "help" | "?" => help(),
        "threads" | "bt" => threads(word, args, settings),
        "locals" => locals(settings.policy.read_only),
        "get" => match args {
            [name] => get(name, settings),
            _ => Reply::err("get", "usage: get NAME"),
        },
        "set" => match args {
            [name, value @ ..] if !value.is_empty() => set(name, &value.join(" "), settings, peer),
            _ => Reply::err("set", "usage: set NAME VALUE"),
        },
        "info" => info(),
        "format" => match args {
            ["json"] => Reply::ok(
                "format",
                "answers are JSON frames from now on",
                json!({"format": "json"}),
            )
            .then(Action::JsonFormat(true)),
            ["text"] => Reply::ok(
                "format",
                "answers are text from now on",
                json!({"format": "text"}),
            )
            .then(Action::JsonFormat(false)),
            _ => Reply::err("format", "usage: format json|text"),
        },
        "exec" => match Forms::for_exec(args) {
            Some(forms) => Reply::ok(
                "exec",
                "",
                json!({"protocol": 1, "pid": std::process::id()}),
            )
            .then(Action::Exec(forms)),
            None => Reply::err("exec", "usage: exec [text|data]"),
        },
        "exit" | "quit" => Reply::ok(word, "", json!({})).then(Action::Exit),
        "runtime" => match args {
            [] => answered(word, runtime::runtime_command(&settings.runtime)),
            _ => Reply::err(word, "usage: runtime"),
        },
        "tasks" => match args {
            [] | [_] => answered(
                word,
                runtime::tasks_command(
                    &settings.runtime,
                    args.first().copied(),
                    settings.command_timeout,
                    settings.task_dumps,
                ),
            ),
            _ => Reply::err(word, "usage: tasks [FILTER]"),
        },
        "profile" => profile(args, settings, peer, wait),
        name => match registry::lookup(name) {
            Some(Entry::Value(_)) if args.is_empty() => get(name, settings),
            Some(Entry::Value(_)) => Reply::err(
                name,
                format!("{name} is a value: use \"set {name} VALUE\" to change it"),
            ),
            Some(Entry::Command { run, .. }) => {
                let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
                if settings.policy.read_only && run.changes_state() {
                    log_event!(
                        "Session of {peer} was refused command {} (read-only manhole)",
                        shorten(name)
                    );
                    return Reply::err(name, read_only_refusal(name));
                }
                log_event!(
                    "Session of {peer} runs {} {} {}",
                    run.kind(),
                    shorten(name),
                    shorten(&args.join(" "))
                );
                match run.run(args, &settings.runtime, settings.command_timeout) {
                    Ok(Ok(output)) => Reply::ok(
                        name,
                        output.clone(),
                        json!({"name": name, "output": output}),
                    ),
                    Ok(Err(message)) => Reply::err(name, format!("{name}: {message}")),
                    Err(unfinished) => Reply::err(name, format!("{name}: {unfinished}")),
                }
            }
            None => Reply::err(
                name,
                format!(
                    "unknown command {:?} (type \"help\" for the commands)",
                    shorten(name)
                ),
            ),
        },
    }
}

/// The reply of a command that answers with text and data or a one-line error.
fn answered(word: &str, result: Result<(String, Value), String>) -> Reply {
    match result {
        Ok((text, data)) => Reply::ok(word, text, data),
        Err(message) => Reply::err(word, message),
    }
}

fn help() -> Reply {
    let mut text = String::from("Commands:\n");
    let commands: Vec<Value> = BUILTINS
        .iter()
        .map(|(name, usage, help)| {
            let _ = writeln!(text, "  {usage:<22} {help}");
            json!({"name": name, "usage": usage, "help": help})
        })
        .collect();
    let mut registered = Vec::new();
    for (name, entry) in registry::snapshot() {
        if let Entry::Command { help, .. } = entry {
            registered.push(json!({"name": name, "help": help}));
            if registered.len() == 1 {
                text.push_str("Registered commands:\n");
            }
            let _ = writeln!(text, "  {name:<22} {help}");
        }
    }
    text.push_str("A bare NAME shows a registered value; \"locals\" lists them.");
    Reply::ok(
        "help",
        text,
        json!({"commands": commands, "registered": registered}),
    )
}

fn threads(word: &str, args: &[&str], settings: &Settings) -> Reply {
    const USAGE: &str = "usage: threads [--all] [--full] [--fresh] [TID|NAME]";
    let mut layout = TextLayout::short();
    let mut filter = None;
    let mut options = settings.dump.clone();
    for &arg in args {
        match arg {
            "--all" => layout = layout.every_thread(true),
            "--full" => layout = TextLayout::full(),
            "--fresh" => options.fresh = true,
            flag if flag.starts_with("--") => {
                return Reply::err(word, format!("unknown flag {:?}; {USAGE}", shorten(flag)));
            }
            name if filter.is_none() => filter = Some(name),
            _ => return Reply::err(word, USAGE),
        }
    }
    match stackdump::capture(&options) {
        Ok(dump) => {
            let dump = match filter {
                Some(filter) => {
                    let kept = dump.filtered(filter);
                    if kept.threads().is_empty() {
                        return Reply::err(
                            word,
                            format!(
                                "no thread has tid {0:?} or a name equal to or containing it ({1} threads; \"{word}\" lists them all)",
                                shorten(filter),
                                dump.threads().len()
                            ),
                        );
                    }
                    kept
                }
                None => dump,
            };
            Reply {
                command: word.to_string(),
                result: Ok(Answer::Dump(dump, layout)),
                action: Action::Continue,
            }
        }
        Err(e) => Reply::err(word, format!("cannot dump the threads: {e}")),
    }
}

fn profile(
    args: &[&str],
    settings: &Settings,
    peer: &PeerCred,
    wait: &mut dyn FnMut(std::time::Duration) -> bool,
) -> Reply {
    let duration = match crate::profile::parse_seconds(args) {
        Ok(duration) => duration,
        Err(usage) => return Reply::err("profile", usage),
    };
    log_event!(
        "Session of {peer} profiles for {:.1} s at {} Hz",
        duration.as_secs_f64(),
        settings.profile.hz
    );
    match crate::profile::run(&settings.profile, duration, wait) {
        Ok(profile) => Reply::ok("profile", profile.text(), profile.data()),
        Err(message) => Reply::err("profile", message),
    }
}

fn locals(read_only: bool) -> Reply {
    let entries = registry::snapshot();
    if entries.is_empty() {
        return Reply::ok("locals", "(nothing registered)", json!({"locals": []}));
    }
    let mut text = String::new();
    let mut list = Vec::new();
    for (name, entry) in entries {
        let (kind, type_name, settable) = match &entry {
            Entry::Value(local) => (
                "value",
                local.type_name(),
                local.is_settable() && !read_only,
            ),
            Entry::Command { run, .. } => ("command", run.kind().to_string(), false),
        };
        let mark = if settable {
            "settable"
        } else if kind == "command" {
            ""
        } else {
            "read-only"
        };
        let _ = writeln!(text, "{name:<20} {type_name:<24} {mark}");
        list.push(json!({"name": name, "type": type_name, "settable": settable, "kind": kind}));
    }
    text.pop();
    Reply::ok("locals", text, json!({"locals": list}))
}

fn access(settings: &Settings) -> Access {
    Access {
        lock_timeout: settings.lock_timeout,
    }
}

fn no_such(name: &str) -> String {
    format!("no local named {:?} (try \"locals\")", shorten(name))
}

/// The one-line answer to `set` or a state-changing command in a read-only manhole.
fn read_only_refusal(what: &str) -> String {
    if what == "set" {
        "set refused: this manhole is read-only".to_string()
    } else {
        format!(
            "{} refused: this manhole is read-only and the command may change state (only queries run)",
            shorten(what)
        )
    }
}

fn get(name: &str, settings: &Settings) -> Reply {
    let Some(Entry::Value(local)) = registry::lookup(name) else {
        return Reply::err("get", no_such(name));
    };
    #[cfg(feature = "tokio")]
    if let Some(reader) = local.async_reader() {
        return match reader.read(&settings.runtime, settings.command_timeout) {
            Ok(value) => Reply::ok(
                "get",
                value.clone(),
                json!({"name": name, "type": local.type_name(), "value": value, "settable": false}),
            ),
            Err(unanswered) => Reply::err("get", format!("{name}: reading it {unanswered}")),
        };
    }
    let access = access(settings);
    let reader = local.clone();
    match run_bounded(settings.command_timeout, move || reader.read(access)) {
        Ok(Ok(value)) => Reply::ok(
            "get",
            value.clone(),
            json!({"name": name, "type": local.type_name(), "value": value, "settable": local.is_settable() && !settings.policy.read_only}),
        ),
        Ok(Err(message)) | Err(crate::threads::Unfinished::Panicked(message)) => {
            Reply::err("get", format!("{name}: {message}"))
        }
        Err(unfinished) => Reply::err("get", format!("{name}: reading it is {unfinished}")),
    }
}

fn set(name: &str, value: &str, settings: &Settings, peer: &PeerCred) -> Reply {
    if settings.policy.read_only {
        log_event!(
            "Session of {peer} was refused set {} (read-only manhole)",
            shorten(name)
        );
        return Reply::err("set", read_only_refusal("set"));
    }
    let Some(Entry::Value(local)) = registry::lookup(name) else {
        return Reply::err("set", no_such(name));
    };
    if !local.is_settable() {
        return Reply::err("set", format!("{name} is read-only"));
    }
    let access = access(settings);
    let text = value.to_string();
    match run_bounded(settings.command_timeout, move || local.set(&text, access)) {
        Ok(Ok((old, new))) => {
            log_event!(
                "Session of {peer} set {name} from {} to {}",
                shorten(&old),
                shorten(&new)
            );
            Reply::ok(
                "set",
                format!("{name}: {old} -> {new}"),
                json!({"name": name, "old": old, "value": new}),
            )
        }
        Ok(Err(message)) => Reply::err("set", format!("{name}: {message}")),
        Err(unfinished) => Reply::err("set", format!("{name}: {unfinished}")),
    }
}

fn info() -> Reply {
    match crate::procfs::ProcessInfo::read() {
        Ok(info) => {
            let text = format!(
                "pid {} (ppid {})\nexecutable {}\ncommand line {}\nuid {} (euid {}), gid {} (egid {})\nuptime {:.1} s\nrss {} KiB\nthreads {}\nopen fds {}\nmanhole {}\nlog lines dropped {}",
                info.pid,
                info.ppid,
                info.exe,
                info.cmdline.join(" "),
                info.uid,
                info.euid,
                info.gid,
                info.egid,
                info.uptime.as_secs_f64(),
                info.rss_bytes / 1024,
                info.threads,
                info.fds,
                env!("CARGO_PKG_VERSION"),
                crate::log::dropped(),
            );
            let data = json!({
                "pid": info.pid, "ppid": info.ppid, "exe": info.exe, "cmdline": info.cmdline,
                "uid": info.uid, "euid": info.euid, "gid": info.gid, "egid": info.egid,
                "uptime_secs": info.uptime.as_secs_f64(), "rss_bytes": info.rss_bytes,
                "threads": info.threads, "fds": info.fds, "version": env!("CARGO_PKG_VERSION"),
                "log_lines_dropped": crate::log::dropped(),
            });
            Reply::ok("info", text, data)
        }
        Err(e) => Reply::err("info", format!("cannot read /proc/self: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump_reply() -> Reply {
        // Characters the JSON text of the frame must escape.
        let dump = crate::stackdump::tests::sample_named("tab\t \"quoted\" back\\ bell\u{7}");
        Reply {
            command: "threads".into(),
            result: Ok(Answer::Dump(dump, TextLayout::short())),
            action: Action::Continue,
        }
    }

    #[test]
    fn a_dump_frame_in_every_form_is_one_line_of_json_with_the_repl_text() {
        let reply = dump_reply();
        let Ok(Answer::Dump(dump, _)) = &reply.result else {
            unreachable!()
        };
        let mut repl = String::new();
        reply.write_repl(&mut repl).unwrap();
        assert_eq!(repl, dump.to_text());
        assert!(repl.ends_with('\n'));
        let data: Value = serde_json::from_str(&dump.to_json_string()).unwrap();
        for forms in [Forms::BOTH, Forms::TEXT, Forms::DATA] {
            let frame = reply.frame(forms);
            assert!(!frame.contains('\n'), "{frame}");
            let parsed: Value = serde_json::from_str(&frame).unwrap();
            assert_eq!(parsed["ok"], true);
            assert_eq!(parsed["command"], "threads");
            assert_eq!(parsed.get("text").is_some(), forms.text, "{frame}");
            assert_eq!(parsed.get("data").is_some(), forms.data, "{frame}");
            if forms.text {
                assert_eq!(parsed["text"], repl.as_str());
            }
            if forms.data {
                assert_eq!(parsed["data"], data);
            }
        }
    }

    #[test]
    fn words_split_at_white_space_and_quotes_group_them() {
        let words = |list: &[&str]| Ok(list.iter().map(|w| w.to_string()).collect::<Vec<_>>());
        assert_eq!(
            split_words("  get   log_level "),
            words(&["get", "log_level"])
        );
        assert_eq!(
            split_words(r#"get "log_level""#),
            words(&["get", "log_level"])
        );
        assert_eq!(
            split_words(r#"set motd "hello world""#),
            words(&["set", "motd", "hello world"])
        );
        assert_eq!(
            split_words(r#"set motd 'it said "hi"'"#),
            words(&["set", "motd", r#"it said "hi""#])
        );
        assert_eq!(
            split_words(r#"set motd "a \"quoted\" \\ and \n""#),
            words(&["set", "motd", r#"a "quoted" \ and \n"#])
        );
        assert_eq!(split_words(r#"set motd """#), words(&["set", "motd", ""]));
        assert_eq!(
            split_words(r#"set config {"a":1}"#),
            words(&["set", "config", r#"{"a":1}"#])
        );
        assert_eq!(split_words("don't"), words(&["don't"]));
        assert_eq!(split_words(""), words(&[]));
        let err = |line: &str| split_words(line).unwrap_err();
        assert!(err(r#"set motd "open"#).contains("unterminated \" quote"));
        assert!(err("get 'x").contains("unterminated ' quote"));
        assert!(err(r#"get "a"b"#).contains("must end the word"));
    }

    #[test]
    fn an_error_frame_keeps_the_documented_key_order() {
        let reply = Reply::err("get", "no local named \"x\"");
        assert_eq!(
            reply.frame(Forms::TEXT),
            r#"{"ok":false,"command":"get","error":"no local named \"x\""}"#
        );
        let mut repl = String::new();
        reply.write_repl(&mut repl).unwrap();
        assert_eq!(repl, "error: no local named \"x\"\n");
    }
}
