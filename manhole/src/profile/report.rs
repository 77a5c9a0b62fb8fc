//! What a profile found: samples per thread, the top functions by self and total share, and the
//! folded stacks, with their text and JSON forms.
//!
//! **Folded stacks** are one `root;...;leaf COUNT` line per distinct stack, as Brendan Gregg's
//! `stackcollapse` tools write them and `flamegraph.pl` and inferno read them. The root frame
//! is the **thread's name** (as `stackcollapse-perf.pl` puts the command name first), so a flame
//! graph has one tower per thread name; threads with the same name share one. Inlined functions
//! are frames of their own. A frame without a symbol is `module+0xOFFSET` (or `0xADDRESS`);
//! a `;` in a name becomes `:`.
//!
//! **Self** share: the samples whose program counter is in the function's own machine code,
//! code inlined into it included, as `perf report` counts (the inlined leaf, `wrapping_add`
//! say, would tell little). **Total** share: the samples with the function anywhere on the
//! stack (counted once per sample, recursion or not, inlined functions too), leaving out std's
//! runtime scaffolding as `RUST_BACKTRACE=1` does: `__rust_begin_short_backtrace` and the frames
//! that call it (`lang_start`, `catch_unwind`, `start_thread`, ...) are on every sample of a
//! Rust thread and would fill the list. The folded stacks keep every frame.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use super::sampler::RawSample;
use super::unwind::SampleUnwinder;

/// The frame where std's runtime hands over to the thread's own code; it and its callers are
/// left out of the total share.
const SHORT_BACKTRACE_MARK: &str = "__rust_begin_short_backtrace";

/// How many functions each top list shows in the text.
const TOP: usize = 10;

/// One thread the profile saw.
#[derive(Debug, Clone)]
pub(crate) struct ThreadSamples {
    pub tid: i32,
    pub name: String,
    pub samples: u64,
}

/// Collects samples during a profile.
pub(super) struct Builder {
    hz: u32,
    threads: Vec<ThreadSamples>,
    /// Unwound stacks (innermost first) of each thread, with their counts.
    stacks: HashMap<(i32, Vec<(usize, bool)>), u64>,
    samples: u64,
    truncated: u64,
    handler_nanos: Vec<u64>,
    unwind_nanos: u64,
    notes: Vec<String>,
}

impl Builder {
    pub(super) fn new(hz: u32) -> Builder {
        Builder {
            hz,
            threads: Vec::new(),
            stacks: HashMap::new(),
            samples: 0,
            truncated: 0,
            handler_nanos: Vec::new(),
            unwind_nanos: 0,
            notes: Vec::new(),
        }
    }

    /// A thread the profile samples (or could not).
    pub(super) fn thread(&mut self, tid: i32, name: &str) {
        if !self.threads.iter().any(|t| t.tid == tid) {
            self.threads.push(ThreadSamples {
                tid,
                name: name.to_string(),
                samples: 0,
            });
        }
    }

    pub(super) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Unwinds and counts the drained samples (and empties `raw`).
    pub(super) fn add_all(&mut self, unwinder: &mut SampleUnwinder, raw: &mut Vec<RawSample>) {
        for sample in raw.drain(..) {
            let started = std::time::Instant::now();
            let unwound = unwinder.unwind(&sample);
            self.unwind_nanos += started.elapsed().as_nanos() as u64;
            self.samples += 1;
            self.truncated += u64::from(unwound.truncated);
            self.handler_nanos.push(sample.handler_nanos);
            match self.threads.iter_mut().find(|t| t.tid == sample.tid) {
                Some(thread) => thread.samples += 1,
                None => self.threads.push(ThreadSamples {
                    tid: sample.tid,
                    name: crate::procfs::thread_name(sample.tid).unwrap_or_default(),
                    samples: 1,
                }),
            }
            *self.stacks.entry((sample.tid, unwound.frames)).or_insert(0) += 1;
        }
    }

