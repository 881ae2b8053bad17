//! Stage 1, in the initramfs: from the kernel's hand-over to the real root.

use std::convert::Infallible;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::MsFlags;

use crate::disk::{self, Layout};
use crate::error::{Error, Result};
use crate::modules::Database;
use crate::mounts;
use crate::test_fault::TestFault;

const SYSROOT: &str = "/sysroot";

pub fn run() -> Result<Infallible> {
    let nosuid_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mounts::mount_or_warn(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    );
    mounts::mount_or_warn(
        "proc",
        "/proc",
        "proc",
        nosuid_noexec | MsFlags::MS_NODEV,
        None,
    );
    mounts::mount_or_warn(
        "sysfs",
        "/sys",
        "sysfs",
        nosuid_noexec | MsFlags::MS_NODEV,
        None,
    );
    crate::logging::attach_kmsg();

    let kernel = kernel_release();
    tracing::info!("initramfs: kernel {kernel}");
    let modules_dir = Path::new("/lib/modules").join(&kernel);
    let mut db = Database::load(&modules_dir).unwrap_or_else(|err| {
        tracing::error!("{err}; continuing without loadable modules");
        Database::default()
    });

    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let slot = boot_slot(&cmdline);
    let layout = wait_for_layout(&mut db, slot);
    tracing::info!(
        "boot disk /dev/{} (boot partition /dev/{}): slot {slot} on /dev/{}",
        layout.disk.name,
        layout.boot.name,
        layout.slot(slot).map_or("?", |d| d.name.as_str())
    );

    if layout.data.is_some() {
        match disk::grow_data_partition(&layout, TestFault::requested(&cmdline)) {
            Ok(Some(grown)) => tracing::info!(
                "first boot: data partition {} grown from {} MiB to {} MiB",
                grown.partition,
                grown.old_sectors / 2048,
                grown.new_sectors / 2048
            ),
            Ok(None) => {}
            Err(err) => tracing::warn!("could not grow the data partition: {err}"),
        }
    }

    // ext4 asks the crypto API for crc32c through modprobe, which a node
    // does not have: load it first.
    for module in ["squashfs", "crc32c_generic", "ext4"] {
        if let Err(err) = db.load_module(module) {
            tracing::warn!("{err}");
        }
    }

    let root = layout
        .slot(slot)
        .ok_or_else(|| Error::Disk(format!("slot {slot} partition is missing")))?;
    let sysroot = Path::new(SYSROOT);
    mounts::mount(
        &root.dev_path().to_string_lossy(),
        sysroot,
        "squashfs",
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None,
    )?;

    let persistent = MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    let state_on_disk = mount_persistent(
        layout.state.as_ref(),
        &sysroot.join("system/state"),
        persistent | MsFlags::MS_NOEXEC,
        "state",
    );
    mount_persistent(
        layout.data.as_ref(),
        &sysroot.join("var"),
        persistent,
        "data",
    );
    wipe_data_if_asked(
        &sysroot.join("system/state").join(WIPE_DATA_MARKER),
        &sysroot.join("var"),
    );
    if state_on_disk && boot_config_present(&cmdline) {
        take_boot_config(&mut db, &layout.boot, &sysroot.join("system/state"));
    }

    switch_root(sysroot, &layout.disk.dev_path())
}

/// Written into STATE by the API's Reset with `wipe_data`.
const WIPE_DATA_MARKER: &str = "wipe-data";

