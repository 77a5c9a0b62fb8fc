//! Shell completions and the man page, both generated from the command line's clap definitions
//! ([`crate::args::Args`]), so they can never disagree with `--help`.
//!
//! `--completions SHELL` prints a completion script (clap_complete), `--man` prints the man page
//! in roff (clap_mangen). The committed `docs/manhole-cli.1` is `manhole-cli --man`, and the
//! end-to-end tests check that it still is.

use std::io::Write;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::args::Args;

/// Prints the completion script for `shell` to stdout.
pub fn print_completions(shell: Shell) -> std::io::Result<()> {
    let mut command = Args::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "manhole-cli", &mut out);
    std::io::stdout().lock().write_all(&out)
}

/// Prints the man page (roff) to stdout.
pub fn print_man_page() -> std::io::Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Args::command()).render(&mut out)?;
    std::io::stdout().lock().write_all(&out)
}
