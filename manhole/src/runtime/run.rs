//! Async registered commands and values: their futures run as tasks on the application's tokio
//! runtime (aiomanhole's default, non-threaded mode), never on a session thread.
//!
//! The session spawns the task and waits for its answer on a `std` channel, at most
//! `command_timeout`; no tokio timer is needed, so this works whatever drivers the application's
//! runtime enabled. On timeout the task is aborted: tokio drops the future at its next await
//! point, and the closing of the channel confirms it. A future that blocks inside `poll` (a
//! synchronous sleep, a busy loop) cannot be dropped until that poll returns; the session then
//! says the cancellation is still pending rather than claiming it happened.
//!
//! Creating the future (calling the registered closure) happens inside the task too, and both
//! that and every poll run under `catch_unwind`, so a panic is reported like a synchronous
//! command's instead of surfacing as a bare cancelled task.

use std::fmt::{self, Debug};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::Handle;

use super::Attached;
use crate::local::{Access, Local, Outcome, Slot, short_type_name};
use crate::registry::{self, Entry, Registration};

/// How long, after aborting a timed-out task, the session waits to see its future dropped.
const CANCEL_GRACE: Duration = Duration::from_millis(200);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why an async command or value read gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unanswered {
    /// Neither the registration nor the installation has a runtime to run it on (why).
    NoRuntime(&'static str),
    /// It ran out of time and its future was dropped.
    Cancelled(Duration),
    /// It ran out of time and was aborted, but the runtime has not dropped it yet: it is inside
    /// a `poll` that does not return, or the runtime's thread is blocked.
    CancelPending(Duration),
    /// It panicked; the panic message.
    Panicked(String),
    /// The runtime dropped the task before it finished (it is shutting down).
    Dropped,
}

impl fmt::Display for Unanswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unanswered::NoRuntime(why) => f.write_str(why),
            Unanswered::Cancelled(t) => write!(
                f,
                "timed out after {:.1} s and was cancelled (its future was dropped)",
                t.as_secs_f64()
            ),
            Unanswered::CancelPending(t) => write!(
                f,
                "timed out after {:.1} s; cancelled, but the future has not been dropped yet \
                 (it blocks inside poll, or the runtime is blocked); it ends at its next await",
                t.as_secs_f64()
            ),
            Unanswered::Panicked(message) => write!(f, "panicked: {message}"),
            Unanswered::Dropped => {
                f.write_str("the runtime dropped it before it finished (is it shutting down?)")
            }
        }
    }
}

/// A future that turns a panic in its inner future into an `Err` with the panic message.
struct CatchUnwind<T>(BoxFuture<T>);

impl<T> Future for CatchUnwind<T> {
    type Output = Result<T, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(payload) => Poll::Ready(Err(crate::threads::panic_message(&*payload))),
        }
    }
}

/// Spawns the future `make` creates on `handle` and waits for its output at most `timeout`;
/// past that the task is aborted. Runs on the calling (session) thread; `make` and the future
/// run on the runtime.
pub(crate) fn run_bounded_async<T, F>(
    handle: &Handle,
    timeout: Duration,
    make: F,
) -> Result<T, Unanswered>
where
    T: Send + 'static,
    F: FnOnce() -> BoxFuture<T> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let task = handle.spawn(async move {
        let outcome = CatchUnwind(Box::pin(async move { make().await })).await;
        let _ = tx.send(outcome);
    });
    let outcome = match rx.recv_timeout(timeout) {
        Ok(outcome) => outcome,
        Err(RecvTimeoutError::Disconnected) => return Err(Unanswered::Dropped),
        Err(RecvTimeoutError::Timeout) => {
            task.abort();
            match rx.recv_timeout(CANCEL_GRACE) {
                // It finished as it was being cancelled: the answer is there, give it.
                Ok(outcome) => outcome,
                Err(RecvTimeoutError::Disconnected) => return Err(Unanswered::Cancelled(timeout)),
                Err(RecvTimeoutError::Timeout) => return Err(Unanswered::CancelPending(timeout)),
            }
        }
    };
    outcome.map_err(Unanswered::Panicked)
}

/// The runtime a registration runs on: the one it was registered from, else the installation's.
/// Neither is used in a forked child of the process they belong to.
fn pick<'a>(home: &'a Attached, attached: &'a Attached) -> Result<&'a Handle, Unanswered> {
    home.handle()
        .or(attached.handle())
        .ok_or(Unanswered::NoRuntime(attached.missing()))
}

/// The body of an async registered command.
#[derive(Clone)]
pub(crate) struct AsyncCommand {
    #[allow(clippy::type_complexity)]
    make: Arc<dyn Fn(Vec<String>) -> BoxFuture<Result<String, String>> + Send + Sync>,
    /// The runtime current where it was registered, if any.
    home: Attached,
}

impl AsyncCommand {
    pub(crate) fn new<F, Fut>(run: F) -> AsyncCommand
    where
        F: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        AsyncCommand {
            make: Arc::new(move |args| Box::pin(run(args))),
            home: Attached::current(),
        }
    }

    /// Runs the command on its runtime, bounded by `timeout`.
    pub(crate) fn run(
        &self,
        args: Vec<String>,
        attached: &Attached,
        timeout: Duration,
    ) -> Result<Result<String, String>, Unanswered> {
        let handle = pick(&self.home, attached)?;
        let make = self.make.clone();
        run_bounded_async(handle, timeout, move || make(args))
    }
}

/// How an async value is read: a future computing its `Debug` text.
#[derive(Clone)]
pub(crate) struct AsyncRead {
    make: Arc<dyn Fn() -> BoxFuture<String> + Send + Sync>,
    home: Attached,
}

