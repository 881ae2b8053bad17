//! Errors of PID 1. Each names what failed and on which path or device.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting {source_dev} on {target} ({fstype}): {errno}")]
    Mount {
        source_dev: String,
        target: PathBuf,
        fstype: String,
        errno: nix::Error,
    },
    #[error("{what}: {errno}")]
    Sys { what: String, errno: nix::Error },
    #[error("kernel module {name}: {reason}")]
    Module { name: String, reason: String },
    #[error("boot disk: {0}")]
    Disk(String),
    #[error("supervisor: {0}")]
    Supervisor(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub fn sys(what: impl Into<String>, errno: nix::Error) -> Self {
        Self::Sys {
            what: what.into(),
            errno,
        }
    }
}
