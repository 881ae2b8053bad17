//! The FAT32 boot partition, built in memory with `fatfs`.
//!
//! Reproducible: fixed volume id, every directory entry stamped with
//! SOURCE_DATE_EPOCH (through a fixed `TimeProvider`), directories and files created
//! in sorted order. The label is written both into the boot sector and as a
//! volume-label entry in the root directory (where `blkid`, `fatlabel` and Windows
//! look first).

use std::io::{Cursor, Seek, SeekFrom, Write};

use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};

use crate::error::{Error, Result};

#[derive(Debug)]
struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// Converts Unix seconds to a FAT date-time (UTC), clamped to FAT's 1980–2107 range.
pub fn fat_datetime(unix: u64) -> DateTime {
    let (y, mo, d, h, mi, s) = crate::time::utc(unix);
    if y < 1980 {
        return DateTime {
            date: Date {
                year: 1980,
                month: 1,
                day: 1,
            },
            time: Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        };
    }
    if y > 2107 {
        return DateTime {
            date: Date {
                year: 2107,
                month: 12,
                day: 31,
            },
            time: Time {
                hour: 23,
                min: 59,
                sec: 58,
                millis: 0,
            },
        };
    }
    DateTime {
        date: Date {
            year: y as u16,
            month: mo as u16,
            day: d as u16,
        },
        time: Time {
            hour: h as u16,
            min: mi as u16,
            // FAT stores 2-second units; keep it even so nothing depends on rounding.
            sec: (s as u16) & !1,
            millis: 0,
        },
    }
}

fn encode_date(d: Date) -> u16 {
    ((d.year - 1980) << 9) | (d.month << 5) | d.day
}

fn encode_time(t: Time) -> u16 {
    (t.hour << 11) | (t.min << 5) | (t.sec / 2)
}

/// What to put on the partition.
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    /// Directories to create (`A`, `B`), parents first.
    pub dirs: &'a [&'a str],
    /// Files as `(path, contents)`; `path` may be inside one of `dirs` (`A/vmlinuz`).
    pub files: &'a [(&'a str, &'a [u8])],
}

/// Builds a FAT32 file system image of exactly `size` bytes.
pub fn build(
    size: u64,
    label: &str,
    volume_id: u32,
    unix_time: u64,
    content: Content<'_>,
) -> Result<Vec<u8>> {
    if label.is_empty()
        || label.len() > 11
        || !label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(Error::Fat(format!(
            "volume label {label:?} must be 1-11 upper-case letters, digits, `_` or `-`"
        )));
    }
    let mut label11 = [b' '; 11];
    label11[..label.len()].copy_from_slice(label.as_bytes());
    let len = usize::try_from(size).map_err(|_| Error::Fat("partition too large".into()))?;
    let mut buf = vec![0u8; len];
    let io = |what: &'static str| move |e: std::io::Error| Error::Fat(format!("{what}: {e}"));
    fatfs::format_volume(
        Cursor::new(&mut buf[..]),
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .volume_label(label11)
            .volume_id(volume_id),
    )
    .map_err(io("formatting"))?;

    let when = fat_datetime(unix_time);
    write_label_entry(&mut buf, &label11, when)?;

    // fatfs wants a 'static time provider; one small leak per image built.
    let provider: &'static FixedTime = Box::leak(Box::new(FixedTime(when)));
    let options = || FsOptions::new().time_provider(provider);
    let mut dirs = content.dirs.to_vec();
    dirs.sort_unstable();
    {
        // Directories first, on their own: fatfs 0.3 writes their `.` and `..`
        // entries with long-name entries in front and `..` pointing at cluster 2
        // for the root, which fsck.fat rejects; `fix_dot_entries` rewrites them.
        let fs = FileSystem::new(Cursor::new(&mut buf[..]), options())
            .map_err(io("opening the new file system"))?;
        for d in &dirs {
            fs.root_dir()
                .create_dir(d)
                .map_err(|e| Error::Fat(format!("creating `{d}/`: {e}")))?;
        }
        fs.unmount().map_err(io("unmounting"))?;
    }
    fix_dot_entries(&mut buf, &dirs)?;
    {
        let fs = FileSystem::new(Cursor::new(&mut buf[..]), options())
            .map_err(io("opening the new file system"))?;
        {
            let root = fs.root_dir();
            let mut files = content.files.to_vec();
            files.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (path, data) in files {
                let mut f = root
                    .create_file(path)
                    .map_err(|e| Error::Fat(format!("creating `{path}`: {e}")))?;
                f.truncate()
                    .and_then(|_| f.write_all(data))
                    .and_then(|_| f.flush())
                    .map_err(|e| {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof
                            || e.to_string().contains("No space")
                        {
                            Error::Fat(format!(
                                "`{path}` ({} bytes) does not fit: the {size}-byte partition is full",
                                data.len()
                            ))
                        } else {
                            Error::Fat(format!("writing `{path}`: {e}"))
                        }
                    })?;
            }
        }
        fs.unmount().map_err(io("unmounting"))?;
    }
    write_fs_info(&mut buf)?;
    Ok(buf)
}

