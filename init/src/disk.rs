//! Finding Bramble's partitions and growing the data partition.
//!
//! The boot disk is the one whose partition 1 is a FAT filesystem labelled
//! `BRAMBLE`. On it, partitions 2 and 3 are root slots A and B, and the ext4
//! filesystems labelled `STATE` and `DATA` hold persistent node state and
//! `/var`. `DATA` is the last partition (logical, inside the extended
//! partition 4) so it can grow to the end of the card on first boot.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

pub const BOOT_LABEL: &str = "BRAMBLE";
pub const STATE_LABEL: &str = "STATE";
pub const DATA_LABEL: &str = "DATA";
const SECTOR: u64 = 512;
/// Partitions end on a 1 MiB boundary.
const ALIGN_SECTORS: u64 = 2048;

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

/// The FAT volume label in a boot sector (FAT32 layout, then FAT12/16).
pub fn fat_label(sector: &[u8]) -> Option<String> {
    if sector.len() < 512 || sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    let pick = |at: usize, fs_type_at: usize| -> Option<String> {
        sector
            .get(fs_type_at..fs_type_at + 3)
            .filter(|t| *t == b"FAT")?;
        let label = std::str::from_utf8(sector.get(at..at + 11)?)
            .ok()?
            .trim_end();
        Some(label.to_owned())
    };
    pick(0x47, 0x52).or_else(|| pick(0x2B, 0x36))
}

/// The label and block geometry of an ext2/3/4 superblock (the 1024 bytes at
/// offset 1024 of the filesystem).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Info {
    pub label: String,
    pub block_size: u64,
    pub blocks: u64,
}

pub fn ext4_info(superblock: &[u8]) -> Option<Ext4Info> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            superblock.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    if superblock.get(0x38..0x3A)? != [0x53, 0xEF] {
        return None;
    }
    let log_block = u32_at(0x18)?;
    let block_size = 1024u64.checked_shl(log_block)?;
    let incompat = u32_at(0x60)?;
    let mut blocks = u64::from(u32_at(0x04)?);
    if incompat & 0x80 != 0 {
        blocks |= u64::from(u32_at(0x150)?) << 32;
    }
    let raw = superblock.get(0x78..0x88)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let label = String::from_utf8_lossy(&raw[..end]).into_owned();
    Some(Ext4Info {
        label,
        block_size,
        blocks,
    })
}

fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf)?;
    Ok(buf)
}

pub fn read_ext4_info(dev: &Path) -> Option<Ext4Info> {
    read_at(dev, 1024, 1024).ok().as_deref().and_then(ext4_info)
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
        d.partition == Some(1)
            && read_at(&d.dev_path(), 0, 512)
                .ok()
                .and_then(|s| fat_label(&s))
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
        slot_a: numbered(2),
        slot_b: numbered(3),
        state: labelled(STATE_LABEL),
        data: labelled(DATA_LABEL),
        disk,
    })
}

/// A primary MBR entry or a logical partition found through the EBR chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    kind: u8,
    start: u64,
    sectors: u64,
}

fn entry(sector: &[u8], index: usize) -> Entry {
    let at = 446 + 16 * index;
    let word = |o: usize| {
        u64::from(u32::from_le_bytes([
            sector[o],
            sector[o + 1],
            sector[o + 2],
            sector[o + 3],
        ]))
    };
    Entry {
        kind: sector[at + 4],
        start: word(at + 8),
        sectors: word(at + 12),
    }
}

fn set_sectors(sector: &mut [u8], index: usize, sectors: u64) {
    let at = 446 + 16 * index + 12;
    let value = u32::try_from(sectors).unwrap_or(u32::MAX);
    sector[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0f | 0x85)
}

fn read_sector(disk: &mut (impl Read + Seek), lba: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; SECTOR as usize];
    disk.seek(SeekFrom::Start(lba * SECTOR))?;
    disk.read_exact(&mut buf)?;
    Ok(buf)
}

