//! Command-line client for the Bramble machine API.

fn main() {}
