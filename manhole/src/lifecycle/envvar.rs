//! Installing from the `MANHOLE` environment variable before `main` (python-manhole's
//! `PYTHONMANHOLE`).
//!
//! With the `env` feature (on by default) a constructor defined here (through
//! `sys::run_before_main!`) calls [`install_from_env`] when the program starts; without it,
//! nothing runs before `main` and the application (or a preload library) may call
//! [`install_from_env`] itself. Unset: nothing happens and nothing is allocated. Set in a
//! privileged process (`AT_SECURE`: setuid, setgid, file capabilities) it is ignored with one
//! log line, since whoever set it is not who the process runs as. Before installing, any closed
//! standard descriptor (0, 1, 2) is opened on `/dev/null`, as std would do just after, so that
//! the manhole's pipes and socket never take those numbers. Set: the value is **parsed, never
//! evaluated**, as
//! python-manhole's keyword arguments: `key=value` pairs separated by commas, values bare or
//! quoted, `True`/`False`/`None` in either case, lists in `[...]` or `(...)`:
//!
//! ```text
//! MANHOLE=''                                        # install with the defaults
//! MANHOLE='oneshot_on="USR2", verbose=False'        # python-manhole's spelling
//! MANHOLE='activate_on=USR2,verbose=false'          # the same, bare
//! MANHOLE='socket_path="/run/app/manhole", sigmask=[USR1, USR2], reinstall_delay=1.5'
//! ```
//!
//! The keys are the [`Options`] setters' names. A bad value prints one line on stderr and the
//! program starts normally, without a manhole.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::signals::SignalSpec;
use crate::{ConnectionHandler, Error, Manhole, Options, Result};

/// The environment variable read before `main`.
pub(crate) const VARIABLE: &str = "MANHOLE";

/// Set once `MANHOLE` has been acted on, so a second caller (the constructor and a preload
/// library, say) does not install twice.
static ATTEMPTED: AtomicBool = AtomicBool::new(false);

#[cfg(feature = "env")]
crate::sys::run_before_main!(install_before_main => install_before_main_body);

#[cfg(feature = "env")]
fn install_before_main_body() {
    let _ = install_from_env();
}

/// Installs the manhole from the `MANHOLE` environment variable, as the `env` feature does
/// before `main`. Returns `None` when the variable is unset, when it is ignored (a setuid,
/// setgid or file-capability process: `AT_SECURE`), or when it was already acted on in this
/// process; otherwise the result of the install. A bad value or a failed install is also
/// reported in one line on stderr; the program goes on without a manhole.
///
/// For programs built without the `env` feature that want `MANHOLE` honoured at a moment of
/// their choosing, and for a library that installs the manhole from its own constructor.
pub fn install_from_env() -> Option<Result<Manhole>> {
    let value = std::env::var_os(VARIABLE)?;
    if ATTEMPTED.swap(true, Ordering::SeqCst) {
        return None;
    }
    if crate::sys::is_secure_execution() {
        let line = crate::log::format_line(&format!(
            "{VARIABLE} is ignored: the program runs with more privileges than whoever set the \
             variable (setuid, setgid or file capabilities; AT_SECURE)"
        ));
        crate::log::write_line(2, line.as_bytes());
        return None;
    }
    crate::sys::ensure_standard_fds();
    let value = value.to_string_lossy();
    let installed = parse(&value).and_then(crate::install);
    if let Err(e) = &installed {
        let line = format!(
            "manhole: not installed from {VARIABLE}={value:?}: {e}; the program goes on without a \
             manhole\n"
        );
        crate::log::write_line(2, line.as_bytes());
    }
    Some(installed)
}

/// A parsed value: a word (bare or quoted) or a list.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Word { text: String, quoted: bool },
    List(Vec<Value>),
}

impl Value {
    fn is_none(&self) -> bool {
        matches!(self, Value::Word { text, quoted: false } if matches!(text.as_str(), "None" | "none" | "null"))
    }

    fn describe(&self) -> String {
        match self {
            Value::Word { text, .. } => format!("{text:?}"),
            Value::List(items) => format!("a list of {}", items.len()),
        }
    }
}

