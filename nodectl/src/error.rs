//! Errors of `nodectl`: [`Error`] stops the whole command, [`NodeError`]
//! concerns one node of a fan-out and is reported next to its name.

use std::net::SocketAddr;
use std::time::Duration;

/// A failure that stops the command before (or instead of) talking to nodes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither `--insecure`, `--cert-fingerprint` nor a client configuration.
    #[error(
        "no client configuration: use --insecure for a node in maintenance mode, or \
         --nodeconfig FILE (written by `nodectl gen config`)"
    )]
    NoClientConfig,

    /// No node to talk to.
    #[error("no nodes given: use -n/--nodes <host[:port]> (or -e/--endpoints)")]
    NoNodes,

    /// `-e` and `-n` combined in a way that needs forwarding through a node.
    #[error(
        "-e/--endpoints with -n/--nodes: forwarding through one endpoint to other nodes is not \
         supported yet; give exactly one endpoint and one node (the endpoint is dialled, the \
         node names it), or use -n alone"
    )]
    EndpointForwarding,

    /// The client configuration file could not be read or written.
    #[error("client configuration {path}: {reason}")]
    NodeConfig {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A file given on the command line could not be used.
    #[error("{path}: {reason}")]
    Input {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The command line asks for something that cannot be done.
    #[error("{0}")]
    Usage(String),

    /// `image flash` stopped (the message says whether anything was written).
    #[error(transparent)]
    Flash(#[from] bramble_flash::Error),

    /// TLS client setup failed.
    #[error("TLS client setup failed: {0}")]
    Tls(#[from] rustls::Error),

    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),

    /// Encoding the output failed.
    #[error("cannot encode output as {format}: {reason}")]
    Encode {
        /// json or yaml.
        format: &'static str,
        /// The encoder's message.
        reason: String,
    },
}

/// Why one node could not answer. Messages say what to check next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's message.
        reason: String,
    },

    /// Nothing listens on the port.
    #[error("connection refused: is the node up and its API listening on port {}?", addr.port())]
    Refused {
        /// The address dialled.
        addr: SocketAddr,
    },

    /// Another socket error while connecting.
    #[error("cannot connect: {reason}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// The system's message.
        reason: String,
    },

    /// The certificate is not the pinned one.
    #[error(
        "server certificate fingerprint {actual} does not match --cert-fingerprint {expected}: \
         refusing to talk to this server (wrong node, or its state was reset)"
    )]
    FingerprintMismatch {
        /// `--cert-fingerprint`.
        expected: String,
        /// What the server presented.
        actual: String,
    },

    /// The TLS handshake failed for another reason.
    #[error("TLS handshake failed: {reason}")]
    Tls {
        /// The address dialled.
        addr: SocketAddr,
        /// The TLS library's message.
        reason: String,
    },

    /// The connection did not come up or the call did not finish in time.
    #[error("no answer within {}s (--timeout): is the address right and the node reachable?", .after.as_secs_f64())]
    Timeout {
        /// The timeout.
        after: Duration,
    },

    /// The server answered with a gRPC error.
    #[error("{}: {}", code_name(.code), .message)]
    Rpc {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },

    /// A transport error not covered above.
    #[error("{0}")]
    Transport(String),
}

impl NodeError {
    /// The socket address the error happened on, if it is about one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            NodeError::Refused { addr }
            | NodeError::Connect { addr, .. }
            | NodeError::Tls { addr, .. } => Some(*addr),
            _ => None,
        }
    }
}

fn code_name(code: &tonic::Code) -> String {
    code.description().to_owned()
}

impl From<tonic::Status> for NodeError {
    fn from(status: tonic::Status) -> Self {
        // A failed (re)connection surfaces as a Status whose source chain
        // holds our dial error; report that one.
        if let Some(dial) = find_in_chain(&status) {
            return dial;
        }
        NodeError::Rpc {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// Finds a [`NodeError`] raised by the connector anywhere in `err`'s source
/// chain (tonic and hyper wrap it several times).
pub(crate) fn find_in_chain(err: &(dyn std::error::Error + 'static)) -> Option<NodeError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<NodeError>() {
            return Some(found.clone());
        }
        cur = e.source();
    }
    None
}

/// Renders an error and its sources as `a: b: c`, skipping repeats.
pub(crate) fn chain_message(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}