/// Empties the data partition when a reset asked for it, before any service
/// can use it; the marker goes only once everything else has.
fn wipe_data_if_asked(marker: &Path, var: &Path) {
    if !marker.exists() {
        return;
    }
    tracing::warn!("reset: emptying the data partition (/var)");
    let dev = match fs::symlink_metadata(var) {
        Ok(m) => m.dev(),
        Err(err) => return tracing::error!("reset: {}: {err}", var.display()),
    };
    let mut failed = false;
    for entry in fs::read_dir(var).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "lost+found") {
            continue;
        }
        let result = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => remove_tree(&path, dev),
            Ok(_) => fs::remove_file(&path),
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            failed = true;
            tracing::error!("reset: removing {}: {err}", path.display());
        }
    }
    nix::unistd::sync();
    if !failed {
        if let Err(err) = fs::remove_file(marker) {
            tracing::error!("reset: removing {}: {err}", marker.display());
        }
        nix::unistd::sync();
    }
}

/// The file `nodectl image flash --config` puts at the boot partition's root.
const BOOT_CONFIG: &str = "machine-config.yaml";
/// Where it waits, in STATE, for apid to validate and store it
/// (`services/apid/src/store.rs`, `FROM_BOOT`).
const BOOT_CONFIG_STAGED: &str = "config/config.from-boot.yaml";
/// Where the boot partition is mounted, briefly, in the initramfs.
const BOOT_MOUNT: &str = "/boot-fat";

/// Moves a machine configuration placed on the boot partition at flash time
/// into STATE, byte for byte (written atomically), then deletes it from the
/// FAT so a later Reset does not bring it back. Checking it is apid's job:
/// this only copies. Every failure is reported and skipped; the file then
/// stays on the FAT for the next boot.
fn take_boot_config(db: &mut Database, boot: &disk::BlockDev, state: &Path) {
    for module in ["vfat", "nls_cp437", "nls_iso8859-1"] {
        if let Err(err) = db.load_module(module) {
            tracing::warn!("{err}");
        }
    }
    let mount_point = Path::new(BOOT_MOUNT);
    let flags = MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    if let Err(err) = mounts::mount(
        &boot.dev_path().to_string_lossy(),
        mount_point,
        "vfat",
        flags,
        Some("codepage=437,iocharset=iso8859-1,fmask=0177,dmask=0077"),
    ) {
        return tracing::warn!("boot partition: {err}; not looking for {BOOT_CONFIG}");
    }
    let staged = state.join(BOOT_CONFIG_STAGED);
    match move_boot_config(&mount_point.join(BOOT_CONFIG), &staged) {
        Ok(Some(len)) => tracing::info!(
            "{BOOT_CONFIG} ({len} bytes) taken from the boot partition; the API server applies it"
        ),
        Ok(None) => {}
        Err(err) => tracing::error!(
            "{BOOT_CONFIG}: moving it from the boot partition to {}: {err}",
            staged.display()
        ),
    }
    if let Err(err) = nix::mount::umount(mount_point) {
        tracing::error!("unmounting the boot partition: {err}");
    }
}

