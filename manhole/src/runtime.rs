//! tokio support: the runtime an installation is attached to, the `runtime` and `tasks`
//! commands, and registered commands and values that run as futures on that runtime.
//!
//! Everything that touches tokio is behind the `tokio` feature. Without it this module keeps an
//! empty [`Attached`] and the two commands' one-line "no tokio support" answers, so a thread-only
//! build never compiles tokio.
//!
//! * **Which runtime.** [`Options::tokio_runtime`](crate::Options) names it; otherwise `install`
//!   called from inside a runtime attaches that one (`Handle::try_current`). An async command or
//!   value registered from inside a runtime runs on that runtime, else on the attached one.
//! * **`runtime`** reads the runtime's metrics: the stable ones always, the `tokio_unstable` ones
//!   (blocking pool, polls, steals, queues per worker) when the application is built with
//!   `--cfg tokio_unstable`.
//! * **`tasks`** asks tokio for a task dump (`Handle::dump`): every idle task re-polled in a
//!   tracing mode, giving the chain of futures it is waiting in. tokio only offers it with
//!   `--cfg tokio_unstable` and its `taskdump` feature (which the `tokio` feature turns on where
//!   tokio supports it: Linux on x86, x86_64, aarch64 and s390x). The dump is bounded by
//!   `command_timeout`, because it never finishes while a worker is blocked; symbolizing happens
//!   on the session thread, not on the runtime.
//! * **Task names** (the `names` submodule): a task names itself with `name_task`, and `tasks`
//!   shows the name beside the id tokio's dump gives.
//! * **Async commands and values** (the `run` submodule) are spawned as tasks on the runtime and
//!   awaited by the session thread through a channel, at most `command_timeout`. On timeout the
//!   task is aborted, so its future is dropped at its next await point, and the session says so.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

#[cfg(feature = "tokio")]
mod metrics;
#[cfg(feature = "tokio")]
mod names;
#[cfg(feature = "tokio")]
mod run;
#[cfg(feature = "tokio")]
mod taskdump;

#[cfg(feature = "tokio")]
pub use names::{TaskName, name_task};
#[cfg(feature = "tokio")]
pub use run::register_async_command;
#[cfg(feature = "tokio")]
pub(crate) use run::{AsyncCommand, AsyncRead};

/// What `runtime` and `tasks` answer in a build without the `tokio` feature.
#[cfg(not(feature = "tokio"))]
pub(crate) const NO_TOKIO: &str =
    "this build has no tokio support (enable the manhole `tokio` feature)";

/// What `runtime` and `tasks` answer when no runtime is attached.
#[cfg(feature = "tokio")]
pub(crate) const NO_RUNTIME: &str = "no tokio runtime is attached (install the manhole from inside \
     the runtime, or pass its handle to Options::tokio_runtime)";

/// What `runtime`, `tasks` and async commands answer in a forked child that has not attached a
/// runtime of its own.
#[cfg(feature = "tokio")]
pub(crate) const NO_RUNTIME_IN_CHILD: &str = "no tokio runtime in this forked child: the \
     parent's runtime has no workers here (the application can attach one of its own with \
     Options::tokio_runtime)";

/// The tokio runtime an installation is attached to. Empty without the `tokio` feature, so the
/// rest of the crate can carry one without `cfg`s.
///
/// A handle is only ever used in the process it was taken in: after `fork` the runtime's
/// workers do not exist in the child, and a task spawned there would never run.
#[derive(Clone, Default)]
pub(crate) struct Attached {
    #[cfg(feature = "tokio")]
    handle: Option<tokio::runtime::Handle>,
    /// The process `handle` belongs to.
    #[cfg(feature = "tokio")]
    pid: u32,
    /// A forked child's reinstall: no runtime is looked for (the current one, if any, is the
    /// parent's).
    #[cfg(feature = "tokio")]
    forked: bool,
}

impl fmt::Debug for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[cfg(feature = "tokio")]
        if let Some(handle) = &self.handle {
            return write!(f, "Attached({})", flavor(handle));
        }
        f.write_str("Attached(none)")
    }
}

impl Attached {
    /// A runtime named by the application.
    #[cfg(feature = "tokio")]
    pub(crate) fn new(handle: tokio::runtime::Handle) -> Attached {
        Attached {
            handle: Some(handle),
            pid: std::process::id(),
            forked: false,
        }
    }

    /// The runtime the caller runs on, if any.
    #[cfg(feature = "tokio")]
    pub(crate) fn current() -> Attached {
        tokio::runtime::Handle::try_current()
            .map(Attached::new)
            .unwrap_or_default()
    }

