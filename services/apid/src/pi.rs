//! The Raspberry Pi firmware lines of `machine.pi.configTxt`, written to
//! `bramble-extra.txt` on the FAT boot partition, which `config.txt`
//! includes.
//!
//! The firmware reads `config.txt` before Linux starts, so the file must be
//! written while the node runs, before the reboot that takes the
//! configuration up. The boot partition is not mounted on a running node:
//! PID 1 writes the boot disk's device path to [`DEFAULT_BOOT_DEVICE_FILE`]
//! and this module opens that disk and edits the FAT on partition 1's byte
//! range with `bramble-bootfs` (no mount). It writes only when the content
//! differs.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use bramble_config::MachineConfig;

/// Where PID 1 leaves the boot disk's device path (`init/src/stage2.rs`).
pub const DEFAULT_BOOT_DEVICE_FILE: &str = "/run/bramble/boot-device";

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The file already held these lines.
    Unchanged,
    /// The file was rewritten.
    Written,
    /// There is no boot disk to write to (not a node: a test, a development
    /// run); nothing was done.
    NoBootDisk,
}

/// The lines the firmware should see for `config` (none without one).
pub fn lines(config: Option<&MachineConfig>) -> Vec<String> {
    config
        .map(|c| c.machine.pi.config_txt.clone())
        .unwrap_or_default()
}

/// The boot disk named in `device_file`, open for reading and writing, with
/// its path; `None` when there is no such file (not a node).
fn open_boot_disk(device_file: &Path) -> Result<Option<(File, String)>, String> {
    let device = match fs::read_to_string(device_file) {
        Ok(s) => s.trim().to_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", device_file.display())),
    };
    if device.is_empty() {
        return Err(format!(
            "{} is empty: PID 1 did not find the boot disk",
            device_file.display()
        ));
    }
    let disk = File::options()
        .read(true)
        .write(true)
        .open(&device)
        .map_err(|e| format!("cannot open the boot disk {device}: {e}"))?;
    Ok(Some((disk, device)))
}

/// Runs `write` on the boot disk named in `device_file`. Blocking.
fn write_boot_disk(
    device_file: &Path,
    write: impl FnOnce(&mut File) -> bramble_bootfs::Result<bool>,
) -> Result<Outcome, String> {
    let Some((mut disk, device)) = open_boot_disk(device_file)? else {
        return Ok(Outcome::NoBootDisk);
    };
    match write(&mut disk) {
        Ok(true) => Ok(Outcome::Written),
        Ok(false) => Ok(Outcome::Unchanged),
        Err(e) => Err(format!("{device}: {e}")),
    }
}

/// Makes `bramble-extra.txt` on the boot disk named in `device_file` hold
/// `lines`. Blocking (disk I/O).
pub fn sync(device_file: &Path, lines: &[String]) -> Result<Outcome, String> {
    write_boot_disk(device_file, |disk| bramble_bootfs::sync_extra(disk, lines))
}

/// Makes the boot partition's record that the node is configured
/// (`bramble-ca.crt`) hold `ca_pem`, or removes it for `None`. Blocking.
pub fn sync_configured(device_file: &Path, ca_pem: Option<&str>) -> Result<Outcome, String> {
    write_boot_disk(device_file, |disk| bramble_bootfs::sync_ca(disk, ca_pem))
}

/// The cluster CA the boot partition records for a configured node; `None`
/// for a node never configured (or reset), or with no boot disk. Blocking.
pub fn configured_ca(device_file: &Path) -> Result<Option<String>, String> {
    let Some((mut disk, device)) = open_boot_disk(device_file)? else {
        return Ok(None);
    };
    bramble_bootfs::read_ca(&mut disk).map_err(|e| format!("{device}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_boot_disk_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            sync(&dir.path().join("boot-device"), &[]).unwrap(),
            Outcome::NoBootDisk
        );
    }

    #[test]
    fn a_missing_disk_is_reported_plainly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("boot-device");
        fs::write(&file, "/nonexistent/disk\n").unwrap();
        let e = sync(&file, &["dtoverlay=disable-wifi".to_owned()]).unwrap_err();
        assert!(
            e.contains("cannot open the boot disk /nonexistent/disk"),
            "{e}"
        );
        fs::write(&file, "").unwrap();
        assert!(sync(&file, &[]).unwrap_err().contains("is empty"));
    }
}
