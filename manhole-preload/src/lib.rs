//! `libmanhole_preload.so`: a manhole for any dynamically linked program, whatever its language.
//!
//! ```sh
//! LD_PRELOAD=/path/to/libmanhole_preload.so MANHOLE='' ./server     # C, C++, a cgo Go binary
//! LD_PRELOAD=/path/to/libmanhole_preload.so MANHOLE='activate_on=USR2' python3 app.py
//! ```
//!
//! When the dynamic loader maps the library, its constructor (an `.init_array` entry of this
//! crate itself, so no linker can drop it) installs the manhole from `MANHOLE`, with the same
//! syntax and options as a Rust program that links the library ([`manhole::__preload`], the
//! entry the library's own constructor uses: whichever runs first installs, once). The program
//! then has everything that does not need Rust values: every thread's symbolized stack (C and
//! C++ frames unwind through their `.eh_frame`, which gcc and clang emit by default on x86_64
//! and aarch64), `info`, and a REPL with the built-in commands. `MANHOLE` unset: the library
//! does nothing at all.
//!
//! What it promises the program it is loaded into:
//!
//! - **No Rust panic crosses into it.** Every entry point (the constructor and each C function)
//!   runs under `catch_unwind`; a panic becomes a failed call (or no manhole).
//! - **Nothing assumes `main` is Rust's.** Nothing here needs std's runtime set up by
//!   `lang_start` (std does not install its SIGSEGV stack-overflow handler or ignore SIGPIPE in a
//!   C program; the manhole writes with `MSG_NOSIGNAL` and never needed either).
//! - **Closed fds 0-2 stay out of the manhole's way.** If the program starts with any of them
//!   closed, they are opened on `/dev/null` before the install (what every Rust program's
//!   runtime does, and glibc does for setuid programs), so the manhole's socket and pipes never
//!   become the program's stdin, stdout or stderr.
//! - **Behaviour and exit status are unchanged**: the manhole's threads block the program's
//!   signals, its socket is removed at `exit` (the library's `atexit` hook), and
//!   `verbose=False` keeps its log lines off the program's stderr.
//! - **Privileged programs are left alone.** In a setuid, setgid or file-capability program
//!   (`AT_SECURE`) the constructor does nothing: the invoking user must not choose the socket or
//!   the allowed uids of a privileged process (glibc already refuses such a `LD_PRELOAD` unless
//!   the library is in a system directory and setuid itself).
//!
//! The C API (`include/manhole.h`) is for programs that link the library or find it with
//! `dlsym`: [`manhole_install`] with options in `MANHOLE` syntax, [`manhole_register_i64`] for a
//! counter the REPL can `get`, and [`manhole_register_command`] for a command it can run.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicI64, Ordering};

/// Called by the dynamic loader when it maps the library, before the program's `main` (on
/// glibc with `argc, argv, envp`, on musl with nothing: this takes no arguments, which both
/// calling conventions allow). The priority (the linker runs `.init_array.NNNNN` entries, in
/// ascending order, before plain `.init_array` ones) puts it before the library's own
/// constructor, which is linked into this library too: fds 0-2 are reserved before anything
/// could install. 101 is the first priority left to programs (0-100 are the toolchain's; std
/// takes 99 for its arguments).
#[used]
#[unsafe(link_section = ".init_array.00101")]
static AT_LOAD: extern "C" fn() = at_load;

extern "C" fn at_load() {
    guarded((), || {
        if std::env::var_os("MANHOLE").is_none() || secure_execution() {
            return;
        }
        reserve_standard_fds();
        manhole::__preload::install_from_env();
    });
}

/// Runs `body`; a panic in it becomes `on_panic` (the default hook has printed its message).
fn guarded<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(on_panic)
}

/// Whether the program runs with more privilege than its invoker (setuid, setgid, capabilities).
fn secure_execution() -> bool {
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave the process.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Opens `/dev/null` on each of fds 0-2 that is closed, so the manhole's descriptors are >= 3.
fn reserve_standard_fds() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        let closed = unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF);
        if !closed {
            continue;
        }
        // SAFETY: a static NUL-terminated path; `open` returns the lowest free descriptor,
        // which is `fd` since the lower ones are open by now. Inheritable, like any stdio fd.
        let opened = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if opened >= 0 && opened != fd {
            // SAFETY: `opened` is the descriptor just opened here, owned by nobody else.
            unsafe { libc::close(opened) };
        }
    }
}

/// Copies `text` into the caller's buffer `out` of `size` bytes, cut to fit, NUL-terminated.
///
/// # Safety
/// `out` is null or points to `size` writable bytes.
unsafe fn write_c_text(text: &str, out: *mut c_char, size: usize) {
    if out.is_null() || size == 0 {
        return;
    }
    let mut len = text.len().min(size - 1);
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    // SAFETY: `out` has `size` bytes and `len + 1 <= size`; `text` is a distinct Rust string.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), out.cast::<u8>(), len);
        *out.add(len) = 0;
    }
}

