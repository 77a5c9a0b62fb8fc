//! The process-wide table of registered values and commands.
//!
//! Registrations live here rather than in an installation so that a value registered before
//! `install`, or kept across a `strict(false)` re-install or a `fork`, stays visible. Each
//! registration returns a [`Registration`] guard that removes exactly that entry when dropped
//! (registering a name again replaces the entry; dropping the older guard then does nothing).

pub(crate) mod local;
#[cfg(any(feature = "tracing", feature = "log"))]
mod logfilter;

#[cfg(feature = "tracing")]
pub use logfilter::register_log_filter;
#[cfg(feature = "log")]
pub use logfilter::register_log_level;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::local::{CommandFn, Local};
use crate::log::log_event;

/// What a name stands for.
#[derive(Clone)]
pub(crate) enum Entry {
    Value(Local),
    Command { help: String, run: CommandFn },
}

struct Registered {
    id: u64,
    entry: Entry,
}

/// A std `Mutex` rather than parking_lot's: the fork handlers hold it across `fork` and the
/// child unlocks it, which for std's futex lock is one atomic store (parking_lot may need its
/// global parking table, which another thread could have held at the fork).
static TABLE: Mutex<BTreeMap<String, Registered>> = Mutex::new(BTreeMap::new());

fn table() -> MutexGuard<'static, BTreeMap<String, Registered>> {
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `TABLE`, held by the fork handlers from `prepare` until `parent`/`child`.
pub(crate) struct ForkHold(#[allow(dead_code)] MutexGuard<'static, BTreeMap<String, Registered>>);

pub(crate) fn fork_hold() -> ForkHold {
    ForkHold(table())
}
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Keeps a registration alive; dropping it unregisters the name.
#[must_use = "dropping the Registration unregisters the name at once"]
#[derive(Debug)]
pub struct Registration {
    name: String,
    id: u64,
}

impl Registration {
    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keeps the entry registered for the rest of the process's life.
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut table = table();
        if table.get(&self.name).is_some_and(|r| r.id == self.id) {
            table.remove(&self.name);
        }
    }
}

/// Client-typed words quoted back in an error are cut short, so an error stays one short line.
pub(crate) fn shorten(word: &str) -> String {
    const MAX: usize = 60;
    match word.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &word[..end]),
        None => word.to_string(),
    }
}

pub(crate) fn insert(name: String, entry: Entry) -> Registration {
    let is_command = matches!(entry, Entry::Command { .. });
    if let Some(reason) = crate::commands::unusable_name(&name, is_command) {
        // Registering cannot fail (it returns a guard); `install` refuses such names instead.
        log_event!("Registered anyway, but {reason}");
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    table().insert(name.clone(), Registered { id, entry });
    Registration { name, id }
}

/// Registers a named value at run time; see [`Local`] for what can be registered.
///
/// ```
/// use std::sync::{Arc, atomic::AtomicU64};
/// let hits = Arc::new(AtomicU64::new(0));
/// let _registration = manhole::register("hits", manhole::Local::atomic(hits.clone()));
/// ```
pub fn register(name: impl Into<String>, value: Local) -> Registration {
    insert(name.into(), Entry::Value(value))
}

/// Registers a named command at run time: `NAME ARGS...` in a session calls `run` with the
/// argument words on a manhole worker thread. `help` is the one-line description `help` shows.
///
/// ```
/// let _registration = manhole::register_command("hello", "say hello", |args| {
///     Ok(format!("hello {}", args.join(" ")))
/// });
/// ```
pub fn register_command<F>(name: impl Into<String>, help: impl Into<String>, run: F) -> Registration
where
    F: Fn(&[String]) -> Result<String, String> + Send + Sync + 'static,
{
    insert(
        name.into(),
        Entry::Command {
            help: help.into(),
            run: CommandFn::new(run),
        },
    )
}

/// Registers a named query at run time: a command, like [`register_command`], that only reads
/// state, so a manhole installed with `read_only(true)` still runs it.
///
/// ```
/// let _registration = manhole::register_query("queue-depth", "jobs waiting", |_args| {
///     Ok("3".to_string())
/// });
/// ```
pub fn register_query<F>(name: impl Into<String>, help: impl Into<String>, run: F) -> Registration
where
    F: Fn(&[String]) -> Result<String, String> + Send + Sync + 'static,
{
    insert(
        name.into(),
        Entry::Command {
            help: help.into(),
            run: CommandFn::query(run),
        },
    )
}

/// The entry registered under `name`, if any.
pub(crate) fn lookup(name: &str) -> Option<Entry> {
    table().get(name).map(|r| r.entry.clone())
}

/// Every registered name with its entry, sorted by name.
pub(crate) fn snapshot() -> Vec<(String, Entry)> {
    table()
        .iter()
        .map(|(n, r)| (n.clone(), r.entry.clone()))
        .collect()
}
