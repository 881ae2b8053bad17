//! Configuration patches (strategic merge and RFC 6902): applied to the
//! full example configuration, or, when the input holds a NUL byte, to the
//! document before it; a patched document that parses is diffed against
//! the base.
#![no_main]

use bramble_config::{MachineConfig, apply_patch};
use libfuzzer_sys::fuzz_target;

const BASE: &str = include_str!("../../../lib/config/tests/data/full.yaml");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (base, patch) = text.split_once('\0').unwrap_or((BASE, text));
    let Ok(patched) = apply_patch(base, patch) else {
        return;
    };
    if let (Ok(old), Ok(new)) = (MachineConfig::parse(base), MachineConfig::parse(&patched)) {
        let diff = bramble_config::diff(&old, &new);
        let _ = diff.to_string();
    }
});
