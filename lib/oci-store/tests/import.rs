//! Importing OCI image layout archives: contents, platform selection, and
//! every kind of bad input.

mod common;

use std::fs;

use bramble_oci_store::build::{Entry, ImageBuilder, IndexBuilder, LayerFormat, raw_tar_with_file};
use bramble_oci_store::manifest::{OCI_LAYER_TAR, OCI_LAYER_ZSTD};
use bramble_oci_store::{Platform, Store};

#[test]
fn import_lists_resolves_and_unpacks() {
    require_root!();
    let (_dir, store) = common::host_store();
    let image =
        common::sample_image(&common::host_arch()).annotate_ref("registry.example/test/sample:v1");
    let parts = image.parts().expect("parts");
    let infos = store
        .import_archive(&common::archive(&image)[..], None)
        .expect("import");
    assert_eq!(infos.len(), 1);
    let info = &infos[0];
    assert_eq!(info.reference, "registry.example/test/sample:v1");
    assert_eq!(info.digest, parts.manifest_digest);
    assert_eq!(info.platform, Platform::host().to_string());
    let expected_size = parts.manifest.len()
        + parts.config.len()
        + parts.layers.iter().map(|l| l.data.len()).sum::<usize>();
    assert_eq!(info.size_bytes, expected_size as u64);
    assert!(info.stored_unix > 1_700_000_000);

    assert_eq!(common::listing(&store), infos);
    assert_eq!(
        store
            .resolve("registry.example/test/sample:v1")
            .expect("resolve")
            .as_ref(),
        Some(info)
    );
    let by_digest = format!("registry.example/test/sample@{}", info.digest);
    assert_eq!(
        store
            .resolve(&by_digest)
            .expect("resolve by digest")
            .map(|i| i.reference),
        Some(info.reference.clone())
    );
    assert_eq!(
        store
            .resolve(&info.digest)
            .expect("resolve bare digest")
            .map(|i| i.reference),
        Some(info.reference.clone())
    );
    assert_eq!(
        store
            .resolve("registry.example/test/sample:v2")
            .expect("resolve"),
        None
    );
    assert_eq!(store.resolve("registry.example/other@sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824").expect("resolve"), None);

    let resolved = store
        .image("registry.example/test/sample:v1")
        .expect("image");
    assert_eq!(&resolved.info, info);
    common::check_sample_snapshots(&resolved.layers);
    common::check_sample_config(&resolved.config);
    for dir in &resolved.layers {
        assert!(dir.starts_with(store.root().join("snapshots")));
    }
    assert!(common::tmp_leftovers(&store).is_empty());

    // Importing again stores nothing new; an explicit tag adds a reference.
    let blobs = common::blobs(&store);
    let snaps = common::snapshots(&store);
    let again = store
        .import_archive(
            &common::archive(&image)[..],
            Some("localhost:5000/copy:latest"),
        )
        .expect("import with a tag");
    assert_eq!(again[0].reference, "localhost:5000/copy:latest");
    assert_eq!(again[0].digest, info.digest);
    assert_eq!(common::blobs(&store), blobs);
    assert_eq!(common::snapshots(&store), snaps);
    assert_eq!(common::listing(&store).len(), 2);

    // A store opened again sees the same.
    let reopened = Store::open_for_platform(store.root(), Platform::host()).expect("reopen");
    assert_eq!(common::listing(&reopened), common::listing(&store));
}

#[test]
fn docker_media_types_uncompressed_and_gzipped_archives() {
    require_root!();
    let (_dir, store) = common::host_store();
    let image = ImageBuilder::new(&common::host_arch())
        .layer(vec![Entry::file("a", 0o644, b"a")])
        .layer_as(vec![Entry::file("b", 0o644, b"b")], LayerFormat::Tar)
        .docker_media_types()
        .annotate_ref("example.com/docker:1");
    let info = store
        .import_archive(&common::archive(&image)[..], None)
        .expect("docker image");
    let resolved = store.image(&info[0].reference).expect("image");
    assert_eq!(fs::read(resolved.layers[0].join("a")).expect("a"), b"a");
    assert_eq!(fs::read(resolved.layers[1].join("b")).expect("b"), b"b");

    // The whole archive gzip-compressed.
    let image = ImageBuilder::new(&common::host_arch())
        .layer(vec![Entry::file("c", 0o644, b"c")])
        .annotate_ref("example.com/gz:1");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    image.write_archive(&mut enc).expect("write");
    let gz = enc.finish().expect("gzip");
    let info = store
        .import_archive(&gz[..], None)
        .expect("gzipped archive");
    assert_eq!(info[0].reference, "example.com/gz:1");
}

