//! `crash`: an application that dies on request, for the tests of what a crash leaves.
//!
//! `crash KIND PATH`: installs a manhole (the defaults), prints `manhole listening on <path>`,
//! waits until PATH exists, writes `last words before KIND` to stderr with one `write(2)` (no
//! buffer in between), and then dies:
//!
//! - `abort`: `std::process::abort()`;
//! - `panic`: panics with the message `last words of a panic` (the tests build this program with
//!   `-C panic=abort`, so the panic aborts);
//! - `segv`: reads from an unmapped address (a real SIGSEGV from the kernel).

use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(kind), Some(when)) = (args.next(), args.next().map(PathBuf::from)) else {
        eprintln!("usage: crash abort|panic|segv PATH");
        std::process::exit(2);
    };
    if !["abort", "panic", "segv"].contains(&kind.as_str()) {
        eprintln!("crash: unknown kind {kind:?}");
        std::process::exit(2);
    }
    let manhole = manhole_examples::install_or_exit("crash", manhole::Options::new());
    manhole_examples::announce_listening(&manhole);
    while !when.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let line = format!("last words before {kind}\n");
    let _ = nix::unistd::write(std::io::stderr(), line.as_bytes());
    match kind.as_str() {
        "abort" => std::process::abort(),
        "panic" => panic!("last words of a panic"),
        _ => {
            // SAFETY: not safe at all, on purpose: a load from an address that is never mapped
            // (the first page), which the kernel answers with SIGSEGV.
            let value = unsafe { std::ptr::read_volatile(std::ptr::without_provenance::<u8>(8)) };
            println!("unreachable: {value}");
        }
    }
}
