//! Registered values ("locals") and commands: what a session can read, set and run.
//!
//! A [`Local`] wraps something the application shares with the manhole. Each constructor says
//! how it is read and whether it can be set:
//!
//! | constructor | holds | `set` |
//! |---|---|---|
//! | [`Local::debug`] | `Arc<T: Debug>` | no |
//! | [`Local::from_fn`] | a closure returning `T: Debug` | no |
//! | [`Local::locked`] | `Arc<Mutex<T>>`/`Arc<RwLock<T>>` (std or parking_lot) | no |
//! | [`Local::settable_locked`] | the same, with `T: FromStr` | yes, parsed |
//! | [`Local::atomic`] | `Arc<AtomicU64>` and every other std atomic | no |
//! | [`Local::settable_atomic`] | the same | yes, parsed |
//! | [`Local::settable_fn`] | a reading closure and a setting closure | yes, by the closure |
//! | `Local::log_filter` (feature `tracing`) | a reload handle to an `EnvFilter` | yes, directives |
//! | `Local::log_level` (feature `log`) | `log::max_level` | yes, a level |
//!
//! Reading a value behind a lock tries the lock until the session's `lock_timeout` and then
//! says the lock is busy: a session never hangs on an application lock. A poisoned std lock is
//! read anyway and marked as poisoned.

use std::fmt::{self, Debug};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{self, Ordering};
use std::time::{Duration, Instant};

/// How long a read may try to take a lock; handed to every read and set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Access {
    pub lock_timeout: Duration,
}

/// The result of reading or setting a value: the `Debug` text, or a one-line reason.
pub(crate) type Outcome<T> = std::result::Result<T, String>;

/// How the manhole reads (and maybe sets) one registered value.
pub(crate) trait Slot: Send + Sync {
    fn type_name(&self) -> String;
    fn read(&self, access: Access) -> Outcome<String>;
    /// `None` when the value is read-only; otherwise the old and the new text.
    fn set(&self, _text: &str, _access: Access) -> Option<Outcome<(String, String)>> {
        None
    }
    /// For a value read by a future on the tokio runtime, that reader (then `read` is not used).
    #[cfg(feature = "tokio")]
    fn async_reader(&self) -> Option<crate::runtime::AsyncRead> {
        None
    }
}

/// A value the application registered, as a session sees it. Cheap to clone.
#[derive(Clone)]
pub struct Local {
    slot: Arc<dyn Slot>,
    settable: bool,
}

impl Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("type", &self.slot.type_name())
            .field("settable", &self.settable)
            .finish()
    }
}

impl Local {
    pub(crate) fn new(slot: impl Slot + 'static, settable: bool) -> Local {
        Local {
            slot: Arc::new(slot),
            settable,
        }
    }

