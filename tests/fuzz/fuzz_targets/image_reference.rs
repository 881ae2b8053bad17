//! The image reference parser: a reference that parses is normalised to a
//! text that parses to the same reference (and normalises to itself), and
//! the image store, which adds its own checks, normalises it the same way.
#![no_main]

use bramble_reference::ImageReference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let store = bramble_oci_store::normalize_reference(text);
    let Ok(reference) = ImageReference::parse(text) else {
        assert!(
            store.is_err(),
            "the store takes {text:?}, which does not parse"
        );
        return;
    };
    let whole = reference.whole();
    let again = ImageReference::parse(&whole).unwrap_or_else(|e| {
        panic!("{text:?} is normalised to {whole:?}, which does not parse: {e}")
    });
    assert_eq!(again, reference, "{text:?} normalised to {whole:?}");
    assert_eq!(again.whole(), whole);
    if let Ok(normalised) = store {
        assert_eq!(
            normalised, whole,
            "the store normalises {text:?} differently"
        );
    }
});