    /// The runtime an installation uses: the one named in the options, else the one `install`
    /// is called from (if any); none in a forked child's reinstall.
    pub(crate) fn for_install(&self) -> Attached {
        #[cfg(feature = "tokio")]
        if self.handle.is_none() && !self.forked {
            return Attached::current();
        }
        self.clone()
    }

    /// What a forked child's reinstall gets: no runtime, and none looked for.
    pub(crate) fn in_forked_child() -> Attached {
        #[cfg(feature = "tokio")]
        return Attached {
            handle: None,
            pid: 0,
            forked: true,
        };
        #[cfg(not(feature = "tokio"))]
        Attached::default()
    }

    /// Why there is no runtime to use: none attached, or the parent's in a forked child.
    #[cfg(feature = "tokio")]
    pub(crate) fn missing(&self) -> &'static str {
        if self.forked || self.handle.is_some() {
            NO_RUNTIME_IN_CHILD
        } else {
            NO_RUNTIME
        }
    }

    /// The attached runtime, unless it belongs to another process (this is a forked child).
    #[cfg(feature = "tokio")]
    pub(crate) fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.handle
            .as_ref()
            .filter(|_| !self.forked && self.pid == std::process::id())
    }

    /// The greeting's line about the runtime, when one is attached.
    pub(crate) fn greeting(&self) -> Option<String> {
        #[cfg(feature = "tokio")]
        if let Some(handle) = self.handle() {
            return Some(format!(
                "Tokio runtime attached: {}, {} workers (tokio names its threads \
                 \"tokio-rt-worker\" unless told otherwise); \"runtime\" and \"tasks\" inspect it.\n",
                flavor(handle),
                handle.metrics().num_workers(),
            ));
        }
        None
    }
}

#[cfg(feature = "tokio")]
fn flavor(handle: &tokio::runtime::Handle) -> &'static str {
    match handle.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
        tokio::runtime::RuntimeFlavor::MultiThread => "multi_thread",
        _ => "other",
    }
}

/// The `runtime` command: the attached runtime's metrics as text and data.
pub(crate) fn runtime_command(attached: &Attached) -> Result<(String, Value), String> {
    #[cfg(feature = "tokio")]
    {
        let handle = attached.handle().ok_or(attached.missing())?;
        Ok(metrics::report(handle, flavor(handle)))
    }
    #[cfg(not(feature = "tokio"))]
    {
        let _ = attached;
        Err(NO_TOKIO.to_string())
    }
}

/// The `tasks [FILTER]` command: every task's async backtrace, or only those with a frame whose
/// function name or file contains FILTER. The dump waits at most `timeout` for the runtime.
pub(crate) fn tasks_command(
    attached: &Attached,
    filter: Option<&str>,
    timeout: Duration,
    enabled: bool,
) -> Result<(String, Value), String> {
    #[cfg(feature = "tokio")]
    {
        taskdump::dump(attached, filter, timeout, enabled)
    }
    #[cfg(not(feature = "tokio"))]
    {
        let _ = (attached, filter, timeout, enabled);
        Err(NO_TOKIO.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(feature = "tokio"))]
    fn without_the_feature_both_commands_say_how_to_get_it() {
        let none = Attached::default().for_install();
        assert_eq!(runtime_command(&none).unwrap_err(), NO_TOKIO);
        let tasks = tasks_command(&none, None, Duration::from_secs(1), true).unwrap_err();
        assert_eq!(tasks, NO_TOKIO);
        assert!(none.greeting().is_none());
    }

    #[test]
    #[cfg(feature = "tokio")]
    fn without_a_runtime_both_commands_say_so() {
        let none = Attached::default().for_install();
        assert_eq!(runtime_command(&none).unwrap_err(), NO_RUNTIME);
        let tasks = tasks_command(&none, None, Duration::from_secs(1), true).unwrap_err();
        assert!(
            tasks == NO_RUNTIME || tasks.contains("--cfg tokio_unstable"),
            "{tasks}"
        );
    }

    #[test]
    #[cfg(feature = "tokio")]
    fn install_inside_a_runtime_attaches_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let attached = rt.block_on(async { Attached::default().for_install() });
        assert!(attached.handle().is_some());
        let greeting = attached.greeting().unwrap();
        assert!(
            greeting.starts_with("Tokio runtime attached: current_thread, 1 workers"),
            "{greeting}"
        );
    }
}
