//! MBR ("msdos") partition tables with an extended partition and its chain of EBRs.
//!
//! Bramble uses MBR because the Raspberry Pi 3's boot ROM and firmware read nothing
//! else; five file systems need more than the four primary slots, so `STATE` and
//! `DATA` are logical partitions (the table is in the [crate] documentation).
//! Indices follow Linux: 1–4 are the primary slots, 5 and up are the logical
//! partitions in chain order, which is how `/dev/mmcblk0pN` is numbered.
//!
//! [`read_partitions`] reads a table, [`write_table`] writes one, and
//! [`grow_last_logical`] stretches the last logical partition (`DATA`) and the
//! extended partition around it to the end of a bigger card, as PID 1 does on
//! first boot.

use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::ALIGN_SECTORS;
pub use crate::SECTOR_SIZE;

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

/// One EBR of the chain: where it is, its logical partition (as stored: the
/// LBA relative to the EBR) and its link to the next EBR (as stored: the LBA
/// relative to the extended partition's start).
#[derive(Debug, Clone, Copy)]
struct Ebr {
    lba: u64,
    logical: RawEntry,
    link: RawEntry,
}

/// The MBR's four entries and, if one is extended, the EBR chain inside it.
#[derive(Debug)]
struct Chain {
    primary: [RawEntry; 4],
    /// The slot (0–3) of the extended partition in the MBR.
    extended: Option<usize>,
    ebrs: Vec<Ebr>,
}

fn read_chain<F>(mut read_sector: F) -> io::Result<Chain>
where
    F: FnMut(u64) -> io::Result<[u8; 512]>,
{
    let primary = parse_entries(&read_sector(0)?, 0)?;
    let extended = primary.iter().position(|e| is_extended_type(e.kind));
    let mut ebrs = Vec::new();
    if let Some(slot) = extended {
        let ext_start = u64::from(primary[slot].lba);
        let mut lba = ext_start;
        loop {
            if ebrs.iter().any(|e: &Ebr| e.lba == lba) || ebrs.len() >= MAX_LOGICAL {
                return Err(invalid(format!(
                    "EBR chain loops or is longer than {MAX_LOGICAL} entries (at sector {lba})"
                )));
            }
            let [logical, link, ..] = parse_entries(&read_sector(lba)?, lba)?;
            ebrs.push(Ebr { lba, logical, link });
            if is_extended_type(link.kind) && link.lba != 0 {
                lba = ext_start + u64::from(link.lba);
            } else {
                break;
            }
        }
    }
    Ok(Chain {
        primary,
        extended,
        ebrs,
    })
}

/// Parses an MBR and, if it has an extended partition, the EBR chain inside it.
///
/// A pure function over a sector source: `read_sector(lba)` returns the 512 bytes of
/// sector `lba`. Returns every non-empty entry — the primary ones (including the
/// extended container itself) with indices 1–4, then the logical ones numbered from 5
/// in chain order — each with absolute LBAs. Errors if a sector lacks the 0x55AA
/// signature, if the chain loops or is absurdly long, or if reading fails.
pub fn parse_partitions<F>(read_sector: F) -> io::Result<Vec<Partition>>
where
    F: FnMut(u64) -> io::Result<[u8; 512]>,
{
    let chain = read_chain(read_sector)?;
    let mut out: Vec<Partition> = chain
        .primary
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind != 0)
        .map(|(i, e)| Partition {
            index: i as u32 + 1,
            kind: e.kind,
            start_lba: u64::from(e.lba),
            sectors: u64::from(e.sectors),
            bootable: e.status & 0x80 != 0,
        })
        .collect();
    let logical = chain.ebrs.iter().filter(|e| e.logical.kind != 0);
    out.extend(logical.zip(5..).map(|(e, index)| Partition {
        index,
        kind: e.logical.kind,
        start_lba: e.lba + u64::from(e.logical.lba),
        sectors: u64::from(e.logical.sectors),
        bootable: e.logical.status & 0x80 != 0,
    }));
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

