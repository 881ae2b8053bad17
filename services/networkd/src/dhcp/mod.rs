//! DHCPv4 client: the protocol state machine ([`machine`]) and lease and
//! option parsing ([`lease`]), both in the crate's library, and the per-link
//! driver that does the socket I/O and applies leases ([`client`]).

pub mod client;

pub use bramble_networkd::dhcp::{Lease, LossReason, Phase, lease, machine};
