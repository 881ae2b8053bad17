//! The network configuration daemon.

fn main() {}