/// What growing the last partition changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    /// Linux partition number of the grown logical partition.
    pub partition: u32,
    /// Its length before, in sectors.
    pub old_sectors: u64,
    /// Its length now, in sectors.
    pub new_sectors: u64,
}

/// Puts `sectors` into the length field of entry `slot` of a table sector.
fn set_sectors(sector: &mut [u8; 512], slot: usize, sectors: u64) -> io::Result<()> {
    let at = TABLE_OFFSET + 16 * slot + 12;
    sector[at..at + 4].copy_from_slice(&to_u32(sectors, "partition length")?.to_le_bytes());
    Ok(())
}

fn read_sector<D: Read + Seek>(disk: &mut D, lba: u64) -> io::Result<[u8; 512]> {
    let mut sector = [0u8; 512];
    disk.seek(SeekFrom::Start(lba * SECTOR_SIZE))?;
    disk.read_exact(&mut sector)?;
    Ok(sector)
}

/// A disk whose writes can be made durable, so that a second write never
/// reaches the card before the first one has.
pub trait Durable {
    /// Returns once everything written so far is on the medium.
    fn sync(&mut self) -> io::Result<()>;
}

impl Durable for std::fs::File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

impl<D: Durable + ?Sized> Durable for &mut D {
    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }
}

/// An image in memory: nothing to wait for.
impl<T> Durable for io::Cursor<T> {
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes one sector and waits until it is on the medium.
fn write_sector<D: Write + Seek + Durable>(
    disk: &mut D,
    lba: u64,
    sector: &[u8; 512],
) -> io::Result<()> {
    disk.seek(SeekFrom::Start(lba * SECTOR_SIZE))?;
    disk.write_all(sector)?;
    disk.flush()?;
    disk.sync()
}

/// Extends the extended partition and the last logical partition inside it to
/// the end of a disk of `disk_sectors` (aligned down to 1 MiB), if that gains
/// at least 1 MiB and the logical partition ends where the extended one does.
///
/// Returns `None`, writing nothing, for a disk without an MBR, without logical
/// partitions or without room to grow; errors for a table that does not parse.
/// The MBR is written first (a bigger container is consistent on its own),
/// then the last EBR, then the link entry of the EBR before it (which spans the
/// last EBR through the end of its partition), each synced to the medium
/// before the next is written. A power cut between two writes leaves a table
/// the kernel reads (the old logical partition inside a bigger container) and
/// whose extended partition already ends at the disk's aligned end: that is
/// how a later call knows a growth was cut short, and it writes what is still
/// missing. Lengths are capped at what a 32-bit MBR field holds (2 TiB).
pub fn grow_last_logical<D: Read + Write + Seek + Durable>(
    disk: &mut D,
    disk_sectors: u64,
) -> io::Result<Option<Grown>> {
    let mut mbr = read_sector(disk, 0)?;
    if mbr[510..512] != SIGNATURE {
        return Ok(None);
    }
    let chain = read_chain(|lba| read_sector(disk, lba))?;
    let Some(ext_slot) = chain.extended else {
        return Ok(None);
    };
    let Some(last) = chain.ebrs.iter().rposition(|e| e.logical.kind != 0) else {
        return Ok(None);
    };
    let ebr = chain.ebrs[last];
    let previous = last.checked_sub(1).map(|i| chain.ebrs[i]);
    let ext_start = u64::from(chain.primary[ext_slot].lba);
    let ext_end = ext_start + u64::from(chain.primary[ext_slot].sectors);
    let logical_start = ebr.lba + u64::from(ebr.logical.lba);
    let logical_end = logical_start + u64::from(ebr.logical.sectors);
    // Where the link to the last EBR says that EBR's partition ends.
    let link_end = previous.map(|p| ext_start + u64::from(p.link.lba) + u64::from(p.link.sectors));
    let limit = u64::from(u32::MAX);
    let new_end = (disk_sectors / ALIGN_SECTORS * ALIGN_SECTORS)
        .min(ext_start + limit)
        .min(logical_start + limit);
    let fresh = logical_end == ext_end && new_end >= logical_end + ALIGN_SECTORS;
    let cut_short = ext_end == new_end
        && logical_end <= new_end
        && (logical_end < new_end || link_end.is_some_and(|end| end < new_end));
    if !fresh && !cut_short {
        return Ok(None);
    }
    if ext_end < new_end {
        set_sectors(&mut mbr, ext_slot, new_end - ext_start)?;
        write_sector(disk, 0, &mbr)?;
    }
    if logical_end < new_end {
        let mut sector = read_sector(disk, ebr.lba)?;
        set_sectors(&mut sector, 0, new_end - logical_start)?;
        write_sector(disk, ebr.lba, &sector)?;
    }
    if let Some(previous) = previous
        && link_end.is_some_and(|end| end < new_end)
    {
        let mut sector = read_sector(disk, previous.lba)?;
        set_sectors(&mut sector, 1, new_end - ebr.lba)?;
        write_sector(disk, previous.lba, &sector)?;
    }
    let partition = 5 + chain.ebrs[..last]
        .iter()
        .filter(|e| e.logical.kind != 0)
        .count() as u32;
    Ok(Some(Grown {
        partition,
        old_sectors: u64::from(ebr.logical.sectors),
        new_sectors: new_end - logical_start,
    }))
}

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

