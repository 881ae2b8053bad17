//! MBR ("msdos") partition tables with an extended partition and its chain of EBRs.
//!
//! Bramble uses MBR because the Raspberry Pi 3's boot ROM and firmware read nothing
//! else. Five file systems need more than the four primary slots, so the table is:
//!
//! | index | type  | what                                             |
//! |-------|-------|--------------------------------------------------|
//! | 1     | 0x0c  | FAT32 boot partition `BRAMBLE` (bootable flag)   |
//! | 2     | 0x83  | root slot A (squashfs)                           |
//! | 3     | 0x83  | root slot B (squashfs, empty in a fresh image)   |
//! | 4     | 0x0f  | extended partition, to the end of the disk       |
//! | 5     | 0x83  | ext4 `STATE` (logical, first EBR at p4's start)  |
//! | 6     | 0x83  | ext4 `DATA`, last on the disk                    |
//!
//! Indices follow Linux: 1–4 are the primary slots, 5 and up are the logical
//! partitions in chain order, which is how `/dev/mmcblk0pN` is numbered.
//!
//! Growing `DATA` to the whole card (PID 1 does this on first boot) means rewriting
//! the sector count of entry 4 in the MBR (the extended partition must still contain
//! everything) and the sector count of the first entry of p6's EBR; the link entry of
//! the previous EBR (its second entry) describes p6's EBR through p6's end, and a
//! careful grower updates its sector count as well. [`read_partitions`] reads the
//! result back.
//!
//! This module depends on nothing but `std`, so the boot-test harness can use it with
//! `default-features = false`.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// Bytes per sector (MBR LBAs are in 512-byte units).
pub const SECTOR_SIZE: u64 = 512;
/// The MBR/EBR boot signature at offset 510.
const SIGNATURE: [u8; 2] = [0x55, 0xAA];
/// Offset of the first of the four 16-byte entries in an MBR or EBR.
const TABLE_OFFSET: usize = 446;
/// The link-entry type written into EBRs (fdisk writes 0x05 as well).
pub const TYPE_EXTENDED_LINK: u8 = 0x05;
/// Extended partition, LBA addressing.
pub const TYPE_EXTENDED_LBA: u8 = 0x0f;
/// FAT32 with LBA addressing.
pub const TYPE_FAT32_LBA: u8 = 0x0c;
/// Linux native.
pub const TYPE_LINUX: u8 = 0x83;
/// More logical partitions than this means a looping or corrupt chain.
const MAX_LOGICAL: usize = 128;

/// One partition as the partition table describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Linux partition number: 1–4 primary, 5 and up logical in chain order.
    pub index: u32,
    /// Partition type byte (0x0c FAT32 LBA, 0x83 Linux, 0x0f/0x05 extended, ...).
    pub kind: u8,
    /// First sector, absolute (from the start of the disk).
    pub start_lba: u64,
    /// Length in sectors.
    pub sectors: u64,
    /// The boot indicator (0x80) is set.
    pub bootable: bool,
}

impl Partition {
    /// Byte offset of the partition on the disk.
    pub fn start_bytes(&self) -> u64 {
        self.start_lba * SECTOR_SIZE
    }

    /// Size of the partition in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.sectors * SECTOR_SIZE
    }

    /// First sector after the partition.
    pub fn end_lba(&self) -> u64 {
        self.start_lba + self.sectors
    }

    /// Whether this is an extended partition (a container of logical ones).
    pub fn is_extended(&self) -> bool {
        is_extended_type(self.kind)
    }
}

/// Whether `kind` is one of the extended-partition type bytes (0x05, 0x0f, 0x85).
pub fn is_extended_type(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0f | 0x85)
}

/// A raw 16-byte table entry; LBAs are as stored (relative for EBR entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct RawEntry {
    status: u8,
    kind: u8,
    lba: u32,
    sectors: u32,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn parse_entries(sector: &[u8; 512], lba: u64) -> io::Result<[RawEntry; 4]> {
    if sector[510..512] != SIGNATURE {
        return Err(invalid(format!(
            "sector {lba}: no 0x55AA partition table signature (found {:02x}{:02x})",
            sector[510], sector[511]
        )));
    }
    let mut out = [RawEntry::default(); 4];
    for (i, entry) in out.iter_mut().enumerate() {
        let e = &sector[TABLE_OFFSET + 16 * i..TABLE_OFFSET + 16 * (i + 1)];
        *entry = RawEntry {
            status: e[0],
            kind: e[4],
            lba: u32::from_le_bytes([e[8], e[9], e[10], e[11]]),
            sectors: u32::from_le_bytes([e[12], e[13], e[14], e[15]]),
        };
    }
    Ok(out)
}

