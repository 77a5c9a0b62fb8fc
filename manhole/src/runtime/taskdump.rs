//! The `tasks` command: every tokio task's async backtrace, from `Handle::dump`.
//!
//! tokio offers task dumps only with `--cfg tokio_unstable` and its `taskdump` feature, on Linux
//! x86, x86_64, aarch64 and s390x; elsewhere `tasks` answers with one line saying how to get them.
//!
//! The dump is requested from a task spawned on the application's runtime (a current-thread
//! runtime only allows that), and the session waits for it on a channel at most
//! `command_timeout`: tokio's dump pauses every worker and never finishes while one is blocked.
//! The requesting task itself is left out of the answer. Symbolizing (the slow part: it parses
//! debug info) happens afterwards on the session thread, never on the runtime.

use std::time::Duration;

use serde_json::Value;

use super::Attached;

#[cfg(all(
    tokio_unstable,
    target_os = "linux",
    any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "s390x"
    )
))]
pub(super) fn dump(
    attached: &Attached,
    filter: Option<&str>,
    timeout: Duration,
    enabled: bool,
) -> Result<(String, Value), String> {
    let handle = attached.handle().ok_or(attached.missing())?;
    if !enabled {
        return Err(imp::TASK_DUMPS_OFF.to_string());
    }
    imp::dump(handle, filter, timeout)
}

#[cfg(not(all(
    tokio_unstable,
    target_os = "linux",
    any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "s390x"
    )
)))]
pub(super) fn dump(
    _attached: &Attached,
    _filter: Option<&str>,
    _timeout: Duration,
    _enabled: bool,
) -> Result<(String, Value), String> {
    Err(
        "task dumps need tokio's unstable taskdump support: build the application with \
         RUSTFLAGS=\"--cfg tokio_unstable\" (Linux on x86, x86_64, aarch64 or s390x)"
            .to_string(),
    )
}

