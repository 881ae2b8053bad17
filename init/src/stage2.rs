//! Stage 2, on the real root: finish the mounts, then supervise services
//! until shutdown.

use std::convert::Infallible;
use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::error::Result;
use crate::mounts;

pub const SERVICES_DIR: &str = "/etc/bramble/services";
pub const STATE_DIR: &str = "/system/state";
pub const RUN_DIR: &str = "/run/bramble";
pub const LOG_DIR: &str = "/var/log";
pub const CONTROL_SOCKET: &str = "/run/bramble/init.sock";
/// The RNG seed carried across boots, in [`STATE_DIR`].
pub const SEED_FILE: &str = "random-seed";

pub fn run() -> Result<Infallible> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mounts::mount_or_warn("tmpfs", "/run", "tmpfs", nosuid_nodev, Some("mode=0755"));
    mounts::mount_or_warn("tmpfs", "/tmp", "tmpfs", nosuid_nodev, Some("mode=1777"));
    mounts::mount_or_warn(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666,gid=5"),
    );
    mounts::mount_or_warn(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        nosuid_nodev,
        Some("mode=1777"),
    );
    mounts::mount_or_warn(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        nosuid_nodev | MsFlags::MS_NOEXEC,
        Some("nsdelegate,memory_recursiveprot"),
    );
    crate::logging::attach_kmsg();
    tracing::info!("root filesystem: stage 2 started");

    for dir in [RUN_DIR, LOG_DIR] {
        if let Err(err) = fs::create_dir_all(dir) {
            tracing::warn!("creating {dir}: {err}");
        }
    }
    crate::rng::mix_seed(&Path::new(STATE_DIR).join(SEED_FILE));

    let hostname = default_hostname(Path::new("/sys/class/net"));
    if let Err(err) = nix::unistd::sethostname(&hostname) {
        tracing::warn!("setting the hostname: {err}");
    }
    if let Err(err) = bramble_atomic::write(
        &Path::new(RUN_DIR).join("hostname"),
        format!("{hostname}\n").as_bytes(),
        0o644,
    ) {
        tracing::warn!("writing {RUN_DIR}/hostname: {err}");
    }
    tracing::info!("hostname {hostname}");
    // `/etc/hosts` links here; networkd rewrites it with the configured entries.
    if let Err(err) = bramble_atomic::write(
        &Path::new(RUN_DIR).join("hosts"),
        b"127.0.0.1\tlocalhost\n::1\tlocalhost\n",
        0o644,
    ) {
        tracing::warn!("writing {RUN_DIR}/hosts: {err}");
    }
    report_mounts();
    export_boot_device(Path::new(RUN_DIR));

    let kind = crate::supervise::run()?;
    crate::shutdown::finish(kind)
}

/// Where the boot disk's device path is left for the API server, which
/// writes the Raspberry Pi lines of `machine.pi.configTxt` onto its FAT
/// partition (`services/apid/src/pi.rs`).
pub const BOOT_DEVICE_FILE: &str = "boot-device";

/// The environment variable in which stage 1 names the boot disk
/// (`/dev/vda`, `/dev/mmcblk0`) when it executes stage 2.
pub const BOOT_DISK_ENV: &str = "BRAMBLE_BOOT_DISK";

/// The boot disk stage 1 found, or, without a usable [`BOOT_DISK_ENV`],
/// the one sysfs and the partition tables show.
fn boot_disk() -> Option<PathBuf> {
    if let Some(disk) = std::env::var_os(BOOT_DISK_ENV).map(PathBuf::from)
        && disk.starts_with("/dev")
        && disk.exists()
    {
        return Some(disk);
    }
    let devs = crate::disk::list_block_devices(Path::new("/sys/class/block"));
    crate::disk::find_layout(&devs).map(|layout| layout.disk.dev_path())
}

/// Writes the boot disk's device path to `/run/bramble/boot-device`.
/// Logged, never fatal.
fn export_boot_device(run: &Path) {
    let Some(disk) = boot_disk() else {
        return tracing::warn!(
            "no boot disk found: the Raspberry Pi settings of the configuration cannot be written"
        );
    };
    let path = run.join(BOOT_DEVICE_FILE);
    let line = format!("{}\n", disk.display());
    if let Err(err) = bramble_atomic::write(&path, line.as_bytes(), 0o600) {
        tracing::warn!("writing {}: {err}", path.display());
    }
}

/// Loads drivers for devices the initramfs had no module for. It runs once
/// the first services have been started, so the API server comes up while
/// PID 1 walks sysfs.
/// Returns the module database, kept for devices that appear later.
pub fn coldplug_rootfs_modules() -> Option<crate::modules::Database> {
    let kernel = crate::stage1::kernel_release();
    let started = std::time::Instant::now();
    match crate::modules::Database::load(&Path::new("/lib/modules").join(&kernel)) {
        Ok(mut db) => {
            let loaded = db.coldplug(Path::new("/sys"), 8);
            tracing::info!(
                "coldplug: {loaded} more module(s) in {} ms ({})",
                started.elapsed().as_millis(),
                db.stats
            );
            Some(db)
        }
        Err(err) => {
            tracing::warn!("{err}");
            None
        }
    }
}

/// Until a machine config names it, a node is `bramble-` and the last three
/// bytes of its first hardware network interface's MAC address, so nodes
/// flashed from the same image still have distinct names.
fn default_hostname(sys_class_net: &Path) -> String {
    let mut links: Vec<_> = fs::read_dir(sys_class_net)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    links.sort();
    links
        .iter()
        .filter(|link| link.join("device").exists())
        .find_map(|link| {
            let mac = fs::read_to_string(link.join("address")).ok()?;
            let tail: Vec<&str> = mac.trim().split(':').skip(3).collect();
            (tail.len() == 3).then(|| format!("bramble-{}", tail.concat()))
        })
        .unwrap_or_else(|| "bramble".to_owned())
}

/// One console line per filesystem that matters, so a person (or a test)
/// sees how the node's storage is set up.
fn report_mounts() {
    for info in mounts::current() {
        let point = info.mount_point.to_string_lossy();
        if matches!(
            point.as_ref(),
            "/" | "/system/state" | "/var" | "/run" | "/tmp"
        ) {
            tracing::info!(
                "mount: {point} {} {} ({})",
                info.fstype,
                if info.read_only { "ro" } else { "rw" },
                info.source
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_from_first_hardware_link() {
        let dir = tempfile::tempdir().unwrap();
        let link = |name: &str, mac: &str, hw: bool| {
            let p = dir.path().join(name);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("address"), format!("{mac}\n")).unwrap();
            if hw {
                fs::create_dir(p.join("device")).unwrap();
            }
        };
        assert_eq!(default_hostname(dir.path()), "bramble");
        link("lo", "00:00:00:00:00:00", false);
        link("eth1", "52:54:00:aa:bb:cc", true);
        link("eth0", "52:54:00:12:34:56", true);
        assert_eq!(default_hostname(dir.path()), "bramble-123456");
    }
}
