//! manhole: open a live debugging session into a running Rust process.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod commands;
mod credentials;
mod error;
mod lifecycle;
mod listener;
mod local;
mod log;
mod options;
pub mod procfs;
mod registry;
mod session;
mod socket;
#[allow(unsafe_code)]
pub mod stackdump;
#[allow(unsafe_code)]
mod sys;
mod threads;

pub use credentials::PeerCred;
pub use error::{Error, ErrorKind, Result};
pub use lifecycle::{Manhole, dump_threads, install};
pub use local::{Atomic, Local, Lock};
pub use options::{ConnectionHandler, Options, default_socket_path, parse_signal};
pub use registry::{Registration, register, register_command};
pub use stackdump::StackDump;