    /// A read-only value shown with its `Debug` text.
    pub fn debug<T: Debug + Send + Sync + 'static>(value: Arc<T>) -> Local {
        Local::new(DebugSlot(value), false)
    }

    /// A read-only value computed by `read` each time a session asks for it.
    pub fn from_fn<T: Debug, F: Fn() -> T + Send + Sync + 'static>(read: F) -> Local {
        Local::new(FnSlot(read), false)
    }

    /// A read-only value behind a lock (`std::sync::{Mutex, RwLock}` or
    /// `parking_lot::{Mutex, RwLock}`), read with a timeout on the lock.
    pub fn locked<L: Lock + 'static>(lock: Arc<L>) -> Local {
        Local::new(LockSlot(lock), false)
    }

    /// A value behind a lock that `set NAME VALUE` replaces with `VALUE` parsed by `FromStr`.
    pub fn settable_locked<L>(lock: Arc<L>) -> Local
    where
        L: Lock + 'static,
        L::Target: FromStr,
        <L::Target as FromStr>::Err: fmt::Display,
    {
        Local::new(SettableLockSlot(lock), true)
    }

    /// A read-only atomic (any `std::sync::atomic` integer or bool).
    pub fn atomic<A: Atomic + 'static>(value: Arc<A>) -> Local {
        Local::new(
            AtomicSlot {
                value,
                settable: false,
            },
            false,
        )
    }

    /// An atomic that `set NAME VALUE` stores into, parsed as its integer type or bool.
    pub fn settable_atomic<A: Atomic + 'static>(value: Arc<A>) -> Local {
        Local::new(
            AtomicSlot {
                value,
                settable: true,
            },
            true,
        )
    }

    /// A value read by `get` and changed by `set`, for state that is not a plain lock or
    /// atomic: a log filter behind a reload handle, a pool size applied by a method call.
    ///
    /// `get` returns the value, shown with its `Display` text. `set NAME VALUE` calls `set` with
    /// `VALUE` (the rest of the line, as typed); it returns the new value's text, or a reason it
    /// refused, which the session shows as one line (`error: NAME: reason`). A refusing `set`
    /// must leave the value as it was. Both run on a manhole worker thread, bounded by the
    /// session's `command_timeout`.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
    /// let pool_size = Arc::new(AtomicU64::new(8));
    /// let (read, write) = (pool_size.clone(), pool_size.clone());
    /// let _registration = manhole::register(
    ///     "pool_size",
    ///     manhole::Local::settable_fn(
    ///         move || read.load(Ordering::Relaxed),
    ///         move |text| {
    ///             let size: u64 = text.trim().parse().map_err(|e| format!("not a size: {e}"))?;
    ///             if !(1..=64).contains(&size) {
    ///                 return Err(format!("{size} is not between 1 and 64"));
    ///             }
    ///             write.store(size, Ordering::Relaxed);
    ///             Ok(size.to_string())
    ///         },
    ///     ),
    /// );
    /// ```
    pub fn settable_fn<T, G, S>(get: G, set: S) -> Local
    where
        T: fmt::Display,
        G: Fn() -> T + Send + Sync + 'static,
        S: Fn(&str) -> std::result::Result<String, String> + Send + Sync + 'static,
    {
        Local::new(SettableFnSlot { get, set }, true)
    }

    /// Whether `set` may change this value.
    pub fn is_settable(&self) -> bool {
        self.settable
    }

    /// The Rust type of the value, as `locals` lists it.
    pub fn type_name(&self) -> String {
        self.slot.type_name()
    }

    pub(crate) fn read(&self, access: Access) -> Outcome<String> {
        self.slot.read(access)
    }

    /// The future-based reader of a value made by `Local::from_async_fn`.
    #[cfg(feature = "tokio")]
    pub(crate) fn async_reader(&self) -> Option<crate::runtime::AsyncRead> {
        self.slot.async_reader()
    }

    pub(crate) fn set(&self, text: &str, access: Access) -> Outcome<(String, String)> {
        self.slot
            .set(text, access)
            .unwrap_or_else(|| Err("is read-only".to_string()))
    }
}

pub(crate) fn short_type_name<T: ?Sized>() -> String {
    // `alloc::string::String` reads better as `String`: keep the last path segment of each part.
    let full = std::any::type_name::<T>();
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or(""));
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or(""));
    out
}

struct DebugSlot<T>(Arc<T>);

impl<T: Debug + Send + Sync> Slot for DebugSlot<T> {
    fn type_name(&self) -> String {
        short_type_name::<T>()
    }
    fn read(&self, _: Access) -> Outcome<String> {
        Ok(format!("{:?}", self.0))
    }
}

struct FnSlot<F>(F);

impl<T: Debug, F: Fn() -> T + Send + Sync> Slot for FnSlot<F> {
    fn type_name(&self) -> String {
        short_type_name::<T>()
    }
    fn read(&self, _: Access) -> Outcome<String> {
        Ok(format!("{:?}", (self.0)()))
    }
}

struct SettableFnSlot<G, S> {
    get: G,
    set: S,
}

impl<T, G, S> Slot for SettableFnSlot<G, S>
where
    T: fmt::Display,
    G: Fn() -> T + Send + Sync,
    S: Fn(&str) -> std::result::Result<String, String> + Send + Sync,
{
    fn type_name(&self) -> String {
        short_type_name::<T>()
    }
    fn read(&self, _: Access) -> Outcome<String> {
        Ok((self.get)().to_string())
    }
    fn set(&self, text: &str, _: Access) -> Option<Outcome<(String, String)>> {
        let old = (self.get)().to_string();
        Some(
            (self.set)(text)
                .map(|new| (old, new))
                .map_err(|reason| one_line(&reason)),
        )
    }
}

/// A reason from application code, folded to one line: an answer's error is one line.
fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A lock the manhole can try with a timeout. Implemented for `std::sync::{Mutex, RwLock}` and
/// `parking_lot::{Mutex, RwLock}`.
pub trait Lock: Send + Sync {
    /// The locked type.
    type Target: Debug;
    /// Runs `f` on the value if the lock can be had within `timeout`; `None` if it cannot.
    /// The flag says whether a std lock was poisoned.
    fn with_read<R>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&Self::Target, bool) -> R,
    ) -> Option<R>;
    /// Runs `f` on the value for writing if the lock can be had within `timeout`.
    fn with_write<R>(&self, timeout: Duration, f: impl FnOnce(&mut Self::Target) -> R)
    -> Option<R>;
    /// The lock's own name, for `locals`.
    fn lock_name() -> &'static str;
}

