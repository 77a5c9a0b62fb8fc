//! `bare`: links `manhole` but never calls `install`; a manhole comes only from the `MANHOLE`
//! environment variable.
//!
//! `--threads N` (default 4) starts threads `sleeper-<i>` blocked inside `bare_sleeper_loop`. It
//! prints `ready pid=<pid>` once they run, then sleeps until killed.

use std::sync::{Arc, Barrier};
use std::time::Duration;

// Linking the crate is what makes the `MANHOLE` variable work; nothing else is called.
use manhole as _;

#[inline(never)]
fn bare_sleeper_loop() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    let mut threads = 4usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--threads needs a number");
            }
            other => {
                eprintln!("bare: unknown argument {other:?} (flags: --threads N)");
                std::process::exit(2);
            }
        }
    }
    let started = Arc::new(Barrier::new(threads + 1));
    for i in 0..threads {
        let started = started.clone();
        std::thread::Builder::new()
            .name(format!("sleeper-{i}"))
            .spawn(move || {
                started.wait();
                bare_sleeper_loop()
            })
            .expect("spawn a sleeper");
    }
    started.wait();
    println!("ready pid={}", std::process::id());
    loop {
        std::thread::park();
    }
}
