//! DHCPv4 client: the protocol state machine ([`machine`]), lease and option
//! parsing ([`lease`]) and the per-link driver that does the socket I/O and
//! applies leases ([`client`]).

pub mod client;
pub mod lease;
pub mod machine;

pub use lease::Lease;
pub use machine::{LossReason, Phase};
