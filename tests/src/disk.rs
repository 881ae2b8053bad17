//! What the boot tests read and change on a node's disk image while the
//! node is off: the kernel command line U-Boot passes, and the partition
//! table and filesystem of the data partition.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::{Context, Result, ensure};
use bramble_disk::mbr;

/// The variable of `bramble.env` (on the boot partition) that U-Boot passes
/// as the kernel command line.
const CMDLINE_VAR: &str = "bramble_cmdline=";

/// Rewrites the kernel command line in `bramble.env` with `edit`.
fn edit_cmdline(disk: &Path, edit: impl Fn(&str) -> String) -> Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    let boot = bramble_bootfs::BootFs::open(&mut file)?;
    let env = boot.read("bramble.env")?.context("no bramble.env")?;
    let env = String::from_utf8(env)?;
    ensure!(env.contains(CMDLINE_VAR), "no {CMDLINE_VAR} in {env}");
    let edited: String = env
        .lines()
        .map(|line| match line.strip_prefix(CMDLINE_VAR) {
            Some(args) => format!("{CMDLINE_VAR}{}\n", edit(args)),
            None => format!("{line}\n"),
        })
        .collect();
    boot.replace("bramble.env", "bramble.new", edited.as_bytes())?;
    boot.finish()?;
    Ok(())
}

/// Appends `arg` to the kernel command line.
pub fn add_kernel_arg(disk: &Path, arg: &str) -> Result<()> {
    edit_cmdline(disk, |args| format!("{args} {arg}"))
}

/// Removes every `arg` (a whole word) from the kernel command line.
pub fn remove_kernel_arg(disk: &Path, arg: &str) -> Result<()> {
    edit_cmdline(disk, |args| {
        args.split(' ')
            .filter(|a| *a != arg)
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// The data partition (6) as the disk's table has it.
pub fn data_partition(disk: &Path) -> Result<mbr::Partition> {
    let mut file = File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    mbr::read_partitions(&mut file)?
        .into_iter()
        .find(|p| p.index == bramble_disk::DATA_PARTITION)
        .context("no partition 6")
}

/// Errors unless the data partition reaches to within 1 MiB of the disk's
/// end and its ext4 filesystem fills it.
pub fn data_fills_disk(disk: &Path) -> Result<()> {
    let data = data_partition(disk)?;
    let mut file = File::open(disk)?;
    let disk_len = file.metadata()?.len();
    let end = (data.start_lba + data.sectors) * 512;
    ensure!(
        disk_len - end < 1 << 20,
        "partition 6 ends at {end}, the disk at {disk_len}: it did not grow to fill the disk"
    );
    let sb = bramble_disk::ext4::read(&mut file, data.start_bytes())?;
    ensure!(sb.label == bramble_disk::DATA_LABEL, "{sb:?}");
    ensure!(
        sb.size_bytes() == data.size_bytes(),
        "the DATA filesystem ({} blocks of {}) does not fill its partition ({} sectors)",
        sb.blocks,
        sb.block_size,
        data.sectors
    );
    Ok(())
}
