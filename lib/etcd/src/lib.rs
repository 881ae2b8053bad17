//! etcd on control-plane nodes.
//!
//! The node runs Debian's etcd 3.4 (`/usr/bin/etcd`) under `etcdd`
//! (`services/etcd/`). What both it and the machine API server need lives
//! here, once:
//! - [`layout`]: where etcd's data, certificates, the bootstrap request and
//!   the status live on the node, and the user etcd runs as;
//! - [`pki`]: the member's peer, server and client certificates, issued from
//!   the cluster's etcd CA for the node's current names and addresses;
//! - [`launch`]: etcd's command line, from the machine configuration's
//!   tuning and how the member enters the cluster;
//! - [`restore`]: a member's data made from a snapshot (`etcdctl snapshot
//!   restore`), for `nodectl bootstrap --recover-from`;
//! - [`cluster`]: the cluster operations over etcd's client API with mutual
//!   TLS (`etcd-client`, rustls): members, learners, promotion, removal,
//!   status.

pub mod cluster;
mod error;
pub mod launch;
pub mod layout;
pub mod pki;
pub mod restore;

pub use cluster::{Cluster, MemberInfo, StatusInfo, enter, format_id};
pub use error::Error;
pub use launch::{Initial, Launch};
pub use layout::{BootstrapRequest, CLIENT_PORT, ETCD_GID, ETCD_UID, Layout, PEER_PORT};
pub use pki::MemberCerts;

/// `https://<ip>:<port>`, with brackets around an IPv6 address.
pub fn url(ip: std::net::IpAddr, port: u16) -> String {
    format!("https://{}", std::net::SocketAddr::new(ip, port))
}
