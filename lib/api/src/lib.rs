//! The machine API: protobuf definitions and generated gRPC code.
//!
//! The `.proto` sources live in `lib/api/proto/`; `build.rs` compiles them with
//! `tonic-prost-build` into server and client code (no transport: the server
//! and client crates bring TCP and TLS themselves).
//!
//! ```
//! use bramble_api::machine::v1::{VersionRequest, VersionResponse};
//! let _ = (VersionRequest {}, VersionResponse::default());
//! ```

/// `bramble.machine.*`: the API a single node exposes about itself.
pub mod machine {
    /// `bramble.machine.v1`.
    #[allow(
        missing_docs,
        missing_debug_implementations,
        unused_qualifications,
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used
    )]
    pub mod v1 {
        tonic::include_proto!("bramble.machine.v1");
    }
}

/// `bramble.runtime.*`: the node's container runtime, served by `runtimed`
/// on a Unix socket to `apid`, which serves the same calls to clients.
pub mod runtime {
    /// `bramble.runtime.v1`.
    #[allow(
        missing_docs,
        missing_debug_implementations,
        unused_qualifications,
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used
    )]
    pub mod v1 {
        tonic::include_proto!("bramble.runtime.v1");
    }
}

/// Default TCP port of the machine API on every node.
pub const DEFAULT_PORT: u16 = 50000;