    /// The sample table written on a disk `extra` sectors bigger than it needs.
    fn sample_disk(extra: u64) -> Cursor<Vec<u8>> {
        let mut disk = Cursor::new(vec![0u8; ((1_513_472 + extra) * SECTOR_SIZE) as usize]);
        write_table(&mut disk, &sample()).unwrap();
        disk
    }

    #[test]
    fn grows_the_last_logical_partition_to_the_disk_end() {
        // What PID 1 does on first boot: stretch p4 and p6 to the end of a
        // bigger card (not 1 MiB-aligned: the end is rounded down).
        let mut disk = sample_disk(20 * ALIGN_SECTORS + 100);
        let total = 1_513_472 + 20 * ALIGN_SECTORS + 100;
        let grown = grow_last_logical(&mut disk, total).unwrap().unwrap();
        let new_end = 1_513_472 + 20 * ALIGN_SECTORS;
        assert_eq!(
            grown,
            Grown {
                partition: 6,
                old_sectors: 131_072,
                new_sectors: new_end - 1_382_400,
            }
        );
        let parts = read_partitions(&mut disk).unwrap();
        assert_eq!(parts[3].end_lba(), new_end);
        assert_eq!(parts[5].end_lba(), new_end);
        // The other partitions did not move.
        assert_eq!(parts[4].sectors, 65_536);
        assert_eq!(parts[1].sectors, 524_288);
        // The first EBR's link spans the second EBR through p6's end.
        let link = (1_312_768 * 512 + 446 + 16 + 12) as usize;
        let bytes = disk.get_ref();
        assert_eq!(
            u64::from(u32::from_le_bytes(
                bytes[link..link + 4].try_into().unwrap()
            )),
            new_end - 1_380_352
        );
        // Growing again changes nothing.
        let before = disk.get_ref().clone();
        assert_eq!(grow_last_logical(&mut disk, total).unwrap(), None);
        assert_eq!(disk.into_inner(), before);
    }

    #[test]
    fn does_not_grow_without_room_or_layout() {
        // Less than 1 MiB to gain.
        let mut disk = sample_disk(ALIGN_SECTORS - 1);
        let before = disk.get_ref().clone();
        let total = 1_513_472 + ALIGN_SECTORS - 1;
        assert_eq!(grow_last_logical(&mut disk, total).unwrap(), None);
        assert_eq!(disk.into_inner(), before);
        // No MBR at all.
        let mut blank = Cursor::new(vec![0u8; 4096]);
        assert_eq!(grow_last_logical(&mut blank, 8).unwrap(), None);
        // No extended partition.
        let mut t = sample();
        t.primary.truncate(3);
        t.logical.clear();
        let mut disk = Cursor::new(vec![0u8; 4 << 20]);
        write_table(&mut disk, &t).unwrap();
        assert_eq!(grow_last_logical(&mut disk, 1 << 30).unwrap(), None);
        // The last logical partition does not end the extended one.
        let mut t = sample();
        t.logical[1].sectors -= ALIGN_SECTORS;
        let mut disk = Cursor::new(vec![0u8; 1_513_472 * 512]);
        write_table(&mut disk, &t).unwrap();
        assert_eq!(grow_last_logical(&mut disk, 1 << 30).unwrap(), None);
    }

