//! Debian's static busybox for arm64 (pinned in `tests/packages.lock`),
//! which the tests turn into container images for the node.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bramble_image::{deb, lock as pins};
use bramble_oci_store::build::{Entry, ImageBuilder, ImageParts};
use bramble_testkit::registry::Registry;

/// The pinned package.
const PACKAGE: &str = "busybox-static";
/// The binary inside it.
const BINARY: &str = "bin/busybox";

/// Applets the test images link to busybox.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "tail", "head", "dd", "ls", "true", "false", "env", "id",
    "touch", "mkdir", "rm", "date", "hostname", "wc", "mknod", "unshare", "arping", "ping",
    "httpd",
];

/// `tests/packages.lock`.
pub fn lock() -> PathBuf {
    crate::paths::workspace_root().join("tests/packages.lock")
}

/// The static aarch64 busybox binary, checked against its pin.
pub fn arm64() -> Result<Vec<u8>> {
    let cache = crate::paths::deb_cache()?;
    let lock = pins::Lock::load(&lock())?;
    let entry = lock.get(PACKAGE)?;
    let deb_path = cache.join(&entry.file);
    let data = pins::read_verified(&cache, entry)
        .with_context(|| format!("{} (run `make deps`)", deb_path.display()))?;
    let mut found = None;
    deb::for_each_file(&deb_path, &data, |path, kind, r| {
        if kind == deb::Kind::File && path == BINARY {
            found = Some(deb::read_all(path, r)?);
        }
        Ok(())
    })?;
    found.with_context(|| format!("no {BINARY} in {}", deb_path.display()))
}

/// An arm64 image of `busybox` (from [`arm64`]): the binary, its
/// [`APPLETS`], `/etc/passwd` and `/etc/group` (root and `app`, 1000),
/// `/tmp`; entry point `/bin/sh`.
pub fn image(busybox: &[u8]) -> ImageBuilder {
    let mut entries = vec![
        Entry::dir("bin", 0o755),
        Entry::file("bin/busybox", 0o755, busybox),
        Entry::dir("etc", 0o755),
        Entry::file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        ),
        Entry::file("etc/group", 0o644, b"root:x:0:\napp:x:1000:\n"),
        Entry::dir("tmp", 0o1777),
    ];
    for applet in APPLETS {
        entries.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    ImageBuilder::new("arm64")
        .layer(entries)
        .config(&["/bin/sh"], &[], &["PATH=/bin"], "", "/")
}

/// Pushes `parts` to `registry` as `repo_tag` (plain HTTP).
pub fn push(registry: &Registry, repo_tag: &str, parts: &ImageParts) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reference = registry.reference(repo_tag);
    runtime.block_on(bramble_oci_store::push::Pusher::new(true).image(&reference, parts))?;
    Ok(())
}

/// `len` bytes no compressor shrinks (xorshift64 from `seed`), so a layer of
/// them is as large on the wire and on disk as it is unpacked. The same
/// seed gives the same bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
