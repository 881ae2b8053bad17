//! Errors of the runtime daemon.

/// What can go wrong running a workload or serving the runtime API.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image store refused or failed.
    #[error(transparent)]
    Image(#[from] bramble_oci_store::Error),
    /// Building the container's OCI spec or bundle failed.
    #[error(transparent)]
    Container(#[from] crate::container::ContainerError),
    /// Mounting or cleaning up a container's root failed.
    #[error("container root: {0}")]
    Rootfs(String),
    /// The shim could not be started or its report read.
    #[error("shim: {0}")]
    Shim(String),
    /// A published port could not be served.
    #[error("ports: {0}")]
    Port(String),
    /// No workload of that name.
    #[error("no container named {0:?}; `nodectl containers` lists them")]
    NotFound(String),
    /// File system trouble outside the store.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}
