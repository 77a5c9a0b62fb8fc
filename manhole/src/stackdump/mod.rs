//! Every thread's backtrace, captured in-process (CONTRACT STUB: the stackdump helper replaces this file).
//!
//! Public data types and the crate-internal entry points the rest of the crate calls.

use std::time::Duration;

use crate::Result;

/// Options for one capture.
#[derive(Debug, Clone)]
pub(crate) struct DumpOptions {
    /// The real-time signal used to ask each thread for its stack (already resolved to a number).
    pub signal: libc::c_int,
    /// How long to wait for all threads to answer after the last signal was sent.
    pub timeout: Duration,
    /// The most frames recorded per thread.
    pub max_frames: usize,
}

/// Installs the capture handler for `signal` (idempotent for the same signal) and warms the unwinder up.
pub(crate) fn install_handler(_signal: libc::c_int) -> Result<()> {
    todo!()
}

/// Captures and symbolizes the stack of every thread of the process.
pub(crate) fn capture(_options: &DumpOptions) -> Result<StackDump> {
    todo!()
}

/// A symbolized backtrace of every thread of the process at one moment.
#[derive(Debug, Clone)]
pub struct StackDump {}

impl StackDump {
    /// The dump as text, as the REPL shows it.
    pub fn to_text(&self) -> String {
        todo!()
    }
    /// The dump as JSON (see docs/protocol.md).
    pub fn to_json(&self) -> serde_json::Value {
        todo!()
    }
    /// Only the threads whose tid equals `filter` or whose name contains it.
    pub fn filtered(&self, _filter: &str) -> StackDump {
        todo!()
    }
}
