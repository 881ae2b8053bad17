//! The machine configuration parser: a document that parses is written back
//! by `to_yaml` to one that parses to an equal configuration (what apid
//! stores is read again at every boot), and differs from itself in nothing.
#![no_main]

use bramble_config::MachineConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = MachineConfig::ca_certificate_of(text);
    let Ok(config) = MachineConfig::parse(text) else {
        return;
    };
    let yaml = config.to_yaml();
    let again = MachineConfig::parse(&yaml)
        .unwrap_or_else(|e| panic!("to_yaml wrote a document that does not parse: {e}\n{yaml}"));
    assert!(
        again == config,
        "to_yaml does not read back to an equal configuration:\n{yaml}"
    );
    let diff = bramble_config::diff(&config, &again);
    assert!(diff.changed.is_empty() && diff.restart.is_empty() && !diff.reboot);
    let _ = config.redacted().to_yaml();
});
