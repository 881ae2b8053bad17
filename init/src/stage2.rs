//! Stage 2, on the real root: finish the mounts, then supervise services
//! until shutdown.

use std::convert::Infallible;
use std::fs;
use std::path::Path;

use nix::mount::MsFlags;

use crate::error::Result;
use crate::modules::Database;
use crate::mounts;

pub const SERVICES_DIR: &str = "/etc/bramble/services";
pub const STATE_DIR: &str = "/system/state";
pub const RUN_DIR: &str = "/run/bramble";
pub const LOG_DIR: &str = "/var/log";
pub const CONTROL_SOCKET: &str = "/run/bramble/init.sock";

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

    for dir in [RUN_DIR, LOG_DIR] {
        if let Err(err) = fs::create_dir_all(dir) {
            tracing::warn!("creating {dir}: {err}");
        }
    }
    if let Err(err) = nix::unistd::sethostname("bramble") {
        tracing::warn!("setting the hostname: {err}");
    }
    let _ = fs::write(Path::new(RUN_DIR).join("hostname"), "bramble\n");
    crate::rng::carry_seed(&Path::new(STATE_DIR).join("random-seed"));

    // Devices whose drivers are only on the root filesystem.
    let kernel = crate::stage1::kernel_release();
    match Database::load(&Path::new("/lib/modules").join(&kernel)) {
        Ok(mut db) => {
            db.coldplug(Path::new("/sys/devices"), 8);
        }
        Err(err) => tracing::warn!("{err}"),
    }
    report_mounts();

    let kind = crate::supervise::run()?;
    crate::shutdown::finish(kind)
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