/// What growing the last partition changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    pub partition: u32,
    pub old_sectors: u64,
    pub new_sectors: u64,
}

/// Extends the extended partition and the last logical partition inside it to
/// the end of the disk (aligned down to 1 MiB), if that gains at least 1 MiB
/// and the logical partition is the last thing on the disk. The MBR is
/// written first (a bigger container is consistent on its own), then the EBR.
/// Sizes are capped at what MBR can express (2 TiB).
pub fn grow_last_logical(
    disk: &mut (impl Read + Write + Seek),
    disk_sectors: u64,
) -> std::io::Result<Option<Grown>> {
    let mut mbr = read_sector(disk, 0)?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    let Some(ext_index) = (0..4).find(|&i| is_extended(entry(&mbr, i).kind)) else {
        return Ok(None);
    };
    let ext = entry(&mbr, ext_index);
    // Walk the EBR chain (bounded) to its last logical partition.
    let mut ebr_lba = ext.start;
    let mut last: Option<(u64, Entry, u32)> = None;
    for number in 5u32..64 {
        let ebr = read_sector(disk, ebr_lba)?;
        if ebr[510..512] != [0x55, 0xAA] {
            break;
        }
        let logical = entry(&ebr, 0);
        if logical.kind == 0 {
            break;
        }
        last = Some((ebr_lba, logical, number));
        let next = entry(&ebr, 1);
        if !is_extended(next.kind) || next.start == 0 {
            break;
        }
        ebr_lba = ext.start + next.start;
    }
    let Some((ebr_lba, logical, number)) = last else {
        return Ok(None);
    };
    let logical_start = ebr_lba + logical.start;
    let logical_end = logical_start + logical.sectors;
    let ext_end = ext.start + ext.sectors;
    let limit = u64::from(u32::MAX);
    let new_end = (disk_sectors / ALIGN_SECTORS * ALIGN_SECTORS)
        .min(ext.start + limit)
        .min(logical_start + limit);
    if logical_end != ext_end || new_end < logical_end + ALIGN_SECTORS {
        return Ok(None);
    }
    set_sectors(&mut mbr, ext_index, new_end - ext.start);
    disk.seek(SeekFrom::Start(0))?;
    disk.write_all(&mbr)?;
    disk.flush()?;
    let mut ebr = read_sector(disk, ebr_lba)?;
    set_sectors(&mut ebr, 0, new_end - logical_start);
    disk.seek(SeekFrom::Start(ebr_lba * SECTOR))?;
    disk.write_all(&ebr)?;
    disk.flush()?;
    Ok(Some(Grown {
        partition: number,
        old_sectors: logical.sectors,
        new_sectors: new_end - logical_start,
    }))
}

