//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod registry;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bramble_oci_store::build::{Entry, ImageBuilder};
use bramble_oci_store::{ImageInfo, Platform, Store};

/// Returns early from a test that needs root, saying why (and fails it
/// under `CI=true`): snapshots need mknod, chown and trusted.* xattrs.
#[macro_export]
macro_rules! require_root {
    () => {
        bramble_testkit::skip_unless!(
            bramble_testkit::is_root(),
            "this test unpacks layers (mknod, chown, trusted.* xattrs) and needs root"
        );
    };
}

/// The host's platform arch name, e.g. "amd64".
pub fn host_arch() -> String {
    Platform::host().architecture
}

/// A two-layer image exercising every kind of entry.
///
/// Layer 1: dirs, files with owners and modes, a setuid binary, a symlink,
/// a hard link, a device node, a file and a directory that layer 2 hides.
/// Layer 2: a whiteout of `etc/remove-me`, `opaque/` made opaque with a new
/// file, and `etc/hello` replaced.
pub fn sample_image(arch: &str) -> ImageBuilder {
    ImageBuilder::new(arch)
        .layer(vec![
            Entry::dir("etc", 0o755),
            Entry::dir("bin", 0o755),
            Entry::File {
                path: "etc/hello".to_owned(),
                mode: 0o640,
                uid: 1000,
                gid: 100,
                contents: b"hello from layer 1\n".to_vec(),
            },
            Entry::file("etc/remove-me", 0o644, b"gone in layer 2\n"),
            Entry::file("bin/tool", 0o4755, b"#!/bin/sh\necho tool\n"),
            Entry::hardlink("bin/tool-link", "bin/tool"),
            Entry::symlink("bin/sh", "tool"),
            Entry::symlink("etc/abs", "/etc/hello"),
            Entry::Dir {
                path: "home/user".to_owned(),
                mode: 0o700,
                uid: 1000,
                gid: 1000,
            },
            Entry::file("opaque/old", 0o644, b"hidden by layer 2\n"),
            Entry::Device {
                path: "dev/null".to_owned(),
                mode: 0o666,
                block: false,
                major: 1,
                minor: 3,
            },
            Entry::file(
                "deep/er/and/deeper/file",
                0o600,
                b"parents made implicitly\n",
            ),
            Entry::dir("tmp", 0o1777),
        ])
        .layer(vec![
            Entry::whiteout("etc/remove-me"),
            Entry::opaque("opaque"),
            Entry::file("opaque/new", 0o644, b"new in layer 2\n"),
            Entry::file("etc/hello", 0o644, b"hello from layer 2\n"),
            // No entries for their parents: those take the lower layer's
            // attributes.
            Entry::file("tmp/x", 0o644, b"x"),
            Entry::file("home/user/.profile", 0o644, b"PS1='$ '\n"),
        ])
        .config(
            &["/bin/tool"],
            &["--flag"],
            &["PATH=/bin", "GREETING=hi"],
            "1000:100",
            "/home/user",
        )
}

/// The archive bytes of an image.
pub fn archive(image: &ImageBuilder) -> Vec<u8> {
    let mut out = Vec::new();
    image.write_archive(&mut out).expect("writing an archive");
    out
}

/// The names in a directory.
pub fn names(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(it) => it
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Blob digests (hex) in the store.
pub fn blobs(store: &Store) -> BTreeSet<String> {
    names(&store.root().join("blobs/sha256"))
}

/// Snapshot names in the store.
pub fn snapshots(store: &Store) -> BTreeSet<String> {
    names(&store.root().join("snapshots"))
}

/// Entries left in `tmp/`.
pub fn tmp_leftovers(store: &Store) -> BTreeSet<String> {
    names(&store.root().join("tmp"))
}

/// A fresh store in a temporary directory.
pub fn store_for(platform: Platform) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_for_platform(&dir.path().join("images"), platform).expect("open store");
    (dir, store)
}

/// A fresh store for the host's platform.
pub fn host_store() -> (tempfile::TempDir, Store) {
    store_for(Platform::host())
}

/// The value of an xattr (no symlink following).
pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

