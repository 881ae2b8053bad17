//! Errors of the machine API server.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can stop the API server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state directory could not be created or written.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },

    /// A file in the state directory could not be written atomically.
    #[error("cannot write {path}: {source}")]
    Persist {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },

    /// Generating the self-signed server certificate failed.
    #[error("cannot generate the server certificate: {0}")]
    CertificateGeneration(#[from] rcgen::Error),

    /// The persisted certificate or key could not be used.
    #[error("invalid server identity in {path}: {reason}")]
    InvalidIdentity {
        /// The file that is wrong.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },

    /// The stored machine configuration no longer parses.
    #[error("the stored configuration {path} is unusable: {reason}")]
    StoredConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The configured node's certificate could not be issued from its CA.
    #[error("cannot issue the server certificate from the configured CA: {0}")]
    Pki(String),

    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: io::Error,
    },

    /// The TLS configuration was refused by the transport.
    #[error("TLS setup failed: {0}")]
    Tls(#[source] tonic::transport::Error),

    /// The gRPC server stopped with an error.
    #[error("API server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}