/// Parses a `MANHOLE` value into options (without installing).
pub(crate) fn parse(text: &str) -> Result<Options> {
    let mut options = Options::new();
    for (key, value) in parse_pairs(text)? {
        options = apply(options, &key, &value)?;
    }
    Ok(options)
}

struct Cursor<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
}

impl Cursor<'_> {
    fn skip_spaces(&mut self) {
        while self.chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|&(_, c)| c)
    }

    fn eat(&mut self, wanted: char) -> bool {
        self.chars.next_if(|&(_, c)| c == wanted).is_some()
    }
}

fn syntax(message: impl Into<String>) -> Error {
    Error::config(message)
}

fn parse_pairs(text: &str) -> Result<Vec<(String, Value)>> {
    let mut cursor = Cursor {
        chars: text.char_indices().peekable(),
    };
    let mut pairs = Vec::new();
    loop {
        cursor.skip_spaces();
        if cursor.peek().is_none() {
            return Ok(pairs);
        }
        let key = bare_word(&mut cursor);
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(syntax(format!(
                "expected an option name at {:?}",
                rest(&mut cursor, &key)
            )));
        }
        cursor.skip_spaces();
        if !cursor.eat('=') {
            return Err(syntax(format!("expected '=' after {key}")));
        }
        let value = parse_value(&mut cursor, &key)?;
        pairs.push((key, value));
        cursor.skip_spaces();
        match cursor.peek() {
            None => return Ok(pairs),
            Some(',') => {
                cursor.eat(',');
            }
            Some(c) => {
                return Err(syntax(format!(
                    "expected ',' after the value of {}, found {c:?}",
                    pairs.last().map(|(k, _)| k.as_str()).unwrap_or("?")
                )));
            }
        }
    }
}

fn rest(cursor: &mut Cursor<'_>, start: &str) -> String {
    let mut text = start.to_string();
    for (_, c) in cursor.chars.by_ref().take(20) {
        text.push(c);
    }
    text
}

/// Characters that end a bare word.
fn ends_word(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | '=' | '[' | ']' | '(' | ')' | '"' | '\'')
}

fn bare_word(cursor: &mut Cursor<'_>) -> String {
    let mut word = String::new();
    while let Some((_, c)) = cursor.chars.next_if(|&(_, c)| !ends_word(c)) {
        word.push(c);
    }
    word
}

fn parse_value(cursor: &mut Cursor<'_>, key: &str) -> Result<Value> {
    cursor.skip_spaces();
    match cursor.peek() {
        Some(quote @ ('"' | '\'')) => {
            cursor.eat(quote);
            let mut text = String::new();
            loop {
                match cursor.chars.next() {
                    None => return Err(syntax(format!("unterminated string in {key}"))),
                    Some((_, '\\')) => match cursor.chars.next() {
                        Some((_, c)) => text.push(c),
                        None => return Err(syntax(format!("unterminated string in {key}"))),
                    },
                    Some((_, c)) if c == quote => break,
                    Some((_, c)) => text.push(c),
                }
            }
            Ok(Value::Word { text, quoted: true })
        }
        Some(open @ ('[' | '(')) => {
            cursor.eat(open);
            let close = if open == '[' { ']' } else { ')' };
            let mut items = Vec::new();
            loop {
                cursor.skip_spaces();
                if cursor.eat(close) {
                    return Ok(Value::List(items));
                }
                let item = parse_value(cursor, key)?;
                if matches!(item, Value::List(_)) {
                    return Err(syntax(format!("nested lists are not accepted in {key}")));
                }
                items.push(item);
                cursor.skip_spaces();
                if !cursor.eat(',') && cursor.peek() != Some(close) {
                    return Err(syntax(format!(
                        "expected ',' or '{close}' in the list of {key}"
                    )));
                }
            }
        }
        _ => {
            let text = bare_word(cursor);
            if text.is_empty() {
                return Err(syntax(format!("{key} has no value")));
            }
            Ok(Value::Word {
                text,
                quoted: false,
            })
        }
    }
}

fn bad(key: &str, value: &Value, expected: &str) -> Error {
    Error::config(format!("{key}={} is not {expected}", value.describe()))
}

fn word<'v>(key: &str, value: &'v Value, expected: &str) -> Result<&'v str> {
    match value {
        Value::Word { text, .. } => Ok(text),
        Value::List(_) => Err(bad(key, value, expected)),
    }
}