/// Retries `attempt` with short growing pauses until it yields or `timeout` passes. std locks have
/// no timed acquire, so this is how they are tried without blocking forever.
fn try_until<R>(timeout: Duration, mut attempt: impl FnMut() -> Option<R>) -> Option<R> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(50);
    loop {
        if let Some(r) = attempt() {
            return Some(r);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

impl<T: Debug + Send> Lock for std::sync::Mutex<T> {
    type Target = T;
    fn with_read<R>(&self, timeout: Duration, f: impl FnOnce(&T, bool) -> R) -> Option<R> {
        let guard = try_until(timeout, || match self.try_lock() {
            Ok(g) => Some((g, false)),
            Err(std::sync::TryLockError::Poisoned(p)) => Some((p.into_inner(), true)),
            Err(std::sync::TryLockError::WouldBlock) => None,
        })?;
        Some(f(&guard.0, guard.1))
    }
    fn with_write<R>(&self, timeout: Duration, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut guard = try_until(timeout, || match self.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        })?;
        Some(f(&mut guard))
    }
    fn lock_name() -> &'static str {
        "Mutex"
    }
}

impl<T: Debug + Send + Sync> Lock for std::sync::RwLock<T> {
    type Target = T;
    fn with_read<R>(&self, timeout: Duration, f: impl FnOnce(&T, bool) -> R) -> Option<R> {
        let guard = try_until(timeout, || match self.try_read() {
            Ok(g) => Some((g, false)),
            Err(std::sync::TryLockError::Poisoned(p)) => Some((p.into_inner(), true)),
            Err(std::sync::TryLockError::WouldBlock) => None,
        })?;
        Some(f(&guard.0, guard.1))
    }
    fn with_write<R>(&self, timeout: Duration, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut guard = try_until(timeout, || match self.try_write() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        })?;
        Some(f(&mut guard))
    }
    fn lock_name() -> &'static str {
        "RwLock"
    }
}

impl<T: Debug + Send> Lock for parking_lot::Mutex<T> {
    type Target = T;
    fn with_read<R>(&self, timeout: Duration, f: impl FnOnce(&T, bool) -> R) -> Option<R> {
        self.try_lock_for(timeout).map(|g| f(&g, false))
    }
    fn with_write<R>(&self, timeout: Duration, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.try_lock_for(timeout).map(|mut g| f(&mut g))
    }
    fn lock_name() -> &'static str {
        "Mutex"
    }
}

impl<T: Debug + Send + Sync> Lock for parking_lot::RwLock<T> {
    type Target = T;
    fn with_read<R>(&self, timeout: Duration, f: impl FnOnce(&T, bool) -> R) -> Option<R> {
        self.try_read_for(timeout).map(|g| f(&g, false))
    }
    fn with_write<R>(&self, timeout: Duration, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.try_write_for(timeout).map(|mut g| f(&mut g))
    }
    fn lock_name() -> &'static str {
        "RwLock"
    }
}

fn lock_busy(timeout: Duration) -> String {
    format!(
        "lock is busy: not acquired within {} ms",
        timeout.as_millis()
    )
}

fn read_locked<L: Lock>(lock: &L, access: Access) -> Outcome<String> {
    lock.with_read(access.lock_timeout, |value, poisoned| {
        if poisoned {
            format!("{value:?} (lock poisoned)")
        } else {
            format!("{value:?}")
        }
    })
    .ok_or_else(|| lock_busy(access.lock_timeout))
}

fn locked_type_name<L: Lock>() -> String {
    format!("{}<{}>", L::lock_name(), short_type_name::<L::Target>())
}

struct LockSlot<L>(Arc<L>);

impl<L: Lock> Slot for LockSlot<L> {
    fn type_name(&self) -> String {
        locked_type_name::<L>()
    }
    fn read(&self, access: Access) -> Outcome<String> {
        read_locked(&*self.0, access)
    }
}

struct SettableLockSlot<L>(Arc<L>);

