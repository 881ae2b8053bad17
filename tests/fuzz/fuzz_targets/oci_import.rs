//! Archive import: an OCI image layout tar (or tar+gzip) imported into a
//! fresh store for linux/arm64. Every image it says it imported resolves.
#![no_main]

use bramble_oci_store::{Platform, Store};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = bramble_fuzz::tempdir("bramble-fuzz-import.");
    let store =
        Store::open_for_platform(dir.path(), Platform::linux_arm64()).expect("opening a store");
    if let Ok(images) = store.import_archive(data, None) {
        for image in images {
            let resolved = store
                .image(&image.reference)
                .unwrap_or_else(|e| panic!("imported {} does not resolve: {e}", image.reference));
            for layer in &resolved.layers {
                assert!(layer.starts_with(dir.path()), "a layer outside the store");
            }
        }
    }
});