/// FAT32 geometry from the boot sector.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    bytes_per_sector: u64,
    sectors_per_cluster: u64,
    reserved: u64,
    fats: u64,
    fat_sectors: u64,
    root_cluster: u64,
    total_sectors: u64,
    fs_info_sector: u64,
}

impl Geometry {
    fn read(b: &[u8]) -> Geometry {
        let total16 = le16(b, 19);
        Geometry {
            bytes_per_sector: le16(b, 11),
            sectors_per_cluster: u64::from(b[13]),
            reserved: le16(b, 14),
            fats: u64::from(b[16]),
            fat_sectors: le32(b, 36),
            root_cluster: le32(b, 44),
            total_sectors: if total16 != 0 { total16 } else { le32(b, 32) },
            fs_info_sector: le16(b, 48),
        }
    }

    fn data_start(&self) -> u64 {
        (self.reserved + self.fats * self.fat_sectors) * self.bytes_per_sector
    }

    fn cluster_size(&self) -> u64 {
        self.sectors_per_cluster * self.bytes_per_sector
    }

    fn cluster_pos(&self, cluster: u64) -> u64 {
        self.data_start() + cluster.saturating_sub(2) * self.cluster_size()
    }

    fn clusters(&self) -> u64 {
        (self.total_sectors * self.bytes_per_sector - self.data_start()) / self.cluster_size()
    }
}

fn entry_cluster(e: &[u8]) -> u64 {
    (le16(e, 20) << 16) | le16(e, 26)
}

/// Rewrites each (still empty) directory in `dirs` to the canonical form: `.` in
/// slot 0, `..` in slot 1 with cluster 0 (the root), nothing after.
fn fix_dot_entries(buf: &mut [u8], dirs: &[&str]) -> Result<()> {
    let g = Geometry::read(buf);
    let root = g.cluster_pos(g.root_cluster) as usize;
    let cs = g.cluster_size() as usize;
    for d in dirs {
        let mut short = [b' '; 11];
        if d.len() > 8
            || !d
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(Error::Fat(format!(
                "directory `{d}`: only short upper-case names are supported"
            )));
        }
        short[..d.len()].copy_from_slice(d.as_bytes());
        let cluster = buf[root..root + cs]
            .chunks(32)
            .find(|e| e[11] == 0x10 && e[..11] == short)
            .map(entry_cluster)
            .ok_or_else(|| Error::Fat(format!("directory `{d}` not found after creating it")))?;
        let pos = g.cluster_pos(cluster) as usize;
        let slots: Vec<[u8; 32]> = buf[pos..pos + cs]
            .chunks(32)
            .filter(|e| e[11] == 0x10 && (e[..11] == *b".          " || e[..11] == *b"..         "))
            .map(|e| {
                let mut a = [0u8; 32];
                a.copy_from_slice(e);
                a
            })
            .collect();
        let [mut dot, mut dotdot] = slots[..] else {
            return Err(Error::Fat(format!(
                "directory `{d}` has no `.`/`..` entries"
            )));
        };
        if dot[..11] != *b".          " {
            std::mem::swap(&mut dot, &mut dotdot);
        }
        dotdot[20..22].fill(0);
        dotdot[26..28].fill(0);
        buf[pos..pos + cs].fill(0);
        buf[pos..pos + 32].copy_from_slice(&dot);
        buf[pos + 32..pos + 64].copy_from_slice(&dotdot);
    }
    Ok(())
}

/// Fills in the FSInfo sector's free-cluster count and next-free hint (fatfs
/// leaves them "unknown"), from the first FAT.
fn write_fs_info(buf: &mut [u8]) -> Result<()> {
    let g = Geometry::read(buf);
    let fat = (g.reserved * g.bytes_per_sector) as usize;
    let mut free = 0u32;
    let mut first_free = None;
    for c in 2..g.clusters() + 2 {
        let at = fat + 4 * c as usize;
        if le32(buf, at) & 0x0fff_ffff == 0 {
            free += 1;
            first_free.get_or_insert(c as u32);
        }
    }
    let info = (g.fs_info_sector * g.bytes_per_sector) as usize;
    if le32(buf, info) != 0x4161_5252 {
        return Err(Error::Fat("FSInfo sector signature missing".into()));
    }
    buf[info + 488..info + 492].copy_from_slice(&free.to_le_bytes());
    buf[info + 492..info + 496].copy_from_slice(&first_free.unwrap_or(0xffff_ffff).to_le_bytes());
    Ok(())
}

