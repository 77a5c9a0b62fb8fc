//! What the example applications share: installing the manhole, or exiting with one line that
//! says why, the `manhole listening on PATH` line the end-to-end tests wait for, and the life of
//! a forked child that keeps running.

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

/// The rest of the life of a child `fork` just returned in: it dies with its parent, brings its
/// manhole back with `manhole::reinstall_after_fork` when `reinstall` (a failure is one line on
/// stderr), prints `child pid=<pid>` and sleeps until killed. Allocates, which glibc's malloc
/// allows in a fork child.
pub fn forked_child_life(app: &str, reinstall: bool) -> ! {
    // SAFETY: prctl and getpid have no memory-safety requirements.
    let pid = unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::getpid()
    };
    if reinstall && let Err(e) = manhole::reinstall_after_fork() {
        let line = format!("{app}: reinstall_after_fork failed: {e}\n");
        let _ = nix::unistd::write(std::io::stderr(), line.as_bytes());
    }
    // One write(2): the stdout lock may have been held by another thread at the fork.
    let line = format!("child pid={pid}\n");
    let _ = nix::unistd::write(std::io::stdout(), line.as_bytes());
    loop {
        // SAFETY: pause has no requirements.
        unsafe { libc::pause() };
    }
}