impl<L> Slot for SettableLockSlot<L>
where
    L: Lock,
    L::Target: FromStr,
    <L::Target as FromStr>::Err: fmt::Display,
{
    fn type_name(&self) -> String {
        locked_type_name::<L>()
    }
    fn read(&self, access: Access) -> Outcome<String> {
        read_locked(&*self.0, access)
    }
    fn set(&self, text: &str, access: Access) -> Option<Outcome<(String, String)>> {
        let parsed = match text.parse::<L::Target>() {
            Ok(v) => v,
            Err(e) => {
                return Some(Err(format!(
                    "cannot parse {:?} as {}: {e}",
                    crate::registry::shorten(text),
                    short_type_name::<L::Target>()
                )));
            }
        };
        Some(
            self.0
                .with_write(access.lock_timeout, |value| {
                    let old = format!("{value:?}");
                    *value = parsed;
                    (old, format!("{value:?}"))
                })
                .ok_or_else(|| lock_busy(access.lock_timeout)),
        )
    }
}

/// An atomic value the manhole can load and, for settable locals, store text into.
/// Implemented for every integer atomic and `AtomicBool` of `std::sync::atomic`.
pub trait Atomic: Send + Sync {
    /// The current value as text.
    fn load_text(&self) -> String;
    /// Parses `text` and stores it; returns the old value's text.
    fn store_text(&self, text: &str) -> Outcome<String>;
    /// The atomic's type name, for `locals`.
    fn atomic_name() -> &'static str;
}

macro_rules! impl_atomic {
    ($($atomic:ident => $int:ty),* $(,)?) => {$(
        impl Atomic for atomic::$atomic {
            fn load_text(&self) -> String {
                self.load(Ordering::Relaxed).to_string()
            }
            fn store_text(&self, text: &str) -> Outcome<String> {
                let value: $int = text.trim().parse().map_err(|e| {
                    format!(
                        "cannot parse {:?} as {}: {e}",
                        crate::registry::shorten(text),
                        stringify!($int)
                    )
                })?;
                Ok(self.swap(value, Ordering::SeqCst).to_string())
            }
            fn atomic_name() -> &'static str {
                stringify!($atomic)
            }
        }
    )*};
}

impl_atomic!(
    AtomicBool => bool, AtomicI8 => i8, AtomicI16 => i16, AtomicI32 => i32, AtomicI64 => i64,
    AtomicIsize => isize, AtomicU8 => u8, AtomicU16 => u16, AtomicU32 => u32, AtomicU64 => u64,
    AtomicUsize => usize,
);

struct AtomicSlot<A> {
    value: Arc<A>,
    settable: bool,
}

impl<A: Atomic> Slot for AtomicSlot<A> {
    fn type_name(&self) -> String {
        A::atomic_name().to_string()
    }
    fn read(&self, _: Access) -> Outcome<String> {
        Ok(self.value.load_text())
    }
    fn set(&self, text: &str, _: Access) -> Option<Outcome<(String, String)>> {
        if !self.settable {
            return None;
        }
        Some(
            self.value
                .store_text(text)
                .map(|old| (old, self.value.load_text())),
        )
    }
}

/// The body of a registered command: takes the argument words, returns text or a one-line error.
#[derive(Clone)]
pub(crate) enum CommandFn {
    /// A closure run on a manhole worker thread.
    Blocking(
        #[allow(clippy::type_complexity)]
        Arc<dyn Fn(&[String]) -> std::result::Result<String, String> + Send + Sync>,
    ),
    /// The same, registered as only reading state: a read-only manhole still runs it.
    Query(
        #[allow(clippy::type_complexity)]
        Arc<dyn Fn(&[String]) -> std::result::Result<String, String> + Send + Sync>,
    ),
    /// A closure whose future runs as a task on the tokio runtime.
    #[cfg(feature = "tokio")]
    Async(crate::runtime::AsyncCommand),
}

impl CommandFn {
    pub(crate) fn new<F>(run: F) -> CommandFn
    where
        F: Fn(&[String]) -> std::result::Result<String, String> + Send + Sync + 'static,
    {
        CommandFn::Blocking(Arc::new(run))
    }

    pub(crate) fn query<F>(run: F) -> CommandFn
    where
        F: Fn(&[String]) -> std::result::Result<String, String> + Send + Sync + 'static,
    {
        CommandFn::Query(Arc::new(run))
    }

    /// Whether running it may change the process's state (everything but a query).
    pub(crate) fn changes_state(&self) -> bool {
        !matches!(self, CommandFn::Query(_))
    }