/// Parses an MBR and, if it has an extended partition, the EBR chain inside it.
///
/// A pure function over a sector source: `read_sector(lba)` returns the 512 bytes of
/// sector `lba`. Returns every non-empty entry — the primary ones (including the
/// extended container itself) with indices 1–4, then the logical ones numbered from 5
/// in chain order — each with absolute LBAs. Errors if a sector lacks the 0x55AA
/// signature, if the chain loops or is absurdly long, or if reading fails.
pub fn parse_partitions<F>(mut read_sector: F) -> io::Result<Vec<Partition>>
where
    F: FnMut(u64) -> io::Result<[u8; 512]>,
{
    let mbr = parse_entries(&read_sector(0)?, 0)?;
    let mut out = Vec::new();
    let mut extended = None;
    for (i, e) in mbr.iter().enumerate() {
        if e.kind == 0 {
            continue;
        }
        let p = Partition {
            index: i as u32 + 1,
            kind: e.kind,
            start_lba: u64::from(e.lba),
            sectors: u64::from(e.sectors),
            bootable: e.status & 0x80 != 0,
        };
        if p.is_extended() && extended.is_none() {
            extended = Some(p.start_lba);
        }
        out.push(p);
    }
    let Some(ext_start) = extended else {
        return Ok(out);
    };
    let mut ebr_lba = ext_start;
    let mut index = 5;
    let mut seen = Vec::new();
    loop {
        if seen.contains(&ebr_lba) || seen.len() >= MAX_LOGICAL {
            return Err(invalid(format!(
                "EBR chain loops or is longer than {MAX_LOGICAL} entries (at sector {ebr_lba})"
            )));
        }
        seen.push(ebr_lba);
        let ebr = parse_entries(&read_sector(ebr_lba)?, ebr_lba)?;
        let [logical, link, ..] = ebr;
        if logical.kind != 0 {
            out.push(Partition {
                index,
                kind: logical.kind,
                start_lba: ebr_lba + u64::from(logical.lba),
                sectors: u64::from(logical.sectors),
                bootable: logical.status & 0x80 != 0,
            });
            index += 1;
        }
        if is_extended_type(link.kind) && link.lba != 0 {
            ebr_lba = ext_start + u64::from(link.lba);
        } else {
            break;
        }
    }
    Ok(out)
}

/// Reads the partition table of a disk image (or block device): see
/// [`parse_partitions`]. Works on a `&mut File`.
pub fn read_partitions<R: Read + Seek>(disk: &mut R) -> io::Result<Vec<Partition>> {
    parse_partitions(|lba| {
        let mut sector = [0u8; 512];
        disk.seek(SeekFrom::Start(lba * SECTOR_SIZE))?;
        disk.read_exact(&mut sector)?;
        Ok(sector)
    })
}

/// A logical partition to write, with the sector its EBR lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logical {
    /// Absolute LBA of this partition's EBR. The first logical's EBR must be the
    /// extended partition's first sector.
    pub ebr_lba: u64,
    /// Partition type byte.
    pub kind: u8,
    /// Absolute first sector (after `ebr_lba`).
    pub start_lba: u64,
    /// Length in sectors.
    pub sectors: u64,
}

/// A partition table to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The 32-bit disk signature at offset 440 (Linux shows it in PARTUUIDs).
    pub disk_signature: u32,
    /// Primary partitions (`index` 1–4); at most one may be extended.
    pub primary: Vec<Partition>,
    /// Logical partitions in chain order; needs an extended primary.
    pub logical: Vec<Logical>,
}

fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let c = lba / (HEADS * SECTORS);
    if c > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let h = (lba / SECTORS) % HEADS;
    let s = lba % SECTORS + 1;
    [h as u8, (s as u8 & 0x3f) | ((c >> 2) as u8 & 0xc0), c as u8]
}

fn to_u32(v: u64, what: &str) -> io::Result<u32> {
    u32::try_from(v).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} ({v}) does not fit a 32-bit MBR field"),
        )
    })
}

fn put_entry(
    sector: &mut [u8; 512],
    slot: usize,
    bootable: bool,
    kind: u8,
    abs_start: u64,
    rel_start: u64,
    sectors: u64,
) -> io::Result<()> {
    let e = &mut sector[TABLE_OFFSET + 16 * slot..TABLE_OFFSET + 16 * (slot + 1)];
    e[0] = if bootable { 0x80 } else { 0 };
    e[1..4].copy_from_slice(&chs(abs_start));
    e[4] = kind;
    e[5..8].copy_from_slice(&chs((abs_start + sectors).saturating_sub(1)));
    e[8..12].copy_from_slice(&to_u32(rel_start, "partition start")?.to_le_bytes());
    e[12..16].copy_from_slice(&to_u32(sectors, "partition length")?.to_le_bytes());
    Ok(())
}