    /// A disk in memory that logs each sector written and each sync, and
    /// whose power is cut after `writes_left` writes: the writes before
    /// reach the medium, the rest fail.
    struct Journal {
        disk: Cursor<Vec<u8>>,
        log: Vec<String>,
        writes_left: usize,
    }

    impl Journal {
        fn new(disk: Cursor<Vec<u8>>, writes_left: usize) -> Self {
            Journal {
                disk,
                log: Vec::new(),
                writes_left,
            }
        }
    }

    impl Read for Journal {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.disk.read(buf)
        }
    }

    impl Seek for Journal {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.disk.seek(pos)
        }
    }

    impl Write for Journal {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.writes_left == 0 {
                return Err(io::Error::other("power cut"));
            }
            self.writes_left -= 1;
            let lba = self.disk.position() / SECTOR_SIZE;
            self.log.push(format!("write {lba}"));
            self.disk.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Durable for Journal {
        fn sync(&mut self) -> io::Result<()> {
            self.log.push("sync".into());
            Ok(())
        }
    }

    #[test]
    fn each_write_of_the_growth_is_synced_before_the_next() {
        let mut disk = Journal::new(sample_disk(4 * ALIGN_SECTORS), usize::MAX);
        grow_last_logical(&mut disk, 1_513_472 + 4 * ALIGN_SECTORS)
            .unwrap()
            .unwrap();
        // The MBR, p6's EBR, then p5's EBR (its link to p6's).
        assert_eq!(
            disk.log,
            [
                "write 0",
                "sync",
                "write 1380352",
                "sync",
                "write 1312768",
                "sync"
            ]
        );
    }

    #[test]
    fn a_growth_cut_short_is_finished_by_the_next_boot() {
        let total = 1_513_472 + 20 * ALIGN_SECTORS;
        let mut whole = sample_disk(20 * ALIGN_SECTORS);
        grow_last_logical(&mut whole, total).unwrap().unwrap();
        let whole = whole.into_inner();
        for writes in 0..3 {
            let mut cut = Journal::new(sample_disk(20 * ALIGN_SECTORS), writes);
            let err = grow_last_logical(&mut cut, total).unwrap_err();
            assert_eq!(err.to_string(), "power cut");
            // What the cut left is a table the kernel reads: the partitions
            // are where they were, the container holds them.
            let mut disk = cut.disk;
            let parts = read_partitions(&mut disk).unwrap();
            assert_eq!(parts[5].start_lba, 1_382_400, "after {writes} writes");
            assert!(
                parts[5].end_lba() <= parts[3].end_lba(),
                "after {writes} writes"
            );
            // The next boot finishes the growth: the same bytes as a growth
            // that was never cut.
            let grown = grow_last_logical(&mut disk, total).unwrap().unwrap();
            assert_eq!(
                grown.new_sectors,
                total - 1_382_400,
                "after {writes} writes"
            );
            assert!(disk.get_ref() == &whole, "after {writes} writes");
            assert_eq!(grow_last_logical(&mut disk, total).unwrap(), None);
        }
    }

    #[test]
    fn grow_refuses_a_broken_chain() {
        let mut disk = sample_disk(4 * ALIGN_SECTORS);
        // The second EBR loses its signature.
        let ebr = (1_380_352 * 512 + 510) as usize;
        disk.get_mut()[ebr] = 0;
        let before = disk.get_ref().clone();
        let err = grow_last_logical(&mut disk, 1_513_472 + 4 * ALIGN_SECTORS).unwrap_err();
        assert!(err.to_string().contains("0x55AA"), "{err}");
        assert_eq!(disk.into_inner(), before);
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
