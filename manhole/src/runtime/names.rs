//! Names for tokio tasks, shown by `tasks`: a task dump identifies a task only by its id.
//!
//! A task names itself with [`name_task`]; the guard it gets back lives in the task's future,
//! so the name goes away with the task (finished, aborted or dropped) and the table only ever
//! holds live tasks. Naming works in every build with the `tokio` feature; the names are shown
//! where task dumps are (`--cfg tokio_unstable`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::task::Id;

/// Task id -> (the guard that set it, the name).
static NAMES: Mutex<Option<HashMap<Id, (u64, String)>>> = Mutex::new(None);
static NEXT_GUARD: AtomicU64 = AtomicU64::new(1);

fn names() -> MutexGuard<'static, Option<HashMap<Id, (u64, String)>>> {
    NAMES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps the current task's name while it lives; returned by [`name_task`].
#[must_use = "the name is removed when this guard is dropped: keep it in the task"]
#[derive(Debug)]
pub struct TaskName {
    /// The named task and this guard's number; `None` outside a task.
    entry: Option<(Id, u64)>,
}

/// Names the tokio task this is called from, so that `tasks` shows `Task 12 "accept-loop"` and
/// a `tasks FILTER` matches the name. Keep the guard in the task (its first line is the place);
/// the name is removed when the guard is dropped. Outside a task this does nothing. Naming a
/// task again replaces its name.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// tokio::spawn(async {
///     let _name = manhole::name_task("accept-loop");
///     // ... the task's work ...
/// });
/// # }
/// ```
pub fn name_task(name: impl Into<String>) -> TaskName {
    let Some(id) = tokio::task::try_id() else {
        return TaskName { entry: None };
    };
    let guard = NEXT_GUARD.fetch_add(1, Ordering::Relaxed);
    names()
        .get_or_insert_with(HashMap::new)
        .insert(id, (guard, name.into()));
    TaskName {
        entry: Some((id, guard)),
    }
}

impl Drop for TaskName {
    fn drop(&mut self) {
        let Some((id, guard)) = self.entry else {
            return;
        };
        if let Some(table) = names().as_mut()
            && table.get(&id).is_some_and(|(set_by, _)| *set_by == guard)
        {
            table.remove(&id);
        }
    }
}

/// The name of the task `id`, if it named itself.
#[cfg_attr(not(tokio_unstable), allow(dead_code))]
pub(crate) fn lookup(id: Id) -> Option<String> {
    names().as_ref()?.get(&id).map(|(_, name)| name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_lives_as_long_as_its_guard_and_only_inside_a_task() {
        assert!(name_task("outside").entry.is_none());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (id, during, renamed) = rt.block_on(async {
            tokio::spawn(async {
                let id = tokio::task::id();
                let first = name_task("first");
                let during = lookup(id);
                let second = name_task("second");
                drop(first); // an older guard does not remove the newer name
                let renamed = lookup(id);
                drop(second);
                (id, during, renamed)
            })
            .await
            .unwrap()
        });
        assert_eq!(during.as_deref(), Some("first"));
        assert_eq!(renamed.as_deref(), Some("second"));
        assert_eq!(lookup(id), None);
    }
}
