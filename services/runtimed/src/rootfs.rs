//! A container's root: an overlay of the image's layer snapshots with a
//! fresh writable layer, mounted at `<bundle>/rootfs` before the shim
//! starts and unmounted after it ends.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::RuntimeError;

/// The directories of one container's root.
#[derive(Debug, Clone)]
pub struct RootfsDirs {
    /// Where the overlay is mounted (`<bundle>/rootfs`).
    pub target: PathBuf,
    /// The writable layer (on `/var`).
    pub upper: PathBuf,
    /// overlayfs' work directory (same file system as `upper`).
    pub work: PathBuf,
}

impl RootfsDirs {
    /// The layout for a container whose bundle is `bundle` and whose
    /// writable data lives under `data`.
    pub fn new(bundle: &Path, data: &Path) -> Self {
        Self {
            target: bundle.join("rootfs"),
            upper: data.join("upper"),
            work: data.join("work"),
        }
    }
}

/// Mounts `layers` (bottom first) with an empty writable layer at
/// `dirs.target`. A writable layer left from a previous run is discarded.
pub fn mount_overlay(dirs: &RootfsDirs, layers: &[PathBuf]) -> Result<(), RuntimeError> {
    if layers.is_empty() {
        return Err(RuntimeError::Rootfs("the image has no layers".to_owned()));
    }
    unmount(&dirs.target);
    for dir in [&dirs.upper, &dirs.work] {
        remove_tree(dir)?;
        std::fs::create_dir_all(dir)
            .map_err(|e| RuntimeError::Rootfs(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::create_dir_all(&dirs.target).map_err(|e| {
        RuntimeError::Rootfs(format!("cannot create {}: {e}", dirs.target.display()))
    })?;
    // overlayfs lists the top layer first.
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    for path in lower.iter().chain([
        &dirs.upper.display().to_string(),
        &dirs.work.display().to_string(),
    ]) {
        if path.contains([',', ':']) {
            return Err(RuntimeError::Rootfs(format!(
                "{path:?}: overlay paths cannot contain ',' or ':'"
            )));
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        dirs.upper.display(),
        dirs.work.display()
    );
    mount(
        Some("overlay"),
        &dirs.target,
        Some("overlay"),
        // Device nodes in an image's layers cannot be opened (the device
        // policy refuses them too).
        MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|e| {
        RuntimeError::Rootfs(format!(
            "cannot mount the overlay at {} ({} layers): {e}",
            dirs.target.display(),
            layers.len()
        ))
    })
}

/// Unmounts the container's root if it is mounted (lazily, so a process
/// still holding it cannot keep it) and removes the writable layer.
pub fn release(dirs: &RootfsDirs) {
    unmount(&dirs.target);
    for dir in [&dirs.upper, &dirs.work] {
        if let Err(e) = remove_tree(dir) {
            tracing::warn!("{e}");
        }
    }
}

fn unmount(target: &Path) {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!(path = %target.display(), "cannot unmount: {e}"),
    }
}

fn remove_tree(dir: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::Rootfs(format!(
            "cannot remove {}: {e}",
            dir.display()
        ))),
    }
}