#[cfg(all(
    tokio_unstable,
    target_os = "linux",
    any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "s390x"
    )
))]
mod imp {
    use std::fmt::Write as _;
    use std::sync::mpsc::{self, RecvTimeoutError};
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};
    use tokio::runtime::Handle;
    use tokio::runtime::dump::{Backtrace, BacktraceSymbol};

    use crate::stackdump::symbolize::short_path;

    /// What `tasks` answers while `Options::task_dumps` is off.
    pub(super) const TASK_DUMPS_OFF: &str = "task dumps are off: tokio's task dump can panic or wedge \
         a runtime worker that is busy (tokio-rs/tokio#8370); turn them on with \
         Options::task_dumps(true) or MANHOLE task_dumps=true where that risk is acceptable";

    /// One task of the dump, symbolized.
    struct TaskTrace {
        id: String,
        /// What the task called itself with `name_task`.
        name: Option<String>,
        /// One backtrace per leaf future the task is waiting in, innermost frame first.
        backtraces: Vec<Backtrace>,
    }

    impl TaskTrace {
        fn matches(&self, filter: &str) -> bool {
            self.name.as_deref().is_some_and(|n| n.contains(filter))
                || self.backtraces.iter().any(|backtrace| {
                    backtrace
                        .frames()
                        .flat_map(|frame| frame.symbols())
                        .any(|symbol| {
                            symbol.name_demangled().is_some_and(|n| n.contains(filter))
                                || symbol
                                    .filename()
                                    .is_some_and(|f| f.to_string_lossy().contains(filter))
                        })
                })
        }

        fn write_text(&self, out: &mut String) {
            let count = self.backtraces.len();
            let task = match &self.name {
                Some(name) => format!("Task {} {name:?}", self.id),
                None => format!("Task {}", self.id),
            };
            match count {
                0 => {
                    let _ = writeln!(
                        out,
                        "{task}: no traced await point (tokio traces timers, channels, locks \
                         and joins, not I/O readiness)"
                    );
                }
                1 => {
                    let _ = writeln!(out, "{task} (1 await point)");
                }
                _ => {
                    let _ = writeln!(out, "{task} ({count} await points)");
                }
            }
            for (i, backtrace) in self.backtraces.iter().enumerate() {
                if count > 1 {
                    let _ = writeln!(out, "  await point {} of {count}:", i + 1);
                }
                for (index, frame) in backtrace.frames().enumerate() {
                    let number = format!("#{index}");
                    let ip = frame.ip() as usize;
                    let symbols: Vec<&BacktraceSymbol> = frame.symbols().collect();
                    if symbols.is_empty() {
                        let _ = writeln!(out, "  {number:<3} {ip:#018x} ??");
                        continue;
                    }
                    let last = symbols.len() - 1;
                    for (k, symbol) in symbols.iter().enumerate() {
                        let inlined = if k < last { " (inlined)" } else { "" };
                        let line = format!("{} ({}){inlined}", name(symbol), place(symbol));
                        if k == 0 {
                            let _ = writeln!(out, "  {number:<3} {ip:#018x} {line}");
                        } else {
                            let _ = writeln!(out, "  {:<3} {:18} {line}", "", "");
                        }
                    }
                }
            }
        }

        fn to_json(&self) -> Value {
            let backtraces: Vec<Value> = self
                .backtraces
                .iter()
                .map(|backtrace| {
                    let frames: Vec<Value> = backtrace
                        .frames()
                        .map(|frame| {
                            let symbols: Vec<Value> = frame
                                .symbols()
                                .map(|s| {
                                    json!({
                                        "name": s.name_demangled().map(strip_hash),
                                        "file": s.filename().map(|f| short_path(std::path::Path::new(&*f.to_string_lossy()))),
                                        "line": s.lineno(),
                                        "column": s.colno(),
                                    })
                                })
                                .collect();
                            json!({"ip": format!("{:#x}", frame.ip() as usize), "symbols": symbols})
                        })
                        .collect();
                    Value::Array(frames)
                })
                .collect();
            json!({"id": self.id, "name": self.name, "backtraces": backtraces})
        }
    }

    fn name(symbol: &BacktraceSymbol) -> String {
        symbol
            .name_demangled()
            .map(strip_hash)
            .unwrap_or_else(|| "??".to_string())
    }

    fn place(symbol: &BacktraceSymbol) -> String {
        match (symbol.filename(), symbol.lineno()) {
            (Some(file), Some(line)) => format!(
                "{}:{line}",
                short_path(std::path::Path::new(&*file.to_string_lossy()))
            ),
            (Some(file), None) => short_path(std::path::Path::new(&*file.to_string_lossy())),
            _ => "??".to_string(),
        }
    }

    pub(super) fn dump(
        handle: &Handle,
        filter: Option<&str>,
        timeout: Duration,
    ) -> Result<(String, Value), String> {
        let started = Instant::now();
        let (tx, rx) = mpsc::sync_channel(1);
        let dumper = handle.clone();
        let task = handle.spawn(async move {
            let me = tokio::task::id();
            let dump = dumper.dump().await;
            let _ = tx.send((me, dump));
        });
        let (me, dump) = match rx.recv_timeout(timeout) {
            Ok(answer) => answer,
            Err(RecvTimeoutError::Timeout) => {
                task.abort();
                return Err(format!(
                    "the runtime gave no task dump within {:.1} s (a dump waits for every worker: \
                     is one blocked? \"threads tokio\" shows them)",
                    timeout.as_secs_f64()
                ));
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err("the runtime dropped the dump request (is it shutting down?)".into());
            }
        };
        let dumped_in = started.elapsed();
        let symbolizing = Instant::now();
        let mut tasks: Vec<TaskTrace> = dump
            .tasks()
            .iter()
            .filter(|task| task.id() != me)
            .map(|task| TaskTrace {
                id: task.id().to_string(),
                name: super::super::names::lookup(task.id()),
                backtraces: task.trace().resolve_backtraces(),
            })
            .collect();
        let total = tasks.len();
        if let Some(filter) = filter {
            tasks.retain(|task| task.matches(filter));
            // As `threads FILTER`: a filter that matches nothing is an error, not an empty list.
            if tasks.is_empty() {
                let shown: String = filter.chars().take(64).collect();
                return Err(format!(
                    "no task has a name or frame matching {shown:?} ({total} tasks; \"tasks\" lists them all)"
                ));
            }
        }
        let symbolized_in = symbolizing.elapsed();

        let mut text = format!(
            "Tasks: {total} idle task{} traced in {:.1} ms + {:.1} ms symbolize",
            if total == 1 { "" } else { "s" },
            dumped_in.as_secs_f64() * 1e3,
            symbolized_in.as_secs_f64() * 1e3
        );
        if let Some(filter) = filter {
            let _ = write!(
                text,
                "; {} with a name or frame matching {filter:?}",
                tasks.len()
            );
        }
        text.push('\n');
        for task in &tasks {
            text.push('\n');
            task.write_text(&mut text);
        }
        let data = json!({
            "total": total,
            "dump_micros": dumped_in.as_micros() as u64,
            "symbolize_micros": symbolized_in.as_micros() as u64,
            "filter": filter,
            "tasks": tasks.iter().map(TaskTrace::to_json).collect::<Vec<_>>(),
        });
        Ok((text, data))
    }

    /// `foo::bar::h0123456789abcdef` without its hash.
    fn strip_hash(name: &str) -> String {
        match name.rsplit_once("::h") {
            Some((head, hash))
                if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                head.to_string()
            }
            _ => name.to_string(),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        async fn parked_in_a_named_function(wait: tokio::sync::oneshot::Receiver<()>) {
            let _ = wait.await;
        }

        #[test]
        fn a_waiting_task_is_listed_with_its_own_frames() {
            // One worker: with two, tokio's dump barrier can elect a lone leader after a worker
            // was late (tokio-rs/tokio#8370) and then wedge that worker, which hung this test on
            // a loaded machine. It is why task dumps are opt-in.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .build()
                .unwrap();
            let (stop, wait) = tokio::sync::oneshot::channel::<()>();
            rt.spawn(async move {
                let _name = crate::name_task("parked-task");
                parked_in_a_named_function(wait).await
            });
            let (text, data) = dump(rt.handle(), None, Duration::from_secs(20)).unwrap();
            // rustc names an async fn's body `{async_fn#0}` in its debug info, without the
            // path: the file and line say whose body it is.
            assert!(text.contains("src/runtime/taskdump.rs:"), "{text}");
            assert!(text.contains("oneshot::Receiver<T>"), "{text}");
            assert_eq!(data["total"], 1, "the requesting task is left out: {data}");
            assert!(
                text.contains(r#"Task "#) && text.contains(r#" "parked-task" ("#),
                "{text}"
            );
            assert_eq!(data["tasks"][0]["name"], "parked-task", "{data}");
            let (_, by_name) =
                dump(rt.handle(), Some("parked-t"), Duration::from_secs(20)).unwrap();
            assert_eq!(by_name["tasks"].as_array().unwrap().len(), 1, "{by_name}");
            let none = dump(rt.handle(), Some("no_such_fn"), Duration::from_secs(20)).unwrap_err();
            assert!(
                none.starts_with("no task has a name or frame matching"),
                "{none}"
            );
            let attached = crate::runtime::Attached::new(rt.handle().clone());
            let off = super::super::dump(&attached, None, Duration::from_secs(20), false);
            assert_eq!(off.unwrap_err(), TASK_DUMPS_OFF);
            let _ = stop.send(());
        }

        #[test]
        fn hashes_are_stripped() {
            assert_eq!(strip_hash("a::b::h0123456789abcdef"), "a::b");
            assert_eq!(strip_hash("a::hello"), "a::hello");
        }
    }
}
