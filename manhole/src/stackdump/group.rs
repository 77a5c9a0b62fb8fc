//! Threads that show the same thing as one [`ThreadGroup`]: the same frames, state, capture
//! method, note and wait, so a process of 1,000 identical workers prints one stack with a count.
//! Also the compressed lists of names and tids a group's header shows (`sleeper-0..999`).

use std::collections::HashMap;

use super::dump::{FrameSymbol, StackDump, ThreadStack};
use crate::procfs::SyscallState;

/// Threads of a [`StackDump`] with identical stacks, in the same state, waiting on the same
/// thing.
///
/// Two threads are in one group when they have the same frames (the same functions, files and
/// lines, or the same address for a frame without symbols), scheduler state,
/// manhole-or-application ownership,
/// capture method, note and truncation, and, for threads without a captured stack, the same
/// system call. Threads asleep in a `futex` wait on one address that other threads wait on too
/// are grouped by that address, so the waiters of each lock are counted apart; a thread alone
/// on its futex word (a parked thread's own) is grouped by its stack only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadGroup {
    members: Vec<usize>,
    tids: Vec<i32>,
}

impl ThreadGroup {
    pub(super) fn of(members: Vec<usize>, tids: Vec<i32>) -> ThreadGroup {
        ThreadGroup { members, tids }
    }

    /// How many threads the group has (at least one).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a group has at least one thread.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members' positions in [`StackDump::threads`], in dump order; the first one stands
    /// for the group.
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    /// The members' tids, in dump order.
    pub fn tids(&self) -> &[i32] {
        &self.tids
    }
}

/// A frame as a person reads it: its functions, files and lines, or its address when it has no
/// symbols. Two threads asleep in one system call can be stopped at addresses two bytes apart
/// (before or after the `syscall` instruction, as the kernel restarts it or not), and are still
/// in the same place.
#[derive(PartialEq, Eq, Hash)]
enum FrameId<'a> {
    Symbols(&'a [FrameSymbol]),
    Address(usize),
}

/// What makes two threads one group.
#[derive(PartialEq, Eq, Hash)]
struct Key<'a> {
    manhole: bool,
    state: char,
    method: super::CaptureMethod,
    note: Option<&'a str>,
    truncated: bool,
    frames: Vec<FrameId<'a>>,
    syscall: Option<i64>,
    futex: Option<usize>,
}

impl StackDump {
    /// The threads grouped by identical stacks (see [`ThreadGroup`]), in the order of each
    /// group's first thread (the main thread's group first). Every thread is in exactly one group.
    pub fn groups(&self) -> Vec<ThreadGroup> {
        let mut waiters: HashMap<usize, usize> = HashMap::new();
        for futex in self.threads.iter().filter_map(|t| t.futex.as_ref()) {
            *waiters.entry(futex.address).or_default() += 1;
        }
        let mut groups: Vec<ThreadGroup> = Vec::new();
        let mut index: HashMap<Key<'_>, usize> = HashMap::with_capacity(self.threads.len());
        for (at, thread) in self.threads.iter().enumerate() {
            let key = key(thread, &waiters);
            let slot = *index.entry(key).or_insert_with(|| {
                groups.push(ThreadGroup::of(Vec::new(), Vec::new()));
                groups.len() - 1
            });
            groups[slot].members.push(at);
            groups[slot].tids.push(thread.tid);
        }
        groups
    }
}

fn key<'a>(thread: &'a ThreadStack, waiters: &HashMap<usize, usize>) -> Key<'a> {
    Key {
        manhole: thread.manhole,
        state: thread.state.letter(),
        method: thread.method,
        note: thread.note.as_deref(),
        truncated: thread.truncated,
        frames: thread
            .frames
            .iter()
            .map(|f| {
                if f.symbols.is_empty() {
                    FrameId::Address(f.ip)
                } else {
                    FrameId::Symbols(&f.symbols)
                }
            })
            .collect(),
        syscall: match thread.syscall {
            Some(SyscallState::InSyscall { nr, .. }) => Some(nr),
            Some(SyscallState::Blocked { .. }) => Some(-1),
            Some(SyscallState::Running) => Some(-2),
            None => None,
        },
        futex: thread
            .futex
            .as_ref()
            .filter(|f| f.static_name.is_some() || waiters.get(&f.address) > Some(&1))
            .map(|f| f.address),
    }
}