/// A C string argument as UTF-8, or why not.
///
/// # Safety
/// `text` is null or a NUL-terminated string that stays valid during the call.
unsafe fn c_str<'a>(text: *const c_char, what: &str) -> Result<&'a str, String> {
    if text.is_null() {
        return Err(format!("{what} is NULL"));
    }
    // SAFETY: the caller passes a NUL-terminated string, valid for the call.
    unsafe { CStr::from_ptr(text) }
        .to_str()
        .map_err(|_| format!("{what} is not UTF-8"))
}

/// Installs a manhole with `options` written as a `MANHOLE` value (`NULL` or `""`: the
/// defaults). Returns 0, or -1 with a one-line reason in `error` (`error_size` bytes, may be
/// `NULL`).
///
/// # Safety
/// `options` is `NULL` or a NUL-terminated string; `error` is `NULL` or points to `error_size`
/// writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn manhole_install(
    options: *const c_char,
    error: *mut c_char,
    error_size: usize,
) -> c_int {
    let result = guarded(Err("manhole_install panicked".to_owned()), || {
        let text = if options.is_null() {
            ""
        } else {
            // SAFETY: the caller passes a NUL-terminated string.
            unsafe { c_str(options, "options") }?
        };
        let options = manhole::__preload::parse_options(text).map_err(|e| e.to_string())?;
        manhole::install(options)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => 0,
        Err(reason) => {
            // SAFETY: the caller's buffer contract.
            unsafe { write_c_text(&reason, error, error_size) };
            -1
        }
    }
}

/// Registers a read-only value `name` that `get NAME` shows: the 64-bit integer at `value`,
/// read atomically (relaxed) each time. The program updates it with atomic stores
/// (`atomic_store_explicit(..., memory_order_relaxed)`, `__atomic_store_n`). `value` must be
/// 8-byte aligned and stay valid for the life of the process. Returns 0, or -1 for a NULL,
/// misaligned or non-UTF-8 argument.
///
/// # Safety
/// `name` is a NUL-terminated string; `value` points to an `int64_t` that lives as long as the
/// process and is only ever accessed atomically.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn manhole_register_i64(name: *const c_char, value: *const i64) -> c_int {
    guarded(-1, || {
        // SAFETY: the caller passes a NUL-terminated string.
        let Ok(name) = (unsafe { c_str(name, "name") }) else {
            return -1;
        };
        if value.is_null() || !value.cast::<AtomicI64>().is_aligned() {
            return -1;
        }
        let address = value as usize;
        manhole::register(
            name,
            manhole::Local::from_fn(move || {
                // SAFETY: the caller promised an aligned int64_t, live for the process's life,
                // only accessed atomically.
                unsafe { AtomicI64::from_ptr(address as *mut i64) }.load(Ordering::Relaxed)
            }),
        )
        .forget();
        0
    })
}

/// A registered command: gets the argument words, writes its answer (NUL-terminated, cut to
/// `out_size`) into `out`, and returns >= 0 for success or < 0 for failure (then `out` holds the
/// reason). It runs on a manhole worker thread, with the session's command timeout.
pub type ManholeCommandFn = unsafe extern "C" fn(
    context: *mut c_void,
    argc: c_int,
    argv: *const *const c_char,
    out: *mut c_char,
    out_size: usize,
) -> c_int;

/// The largest answer a C command can give.
const COMMAND_OUTPUT: usize = 64 * 1024;

/// Registers a command `name` (`help`: its line in `help`), which runs `run(context, ...)`.
/// Returns 0, or -1 for a NULL or non-UTF-8 argument.
///
/// # Safety
/// `name` and `help` are NUL-terminated strings; `run` is safe to call from another thread with
/// `context`, for the life of the process.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn manhole_register_command(
    name: *const c_char,
    help: *const c_char,
    run: Option<ManholeCommandFn>,
    context: *mut c_void,
) -> c_int {
    guarded(-1, || {
        // SAFETY: the caller passes NUL-terminated strings.
        let (Ok(name), Ok(help)) = (unsafe { c_str(name, "name") }, unsafe {
            c_str(help, "help")
        }) else {
            return -1;
        };
        let Some(run) = run else {
            return -1;
        };
        let context = context as usize;
        manhole::register_command(name, help, move |args| {
            let owned: Vec<std::ffi::CString> = args
                .iter()
                .map(|arg| std::ffi::CString::new(arg.as_str()).map_err(|_| "a NUL in an argument"))
                .collect::<Result<_, _>>()?;
            let argv: Vec<*const c_char> = owned
                .iter()
                .map(|arg| arg.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect();
            let mut out = vec![0u8; COMMAND_OUTPUT];
            // SAFETY: the caller of manhole_register_command promised `run` may be called with
            // `context` from any thread; argv is a NULL-terminated array of live C strings and
            // `out` has COMMAND_OUTPUT writable bytes.
            let rc = unsafe {
                run(
                    context as *mut c_void,
                    owned.len() as c_int,
                    argv.as_ptr(),
                    out.as_mut_ptr().cast(),
                    COMMAND_OUTPUT,
                )
            };
            let end = out.iter().position(|&b| b == 0).unwrap_or(COMMAND_OUTPUT);
            let text = String::from_utf8_lossy(&out[..end]).into_owned();
            if rc >= 0 {
                Ok(text)
            } else if text.is_empty() {
                Err(format!("{rc}"))
            } else {
                Err(text)
            }
        })
        .forget();
        0
    })
}