fn le16(b: &[u8], o: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[o], b[o + 1]]))
}

fn le32(b: &[u8], o: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]))
}

/// Puts a volume-label entry into the first slot of the (freshly formatted, empty)
/// FAT32 root directory.
fn write_label_entry(buf: &mut [u8], label: &[u8; 11], when: DateTime) -> Result<()> {
    let g = Geometry::read(buf);
    let pos = g.cluster_pos(g.root_cluster);
    let mut entry = [0u8; 32];
    entry[..11].copy_from_slice(label);
    entry[11] = 0x08; // ATTR_VOLUME_ID
    let (d, t) = (encode_date(when.date), encode_time(when.time));
    entry[14..16].copy_from_slice(&t.to_le_bytes()); // creation time
    entry[16..18].copy_from_slice(&d.to_le_bytes()); // creation date
    entry[18..20].copy_from_slice(&d.to_le_bytes()); // access date
    entry[22..24].copy_from_slice(&t.to_le_bytes()); // write time
    entry[24..26].copy_from_slice(&d.to_le_bytes()); // write date
    let mut c = Cursor::new(buf);
    c.seek(SeekFrom::Start(pos))
        .and_then(|_| c.write_all(&entry))
        .map_err(|e| Error::Fat(format!("writing the label entry: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(size: u64, vmlinuz: &[u8]) -> Result<Vec<u8>> {
        build(
            size,
            "BRAMBLE",
            0x1234_abcd,
            1_700_000_001,
            Content {
                dirs: &["B", "A"],
                files: &[
                    ("config.txt", b"arm_64bit=1\n"),
                    ("A/vmlinuz", vmlinuz),
                    ("bcm2711-rpi-4-b.dtb", b"\xd0\x0d\xfe\xed"),
                ],
            },
        )
    }

    #[test]
    fn builds_reads_back_and_is_deterministic() {
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let img = sample(128 << 20, &big).unwrap();
        assert_eq!(img, sample(128 << 20, &big).unwrap());
        assert_eq!(&img[82..90], b"FAT32   ");
        assert_eq!(&img[71..82], b"BRAMBLE    ");
        assert_eq!(
            u32::from_le_bytes(img[67..71].try_into().unwrap()),
            0x1234_abcd
        );

        let fs = FileSystem::new(Cursor::new(img.clone()), FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), FatType::Fat32);
        assert_eq!(fs.volume_label(), "BRAMBLE");
        let mut data = Vec::new();
        fs.root_dir()
            .open_file("A/vmlinuz")
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        assert_eq!(data, big);
        let names: Vec<String> = fs
            .root_dir()
            .iter()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["A", "B", "bcm2711-rpi-4-b.dtb", "config.txt"]);
        for e in fs.root_dir().iter() {
            let e = e.unwrap();
            let m = e.modified();
            // 2023-11-14 22:13:21 UTC, rounded down to FAT's 2 s.
            assert_eq!((m.date.year, m.date.month, m.date.day), (2023, 11, 14));
            assert_eq!((m.time.hour, m.time.min, m.time.sec), (22, 13, 20));
        }

        // dosfstools' checker agrees.
        let fsck = bramble_testkit::find_program("fsck.fat");
        if bramble_testkit::skip_checks_unless!(
            fsck.is_some(),
            "fsck.fat (Debian's dosfstools) is not installed: the image is not checked by it"
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("fat.img");
            std::fs::write(&p, &img).unwrap();
            let out = std::process::Command::new(fsck.unwrap())
                .arg("-n")
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "fsck.fat: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn full_partition_and_bad_label_are_errors() {
        let big = vec![1u8; 41 << 20];
        let err = sample(40 << 20, &big).unwrap_err().to_string();
        assert!(err.contains("A/vmlinuz"), "{err}");
        let err = build(
            64 << 20,
            "bramble",
            1,
            0,
            Content {
                dirs: &[],
                files: &[],
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("label"), "{err}");
    }

    #[test]
    fn dates() {
        let dt = fat_datetime(0);
        assert_eq!(dt.date.year, 1980);
        let dt = fat_datetime(1_700_000_001);
        assert_eq!((dt.date.year, dt.date.month, dt.date.day), (2023, 11, 14));
        assert_eq!((dt.time.hour, dt.time.min, dt.time.sec), (22, 13, 20));
    }
}