fn boolean(key: &str, value: &Value) -> Result<bool> {
    match word(key, value, "a boolean")? {
        "True" | "true" | "1" | "yes" | "on" => Ok(true),
        "False" | "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(bad(key, value, "a boolean (True or False)")),
    }
}

fn number<T: std::str::FromStr>(key: &str, value: &Value) -> Result<T> {
    word(key, value, "a number")?
        .parse()
        .map_err(|_| bad(key, value, "a whole number"))
}

fn seconds(key: &str, value: &Value) -> Result<Duration> {
    let text = word(key, value, "a number of seconds")?;
    text.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| bad(key, value, "a number of seconds"))
}

/// A signal, checked now so a typo is reported with the variable.
fn signal(key: &str, value: &Value) -> Result<SignalSpec> {
    let text = word(key, value, "a signal")?;
    let spec = SignalSpec::from(text);
    spec.resolve()
        .map_err(|e| Error::new(e.kind(), format!("{key}: {}", e.message())))?;
    Ok(spec)
}

fn apply(options: Options, key: &str, value: &Value) -> Result<Options> {
    let none = value.is_none();
    Ok(match key {
        "verbose" => options.verbose(boolean(key, value)?),
        "verbose_destination" => options.verbose_destination(number(key, value)?),
        "thread" => options.thread(boolean(key, value)?),
        "strict" => options.strict(boolean(key, value)?),
        "daemon_connection" => options.daemon_connection(boolean(key, value)?),
        "redirect_stderr" => options.redirect_stderr(boolean(key, value)?),
        "redirect_stdout" => options.redirect_stdout(boolean(key, value)?),
        "patch_fork" => options.patch_fork(boolean(key, value)?),
        "reinstall_at_fork" => options.reinstall_at_fork(boolean(key, value)?),
        "cleanup_on_sigterm" => options.cleanup_on_sigterm(boolean(key, value)?),
        "cleanup_on_signals" => options.cleanup_on_signals(boolean(key, value)?),
        "socket_path" if none => options,
        "socket_path" => options.socket_path(word(key, value, "a path")?),
        "connection_handler" => options
            .connection_handler(word(key, value, "repl or exec")?.parse::<ConnectionHandler>()?),
        "activate_on" if none => options,
        "activate_on" => options.activate_on(signal(key, value)?),
        "oneshot_on" if none => options,
        "oneshot_on" => options.oneshot_on(signal(key, value)?),
        "dump_on" if none => options,
        "dump_on" => options.dump_on(signal(key, value)?),
        "dump_signal" => {
            let spec = signal(key, value)?;
            options.dump_signal(spec.resolve()?)
        }
        "sigmask" if none => options.sigmask(Vec::<SignalSpec>::new()),
        "sigmask" => match value {
            Value::Word {
                text,
                quoted: false,
            } if text.eq_ignore_ascii_case("all") => options.sigmask_all(),
            Value::List(items) => {
                let signals = items
                    .iter()
                    .map(|item| signal(key, item))
                    .collect::<Result<Vec<_>>>()?;
                options.sigmask(signals)
            }
            single => options.sigmask([signal(key, single)?]),
        },
        "reinstall_delay" => options.reinstall_delay(seconds(key, value)?),
        "max_sessions" => options.max_sessions(number(key, value)?),
        "max_frames" => options.max_frames(number(key, value)?),
        "profile_hz" => options.profile_hz(number(key, value)?),
        "dump_timeout" => options.dump_timeout(seconds(key, value)?),
        "lock_timeout" => options.lock_timeout(seconds(key, value)?),
        "command_timeout" => options.command_timeout(seconds(key, value)?),
        "task_dumps" => options.task_dumps(boolean(key, value)?),
        "write_timeout" => options.write_timeout(seconds(key, value)?),
        "idle_timeout" if none => options.idle_timeout(None),
        "idle_timeout" => options.idle_timeout(Some(seconds(key, value)?)),
        "locals" => {
            return Err(Error::config(
                "locals cannot be given in MANHOLE; register values in the program",
            ));
        }
        other => {
            return Err(Error::config(format!(
                "unknown option {other:?} (the names are those of manhole::Options)"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Options {
        parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn empty_means_defaults() {
        for text in ["", "   ", ","] {
            let options = parse(text);
            if text == "," {
                assert!(options.is_err());
                continue;
            }
            let options = options.unwrap();
            assert!(options.verbose && options.thread && options.activate_on.is_none());
        }
    }

    #[test]
    fn python_keyword_style_and_bare_style_agree() {
        let python = parsed(r#"oneshot_on="USR2", verbose=False"#);
        assert_eq!(python.oneshot_on, Some(SignalSpec::from("USR2")));
        assert!(!python.verbose);
        let bare = parsed("activate_on=USR2,verbose=false");
        assert_eq!(bare.activate_on, Some(SignalSpec::from("USR2")));
        assert!(!bare.verbose);
        let single = parsed("oneshot_on='SIGUSR2' , verbose = True ,");
        assert_eq!(single.oneshot_on, Some(SignalSpec::from("SIGUSR2")));
        assert!(single.verbose);
    }

    #[test]
    fn every_kind_of_value() {
        let o = parsed(
            r#"socket_path="/tmp/a b", thread=0, strict=False, daemon_connection=True,
               redirect_stderr=false, redirect_stdout=0, patch_fork=no, reinstall_delay=1.5,
               dump_on=RTMIN+2,
               sigmask=[USR1, "SIGUSR2", 15], verbose_destination=5, connection_handler=exec,
               idle_timeout=None, max_sessions=3, cleanup_on_sigterm=true, dump_signal=40,
               cleanup_on_signals=False"#,
        );
        assert_eq!(
            o.socket_path.as_deref(),
            Some(std::path::Path::new("/tmp/a b"))
        );
        assert!(!o.thread && !o.strict && o.daemon_connection && !o.redirect_stderr);
        assert!(!o.redirect_stdout);
        assert!(!o.patch_fork && o.cleanup_on_sigterm && !o.cleanup_on_signals);
        assert_eq!(o.reinstall_delay, Duration::from_millis(1500));
        assert_eq!(o.dump_on, Some(SignalSpec::from("RTMIN+2")));
        assert_eq!(
            o.sigmask,
            Some(vec![
                SignalSpec::from("USR1"),
                SignalSpec::from("SIGUSR2"),
                SignalSpec::from("15")
            ])
        );
        assert_eq!(o.verbose_destination, 5);
        assert_eq!(o.connection_handler, ConnectionHandler::Exec);
        assert_eq!(o.idle_timeout, None);
        assert_eq!(o.max_sessions, 3);
        assert_eq!(o.dump_signal, Some(40));
        assert_eq!(parsed("sigmask=None").sigmask, Some(vec![]));
        assert_eq!(parsed("sigmask=[]").sigmask, Some(vec![]));
        assert_eq!(parsed("sigmask=ALL").sigmask, None);
        assert_eq!(
            parsed("sigmask=USR1").sigmask,
            Some(vec![SignalSpec::from("USR1")])
        );
        assert_eq!(parsed("socket_path=None").socket_path, None);
        assert_eq!(
            parsed("sigmask=(USR1,)").sigmask,
            Some(vec![SignalSpec::from("USR1")])
        );
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let cases = [
            ("verbose=maybe", "verbose=\"maybe\" is not a boolean"),
            ("nosuch=1", "unknown option \"nosuch\""),
            ("activate_on=USR9", "activate_on: unknown signal"),
            ("oneshot_on=\"USR2", "unterminated string"),
            ("verbose", "expected '=' after verbose"),
            ("verbose=True verbose=False", "expected ','"),
            ("reinstall_delay=soon", "not a number of seconds"),
            ("reinstall_delay=-1", "not a number of seconds"),
            ("max_sessions=lots", "not a whole number"),
            ("sigmask=[USR1", "expected ',' or ']'"),
            ("locals={}", "locals cannot be given"),
            ("locals=1", "locals cannot be given"),
            ("=1", "expected an option name"),
            ("__import__('os').system('x')", "expected"),
            ("connection_handler=shell", "unknown connection_handler"),
        ];
        for (text, expected) in cases {
            let err = parse(text).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?} gave {err:?}");
            assert!(!err.contains('\n'), "{text:?} gave {err:?}");
        }
    }
}
