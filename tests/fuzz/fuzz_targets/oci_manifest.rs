//! Manifest and index parsing and platform selection, as the store reads a
//! document from a registry or an archive; and `os/arch[/variant]` platform
//! strings, whose text reads back to the same platform.
#![no_main]

use bramble_oci_store::Platform;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let platforms = [
        Platform::linux_arm64(),
        Platform::linux_amd64(),
        Platform::new("linux", "arm", Some("v7")),
        Platform::new("linux", "arm64", Some("v8.2")),
    ];
    let _ = bramble_oci_store::fuzzing::check_document(data, &platforms);

    if data.len() <= 256
        && let Ok(text) = std::str::from_utf8(data)
        && let Ok(platform) = text.parse::<Platform>()
    {
        let shown = platform.to_string();
        let again: Platform = shown
            .parse()
            .unwrap_or_else(|e| panic!("{text:?} parsed, its text {shown:?} does not: {e}"));
        assert_eq!(again, platform, "{text:?} shown as {shown:?}");
        assert!(platform.matches(&platform));
    }
});