#[test]
fn multi_platform_index_picks_the_store_platform() {
    require_root!();
    let index = IndexBuilder::new()
        .image(ImageBuilder::new("arm64").layer(vec![Entry::file("arch", 0o644, b"arm64")]))
        .image(ImageBuilder::new("amd64").layer(vec![Entry::file("arch", 0o644, b"amd64")]))
        .image(
            ImageBuilder::for_platform(Platform::new("linux", "arm", Some("v7")))
                .layer(vec![Entry::file("arch", 0o644, b"armv7")]),
        )
        .annotate_ref("example.com/multi:1");
    let parts = index.parts().expect("parts");
    let mut archive = Vec::new();
    index.write_archive(&mut archive).expect("archive");

    for (platform, content, idx) in [
        (Platform::linux_arm64(), &b"arm64"[..], 0),
        (Platform::linux_amd64(), &b"amd64"[..], 1),
        (Platform::new("linux", "arm", Some("v7")), &b"armv7"[..], 2),
    ] {
        let (_dir, store) = common::store_for(platform.clone());
        let info = store.import_archive(&archive[..], None).expect("import");
        assert_eq!(
            info[0].digest, parts.images[idx].manifest_digest,
            "{platform}"
        );
        assert_eq!(info[0].platform, platform.to_string());
        let resolved = store.image("example.com/multi:1").expect("image");
        assert_eq!(
            fs::read(resolved.layers[0].join("arch")).expect("arch"),
            content
        );
    }

    let (_dir, store) = common::store_for(Platform::new("linux", "riscv64", None));
    let err = store
        .import_archive(&archive[..], None)
        .expect_err("no riscv64");
    let msg = err.to_string();
    assert!(msg.contains("linux/riscv64"), "{msg}");
    assert!(
        msg.contains("linux/arm64, linux/amd64, linux/arm/v7"),
        "{msg}"
    );
    assert!(common::listing(&store).is_empty());
}

