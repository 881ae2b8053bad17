//! PID 1 of a Bramble node.

fn main() {}
