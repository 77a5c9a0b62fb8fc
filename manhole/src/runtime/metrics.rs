//! The `runtime` command: a tokio runtime's metrics.
//!
//! The stable metrics (tokio 1.45 and later) are always shown: worker count, alive tasks, the
//! global queue depth, and per worker the busy time and park counts (those three need 64-bit
//! atomics). The blocking pool, spawned-task count and per-worker polls, steals and local queues
//! are `tokio_unstable` metrics: shown when the application is built with
//! `--cfg tokio_unstable`, `null` in the data otherwise.

use std::fmt::Write as _;

use serde_json::{Value, json};
use tokio::runtime::{Handle, RuntimeMetrics};

/// One worker's figures; `None` where this build of tokio does not offer them.
#[derive(Debug, Default)]
struct Worker {
    busy_secs: Option<f64>,
    parks: Option<u64>,
    park_unparks: Option<u64>,
    polls: Option<u64>,
    steals: Option<u64>,
    local_queue: Option<usize>,
    mean_poll_secs: Option<f64>,
}

impl Worker {
    #[cfg_attr(
        not(any(tokio_unstable, target_has_atomic = "64")),
        expect(unused_mut, reason = "no per-worker metrics on this target")
    )]
    fn read(metrics: &RuntimeMetrics, worker: usize) -> Worker {
        let mut stats = Worker::default();
        #[cfg(target_has_atomic = "64")]
        {
            stats.busy_secs = Some(metrics.worker_total_busy_duration(worker).as_secs_f64());
            stats.parks = Some(metrics.worker_park_count(worker));
            stats.park_unparks = Some(metrics.worker_park_unpark_count(worker));
        }
        #[cfg(all(tokio_unstable, target_has_atomic = "64"))]
        {
            stats.polls = Some(metrics.worker_poll_count(worker));
            stats.steals = Some(metrics.worker_steal_count(worker));
            stats.mean_poll_secs = Some(metrics.worker_mean_poll_time(worker).as_secs_f64());
        }
        #[cfg(tokio_unstable)]
        {
            stats.local_queue = Some(metrics.worker_local_queue_depth(worker));
        }
        let _ = (metrics, worker);
        stats
    }

    fn text(&self, worker: usize) -> String {
        let mut line = format!("  worker {worker}:");
        match (self.busy_secs, self.parks, self.park_unparks) {
            (Some(busy), Some(parks), Some(park_unparks)) => {
                let _ = write!(
                    line,
                    " busy {busy:.3} s, parked {parks} time{} ({park_unparks} parks and unparks)",
                    if parks == 1 { "" } else { "s" }
                );
            }
            _ => line.push_str(" (no per-worker metrics on this target)"),
        }
        if let (Some(polls), Some(mean)) = (self.polls, self.mean_poll_secs) {
            let _ = write!(line, ", {polls} polls (mean {:.1} µs)", mean * 1e6);
        }
        if let Some(steals) = self.steals {
            let _ = write!(line, ", {steals} steals");
        }
        if let Some(depth) = self.local_queue {
            let _ = write!(line, ", local queue {depth}");
        }
        line
    }

    fn json(&self, worker: usize) -> Value {
        json!({
            "worker": worker,
            "busy_secs": self.busy_secs,
            "park_count": self.parks,
            "park_unpark_count": self.park_unparks,
            "poll_count": self.polls,
            "steal_count": self.steals,
            "local_queue_depth": self.local_queue,
            "mean_poll_time_secs": self.mean_poll_secs,
        })
    }
}

/// The blocking pool's figures, `tokio_unstable` only.
#[derive(Debug, Default)]
struct Blocking {
    threads: Option<usize>,
    idle: Option<usize>,
    queue: Option<usize>,
    spawned_tasks: Option<u64>,
}

impl Blocking {
    #[cfg_attr(
        not(tokio_unstable),
        expect(unused_mut, reason = "only tokio_unstable metrics fill it in")
    )]
    fn read(metrics: &RuntimeMetrics) -> Blocking {
        let mut blocking = Blocking::default();
        #[cfg(tokio_unstable)]
        {
            blocking.threads = Some(metrics.num_blocking_threads());
            blocking.idle = Some(metrics.num_idle_blocking_threads());
            blocking.queue = Some(metrics.blocking_queue_depth());
        }
        #[cfg(all(tokio_unstable, target_has_atomic = "64"))]
        {
            blocking.spawned_tasks = Some(metrics.spawned_tasks_count());
        }
        let _ = metrics;
        blocking
    }
}

/// The `runtime` answer: text and data.
pub(super) fn report(handle: &Handle, flavor: &str) -> (String, Value) {
    let metrics = handle.metrics();
    let workers = metrics.num_workers();
    let alive = metrics.num_alive_tasks();
    let global_queue = metrics.global_queue_depth();
    let per_worker: Vec<Worker> = (0..workers).map(|w| Worker::read(&metrics, w)).collect();
    let blocking = Blocking::read(&metrics);

    let mut text = format!(
        "Runtime: {flavor}, {workers} workers, {alive} alive tasks, global queue depth {global_queue}\n"
    );
    match (blocking.threads, blocking.idle, blocking.queue) {
        (Some(threads), Some(idle), Some(queue)) => {
            let _ = write!(
                text,
                "Blocking pool: {threads} threads ({idle} idle), queue depth {queue}"
            );
            if let Some(spawned) = blocking.spawned_tasks {
                let _ = write!(text, "; {spawned} tasks spawned so far");
            }
            text.push('\n');
        }
        _ => text.push_str(
            "Blocking pool: not measured (tokio_unstable metrics: build the application with \
             RUSTFLAGS=\"--cfg tokio_unstable\")\n",
        ),
    }
    for (i, worker) in per_worker.iter().enumerate() {
        text.push_str(&worker.text(i));
        text.push('\n');
    }
    text.push_str(
        "Worker and blocking threads are named \"tokio-rt-worker\" unless the application chose \
         a name: \"threads tokio-rt\" shows their stacks.",
    );

    let data = json!({
        "flavor": flavor,
        "workers": workers,
        "alive_tasks": alive,
        "global_queue_depth": global_queue,
        "unstable_metrics": cfg!(tokio_unstable),
        "blocking_threads": blocking.threads,
        "idle_blocking_threads": blocking.idle,
        "blocking_queue_depth": blocking.queue,
        "spawned_tasks": blocking.spawned_tasks,
        "worker_stats": per_worker.iter().enumerate().map(|(i, w)| w.json(i)).collect::<Vec<_>>(),
    });
    (text, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_thread_runtime_reports_its_workers_and_tasks() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .build()
            .unwrap();
        let (stop, wait) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(async move {
            let _ = wait.await;
        });
        let (text, data) = report(rt.handle(), "multi_thread");
        assert_eq!(data["workers"], 3, "{data}");
        assert!(data["alive_tasks"].as_u64().unwrap() >= 1, "{data}");
        assert_eq!(data["worker_stats"].as_array().unwrap().len(), 3);
        assert!(data["worker_stats"][0]["park_count"].is_u64(), "{data}");
        assert!(
            text.starts_with("Runtime: multi_thread, 3 workers, "),
            "{text}"
        );
        assert!(text.contains("  worker 2: busy "), "{text}");
        let _ = stop.send(());
    }
}