/// Imports `archive` into `store` expecting an error containing every one
/// of `needles`, and checks nothing was tagged and nothing left in tmp/.
fn expect_import_error(store: &Store, archive: &[u8], tag: Option<&str>, needles: &[&str]) {
    let before = common::listing(store);
    let err = match store.import_archive(archive, tag) {
        Ok(infos) => panic!("the import expected to fail with {needles:?} succeeded: {infos:?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    eprintln!("refused as expected: {msg}");
    for needle in needles {
        assert!(
            msg.contains(needle),
            "error {msg:?} should mention {needle:?}"
        );
    }
    assert_eq!(
        common::listing(store),
        before,
        "nothing new is tagged after {msg:?}"
    );
    assert!(
        common::tmp_leftovers(store).is_empty(),
        "tmp/ is empty after {msg:?}"
    );
}

#[test]
fn bad_archives_are_refused_and_leave_nothing_tagged() {
    require_root!();
    let (dir, store) = common::host_store();
    let arch = common::host_arch();
    let good = common::sample_image(&arch).annotate_ref("example.com/good:1");
    store
        .import_archive(&common::archive(&good)[..], None)
        .expect("good import");
    let good_blobs = common::blobs(&store);
    let good_snapshots = common::snapshots(&store);

    let victim = ImageBuilder::new(&arch)
        .layer(vec![Entry::file("v", 0o644, b"victim layer one")])
        .layer(vec![Entry::file("w", 0o644, b"victim layer two")])
        .annotate_ref("example.com/victim:1");
    let parts = victim.parts().expect("parts");
    let layout = victim.layout().expect("layout");
    let full = common::archive(&victim);

    // Truncated in the middle of a blob, and exactly at a block boundary.
    expect_import_error(&store, &full[..full.len() / 2], None, &["truncated"]);
    let cut = (full.len() - 1024 - 512) / 512 * 512;
    expect_import_error(&store, &full[..cut], None, &["truncated"]);
    expect_import_error(&store, &full[..700], None, &["truncated"]);

    // A blob whose content differs from the digest naming it.
    let mut corrupt = layout.clone();
    let layer = corrupt
        .blob_mut(&parts.layers[1].digest)
        .expect("layer blob");
    let last = layer.len() - 1;
    layer[last] ^= 0xff;
    let mut bytes = Vec::new();
    corrupt.write_archive(&mut bytes).expect("write");
    expect_import_error(
        &store,
        &bytes,
        None,
        &["does not match its digest", &parts.layers[1].digest],
    );

    // A missing layer (of an image none of whose blobs the store has: the
    // failed imports above left this victim's blobs behind, which would
    // complete it).
    let fresh = ImageBuilder::new(&arch)
        .layer(vec![Entry::file("v", 0o644, b"fresh victim")])
        .annotate_ref("example.com/fresh:1");
    let fresh_parts = fresh.parts().expect("parts");
    let mut missing = fresh.layout().expect("layout");
    missing
        .remove_blob(&fresh_parts.layers[0].digest)
        .expect("remove");
    let mut bytes = Vec::new();
    missing.write_archive(&mut bytes).expect("write");
    expect_import_error(
        &store,
        &bytes,
        None,
        &["is missing", &fresh_parts.layers[0].digest],
    );

    // The manifest blob does not match its digest.
    let mut bad_manifest = layout.clone();
    bad_manifest
        .blob_mut(&parts.manifest_digest)
        .expect("manifest blob")
        .extend_from_slice(b" ");
    let mut bytes = Vec::new();
    bad_manifest.write_archive(&mut bytes).expect("write");
    expect_import_error(
        &store,
        &bytes,
        None,
        &["does not match its digest", &parts.manifest_digest],
    );

    // index.json gives the manifest the wrong size.
    let mut bad_size = layout.clone();
    let index = String::from_utf8(bad_size.index_json.clone()).expect("utf8");
    let size = format!("\"size\":{}", parts.manifest.len());
    assert!(index.contains(&size));
    bad_size.index_json = index.replace(&size, "\"size\":3").into_bytes();
    let mut bytes = Vec::new();
    bad_size.write_archive(&mut bytes).expect("write");
    expect_import_error(&store, &bytes, None, &["size", "descriptor says 3 bytes"]);

    // Path traversal with `..`.
    let (tar, diff_id) = raw_tar_with_file("../../escaped", b"evil").expect("tar");
    let evil = ImageBuilder::new(&arch)
        .raw_layer(OCI_LAYER_TAR, tar, &diff_id)
        .annotate_ref("example.com/evil:1");
    expect_import_error(
        &store,
        &common::archive(&evil),
        None,
        &["path traversal", "../../escaped"],
    );
    assert!(!store.root().join("escaped").exists());
    assert!(!dir.path().join("escaped").exists());

    // Path traversal through a symlink planted by the same layer.
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).expect("outside dir");
    let evil = ImageBuilder::new(&arch)
        .layer(vec![
            Entry::symlink("link", outside.to_str().expect("utf8 path")),
            Entry::file("link/escaped", 0o644, b"evil"),
        ])
        .annotate_ref("example.com/evil:2");
    expect_import_error(
        &store,
        &common::archive(&evil),
        None,
        &["symbolic link", "link/escaped"],
    );
    assert!(
        common::names(&outside).is_empty(),
        "nothing written through the symlink"
    );

    // A hard link to something outside the layer.
    let evil = ImageBuilder::new(&arch)
        .layer(vec![Entry::hardlink("passwd", "../../../etc/passwd")])
        .annotate_ref("example.com/evil:3");
    expect_import_error(&store, &common::archive(&evil), None, &["path traversal"]);

    // zstd.
    let zstd = ImageBuilder::new(&arch)
        .raw_layer(
            OCI_LAYER_ZSTD,
            b"(not really zstd)".to_vec(),
            &parts.layers[0].diff_id,
        )
        .annotate_ref("example.com/zstd:1");
    expect_import_error(
        &store,
        &common::archive(&zstd),
        None,
        &["zstd-compressed layers are not supported", OCI_LAYER_ZSTD],
    );

    // A layer whose uncompressed content is not the config's diff_id.
    let wrong = ImageBuilder::new(&arch)
        .raw_layer(
            OCI_LAYER_TAR,
            raw_tar_with_file("x", b"x").expect("tar").0,
            &parts.layers[0].diff_id,
        )
        .annotate_ref("example.com/diffid:1");
    expect_import_error(
        &store,
        &common::archive(&wrong),
        None,
        &["diff_ids", &parts.layers[0].diff_id],
    );

    // Bad references.
    expect_import_error(
        &store,
        &full,
        Some("Not A Reference"),
        &["invalid image reference", "\"Not A Reference\""],
    );
    let bare = ImageBuilder::new(&arch)
        .layer(vec![Entry::file("x", 0o644, b"bare")])
        .annotate_ref("v1");
    expect_import_error(
        &store,
        &common::archive(&bare),
        None,
        &["\"v1\"", "only a tag"],
    );
    let unnamed = ImageBuilder::new(&arch).layer(vec![Entry::file("x", 0o644, b"unnamed")]);
    expect_import_error(
        &store,
        &common::archive(&unnamed),
        None,
        &["the archive names no reference; give one"],
    );
    let bad_name = ImageBuilder::new(&arch)
        .layer(vec![Entry::file("x", 0o644, b"bad")])
        .annotate_ref("Example.com/UPPER:1");
    expect_import_error(
        &store,
        &common::archive(&bad_name),
        None,
        &["invalid image reference", "UPPER"],
    );

    // Another platform's image.
    let other_arch = if arch == "arm64" { "amd64" } else { "arm64" };
    let foreign = ImageBuilder::new(other_arch)
        .layer(vec![Entry::file("x", 0o644, b"foreign")])
        .annotate_ref("example.com/foreign:1");
    expect_import_error(
        &store,
        &common::archive(&foreign),
        None,
        &[other_arch, "has no image for platform"],
    );

    // Not an archive at all; an archive without index.json.
    expect_import_error(
        &store,
        b"this is not a tar archive",
        None,
        &["not a tar archive"],
    );
    expect_import_error(&store, &[b'x'; 4096], None, &["not a tar archive"]);
    expect_import_error(&store, b"", None, &["the archive is empty"]);
    let mut no_index = layout.clone();
    no_index.index_json = b"{\"schemaVersion\":2,\"manifests\":[]}".to_vec();
    let mut bytes = Vec::new();
    no_index.write_archive(&mut bytes).expect("write");
    expect_import_error(&store, &bytes, None, &["lists no images"]);

    // Only the good image is tagged, and the failures took away what they
    // had stored: gc finds nothing to remove.
    assert_eq!(
        common::listing(&store)
            .iter()
            .map(|i| i.reference.as_str())
            .collect::<Vec<_>>(),
        vec!["example.com/good:1"]
    );
    assert_eq!(
        common::blobs(&store),
        good_blobs,
        "failed imports left orphan blobs"
    );
    let report = store.gc(&[]).expect("gc");
    assert_eq!(report.removed_blobs, 0);
    assert_eq!(common::blobs(&store), good_blobs);
    assert_eq!(common::snapshots(&store), good_snapshots);
    store
        .image("example.com/good:1")
        .expect("the good image still works");
}

#[test]
fn open_removes_leftovers_of_interrupted_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("images");
    let store = Store::open(&root).expect("open");
    fs::write(root.join("tmp/blob-123"), b"half a blob").expect("leftover file");
    fs::create_dir_all(root.join("tmp/unpack-456/usr/bin")).expect("leftover dir");
    drop(store);
    let store = Store::open(&root).expect("reopen");
    assert!(common::tmp_leftovers(&store).is_empty());
    assert!(store.list().expect("list").is_empty());

    // A damaged refs.json is reported, not ignored.
    fs::write(root.join("refs.json"), b"{ not json").expect("damage");
    let err = Store::open(&root).expect_err("damaged refs.json");
    assert!(err.to_string().contains("refs.json"), "{err}");
}