fn bad_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Encodes a table into the sectors to write: `(lba, contents)` for the MBR and each
/// EBR. Pure; checks that the layout is consistent (indices, overlap of logicals with
/// their EBRs, logicals inside the extended partition).
pub fn encode(table: &Table) -> io::Result<Vec<(u64, [u8; 512])>> {
    let mut mbr = [0u8; 512];
    mbr[440..444].copy_from_slice(&table.disk_signature.to_le_bytes());
    mbr[510..512].copy_from_slice(&SIGNATURE);
    let mut extended: Option<Partition> = None;
    for p in &table.primary {
        if !(1..=4).contains(&p.index) {
            return Err(bad_input(format!(
                "primary partition index {} is not 1-4",
                p.index
            )));
        }
        if p.is_extended() {
            if extended.is_some() {
                return Err(bad_input("more than one extended partition".into()));
            }
            extended = Some(*p);
        }
        put_entry(
            &mut mbr,
            p.index as usize - 1,
            p.bootable,
            p.kind,
            p.start_lba,
            p.start_lba,
            p.sectors,
        )?;
    }
    let mut out = vec![(0, mbr)];
    if table.logical.is_empty() {
        return Ok(out);
    }
    let Some(ext) = extended else {
        return Err(bad_input(
            "logical partitions need an extended partition".into(),
        ));
    };
    for (i, l) in table.logical.iter().enumerate() {
        if i == 0 && l.ebr_lba != ext.start_lba {
            return Err(bad_input(format!(
                "the first EBR must be at the extended partition's start ({}), not {}",
                ext.start_lba, l.ebr_lba
            )));
        }
        if l.start_lba <= l.ebr_lba
            || l.ebr_lba < ext.start_lba
            || l.start_lba + l.sectors > ext.end_lba()
        {
            return Err(bad_input(format!(
                "logical partition {} (EBR {}, sectors {}..{}) is not inside the extended partition {}..{}",
                i + 5,
                l.ebr_lba,
                l.start_lba,
                l.start_lba + l.sectors,
                ext.start_lba,
                ext.end_lba()
            )));
        }
        let mut ebr = [0u8; 512];
        ebr[510..512].copy_from_slice(&SIGNATURE);
        put_entry(
            &mut ebr,
            0,
            false,
            l.kind,
            l.start_lba,
            l.start_lba - l.ebr_lba,
            l.sectors,
        )?;
        if let Some(next) = table.logical.get(i + 1) {
            if next.ebr_lba < l.start_lba + l.sectors {
                return Err(bad_input(format!(
                    "EBR of logical partition {} (sector {}) overlaps partition {}",
                    i + 6,
                    next.ebr_lba,
                    i + 5
                )));
            }
            put_entry(
                &mut ebr,
                1,
                false,
                TYPE_EXTENDED_LINK,
                next.ebr_lba,
                next.ebr_lba - ext.start_lba,
                next.start_lba + next.sectors - next.ebr_lba,
            )?;
        }
        out.push((l.ebr_lba, ebr));
    }
    Ok(out)
}

/// Writes the MBR and every EBR of `table` to a disk image.
pub fn write_table<W: Write + Seek>(disk: &mut W, table: &Table) -> io::Result<()> {
    for (lba, sector) in encode(table)? {
        disk.seek(SeekFrom::Start(lba * SECTOR_SIZE))?;
        disk.write_all(&sector)?;
    }
    Ok(())
}