    /// Symbolizes the stacks and builds the answer.
    pub(super) fn finish(
        self,
        elapsed: Duration,
        setup: Duration,
        lost: u64,
        copy_failed: u64,
        modules: usize,
    ) -> Profile {
        let mut addresses: Vec<(usize, bool)> = self
            .stacks
            .keys()
            .flat_map(|(_, frames)| frames.iter().copied())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        addresses.sort_unstable();
        let symbolized = crate::stackdump::symbolize_addresses(&addresses);
        let names: HashMap<(usize, bool), Vec<String>> = addresses
            .iter()
            .zip(symbolized)
            .map(|(&address, frame)| {
                let mut names: Vec<String> = frame
                    .symbols()
                    .iter()
                    .filter_map(|s| s.name().map(clean))
                    .collect();
                if names.is_empty() {
                    names.push(match (frame.module(), frame.module_offset()) {
                        (Some(module), Some(offset)) => {
                            let short = module.rsplit('/').next().unwrap_or(module);
                            format!("{}+{offset:#x}", clean(short))
                        }
                        _ => format!("{:#x}", address.0),
                    });
                }
                (address, names)
            })
            .collect();
        let thread_name: HashMap<i32, &str> = self
            .threads
            .iter()
            .map(|t| (t.tid, t.name.as_str()))
            .collect();
        let mut folded: HashMap<String, u64> = HashMap::new();
        let mut self_counts: HashMap<String, u64> = HashMap::new();
        let mut total_counts: HashMap<String, u64> = HashMap::new();
        for ((tid, frames), &count) in &self.stacks {
            // Innermost first, each address's inlined functions innermost first.
            let functions: Vec<&str> = frames
                .iter()
                .flat_map(|address| names[address].iter().map(String::as_str))
                .collect();
            // The leaf address's outermost name is the function its code belongs to.
            if let Some(own) = frames.first().and_then(|leaf| names[leaf].last()) {
                *self_counts.entry(own.clone()).or_insert(0) += count;
            }
            let scaffolding = functions
                .iter()
                .position(|f| f.contains(SHORT_BACKTRACE_MARK))
                .unwrap_or(functions.len());
            let mut once = HashSet::new();
            for function in &functions[..scaffolding] {
                if once.insert(*function) {
                    *total_counts.entry(function.to_string()).or_insert(0) += count;
                }
            }
            let root = match thread_name.get(tid) {
                Some(name) if !name.is_empty() => clean(name),
                _ => format!("tid-{tid}"),
            };
            let mut line = root;
            for function in functions.iter().rev() {
                line.push(';');
                line.push_str(function);
            }
            *folded.entry(line).or_insert(0) += count;
        }
        let mut threads = self.threads;
        threads.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.tid.cmp(&b.tid)));
        let mut handler = self.handler_nanos;
        handler.sort_unstable();
        Profile {
            elapsed,
            hz: self.hz,
            samples: self.samples,
            lost,
            truncated: self.truncated,
            copy_failed,
            threads,
            self_top: ranked(self_counts),
            total_top: ranked(total_counts),
            folded: ranked(folded),
            handler_nanos_mean: mean(&handler),
            handler_nanos_p99: handler
                .get((handler.len() * 99 / 100).min(handler.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0),
            unwind_nanos_mean: self.unwind_nanos.checked_div(self.samples).unwrap_or(0),
            setup,
            modules,
            notes: self.notes,
        }
    }
}

fn mean(values: &[u64]) -> u64 {
    values
        .iter()
        .sum::<u64>()
        .checked_div(values.len() as u64)
        .unwrap_or(0)
}

