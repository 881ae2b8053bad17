//! The network daemon's DHCPv4 protocol code that needs no socket and no
//! kernel, as a library so the fuzz targets (`tests/fuzz/`) can reach it:
//! lease and option parsing ([`dhcp::lease`]) and the client state machine
//! ([`dhcp::machine`]). The `networkd` binary uses them from here and does
//! the I/O itself (`dhcp/client.rs`).

/// DHCPv4: the state machine and lease parsing.
pub mod dhcp {
    pub mod lease;
    pub mod machine;

    pub use lease::Lease;
    pub use machine::{LossReason, Phase};
}