impl AsyncRead {
    /// Reads the value on its runtime, bounded by `timeout`.
    pub(crate) fn read(
        &self,
        attached: &Attached,
        timeout: Duration,
    ) -> Result<String, Unanswered> {
        let handle = pick(&self.home, attached)?;
        let make = self.make.clone();
        run_bounded_async(handle, timeout, move || make())
    }
}

struct AsyncSlot {
    reader: AsyncRead,
    type_name: String,
}

impl Slot for AsyncSlot {
    fn type_name(&self) -> String {
        self.type_name.clone()
    }
    fn read(&self, _: Access) -> Outcome<String> {
        Err("is read by a future on the tokio runtime".to_string())
    }
    fn async_reader(&self) -> Option<AsyncRead> {
        Some(self.reader.clone())
    }
}

impl Local {
    /// A read-only value computed by a future on the application's tokio runtime each time a
    /// session asks for it (for state behind a `tokio::sync` lock or a channel round trip).
    ///
    /// The future runs on the runtime this is called from, or else on the installation's runtime;
    /// it is bounded by `command_timeout` and dropped when that runs out.
    ///
    /// ```
    /// use std::sync::Arc;
    /// let queue = Arc::new(tokio::sync::Mutex::new(vec![1, 2, 3]));
    /// let value = manhole::Local::from_async_fn(move || {
    ///     let queue = queue.clone();
    ///     async move { queue.lock().await.len() }
    /// });
    /// assert_eq!(value.type_name(), "usize");
    /// ```
    pub fn from_async_fn<T, F, Fut>(read: F) -> Local
    where
        T: Debug + 'static,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let make = move || -> BoxFuture<String> {
            let future = read();
            Box::pin(async move { format!("{:?}", future.await) })
        };
        let reader = AsyncRead {
            make: Arc::new(make),
            home: Attached::current(),
        };
        Local::new(
            AsyncSlot {
                reader,
                type_name: short_type_name::<T>(),
            },
            false,
        )
    }
}

/// Registers a named async command at run time: `NAME ARGS...` in a session calls `run` with the
/// argument words and runs the future it returns as a task on the tokio runtime (the one this is
/// called from, else the installation's). `help` is the one-line description `help` shows.
///
/// The session waits for it at most `command_timeout`; then the task is aborted (its future is
/// dropped at its next await point) and the session says so.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let _registration = manhole::register_async_command("ping", "answer pong", |args| async move {
///     tokio::task::yield_now().await;
///     Ok(format!("pong {}", args.join(" ")))
/// });
/// # }
/// ```
pub fn register_async_command<F, Fut>(
    name: impl Into<String>,
    help: impl Into<String>,
    run: F,
) -> Registration
where
    F: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    registry::insert(
        name.into(),
        Entry::Command {
            help: help.into(),
            run: crate::local::CommandFn::Async(AsyncCommand::new(run)),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap()
    }

    #[test]
    fn an_async_command_answers_from_the_runtime() {
        let rt = runtime();
        let attached = Attached::new(rt.handle().clone());
        let command = AsyncCommand::new(|args: Vec<String>| async move {
            tokio::task::yield_now().await;
            Ok(format!(
                "{} on a runtime: {}",
                args.join("+"),
                Handle::try_current().is_ok()
            ))
        });
        let out = command
            .run(
                vec!["a".into(), "b".into()],
                &attached,
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(out.unwrap(), "a+b on a runtime: true");
    }

    #[test]
    fn a_timed_out_future_is_dropped() {
        struct Dropped(Arc<AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let rt = runtime();
        let attached = Attached::new(rt.handle().clone());
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let command = AsyncCommand::new(move |_| {
            let guard = Dropped(flag.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok(String::new())
            }
        });
        let err = command
            .run(Vec::new(), &attached, Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(err, Unanswered::Cancelled(Duration::from_millis(50)));
        assert!(dropped.load(Ordering::SeqCst));
        assert!(
            err.to_string()
                .contains("timed out after 0.1 s and was cancelled")
        );
    }

    #[test]
    fn a_future_blocking_in_poll_is_reported_as_pending_cancellation() {
        let rt = runtime();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let err = run_bounded_async(rt.handle(), Duration::from_millis(50), move || {
            Box::pin(async move {
                let _ = release_rx.lock().unwrap().recv();
            })
        })
        .unwrap_err();
        assert_eq!(err, Unanswered::CancelPending(Duration::from_millis(50)));
        drop(release_tx);
    }

    #[test]
    fn panics_are_reported_and_no_runtime_is_an_error() {
        let rt = runtime();
        let attached = Attached::new(rt.handle().clone());
        let command = AsyncCommand::new(|_| async { panic!("kaput") });
        assert_eq!(
            command.run(Vec::new(), &attached, Duration::from_secs(10)),
            Err(Unanswered::Panicked("kaput".into()))
        );
        let unattached = AsyncCommand::new(|_| async { Ok(String::new()) });
        assert_eq!(
            unattached.run(Vec::new(), &Attached::default(), Duration::from_secs(1)),
            Err(Unanswered::NoRuntime(crate::runtime::NO_RUNTIME))
        );
    }

    #[test]
    fn an_async_value_is_read_on_the_runtime() {
        let rt = runtime();
        let attached = Attached::new(rt.handle().clone());
        let queue = Arc::new(tokio::sync::Mutex::new(vec![1u8, 2, 3]));
        let value = Local::from_async_fn(move || {
            let queue = queue.clone();
            async move { queue.lock().await.len() }
        });
        assert_eq!(value.type_name(), "usize");
        let reader = value.async_reader().expect("an async value");
        assert_eq!(
            reader.read(&attached, Duration::from_secs(10)).unwrap(),
            "3"
        );
    }
}
