//! Putting the machine configuration on the written card's FAT boot partition
//! (partition 1, label `BRAMBLE`), with `bramble-bootfs` (fatfs on that
//! partition's byte range of the target: no mount, no root beyond opening the
//! device).

use std::fs::File;

pub use bramble_bootfs::{BOOT_LABEL, CONFIG_FILE, EXTRA_FILE};

/// Writes `data` as [`CONFIG_FILE`] at the root of the boot partition of
/// `disk` (replacing one already there).
pub fn place(disk: &mut File, data: &[u8]) -> Result<(), String> {
    let boot = bramble_bootfs::BootFs::open(disk).map_err(|e| e.to_string())?;
    boot.write(CONFIG_FILE, data).map_err(|e| e.to_string())?;
    boot.finish().map_err(|e| e.to_string())
}

/// Writes the configuration's `machine.pi.configTxt` lines into
/// [`EXTRA_FILE`] (which `config.txt` includes), so that the firmware reads
/// them at the very first boot; the node keeps the file up to date from then
/// on. `config` has been validated.
pub fn place_pi_lines(disk: &mut File, config: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(config)
        .map_err(|_| "the configuration is not UTF-8 text".to_owned())?;
    let config = bramble_config::MachineConfig::parse(text).map_err(|e| e.to_string())?;
    bramble_bootfs::sync_extra(disk, &config.machine.pi.config_txt)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Reads [`CONFIG_FILE`] back from the boot partition of `disk`; `None` when
/// it is not there.
pub fn read(disk: &mut File) -> Result<Option<Vec<u8>>, String> {
    let boot = bramble_bootfs::BootFs::open(disk).map_err(|e| e.to_string())?;
    boot.read(CONFIG_FILE).map_err(|e| e.to_string())
}