    /// How `locals` lists it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            CommandFn::Blocking(_) => "command",
            CommandFn::Query(_) => "query",
            #[cfg(feature = "tokio")]
            CommandFn::Async(_) => "async command",
        }
    }

    /// Runs the command with `args`, waiting at most `timeout`: a blocking one on a worker
    /// thread, an async one as a task on its runtime. The outer error says why there is no
    /// answer (still running, cancelled, panicked).
    pub(crate) fn run(
        &self,
        args: Vec<String>,
        runtime: &crate::runtime::Attached,
        timeout: Duration,
    ) -> std::result::Result<std::result::Result<String, String>, String> {
        let _ = runtime;
        match self {
            CommandFn::Blocking(run) | CommandFn::Query(run) => {
                let run = run.clone();
                crate::threads::run_bounded(timeout, move || run(&args)).map_err(|u| u.to_string())
            }
            #[cfg(feature = "tokio")]
            CommandFn::Async(command) => command
                .run(args, runtime, timeout)
                .map_err(|u| u.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64};

    const ACCESS: Access = Access {
        lock_timeout: Duration::from_millis(20),
    };

    #[test]
    fn atomics_read_and_parse_on_set() {
        let n = Arc::new(AtomicU64::new(5));
        let ro = Local::atomic(n.clone());
        assert_eq!(ro.read(ACCESS).unwrap(), "5");
        assert_eq!(ro.set("7", ACCESS).unwrap_err(), "is read-only");
        let rw = Local::settable_atomic(n.clone());
        assert_eq!(rw.set("9", ACCESS).unwrap(), ("5".into(), "9".into()));
        assert_eq!(n.load(Ordering::Relaxed), 9);
        assert!(
            rw.set("nine", ACCESS)
                .unwrap_err()
                .starts_with("cannot parse \"nine\" as u64")
        );
        let flag = Local::settable_atomic(Arc::new(AtomicBool::new(false)));
        assert_eq!(flag.set("true", ACCESS).unwrap().1, "true");
        assert_eq!(rw.type_name(), "AtomicU64");
    }

    #[test]
    fn a_held_lock_times_out_instead_of_hanging() {
        let m = Arc::new(std::sync::Mutex::new(String::from("info")));
        let local = Local::settable_locked(m.clone());
        assert_eq!(local.type_name(), "Mutex<String>");
        let guard = m.lock().unwrap();
        assert!(local.read(ACCESS).unwrap_err().starts_with("lock is busy"));
        drop(guard);
        assert_eq!(
            local.set("debug", ACCESS).unwrap(),
            ("\"info\"".into(), "\"debug\"".into())
        );
        let pl = Local::locked(Arc::new(parking_lot::RwLock::new(vec![1, 2])));
        assert_eq!(pl.read(ACCESS).unwrap(), "[1, 2]");
        assert_eq!(pl.type_name(), "RwLock<Vec<i32>>");
    }

    #[test]
    fn a_poisoned_lock_is_read_and_marked() {
        let m = Arc::new(std::sync::Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert_eq!(Local::locked(m).read(ACCESS).unwrap(), "1 (lock poisoned)");
    }

    #[test]
    fn a_settable_fn_sets_through_its_closure_and_a_refusal_changes_nothing() {
        let level = Arc::new(std::sync::Mutex::new(String::from("info")));
        let (read, write) = (level.clone(), level.clone());
        let local = Local::settable_fn(
            move || read.lock().unwrap().clone(),
            move |text| match text.trim() {
                "info" | "debug" => {
                    *write.lock().unwrap() = text.trim().to_string();
                    Ok(text.trim().to_string())
                }
                other => Err(format!(
                    "{other:?} is not a level\n(expected info or debug)"
                )),
            },
        );
        assert!(local.is_settable());
        assert_eq!(local.type_name(), "String");
        assert_eq!(local.read(ACCESS).unwrap(), "info");
        assert_eq!(
            local.set("debug", ACCESS).unwrap(),
            ("info".into(), "debug".into())
        );
        assert_eq!(
            local.set("loud", ACCESS).unwrap_err(),
            "\"loud\" is not a level; (expected info or debug)"
        );
        assert_eq!(local.read(ACCESS).unwrap(), "debug");
        assert_eq!(*level.lock().unwrap(), "debug");
    }

    #[test]
    fn debug_and_closure_values() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Config {
            port: u16,
        }
        let c = Local::debug(Arc::new(Config { port: 80 }));
        assert_eq!(c.read(ACCESS).unwrap(), "Config { port: 80 }");
        let f = Local::from_fn(|| 3 * 4);
        assert_eq!(f.read(ACCESS).unwrap(), "12");
        assert_eq!(f.type_name(), "i32");
    }
}