pub use crate::ext4::ext4_block_count;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn sample() -> Table {
        Table {
            disk_signature: 0xdead_beef,
            primary: vec![
                Partition {
                    index: 1,
                    kind: TYPE_FAT32_LBA,
                    start_lba: 2048,
                    sectors: 262_144,
                    bootable: true,
                },
                Partition {
                    index: 2,
                    kind: TYPE_LINUX,
                    start_lba: 264_192,
                    sectors: 524_288,
                    bootable: false,
                },
                Partition {
                    index: 3,
                    kind: TYPE_LINUX,
                    start_lba: 788_480,
                    sectors: 524_288,
                    bootable: false,
                },
                Partition {
                    index: 4,
                    kind: TYPE_EXTENDED_LBA,
                    start_lba: 1_312_768,
                    sectors: 200_704,
                    bootable: false,
                },
            ],
            logical: vec![
                Logical {
                    ebr_lba: 1_312_768,
                    kind: TYPE_LINUX,
                    start_lba: 1_314_816,
                    sectors: 65_536,
                },
                Logical {
                    ebr_lba: 1_380_352,
                    kind: TYPE_LINUX,
                    start_lba: 1_382_400,
                    sectors: 131_072,
                },
            ],
        }
    }

    #[test]
    fn write_then_read_round_trip() {
        let table = sample();
        let mut disk = Cursor::new(vec![0u8; 1_513_472 * 512]);
        write_table(&mut disk, &table).unwrap();
        let parts = read_partitions(&mut disk).unwrap();
        let got: Vec<_> = parts
            .iter()
            .map(|p| (p.index, p.kind, p.start_lba, p.sectors, p.bootable))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 0x0c, 2048, 262_144, true),
                (2, 0x83, 264_192, 524_288, false),
                (3, 0x83, 788_480, 524_288, false),
                (4, 0x0f, 1_312_768, 200_704, false),
                (5, 0x83, 1_314_816, 65_536, false),
                (6, 0x83, 1_382_400, 131_072, false),
            ]
        );
        let bytes = disk.into_inner();
        assert_eq!(&bytes[440..444], &0xdead_beef_u32.to_le_bytes());
        assert_eq!(&bytes[510..512], &[0x55, 0xAA]);
        // Second EBR entry of the first EBR: link to the next EBR, relative to p4.
        let ebr = 1_312_768 * 512 + 446 + 16;
        assert_eq!(bytes[ebr + 4], TYPE_EXTENDED_LINK);
        assert_eq!(
            u32::from_le_bytes(bytes[ebr + 8..ebr + 12].try_into().unwrap()),
            1_380_352 - 1_312_768
        );
    }

    #[test]
    fn growth_is_seen_by_the_reader() {
        // What PID 1 does on first boot: stretch p4 and p6 to the end of a bigger card.
        let table = sample();
        let mut disk = Cursor::new(vec![0u8; 1_513_472 * 512]);
        write_table(&mut disk, &table).unwrap();
        let new_total: u64 = 4_000_000;
        let bytes = disk.get_mut();
        let p4 = 446 + 3 * 16;
        bytes[p4 + 12..p4 + 16].copy_from_slice(&((new_total - 1_312_768) as u32).to_le_bytes());
        let p6 = 1_380_352 * 512 + 446;
        bytes[p6 + 12..p6 + 16].copy_from_slice(&((new_total - 1_382_400) as u32).to_le_bytes());
        let parts = read_partitions(&mut disk).unwrap();
        assert_eq!(parts[3].end_lba(), new_total);
        assert_eq!(parts[5].end_lba(), new_total);
    }

    #[test]
    fn rejects_missing_signature_and_loops() {
        let mut disk = Cursor::new(vec![0u8; 4096]);
        let err = read_partitions(&mut disk).unwrap_err();
        assert!(err.to_string().contains("0x55AA"), "{err}");

        // An extended partition whose EBR links to itself.
        let mut bytes = vec![0u8; 8 * 512];
        bytes[510] = 0x55;
        bytes[511] = 0xAA;
        bytes[446 + 4] = 0x0f;
        bytes[446 + 8] = 2;
        bytes[446 + 12] = 4;
        let ebr = 2 * 512;
        bytes[ebr + 510] = 0x55;
        bytes[ebr + 511] = 0xAA;
        bytes[ebr + 446 + 16 + 4] = 0x05;
        bytes[ebr + 446 + 16 + 8] = 0; // lba 0 ends the chain ...
        let parts = read_partitions(&mut Cursor::new(bytes.clone())).unwrap();
        assert_eq!(parts.len(), 1);
        // ... but a link back to an EBR already visited is a loop.
        bytes[ebr + 446 + 16 + 8] = 1; // -> ext_start + 1 = sector 3
        let ebr2 = 3 * 512;
        bytes[ebr2 + 510] = 0x55;
        bytes[ebr2 + 511] = 0xAA;
        bytes[ebr2 + 446 + 16 + 4] = 0x05;
        bytes[ebr2 + 446 + 16 + 8] = 1; // -> sector 3 again
        let err = read_partitions(&mut Cursor::new(bytes)).unwrap_err();
        assert!(err.to_string().contains("loops"), "{err}");
    }

    #[test]
    fn encode_rejects_inconsistent_layouts() {
        let mut t = sample();
        t.logical[1].start_lba = 1_513_000; // runs past the extended partition
        assert!(encode(&t).is_err());
        let mut t = sample();
        t.logical[0].ebr_lba += 1;
        assert!(encode(&t).is_err());
        let mut t = sample();
        t.primary[0].index = 7;
        assert!(encode(&t).is_err());
    }

    #[test]
    fn chs_values() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(1024 * 255 * 63), [0xFE, 0xFF, 0xFF]);
    }
}
