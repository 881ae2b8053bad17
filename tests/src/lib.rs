//! The QEMU harness for Bramble images.
//!
//! Boot tests and benchmarks copy the built SD-card image (never touching
//! `dist/`), boot it in `qemu-system-aarch64` through U-Boot exactly as the
//! image boots on a Pi, read the serial console, and reach the machine API
//! through a port forwarded to loopback, or, for several nodes that reach
//! each other, on a private bridge in a network namespace ([`cluster::Lan`]).
//! QEMU is always killed when a [`qemu::Node`] is dropped.

pub mod busybox;
pub mod cluster;
pub mod disk;
pub mod fault;
pub mod nodectl;
pub mod paths;
pub mod qemu;
pub mod wait;