/// The names, compressed: names that end in a number (without a leading zero) and share what
/// comes before it are one entry with the numbers as ranges (`sleeper-0..9,11..999`); other
/// names that occur more than once get a count (`tokio-rt-worker ×2`). Entries come in the
/// order of their first name.
pub(crate) fn compress_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut entries: Vec<(&str, Vec<u64>, usize)> = Vec::new();
    let mut by_prefix: HashMap<&str, usize> = HashMap::new();
    for name in names {
        let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (prefix, number) = name.split_at(name.len() - digits);
        let number = match number.parse::<u64>() {
            Ok(n) if !(number.starts_with('0') && number.len() > 1) => Some(n),
            _ => None,
        };
        let prefix = if number.is_some() { prefix } else { name };
        // A numbered and a plain name with the same text never meet: "w-1" has prefix "w-".
        let slot = *by_prefix.entry(prefix).or_insert_with(|| {
            entries.push((prefix, Vec::new(), 0));
            entries.len() - 1
        });
        match number {
            Some(n) => entries[slot].1.push(n),
            None => entries[slot].2 += 1,
        }
    }
    let mut out = Vec::with_capacity(entries.len());
    for (prefix, mut numbers, plain) in entries {
        if plain > 0 {
            out.push(if plain > 1 {
                format!("{prefix} ×{plain}")
            } else {
                prefix.to_string()
            });
        }
        if !numbers.is_empty() {
            numbers.sort_unstable();
            let repeated = numbers.len();
            numbers.dedup();
            let mut entry = format!("{prefix}{}", ranges(&numbers));
            if repeated > numbers.len() {
                entry.push_str(&format!(" ×{repeated}"));
            }
            out.push(entry);
        }
    }
    out
}

/// Sorted, distinct numbers as runs: `0..9,11,13..999`.
pub(crate) fn ranges(sorted: &[u64]) -> String {
    let mut out = String::new();
    let mut at = 0;
    while at < sorted.len() {
        let mut end = at;
        while end + 1 < sorted.len() && sorted[end + 1] == sorted[end] + 1 {
            end += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&sorted[at].to_string());
        if end > at {
            out.push_str("..");
            out.push_str(&sorted[end].to_string());
        }
        at = end + 1;
    }
    out
}

/// `entries` joined with `, `, cut after about `limit` characters with a count of the rest (an
/// entry longer than `limit` by itself is cut, marked `…`).
pub(crate) fn join_limited(entries: &[String], limit: usize, what: &str) -> String {
    let mut out = String::new();
    for (shown, entry) in entries.iter().enumerate() {
        let cut;
        let entry = if entry.chars().count() > limit {
            cut = entry.chars().take(limit).chain(['…']).collect::<String>();
            &cut
        } else {
            entry
        };
        let sep = if shown == 0 { "" } else { ", " };
        if shown > 0 && out.chars().count() + sep.len() + entry.chars().count() > limit {
            out.push_str(&format!(", … ({} more {what})", entries.len() - shown));
            return out;
        }
        out.push_str(sep);
        out.push_str(entry);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compress_to_ranges_and_counts() {
        let names: Vec<String> = (0..1000).map(|i| format!("sleeper-{i}")).collect();
        assert_eq!(
            compress_names(names.iter().map(String::as_str)),
            ["sleeper-0..999"]
        );
        assert_eq!(
            compress_names(["w-3", "w-1", "w-2", "w-7", "main", "x", "x", "w-07"]),
            ["w-1..3,7", "main", "x ×2", "w-07"]
        );
        assert_eq!(compress_names(["t-1", "t-1"]), ["t-1 ×2"]);
        assert_eq!(ranges(&[5, 6, 7, 9, 11, 12]), "5..7,9,11..12");
    }

    #[test]
    fn a_long_list_is_cut_with_a_count() {
        let entries: Vec<String> = (0..50).map(|i| format!("name-{i:02}")).collect();
        let joined = join_limited(&entries, 40, "names");
        assert!(joined.chars().count() < 70, "{joined}");
        assert!(joined.ends_with("(46 more names)"), "{joined}");
        assert_eq!(join_limited(&entries[..2], 40, "names"), "name-00, name-01");
        let long = [format!(
            "w-{}",
            ranges(&(0..500).map(|i| i * 2).collect::<Vec<_>>())
        )];
        let joined = join_limited(&long, 40, "names");
        assert_eq!(joined.chars().count(), 41, "{joined}");
        assert!(
            joined.starts_with("w-0,2,4,") && joined.ends_with('…'),
            "{joined}"
        );
    }
}
