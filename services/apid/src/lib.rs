//! The machine API server (`apid`).
//!
//! One per node. It serves `bramble.machine.v1.MachineService` over TLS on
//! port 50000. Until the node has a configuration it runs in *maintenance
//! mode*: its certificate is self-signed (generated on first start, kept in
//! the state directory, so its fingerprint is stable) and clients connect with
//! `nodectl --insecure` or pin that fingerprint.
//!
//! The server is a library so that other crates' tests can run it in-process;
//! `main.rs` wraps it in a command line, a current-thread tokio runtime,
//! readiness notification and SIGTERM handling.

pub mod auth;
pub mod console;
pub mod error;
pub mod identity;
pub mod info;
pub mod join;
pub mod network;
pub mod pi;
pub mod runtime;
pub mod server;
pub mod service;
pub mod store;
pub mod system;

pub use error::Error;
pub use identity::{Fingerprint, ServerIdentity};
pub use info::NodeInfoSource;
pub use server::{BoundServer, Config};

/// Makes ring the process-wide rustls crypto provider (the build enables no
/// other, but a workspace feature unification could; this keeps the choice
/// explicit). Idempotent.
pub fn install_crypto_provider() {
    // Err only means a provider was already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