/// A name fit for a folded line: no `;` (the frame separator) and no line breaks.
fn clean(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// Counts sorted by count (descending), then name.
fn ranked(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut list: Vec<(String, u64)> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list
}

/// A finished profile.
#[derive(Debug)]
pub(crate) struct Profile {
    pub elapsed: Duration,
    pub hz: u32,
    pub samples: u64,
    /// Ticks that found the ring full.
    pub lost: u64,
    /// Samples whose unwinding stopped early (window or unwind information).
    pub truncated: u64,
    /// Ticks whose stack could not be copied at all.
    pub copy_failed: u64,
    /// Every application thread seen, most samples first.
    pub threads: Vec<ThreadSamples>,
    pub self_top: Vec<(String, u64)>,
    pub total_top: Vec<(String, u64)>,
    /// `root;...;leaf` and count, most samples first.
    pub folded: Vec<(String, u64)>,
    pub handler_nanos_mean: u64,
    pub handler_nanos_p99: u64,
    pub unwind_nanos_mean: u64,
    /// Time to read the unwind tables before the first timer was armed.
    pub setup: Duration,
    pub modules: usize,
    pub notes: Vec<String>,
}

impl Profile {
    fn share(&self, count: u64) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            100.0 * count as f64 / self.samples as f64
        }
    }

    /// The REPL's summary.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let sampled = self.threads.iter().filter(|t| t.samples > 0).count();
        let _ = writeln!(
            out,
            "Profile: {:.1} s at {} Hz of CPU time, {} samples from {} of {} threads ({} lost, {} truncated)",
            self.elapsed.as_secs_f64(),
            self.hz,
            self.samples,
            sampled,
            self.threads.len(),
            self.lost,
            self.truncated,
        );
        out.push_str("Samples per thread:\n");
        for thread in &self.threads {
            let _ = writeln!(
                out,
                "  {:>7} {:>5.1}%  {} (tid {})",
                thread.samples,
                self.share(thread.samples),
                thread.name,
                thread.tid
            );
        }
        for (title, list) in [
            ("Top functions by self share (on CPU):", &self.self_top),
            (
                "Top functions by total share (on the stack):",
                &self.total_top,
            ),
        ] {
            out.push_str(title);
            out.push('\n');
            if list.is_empty() {
                out.push_str("  (no samples)\n");
            }
            for (name, count) in list.iter().take(TOP) {
                let _ = writeln!(out, "  {:>7} {:>5.1}%  {name}", count, self.share(*count));
            }
        }
        let _ = writeln!(
            out,
            "Cost per sample: handler {:.1} us mean ({:.1} us p99), unwinding {:.1} us",
            self.handler_nanos_mean as f64 / 1000.0,
            self.handler_nanos_p99 as f64 / 1000.0,
            self.unwind_nanos_mean as f64 / 1000.0,
        );
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out.push_str(
            "Folded stacks are in the JSON answer: manhole-cli --folded, or --flamegraph FILE.",
        );
        out
    }

    /// The JSON answer (see docs/protocol.md).
    pub(crate) fn data(&self) -> Value {
        let list = |items: &[(String, u64)]| -> Vec<Value> {
            items
                .iter()
                .map(|(name, count)| {
                    json!({"function": name, "samples": count, "share": self.share(*count) / 100.0})
                })
                .collect()
        };
        json!({
            "seconds": self.elapsed.as_secs_f64(),
            "hz": self.hz,
            "samples": self.samples,
            "lost": self.lost,
            "truncated": self.truncated,
            "copy_failed": self.copy_failed,
            "threads": self.threads.iter().map(|t| json!({"tid": t.tid, "name": t.name, "samples": t.samples})).collect::<Vec<_>>(),
            "self": list(&self.self_top),
            "total": list(&self.total_top),
            "folded": self.folded.iter().map(|(stack, count)| format!("{stack} {count}")).collect::<Vec<_>>(),
            "cost": {
                "handler_ns_mean": self.handler_nanos_mean,
                "handler_ns_p99": self.handler_nanos_p99,
                "unwind_ns_mean": self.unwind_nanos_mean,
                "setup_ms": self.setup.as_secs_f64() * 1000.0,
                "modules": self.modules,
                "window_bytes": super::sampler::WINDOW,
            },
            "notes": self.notes,
        })
    }
}
