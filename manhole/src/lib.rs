//! manhole (skeleton, being written)
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod error;
#[allow(unsafe_code)]
pub mod stackdump;
pub mod procfs;

pub use error::{Error, ErrorKind, Result};