/// Copies `source` to `staged` (atomically, owner-only) and then deletes
/// `source`: the size moved, or `None` when there is no `source`.
fn move_boot_config(source: &Path, staged: &Path) -> std::io::Result<Option<usize>> {
    let data = match fs::read(source) {
        Ok(data) => data,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    if let Some(dir) = staged.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    bramble_atomic::write(staged, &data, 0o600)?;
    fs::remove_file(source)?;
    Ok(Some(data.len()))
}

/// Mounts a persistent ext4 partition, growing the filesystem to its
/// partition; without one, a tmpfs stands in so the node still comes up (and
/// can be reset or re-flashed through the API). True if the partition itself
/// was mounted.
fn mount_persistent(
    dev: Option<&disk::BlockDev>,
    target: &Path,
    flags: MsFlags,
    what: &str,
) -> bool {
    let fallback = |why: String| {
        tracing::error!(
            "{what} partition: {why}; using memory instead: nothing written there will persist"
        );
        if let Err(err) = mounts::mount("tmpfs", target, "tmpfs", flags, Some("mode=0755")) {
            tracing::error!("{err}");
        }
        false
    };
    let Some(dev) = dev else {
        return fallback("not found on the boot disk".into());
    };
    let path = dev.dev_path();
    let info = disk::read_ext4_info(&path);
    if let Err(err) = mounts::mount(&path.to_string_lossy(), target, "ext4", flags, None) {
        return fallback(err.to_string());
    }
    if let Some(info) = info {
        match disk::grow_ext4(target, dev, &info) {
            Ok(Some((from, to))) => tracing::info!(
                "{what} filesystem grown from {} MiB to {} MiB",
                (from * info.block_size) >> 20,
                (to * info.block_size) >> 20
            ),
            Ok(None) => {}
            Err(err) => tracing::warn!("{what} filesystem: {err}"),
        }
    }
    true
}

/// Loads drivers until the boot disk with all of Bramble's partitions shows
/// up. Never gives up: a disk can be slow, and a wrong one gets a message
/// saying what is wrong, repeated for whoever looks at the console.
fn wait_for_layout(db: &mut Database, slot: char) -> Layout {
    let start = Instant::now();
    let mut next_report = Duration::from_secs(5);
    let mut delay = Duration::from_millis(20);
    // Opened before the first pass, so the devices its drivers reveal are
    // queued here (stage 2 opens its own socket for later ones).
    let events = crate::hotplug::open()
        .inspect_err(|err| tracing::warn!("uevent socket: {err}; walking sysfs in rounds"))
        .ok();
    loop {
        let round = Instant::now();
        let sysfs = Path::new("/sys");
        let loaded = match &events {
            Some(fd) => crate::hotplug::coldplug(fd.as_fd(), db, sysfs).unwrap_or_else(|err| {
                tracing::warn!("reading uevents: {err}; walking sysfs in rounds");
                db.coldplug(sysfs, 8)
            }),
            None => db.coldplug(sysfs, 8),
        };
        if loaded > 0 {
            tracing::info!(
                "coldplug: {loaded} module(s) loaded in {} ms ({})",
                round.elapsed().as_millis(),
                db.stats
            );
        }
        let devs = disk::list_block_devices(Path::new("/sys/class/block"));
        let found = disk::find_layout(&devs);
        let problem = match &found {
            Some(layout) if layout.slot(slot).is_some() => return found_layout(layout),
            Some(layout) => format!(
                "boot disk /dev/{} has no partition {} for root slot {slot}: the disk does not hold a complete Bramble image (re-flash it)",
                layout.disk.name,
                if slot == 'B' {
                    bramble_disk::SLOT_B_PARTITION
                } else {
                    bramble_disk::SLOT_A_PARTITION
                }
            ),
            None => {
                let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
                format!(
                    "no boot disk yet (a FAT partition 1 labelled {}); block devices: {}",
                    disk::BOOT_LABEL,
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                )
            }
        };
        if start.elapsed() >= next_report {
            tracing::error!("{problem}; still looking");
            next_report = start.elapsed() + Duration::from_secs(30);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

fn found_layout(layout: &Layout) -> Layout {
    if layout.state.is_none() {
        tracing::warn!(
            "no {} partition on /dev/{}",
            disk::STATE_LABEL,
            layout.disk.name
        );
    }
    if layout.data.is_none() {
        tracing::warn!(
            "no {} partition on /dev/{}",
            disk::DATA_LABEL,
            layout.disk.name
        );
    }
    layout.clone()
}

/// Whether the boot script saw a [`BOOT_CONFIG`] on the boot partition
/// (`bramble.boot_config=1`, `boot/boot.cmd`).
pub fn boot_config_present(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|arg| arg == "bramble.boot_config=1")
}

/// `bramble.slot=B` on the kernel command line selects slot B; anything
/// else boots A.
pub fn boot_slot(cmdline: &str) -> char {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("bramble.slot="))
        .map_or('A', |s| if s == "B" { 'B' } else { 'A' })
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Moves the kernel filesystems into the new root, frees the initramfs,
/// makes the new root `/` and executes its init in place of this process,
/// telling it which disk it booted from.
fn switch_root(new_root: &Path, boot_disk: &Path) -> Result<Infallible> {
    for dir in ["dev", "proc", "sys"] {
        mounts::move_mount(&Path::new("/").join(dir), &new_root.join(dir))?;
    }
    free_initramfs(new_root);
    nix::unistd::chdir(new_root)
        .map_err(|e| Error::sys(format!("chdir {}", new_root.display()), e))?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| Error::sys("moving the new root onto /", e))?;
    nix::unistd::chroot(".").map_err(|e| Error::sys("chroot into the new root", e))?;
    nix::unistd::chdir("/").map_err(|e| Error::sys("chdir /", e))?;
    tracing::info!("switching to the root filesystem");
    let err = std::process::Command::new("/sbin/init")
        .env(crate::stage2::BOOT_DISK_ENV, boot_disk)
        .exec();
    Err(Error::io("executing", "/sbin/init", err))
}

/// Deletes the initramfs's files (it is RAM the node would never get back),
/// staying on the initramfs device and out of the new root.
fn free_initramfs(new_root: &Path) {
    let Ok(root_dev) = fs::metadata("/").map(|m| m.dev()) else {
        return;
    };
    let Ok(entries) = fs::read_dir("/") else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == new_root {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != root_dev {
            continue;
        }
        let _ = if meta.is_dir() {
            remove_tree(&path, root_dev)
        } else {
            fs::remove_file(&path)
        };
    }
}

fn remove_tree(dir: &Path, dev: u64) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)?;
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_tree(&path, dev)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipes_data_only_when_marked() {
        let dir = tempfile::tempdir().unwrap();
        let (var, marker) = (dir.path().join("var"), dir.path().join("wipe-data"));
        fs::create_dir_all(var.join("log/deep")).unwrap();
        fs::create_dir_all(var.join("lost+found")).unwrap();
        fs::write(var.join("log/deep/a.log"), "x").unwrap();
        fs::write(var.join("top"), "x").unwrap();
        wipe_data_if_asked(&marker, &var);
        assert!(var.join("top").exists(), "wiped without the marker");
        fs::write(&marker, "").unwrap();
        wipe_data_if_asked(&marker, &var);
        let left: Vec<_> = fs::read_dir(&var)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["lost+found"]);
        assert!(!marker.exists());
    }

    #[test]
    fn moves_the_boot_config_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("boot/machine-config.yaml");
        let staged = dir.path().join("state").join(BOOT_CONFIG_STAGED);
        assert_eq!(move_boot_config(&source, &staged).unwrap(), None);
        assert!(!staged.exists());
        fs::create_dir_all(source.parent().unwrap()).unwrap();
        fs::write(&source, b"version: v1alpha1\r\n# exactly\n").unwrap();
        assert_eq!(move_boot_config(&source, &staged).unwrap(), Some(29));
        assert_eq!(
            fs::read(&staged).unwrap(),
            b"version: v1alpha1\r\n# exactly\n"
        );
        assert!(!source.exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&staged), 0o600);
        assert_eq!(mode(staged.parent().unwrap()), 0o700);
    }

    #[test]
    fn boot_config_flag_from_cmdline() {
        assert!(boot_config_present(
            "console=ttyAMA0 bramble.slot=A bramble.boot_config=1"
        ));
        assert!(!boot_config_present("console=ttyAMA0 bramble.slot=A "));
        assert!(!boot_config_present("bramble.boot_config=0"));
        assert!(!boot_config_present("xbramble.boot_config=1"));
    }

    #[test]
    fn slot_from_cmdline() {
        assert_eq!(boot_slot("console=ttyAMA0 bramble.slot=B quiet"), 'B');
        assert_eq!(boot_slot("bramble.slot=A"), 'A');
        assert_eq!(boot_slot("console=ttyAMA0"), 'A');
        assert_eq!(boot_slot("bramble.slot=Z"), 'A');
    }
}