/// Unmounts when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn snapshots_mount_as_overlay_lower_dirs() {
    require_root!();
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    bramble_testkit::skip_unless!(
        filesystems.contains("overlay"),
        "the kernel has no overlay filesystem"
    );
    let (dir, store) = common::host_store();
    let image = common::sample_image(&common::host_arch()).annotate_ref("example.com/overlay:1");
    store
        .import_archive(&common::archive(&image)[..], None)
        .expect("import");
    let resolved = store.image("example.com/overlay:1").expect("image");
    // overlayfs wants the top layer first.
    let lowerdir = resolved
        .layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let merged = dir.path().join("merged");
    fs::create_dir(&merged).expect("mountpoint");
    let status = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={lowerdir}"))
        .arg(&merged)
        .status()
        .expect("running mount");
    assert!(status.success(), "mount -t overlay failed: {status}");
    let _mounted = Mounted(merged.clone());

    assert_eq!(
        fs::read(merged.join("etc/hello")).expect("etc/hello"),
        b"hello from layer 2\n"
    );
    assert!(
        !merged.join("etc/remove-me").exists(),
        "the whiteout hides the file"
    );
    assert_eq!(
        common::names(&merged.join("opaque")),
        std::collections::BTreeSet::from(["new".to_owned()]),
        "the opaque directory hides the lower contents"
    );
    assert_eq!(
        fs::read(merged.join("bin/sh")).expect("through the symlink"),
        b"#!/bin/sh\necho tool\n"
    );
    use std::os::unix::fs::MetadataExt;
    let tmp = fs::metadata(merged.join("tmp")).expect("tmp");
    assert_eq!(tmp.mode() & 0o7777, 0o1777);
    assert!(merged.join("tmp/x").exists());
    assert!(merged.join("deep/er/and/deeper/file").exists());
}
