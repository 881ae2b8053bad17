//! Errors of the supervisor crate.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
///
/// Definition errors always name where the definition came from (`origin`: the
/// file, or `service "name"` for definitions built in code) and, where there
/// is one, the offending field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A definition file or directory could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// File or directory.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A definition file is not valid TOML or does not match the schema
    /// (unknown field, wrong type, missing required field).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and the offending field.
        message: String,
    },

    /// A definition is well-formed but its content is invalid.
    #[error("{origin}: field `{field}`: {reason}")]
    Invalid {
        /// The file, or `service "name"` for definitions built in code.
        origin: String,
        /// The offending field.
        field: String,
        /// Why it is refused.
        reason: String,
    },

    /// A request named a service the supervisor does not know.
    #[error("unknown service \"{0}\"")]
    UnknownService(String),

    /// A start/restart request arrived while shutting down.
    #[error("shutting down")]
    ShuttingDown,

    /// Setting up signal handling failed.
    #[error("signal setup: {0}")]
    Signal(#[source] std::io::Error),

    /// Talking to the control socket failed (client side).
    #[error("control socket {path}: {source}")]
    Control {
        /// Socket path.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The control socket answered something that is not a valid response.
    #[error("invalid control response: {0}")]
    Protocol(String),

    /// The supervisor refused a control request.
    #[error("{0}")]
    Remote(String),
}
