//! Where the harness finds the image, U-Boot and nodectl. Each can be
//! overridden by an environment variable; the defaults are what `make`
//! produces in this checkout.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
}

fn existing(var: &str, default: PathBuf, hint: &str) -> Result<PathBuf> {
    let path = std::env::var_os(var).map_or(default, PathBuf::from);
    ensure!(
        path.exists(),
        "{} does not exist ({hint}; or set {var})",
        path.display()
    );
    Ok(path)
}

/// The built raw image (`BRAMBLE_IMAGE`).
pub fn image() -> Result<PathBuf> {
    existing(
        "BRAMBLE_IMAGE",
        workspace_root().join("dist/bramble-arm64.img"),
        "run `make image`",
    )
}

/// U-Boot for QEMU's `virt` machine (`BRAMBLE_UBOOT_QEMU`).
pub fn uboot_qemu() -> Result<PathBuf> {
    existing(
        "BRAMBLE_UBOOT_QEMU",
        workspace_root().join(".cache/u-boot-qemu/u-boot.bin"),
        "run `make deps`",
    )
}

/// The pinned Debian packages (`BRAMBLE_PACKAGES_LOCK`).
pub fn packages_lock() -> Result<PathBuf> {
    existing(
        "BRAMBLE_PACKAGES_LOCK",
        workspace_root().join("boot/packages.lock"),
        "the checkout's boot/packages.lock",
    )
}

/// The downloaded `.deb` files (`BRAMBLE_DEB_CACHE`).
pub fn deb_cache() -> Result<PathBuf> {
    existing(
        "BRAMBLE_DEB_CACHE",
        workspace_root().join(".cache/debs"),
        "run `make deps`",
    )
}

/// The host build of nodectl (`BRAMBLE_NODECTL`).
pub fn nodectl() -> Result<PathBuf> {
    existing(
        "BRAMBLE_NODECTL",
        workspace_root().join("target/debug/nodectl"),
        "run `make build`",
    )
}

/// The relay QEMU runs for each forwarded guest connection
/// (`src/bin/relay.rs`, built with the tests as `bramble-relay`).
pub fn relay() -> PathBuf {
    std::env::var_os("BRAMBLE_RELAY").map_or_else(
        || workspace_root().join("target/debug/bramble-relay"),
        PathBuf::from,
    )
}

/// A directory for one test's files, removed when dropped unless
/// `BRAMBLE_KEEP_TEST_DIRS` is set (then its path is printed).
pub fn test_dir(name: &str) -> Result<tempfile::TempDir> {
    let base = workspace_root().join("target/boot-tests");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let keep = std::env::var_os(KEEP_TEST_DIRS).is_some_and(|v| !v.is_empty());
    let dir = tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .disable_cleanup(keep)
        .tempdir_in(&base)
        .context("creating a test directory")?;
    if keep {
        eprintln!("{KEEP_TEST_DIRS}: keeping {}", dir.path().display());
    }
    Ok(dir)
}

/// Set (to anything but the empty string) to keep every test directory.
pub const KEEP_TEST_DIRS: &str = "BRAMBLE_KEEP_TEST_DIRS";
