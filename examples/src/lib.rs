//! What the example applications share: installing the manhole, or exiting with one line that
//! says why, and the `manhole listening on PATH` line the end-to-end tests wait for.

use manhole::{Manhole, Options};

/// Installs the manhole, or prints `APP: cannot install the manhole: ...` and exits with 1.
pub fn install_or_exit(app: &str, options: Options) -> Manhole {
    match manhole::install(options) {
        Ok(manhole) => manhole,
        Err(e) => {
            eprintln!("{app}: cannot install the manhole: {e}");
            std::process::exit(1);
        }
    }
}

/// Prints `manhole listening on PATH` for an always-on listener.
pub fn announce_listening(manhole: &Manhole) {
    let path = manhole
        .socket_path()
        .expect("the listener thread is on")
        .display()
        .to_string();
    println!("manhole listening on {path}");
}
