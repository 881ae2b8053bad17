//! The lines a fault-injection boot test prints: one when it injects a
//! fault, one once the node survived it (it serves its authenticated API
//! again). `make bench` runs those tests with `--nocapture` and counts them
//! (`tests/fault-summary.sh`).

/// Says that `fault` is being injected now.
pub fn injected(fault: &str) {
    println!("fault injected: {fault}");
}

/// Says that the node survived `fault`.
pub fn survived(fault: &str) {
    println!("fault survived: {fault}");
}