/// Checks the snapshot directories of [`sample_image`].
pub fn check_sample_snapshots(layers: &[PathBuf]) {
    assert_eq!(layers.len(), 2, "two layers");
    let (l1, l2) = (&layers[0], &layers[1]);

    let hello = l1.join("etc/hello");
    assert_eq!(
        fs::read(&hello).expect("etc/hello"),
        b"hello from layer 1\n"
    );
    let m = fs::symlink_metadata(&hello).expect("stat");
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!((m.uid(), m.gid()), (1000, 100));
    assert_eq!(m.mtime() as u64, bramble_oci_store::build::BUILD_MTIME);

    let tool = fs::symlink_metadata(l1.join("bin/tool")).expect("bin/tool");
    assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid bit kept");
    let link = fs::symlink_metadata(l1.join("bin/tool-link")).expect("hard link");
    assert_eq!(link.ino(), tool.ino(), "hard link shares the inode");
    assert_eq!(tool.nlink(), 2);

    assert_eq!(
        fs::read_link(l1.join("bin/sh")).expect("symlink"),
        Path::new("tool")
    );
    assert_eq!(
        fs::read_link(l1.join("etc/abs")).expect("symlink"),
        Path::new("/etc/hello")
    );
    let sl = fs::symlink_metadata(l1.join("bin/sh")).expect("symlink stat");
    assert_eq!(sl.mtime() as u64, bramble_oci_store::build::BUILD_MTIME);

    let home = fs::symlink_metadata(l1.join("home/user")).expect("home/user");
    assert!(home.is_dir());
    assert_eq!(home.mode() & 0o7777, 0o700);
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    let etc = fs::symlink_metadata(l1.join("etc")).expect("etc");
    assert_eq!(
        etc.mtime() as u64,
        bramble_oci_store::build::BUILD_MTIME,
        "dir mtime kept"
    );
    let implicit = fs::symlink_metadata(l1.join("deep/er")).expect("implicit dir");
    assert_eq!(implicit.mode() & 0o7777, 0o755);

    let null = fs::symlink_metadata(l1.join("dev/null")).expect("dev/null");
    assert_eq!(null.mode() & 0o170000, 0o020000, "character device");
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);

    // Layer 2 holds only its own files.
    assert_eq!(
        names(l2),
        BTreeSet::from(["etc", "home", "opaque", "tmp"].map(str::to_owned))
    );
    let tmp = fs::symlink_metadata(l2.join("tmp")).expect("tmp");
    assert_eq!(
        tmp.mode() & 0o7777,
        0o1777,
        "implicit parent keeps the lower mode"
    );
    let user = fs::symlink_metadata(l2.join("home/user")).expect("home/user");
    assert_eq!(user.mode() & 0o7777, 0o700);
    assert_eq!((user.uid(), user.gid()), (1000, 1000));
    let etc2 = fs::symlink_metadata(l2.join("etc")).expect("etc");
    assert_eq!(etc2.mode() & 0o7777, 0o755);
    assert_eq!(etc2.mtime() as u64, bramble_oci_store::build::BUILD_MTIME);
    assert_eq!(
        fs::read(l2.join("etc/hello")).expect("etc/hello"),
        b"hello from layer 2\n"
    );
    let wh = fs::symlink_metadata(l2.join("etc/remove-me")).expect("whiteout");
    assert_eq!(
        wh.mode() & 0o170000,
        0o020000,
        "whiteout is a character device"
    );
    assert_eq!(wh.rdev(), 0, "whiteout is 0:0");
    assert!(!l2.join("etc/.wh.remove-me").exists());
    assert_eq!(
        xattr(&l2.join("opaque"), bramble_oci_store::OPAQUE_XATTR).as_deref(),
        Some(&b"y"[..])
    );
    assert!(!l2.join("opaque/.wh..wh..opq").exists());
    assert_eq!(
        names(&l2.join("opaque")),
        BTreeSet::from(["new".to_owned()])
    );
    assert!(xattr(&l1.join("opaque"), bramble_oci_store::OPAQUE_XATTR).is_none());
}

/// Checks the config of [`sample_image`].
pub fn check_sample_config(config: &oci_spec::image::ImageConfiguration) {
    let c = config.config().as_ref().expect("container config");
    assert_eq!(
        c.entrypoint().as_deref(),
        Some(&["/bin/tool".to_owned()][..])
    );
    assert_eq!(c.cmd().as_deref(), Some(&["--flag".to_owned()][..]));
    assert_eq!(
        c.env().as_deref(),
        Some(&["PATH=/bin".to_owned(), "GREETING=hi".to_owned()][..])
    );
    assert_eq!(c.user().as_deref(), Some("1000:100"));
    assert_eq!(c.working_dir().as_deref(), Some("/home/user"));
}

/// The list of a store, for before/after comparisons.
pub fn listing(store: &Store) -> Vec<ImageInfo> {
    store.list().expect("list")
}
