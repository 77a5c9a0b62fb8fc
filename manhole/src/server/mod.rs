//! The server: the socket file, the listener and its peer check, one session per client, the
//! command language, and the tee that shows the application's stderr in open sessions.

pub(crate) mod commands;
pub(crate) mod credentials;
pub(crate) mod listener;
pub(crate) mod session;
pub(crate) mod socket;
pub(crate) mod tee;
