//! Finding Bramble's partitions on the block devices sysfs shows, and growing
//! the data partition and its file system.
//!
//! The layout itself (numbers, labels) and the readers of partition tables
//! and superblocks are `bramble-disk`'s: the boot disk is the one whose
//! partition 1 is a FAT file system labelled `BRAMBLE`; on it, partitions 2
//! and 3 are root slots A and B, and the ext4 file systems labelled `STATE`
//! and `DATA` hold persistent node state and `/var`. `DATA` is the last
//! partition (logical, inside the extended partition 4) so it can grow to the
//! end of the card on first boot.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::test_fault::{HoldAfterSyncs, TestFault};
use bramble_disk::mbr::grow_last_logical;

pub use bramble_disk::ext4::Superblock as Ext4Info;
pub use bramble_disk::mbr::Grown;
pub use bramble_disk::{BOOT_LABEL, DATA_LABEL, STATE_LABEL};
use bramble_disk::{BOOT_PARTITION, SECTOR_SIZE, SLOT_A_PARTITION, SLOT_B_PARTITION};

/// A block device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    pub name: String,
    /// Partition number, for partitions.
    pub partition: Option<u32>,
    /// The whole disk a partition belongs to.
    pub parent: Option<String>,
    pub size_sectors: u64,
}

impl BlockDev {
    pub fn dev_path(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }
}

/// All block devices under `sys_block` (normally `/sys/class/block`).
pub fn list_block_devices(sys_block: &Path) -> Vec<BlockDev> {
    let Ok(entries) = fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut devs: Vec<BlockDev> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            let read = |file: &str| fs::read_to_string(dir.join(file)).ok();
            let size_sectors = read("size")?.trim().parse().ok()?;
            let partition = read("partition").and_then(|p| p.trim().parse().ok());
            // A partition's sysfs directory sits inside its disk's.
            let parent = partition.and(fs::canonicalize(&dir).ok().and_then(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            }));
            Some(BlockDev {
                name,
                partition,
                parent,
                size_sectors,
            })
        })
        .collect();
    devs.sort_by(|a, b| a.name.cmp(&b.name));
    devs
}

fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// The superblock of the ext4 file system on `dev`, if it holds one.
pub fn read_ext4_info(dev: &Path) -> Option<Ext4Info> {
    let mut file = File::open(dev).ok()?;
    bramble_disk::ext4::read(&mut file, 0).ok()
}

/// Bramble's partitions on the boot disk.
#[derive(Debug, Clone)]
pub struct Layout {
    pub disk: BlockDev,
    pub boot: BlockDev,
    pub slot_a: Option<BlockDev>,
    pub slot_b: Option<BlockDev>,
    pub state: Option<BlockDev>,
    pub data: Option<BlockDev>,
}

impl Layout {
    pub fn slot(&self, slot: char) -> Option<&BlockDev> {
        match slot {
            'B' => self.slot_b.as_ref(),
            _ => self.slot_a.as_ref(),
        }
    }
}

/// Looks for the boot disk among `devs`, reading superblocks through /dev.
pub fn find_layout(devs: &[BlockDev]) -> Option<Layout> {
    let boot = devs.iter().find(|d| {
        d.partition == Some(BOOT_PARTITION)
            && read_at(&d.dev_path(), 0, 512)
                .ok()
                .and_then(|s| bramble_disk::fat::volume_label(&s))
                .as_deref()
                == Some(BOOT_LABEL)
    })?;
    let disk_name = boot.parent.clone()?;
    let disk = devs.iter().find(|d| d.name == disk_name)?.clone();
    let on_disk: Vec<&BlockDev> = devs
        .iter()
        .filter(|d| d.parent.as_deref() == Some(disk_name.as_str()))
        .collect();
    let numbered = |n: u32| {
        on_disk
            .iter()
            .find(|d| d.partition == Some(n))
            .map(|d| (*d).clone())
    };
    let labelled = |label: &str| {
        on_disk
            .iter()
            .find(|d| read_ext4_info(&d.dev_path()).is_some_and(|i| i.label == label))
            .map(|d| (*d).clone())
    };
    Some(Layout {
        boot: boot.clone(),
        slot_a: numbered(SLOT_A_PARTITION),
        slot_b: numbered(SLOT_B_PARTITION),
        state: labelled(STATE_LABEL),
        data: labelled(DATA_LABEL),
        disk,
    })
}

/// Grows the data partition on the boot disk if the disk has room after it,
/// then has the kernel re-read the partition table. Nothing on the disk may be
/// mounted yet. A growth a power cut interrupted is finished here too. With
/// the `cut-mid-grow` test fault, PID 1 holds after the first table write.
pub fn grow_data_partition(layout: &Layout, fault: Option<TestFault>) -> Result<Option<Grown>> {
    let disk_path = layout.disk.dev_path();
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_path)
        .map_err(|e| Error::io("opening", &disk_path, e))?;
    let sectors = layout.disk.size_sectors;
    let grown = if fault == Some(TestFault::CutMidGrow) {
        grow_last_logical(&mut HoldAfterSyncs::new(&mut disk, 1), sectors)
    } else {
        grow_last_logical(&mut disk, sectors)
    }
    .map_err(|e| Error::io("growing the data partition on", &disk_path, e))?;
    if grown.is_none() {
        return Ok(None);
    }
    disk.sync_all()
        .map_err(|e| Error::io("syncing", &disk_path, e))?;
    // The kernel refuses while a partition is busy; nothing is mounted yet,
    // but udev-less probing may still hold it for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match crate::sys::reread_partitions(disk.as_fd()) {
            Ok(()) => break,
            Err(nix::Error::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(errno) => {
                return Err(Error::sys(
                    format!("re-reading the partition table of {}", disk_path.display()),
                    errno,
                ));
            }
        }
    }
    Ok(grown)
}

/// Grows a mounted ext4 filesystem to fill its partition.
pub fn grow_ext4(
    mount_point: &Path,
    dev: &BlockDev,
    info: &Ext4Info,
) -> Result<Option<(u64, u64)>> {
    let size_path = Path::new("/sys/class/block").join(&dev.name).join("size");
    let sectors: u64 = fs::read_to_string(&size_path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(dev.size_sectors);
    let blocks = sectors * SECTOR_SIZE / info.block_size;
    if blocks <= info.blocks {
        return Ok(None);
    }
    let dir = File::open(mount_point).map_err(|e| Error::io("opening", mount_point, e))?;
    crate::sys::ext4_resize(dir.as_fd(), blocks).map_err(|errno| {
        Error::sys(format!("online resize of {}", mount_point.display()), errno)
    })?;
    Ok(Some((info.blocks, blocks)))
}
