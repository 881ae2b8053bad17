//! Bramble's disk: the layout every part of the system agrees on, and the
//! readers and writers of it.
//!
//! One SD card (or QEMU disk) holds, in an MBR partition table (the only
//! kind the Raspberry Pi 3's boot ROM reads):
//!
//! | partition | what                                        | found by            |
//! |-----------|---------------------------------------------|---------------------|
//! | 1         | FAT32 boot partition, label [`BOOT_LABEL`]  | label (+ number 1)  |
//! | 2         | root slot A (squashfs)                      | number              |
//! | 3         | root slot B (squashfs)                      | number              |
//! | 4         | extended partition, to the end of the disk  | type                |
//! | 5         | ext4 [`STATE_LABEL`]: configuration, keys   | label               |
//! | 6         | ext4 [`DATA_LABEL`]: `/var`, grown on boot  | label               |
//!
//! The image builder (`image/`) writes it, PID 1 (`init/`) finds and grows it,
//! `bramble-bootfs` edits the boot partition, the flasher and the boot tests
//! read it back. The sizes of the partitions are the image builder's choice;
//! their order, numbers and labels are fixed here.
//!
//! - [`mbr`]: the partition table with its EBR chain: read, write, grow.
//! - [`ext4`]: an ext4 superblock's size and label.
//! - [`fat`]: a FAT boot sector's volume label.
//!
//! Everything depends on `std` alone.

pub mod ext4;
pub mod fat;
pub mod mbr;

/// Volume label of the FAT boot partition.
pub const BOOT_LABEL: &str = "BRAMBLE";
/// Label of the ext4 file system holding the node's persistent state.
pub const STATE_LABEL: &str = "STATE";
/// Label of the ext4 file system mounted on `/var`.
pub const DATA_LABEL: &str = "DATA";

/// Partition number of the boot partition.
pub const BOOT_PARTITION: u32 = 1;
/// Partition number of root slot A.
pub const SLOT_A_PARTITION: u32 = 2;
/// Partition number of root slot B.
pub const SLOT_B_PARTITION: u32 = 3;
/// Partition number of the extended partition holding `STATE` and `DATA`.
pub const EXTENDED_PARTITION: u32 = 4;
/// Partition number of `STATE` (the first logical partition).
pub const STATE_PARTITION: u32 = 5;
/// Partition number of `DATA` (the last partition on the disk).
pub const DATA_PARTITION: u32 = 6;

/// Bytes per sector (MBR LBAs are in 512-byte units).
pub const SECTOR_SIZE: u64 = 512;
/// Partitions start and end on 1 MiB boundaries.
pub const ALIGN_SECTORS: u64 = 2048;
