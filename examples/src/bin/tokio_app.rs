//! `tokio_app`: a tokio application with a manhole attached to its runtime.
//!
//! Two long-lived tasks, named with `manhole::name_task` so `tasks` shows `"accept-loop"` and
//! `"periodic-job"`: `accept_loop` serves TCP on 127.0.0.1 (an ephemeral port; each client
//! gets one line), counts connections and watches a shutdown channel, and `periodic_job` ticks
//! every 100 ms and answers status requests over a channel. The manhole is installed from inside the runtime, so it attaches to it
//! by itself, and shows:
//!
//! * values `connections` and `ticks` (atomics), `recent_peers` (read by a future, behind a
//!   `tokio::sync::Mutex`) and `cancelled_hangs`;
//! * the async command `job_status`, a channel round trip to the periodic job;
//! * `hang`, an async command that never finishes: the command timeout cancels it, which drops
//!   its future (`cancelled_hangs` counts the drops); and `hang_sync`, its blocking twin, which
//!   can only be reported as still running.
//!
//! It prints `tcp listening on ADDR` and `manhole listening on PATH` and runs until killed.
//! Flags: `--socket-path PATH`, `--command-timeout-ms N`, `--task-dumps` (let `tasks` take task
//! dumps: `Options::task_dumps`), `--workers N` (runtime workers, default 2), `--fork` (after the
//! listening lines, fork from a task on a worker; the child calls `manhole::reinstall_after_fork`
//! from there, prints `child pid=<pid>` and then only sleeps: the runtime's other workers do
//! not exist in it).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use manhole::{Local, Options};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc, oneshot, watch};

/// How many peers `recent_peers` remembers.
const RECENT_PEERS: usize = 8;

type Peers = Arc<Mutex<VecDeque<SocketAddr>>>;

async fn accept_loop(
    listener: TcpListener,
    connections: Arc<AtomicU64>,
    recent: Peers,
    mut shutdown: watch::Receiver<bool>,
) {
    let _name = manhole::name_task("accept-loop");
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((mut stream, peer)) => {
                let n = connections.fetch_add(1, Ordering::Relaxed) + 1;
                {
                    let mut recent = recent.lock().await;
                    if recent.len() == RECENT_PEERS {
                        recent.pop_front();
                    }
                    recent.push_back(peer);
                }
                tokio::spawn(async move {
                    let _ = stream
                        .write_all(format!("hello, connection {n}\n").as_bytes())
                        .await;
                });
            }
            Err(e) => {
                eprintln!("tokio_app: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn periodic_job(
    ticks: Arc<AtomicU64>,
    mut requests: mpsc::Receiver<oneshot::Sender<String>>,
) {
    let _name = manhole::name_task("periodic-job");
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = interval.tick() => {
                ticks.fetch_add(1, Ordering::Relaxed);
            }
            Some(reply) = requests.recv() => {
                let _ = reply.send(format!(
                    "periodic_job: {} ticks in {:.1} s",
                    ticks.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                ));
            }
        }
    }
}

/// Counts the `hang` futures dropped, i.e. cancelled by the manhole's command timeout.
struct CountDrop(Arc<AtomicU64>);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The options, and how many runtime workers to start.
fn parse_args() -> (Options, usize, bool) {
    let mut options = Options::new();
    let mut workers = 2;
    let mut fork = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket-path" => {
                options = options.socket_path(args.next().expect("--socket-path needs a path"))
            }
            "--command-timeout-ms" => {
                let ms: u64 = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--command-timeout-ms needs a number of milliseconds");
                options = options.command_timeout(Duration::from_millis(ms));
            }
            "--task-dumps" => options = options.task_dumps(true),
            "--fork" => fork = true,
            "--workers" => {
                workers = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--workers needs a number");
            }
            other => {
                eprintln!(
                    "tokio_app: unknown argument {other:?} (flags: --socket-path PATH, \
                     --command-timeout-ms N, --task-dumps, --workers N, --fork)"
                );
                std::process::exit(2);
            }
        }
    }
    (options, workers, fork)
}

fn main() {
    let (options, workers, fork) = parse_args();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("build the tokio runtime")
        .block_on(serve(options, fork));
}

async fn serve(options: Options, fork: bool) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a TCP port on loopback");
    let address = listener.local_addr().expect("the listener's address");
    let connections = Arc::new(AtomicU64::new(0));
    let ticks = Arc::new(AtomicU64::new(0));
    let recent: Peers = Arc::new(Mutex::new(VecDeque::new()));
    let cancelled_hangs = Arc::new(AtomicU64::new(0));
    let (status_tx, status_rx) = mpsc::channel(8);
    let (_shutdown, shutdown_rx) = watch::channel(false);

    tokio::spawn(accept_loop(
        listener,
        connections.clone(),
        recent.clone(),
        shutdown_rx,
    ));
    tokio::spawn(periodic_job(ticks.clone(), status_rx));

    let cancelled = cancelled_hangs.clone();
    let options = options
        .banner("tokio_app: a TCP server and a periodic job; try \"runtime\", \"tasks\", \"job_status\".")
        .local("connections", Local::atomic(connections))
        .local("ticks", Local::atomic(ticks))
        .local(
            "recent_peers",
            Local::from_async_fn(move || {
                let recent = recent.clone();
                async move { recent.lock().await.iter().copied().collect::<Vec<_>>() }
            }),
        )
        .local("cancelled_hangs", Local::atomic(cancelled_hangs))
        .async_command(
            "job_status",
            "ask the periodic job how it is doing (a channel round trip)",
            move |_args| {
                let requests = status_tx.clone();
                async move {
                    let (reply, answer) = oneshot::channel();
                    requests
                        .send(reply)
                        .await
                        .map_err(|_| "the periodic job is gone".to_string())?;
                    answer
                        .await
                        .map_err(|_| "the periodic job did not answer".to_string())
                }
            },
        )
        .async_command(
            "hang",
            "never finishes: the command timeout cancels it (see cancelled_hangs)",
            move |_args| {
                let guard = CountDrop(cancelled.clone());
                async move {
                    let _guard = guard;
                    std::future::pending::<Result<String, String>>().await
                }
            },
        )
        .command(
            "hang_sync",
            "never finishes, on a worker thread: only reported as still running",
            |_args| loop {
                std::thread::park();
            },
        );
    let manhole = manhole_examples::install_or_exit("tokio_app", options);
    println!("tcp listening on {address}");
    manhole_examples::announce_listening(&manhole);
    if fork {
        tokio::spawn(async { fork_a_child() });
    }
    std::future::pending::<()>().await;
}

/// Forks from the calling worker; the child brings its manhole back from inside the (inherited,
/// workerless) runtime context, prints its pid and sleeps until its parent dies.
fn fork_a_child() {
    // SAFETY: the child runs `forked_child_life`: prctl, getpid, write, pause and the manhole's
    // reinstall, which needs glibc's fork-safe malloc (as its formatting does).
    if unsafe { libc::fork() } == 0 {
        manhole_examples::forked_child_life("tokio_app", true);
    }
}
