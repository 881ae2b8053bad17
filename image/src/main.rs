//! Unprivileged, reproducible SD-card image builder.

fn main() {}
