//! Layer unpacking: a tar (or tar+gzip, by its magic) unpacked into a fresh
//! snapshot directory over one lower snapshot, as a pull or an import does.
//! Nothing may appear outside the snapshot.
#![no_main]

use std::fs;
use std::os::unix::fs::PermissionsExt;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = bramble_fuzz::tempdir("bramble-fuzz-unpack.");
    let blob = dir.path().join("blob");
    fs::write(&blob, data).expect("writing the blob");
    // A lower snapshot whose /tmp and /etc a layer's entries may need.
    let lower = dir.path().join("lower");
    fs::create_dir_all(lower.join("tmp")).expect("lower/tmp");
    fs::set_permissions(lower.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod");
    fs::create_dir(lower.join("etc")).expect("lower/etc");
    let dest = dir.path().join("snapshot");
    fs::create_dir(&dest).expect("snapshot directory");

    let gzip = data.starts_with(&[0x1f, 0x8b]);
    let _ =
        bramble_oci_store::fuzzing::unpack_layer(&blob, gzip, &dest, std::slice::from_ref(&lower));

    let mut names: Vec<_> = fs::read_dir(dir.path())
        .expect("reading the temporary directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["blob", "lower", "snapshot"],
        "the layer wrote beside its snapshot"
    );
    let mut lower_names: Vec<_> = fs::read_dir(&lower)
        .expect("reading the lower snapshot")
        .map(|e| e.expect("entry").file_name())
        .collect();
    lower_names.sort();
    assert_eq!(
        lower_names,
        ["etc", "tmp"],
        "the layer wrote into a lower snapshot"
    );
    assert_eq!(
        fs::read_dir(lower.join("tmp")).expect("lower/tmp").count(),
        0
    );
    assert_eq!(
        fs::read_dir(lower.join("etc")).expect("lower/etc").count(),
        0
    );
});
