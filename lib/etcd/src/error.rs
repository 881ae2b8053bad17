//! The crate's errors.

use std::path::PathBuf;

/// What can go wrong running or reaching etcd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to etcd failed.
    #[error("etcd: {what}: {source}")]
    Etcd {
        /// The operation.
        what: String,
        /// etcd's answer or the transport's error.
        #[source]
        source: etcd_client::Error,
    },
    /// Something etcd answered does not make sense.
    #[error("etcd: {0}")]
    Unexpected(String),
    /// A certificate could not be issued or read.
    #[error("etcd certificates: {0}")]
    Pki(#[from] bramble_pki::Error),
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What the file is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `etcdctl snapshot restore` failed, or its result cannot be used.
    #[error("restoring the snapshot: {0}")]
    Restore(String),
    /// An atomic write failed.
    #[error(transparent)]
    File(#[from] bramble_atomic::FileError),
}

impl Error {
    pub(crate) fn etcd(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> Self {
        let what = what.into();
        move |source| Self::Etcd { what, source }
    }

    pub(crate) fn io<'a>(
        what: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| Self::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}
