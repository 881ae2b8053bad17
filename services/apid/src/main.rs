//! The machine API server.

fn main() {}