/// Grows the data partition on the boot disk if the disk has room after it,
/// then has the kernel re-read the partition table. Nothing on the disk may be
/// mounted yet.
pub fn grow_data_partition(layout: &Layout) -> Result<Option<Grown>> {
    let disk_path = layout.disk.dev_path();
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_path)
        .map_err(|e| Error::io("opening", &disk_path, e))?;
    let grown = grow_last_logical(&mut disk, layout.disk.size_sectors)
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
    let blocks = sectors * SECTOR / info.block_size;
    if blocks <= info.blocks {
        return Ok(None);
    }
    let dir = File::open(mount_point).map_err(|e| Error::io("opening", mount_point, e))?;
    crate::sys::ext4_resize(dir.as_fd(), blocks).map_err(|errno| {
        Error::sys(format!("online resize of {}", mount_point.display()), errno)
    })?;
    Ok(Some((info.blocks, blocks)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn put_entry(sector: &mut [u8], index: usize, kind: u8, start: u32, sectors: u32) {
        let at = 446 + 16 * index;
        sector[at + 4] = kind;
        sector[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
        sector[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
    }

    /// p1 at 2048 (4 MiB), p4 extended from 10240 to the end, p5 logical
    /// 4 MiB, p6 logical 8 MiB ending the disk.
    fn small_disk(total_sectors: u64) -> Vec<u8> {
        let mut disk = vec![0u8; (total_sectors * SECTOR) as usize];
        let ext_start = 10240u32;
        let ext_len = 2048 + 8192 + 2048 + 16384;
        {
            let mbr = &mut disk[..512];
            put_entry(mbr, 0, 0x0c, 2048, 8192);
            put_entry(mbr, 3, 0x0f, ext_start, ext_len);
            mbr[510] = 0x55;
            mbr[511] = 0xAA;
        }
        let ebr1 = ext_start as usize * 512;
        put_entry(&mut disk[ebr1..ebr1 + 512], 0, 0x83, 2048, 8192);
        put_entry(
            &mut disk[ebr1..ebr1 + 512],
            1,
            0x05,
            2048 + 8192,
            2048 + 16384,
        );
        disk[ebr1 + 510] = 0x55;
        disk[ebr1 + 511] = 0xAA;
        let ebr2 = (ext_start as usize + 2048 + 8192) * 512;
        put_entry(&mut disk[ebr2..ebr2 + 512], 0, 0x83, 2048, 16384);
        disk[ebr2 + 510] = 0x55;
        disk[ebr2 + 511] = 0xAA;
        disk
    }

    #[test]
    fn grows_last_logical_partition_to_disk_end() {
        let used = 10240 + 2048 + 8192 + 2048 + 16384;
        let mut disk = small_disk(used);
        disk.resize(((used + 20 * 2048 + 100) * SECTOR) as usize, 0);
        let total = disk.len() as u64 / SECTOR;
        let mut cursor = Cursor::new(disk);
        let grown = grow_last_logical(&mut cursor, total).unwrap().unwrap();
        assert_eq!(grown.partition, 6);
        assert_eq!(grown.old_sectors, 16384);
        assert_eq!(grown.new_sectors, 16384 + 20 * 2048);
        let disk = cursor.into_inner();
        assert_eq!(entry(&disk[..512], 3).sectors, used - 10240 + 20 * 2048);
        let ebr2 = (10240 + 2048 + 8192) * 512;
        assert_eq!(entry(&disk[ebr2..ebr2 + 512], 0).sectors, 16384 + 20 * 2048);
        // Growing again changes nothing.
        let mut cursor = Cursor::new(disk);
        assert_eq!(grow_last_logical(&mut cursor, total).unwrap(), None);
    }

    #[test]
    fn does_not_grow_without_room_or_layout() {
        let used = 10240 + 2048 + 8192 + 2048 + 16384;
        let disk = small_disk(used);
        let mut cursor = Cursor::new(disk.clone());
        assert_eq!(grow_last_logical(&mut cursor, used).unwrap(), None);
        assert_eq!(cursor.into_inner(), disk);
        let blank = vec![0u8; 4096];
        assert_eq!(grow_last_logical(&mut Cursor::new(blank), 8).unwrap(), None);
    }

    #[test]
    fn reads_fat_and_ext4_labels() {
        let mut boot = vec![0u8; 512];
        boot[0x47..0x52].copy_from_slice(b"BRAMBLE    ");
        boot[0x52..0x5A].copy_from_slice(b"FAT32   ");
        boot[510] = 0x55;
        boot[511] = 0xAA;
        assert_eq!(fat_label(&boot).as_deref(), Some("BRAMBLE"));
        boot[510] = 0;
        assert_eq!(fat_label(&boot), None);

        let mut sb = vec![0u8; 1024];
        sb[0x38] = 0x53;
        sb[0x39] = 0xEF;
        sb[0x18] = 2; // 4096-byte blocks
        sb[0x04..0x08].copy_from_slice(&16384u32.to_le_bytes());
        sb[0x78..0x7C].copy_from_slice(b"DATA");
        assert_eq!(
            ext4_info(&sb),
            Some(Ext4Info {
                label: "DATA".into(),
                block_size: 4096,
                blocks: 16384
            })
        );
        sb[0x38] = 0;
        assert_eq!(ext4_info(&sb), None);
    }
}
