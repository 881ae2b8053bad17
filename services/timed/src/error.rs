//! Error types of the time daemon.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::ntp::ReplyError;

/// Errors from files, the configuration, the clock and readiness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error(transparent)]
    File(#[from] bramble_atomic::FileError),

    /// The machine configuration file cannot be used. `message` names the
    /// field(s) at fault, one `path: reason` per line.
    #[error("machine configuration {path}: {message}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong, with field paths.
        message: String,
    },

    /// The saved-time file exists but cannot be understood.
    #[error("saved time {path}: {message}")]
    SavedTime {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// Serialising a status document failed.
    #[error("cannot serialise {what}: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// Setting or slewing the system clock failed.
    #[error("{what}: {source}")]
    Clock {
        /// The call that failed.
        what: &'static str,
        /// The error from the kernel.
        #[source]
        source: io::Error,
    },

    /// A time that the clock cannot represent.
    #[error("time {0} ns is out of the clock's range")]
    ClockRange(i128),

    /// Installing a signal handler failed.
    #[error("cannot install a signal handler: {0}")]
    Signal(#[source] io::Error),

    /// The readiness file descriptor named in `BRAMBLE_READY_FD` is not usable.
    #[error(transparent)]
    Ready(#[from] bramble_daemon::ReadyError),
}

/// Why one attempt to get a sample from one server failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The name did not resolve (or resolving took too long).
    #[error("cannot resolve {name}: {reason}")]
    Resolve {
        /// The server name.
        name: String,
        /// The resolver's error.
        reason: String,
    },
    /// Socket operations failed (no route, refused, ...).
    #[error("{addr}: {what}: {source}")]
    Io {
        /// The server address.
        addr: SocketAddr,
        /// The socket operation.
        what: &'static str,
        /// The error from the kernel.
        #[source]
        source: io::Error,
    },
    /// No valid reply within the timeout.
    #[error("{addr}: no reply within {timeout_ms} ms")]
    Timeout {
        /// The server address.
        addr: SocketAddr,
        /// The timeout.
        timeout_ms: u128,
    },
    /// The server answered with something unusable.
    #[error("{addr}: {source}")]
    Reply {
        /// The server address.
        addr: SocketAddr,
        /// Why the reply was refused.
        #[source]
        source: ReplyError,
    },
}
