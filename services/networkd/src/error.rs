//! Error types of the network daemon.

use std::io;

/// Errors from talking to the kernel (netlink, sockets) and from writing the
/// daemon's status files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening the rtnetlink socket failed.
    #[error("cannot open a netlink socket: {0}")]
    NetlinkSocket(#[source] io::Error),

    /// The kernel refused (or failed) a netlink request.
    #[error("netlink request failed: {what}: {source}")]
    Netlink {
        /// What the request tried to do, for example `set link eth0 up`.
        what: String,
        /// The error the kernel (or rtnetlink) reported.
        #[source]
        source: rtnetlink::Error,
    },

    /// Listing links, addresses or routes failed.
    #[error(transparent)]
    Dump(#[from] bramble_netlink::DumpError),

    /// A route the kernel's message format cannot express (mixed families).
    #[error("{what}: {reason}")]
    BadRoute {
        /// What the request tried to do.
        what: String,
        /// Why the message could not be built.
        reason: String,
    },

    /// A link named on the command line (or by the caller) does not exist.
    #[error("link {0:?} not found")]
    LinkNotFound(String),

    /// A link has no usable 6-byte Ethernet hardware address.
    #[error("link {0:?} has no Ethernet hardware address")]
    NoHardwareAddress(String),

    /// Creating or configuring the DHCP client socket failed.
    #[error("DHCP socket on {link}: {what}: {source}")]
    Socket {
        /// The link the socket is bound to.
        link: String,
        /// The socket operation that failed.
        what: &'static str,
        /// The error from the kernel.
        #[source]
        source: io::Error,
    },

    /// Encoding a DHCP message failed.
    #[error("cannot encode DHCP message: {0}")]
    Encode(#[from] dhcproto::error::EncodeError),

    /// A file operation failed.
    #[error(transparent)]
    File(#[from] bramble_atomic::FileError),

    /// Serialising the status document failed.
    #[error("cannot serialise network state: {0}")]
    Json(#[from] serde_json::Error),

    /// The readiness file descriptor named in `BRAMBLE_READY_FD` is not usable.
    #[error(transparent)]
    Ready(#[from] bramble_daemon::ReadyError),
}
