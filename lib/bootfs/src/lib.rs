//! Files on a Bramble disk's FAT boot partition (partition 1, label
//! `BRAMBLE`), read and written with `fatfs` directly on that partition's
//! byte range of the disk (a block device or an image file): no mount, no
//! root beyond opening the disk.
//!
//! Used by `nodectl image flash --config` (`bramble-flash`: the machine
//! configuration placed for the first boot), by the API server on the node
//! ([`sync_extra`]: the extra Raspberry Pi firmware lines of
//! `machine.pi.configTxt` in [`EXTRA_FILE`], which `config.txt` includes) and
//! by the tests that read a powered-off node's disk.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use fatfs::{FileSystem, FsOptions};

pub use bramble_disk::BOOT_LABEL;
/// Name of the file at the FAT root that the node adopts on its first boot
/// (`init/src/stage1.rs` takes it off the FAT; `services/apid/src/store.rs`
/// validates and stores it).
pub const CONFIG_FILE: &str = "machine-config.yaml";
/// The firmware settings of `machine.pi.configTxt`. `boot/config.txt` ends
/// with `include bramble-extra.txt`; the image ships it holding only
/// [`EXTRA_HEADER`]. Upgrades replace `config.txt` and the slots' files,
/// never this one.
pub const EXTRA_FILE: &str = "bramble-extra.txt";
/// Where a new [`EXTRA_FILE`] is written before it replaces the old one.
const EXTRA_NEW: &str = "bramble-extra.new";
/// The cluster CA's certificate (public) of a configured node: the node's
/// record, outside its `STATE` partition, that it was configured. A node
/// whose `STATE` holds no configuration but whose boot partition holds this
/// file lost its configuration; it does not fall back to the open
/// maintenance API, and admits only the CA's admins.
pub const CA_FILE: &str = "bramble-ca.crt";
/// Where a new [`CA_FILE`] is written before it replaces the old one.
const CA_NEW: &str = "bramble-ca.new";
/// The comment every [`EXTRA_FILE`] starts with.
pub const EXTRA_HEADER: &str = "\
# Bramble: extra Raspberry Pi firmware settings, from the machine
# configuration's machine.pi.configTxt. config.txt includes this file.
# The node rewrites it whenever a configuration is stored: edit the
# configuration (nodectl apply-config), not this file.
";

/// What went wrong on the boot partition.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The MBR could not be read.
    #[error("cannot read the partition table: {0}")]
    PartitionTable(io::Error),
    /// No partition 1 in the MBR.
    #[error("the partition table has no partition 1")]
    NoBootPartition,
    /// Partition 1 has a type other than FAT32.
    #[error("partition 1 has type {0:#04x}, not FAT32 (0x0b/0x0c)")]
    NotFat32(u8),
    /// Partition 1 holds no FAT file system fatfs can read.
    #[error("partition 1 is not a readable FAT file system: {0}")]
    NotFat(io::Error),
    /// Partition 1 is FAT, but not Bramble's.
    #[error("partition 1 is labelled {0:?}, not {BOOT_LABEL}: not a Bramble boot partition")]
    Label(String),
    /// Reading or writing one file failed.
    #[error("cannot {op} {name} on the boot partition: {source}")]
    File {
        /// What was being done (`read`, `write`, `remove`, `rename`).
        op: &'static str,
        /// The file.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// Writing the file system's last updates or flushing the disk failed.
    #[error("cannot finish the boot partition update: {0}")]
    Finish(io::Error),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A byte range of a file, seen as a file of its own.
#[derive(Debug)]
struct Window<'a> {
    file: &'a mut File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window<'_> {
    fn room(&self, want: usize) -> usize {
        (self.len.saturating_sub(self.pos)).min(want as u64) as usize
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the boot partition",
            ));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.file.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        match new {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the boot partition",
            )),
        }
    }
}

/// The boot partition of a disk, opened as a FAT file system.
pub struct BootFs<'a> {
    fs: FileSystem<Window<'a>>,
}

impl std::fmt::Debug for BootFs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootFs").finish_non_exhaustive()
    }
}

impl<'a> BootFs<'a> {
    /// Opens partition 1 of `disk` (found in its MBR) and checks that it is
    /// FAT32 labelled [`BOOT_LABEL`].
    pub fn open(disk: &'a mut File) -> Result<Self> {
        let parts = bramble_disk::mbr::read_partitions(disk).map_err(Error::PartitionTable)?;
        let p1 = parts
            .iter()
            .find(|p| p.index == bramble_disk::BOOT_PARTITION)
            .ok_or(Error::NoBootPartition)?;
        if !matches!(p1.kind, 0x0b | 0x0c) {
            return Err(Error::NotFat32(p1.kind));
        }
        let window = Window {
            start: p1.start_bytes(),
            len: p1.size_bytes(),
            pos: 0,
            file: disk,
        };
        let fs = FileSystem::new(window, FsOptions::new()).map_err(Error::NotFat)?;
        let label = fs.volume_label();
        if label.trim_end() != BOOT_LABEL {
            return Err(Error::Label(label.trim_end().to_owned()));
        }
        Ok(Self { fs })
    }

    /// The file `name` at the FAT root; `None` when it is not there.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let err = |source| Error::File {
            op: "read",
            name: name.to_owned(),
            source,
        };
        let mut file = match self.fs.root_dir().open_file(name) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let mut out = Vec::new();
        file.read_to_end(&mut out).map_err(err)?;
        Ok(Some(out))
    }

    /// Writes `data` as `name` at the FAT root, in place (replacing a file
    /// already there).
    pub fn write(&self, name: &str, data: &[u8]) -> Result<()> {
        let mut file = self
            .fs
            .root_dir()
            .create_file(name)
            .map_err(|source| Error::File {
                op: "create",
                name: name.to_owned(),
                source,
            })?;
        file.truncate()
            .and_then(|()| file.write_all(data))
            .and_then(|()| file.flush())
            .map_err(|source| Error::File {
                op: "write",
                name: name.to_owned(),
                source,
            })
    }

    /// Removes `name` from the FAT root; true if it was there.
    pub fn remove(&self, name: &str) -> Result<bool> {
        match self.fs.root_dir().remove(name) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::File {
                op: "remove",
                name: name.to_owned(),
                source,
            }),
        }
    }

    /// Replaces `name` with `data` as safely as FAT allows: the new content
    /// is written in full under a temporary name first, then the old file is
    /// removed and the new one renamed into its place. FAT has no journal and
    /// no atomic rename over an existing file, so a power cut can leave the
    /// old file, no file (with the temporary one beside it) or the new file,
    /// but never a file with half of the new content.
    pub fn replace(&self, name: &str, tmp: &str, data: &[u8]) -> Result<()> {
        self.remove(tmp)?;
        self.write(tmp, data)?;
        self.remove(name)?;
        let root = self.fs.root_dir();
        root.rename(tmp, &root, name).map_err(|source| Error::File {
            op: "rename",
            name: format!("{tmp} to {name}"),
            source,
        })
    }

    /// Writes the file system's pending updates (FSInfo, the dirty flag).
    /// The caller then fsyncs the disk.
    pub fn finish(self) -> Result<()> {
        self.fs.unmount().map_err(Error::Finish)
    }
}

/// The content of [`EXTRA_FILE`] for the lines of `machine.pi.configTxt`:
/// [`EXTRA_HEADER`], then one line each.
pub fn extra_txt(lines: &[String]) -> String {
    let mut out = EXTRA_HEADER.to_owned();
    for line in lines {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Makes [`EXTRA_FILE`] on the boot partition of `disk` hold `lines`
/// (none: the header only), writing only if its content differs, then
/// fsyncs the disk. True if it was written.
pub fn sync_extra(disk: &mut File, lines: &[String]) -> Result<bool> {
    sync_file(
        disk,
        EXTRA_FILE,
        EXTRA_NEW,
        Some(extra_txt(lines).as_bytes()),
    )
}

/// Makes [`CA_FILE`] hold `ca_pem` (the configuration's `machine.ca.crt`), or
/// removes it for `None` (a node going back to maintenance mode). True if
/// the disk was written.
pub fn sync_ca(disk: &mut File, ca_pem: Option<&str>) -> Result<bool> {
    sync_file(disk, CA_FILE, CA_NEW, ca_pem.map(str::as_bytes))
}

/// The [`CA_FILE`] on the boot partition, if there is one.
pub fn read_ca(disk: &mut File) -> Result<Option<String>> {
    let boot = BootFs::open(disk)?;
    let Some(data) = boot.read(CA_FILE)? else {
        return Ok(None);
    };
    String::from_utf8(data).map(Some).map_err(|_| Error::File {
        op: "read",
        name: CA_FILE.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

/// Makes `name` hold `want` (through `tmp`, [`BootFs::replace`]), or be
/// absent for `None`; writes nothing when it already does. True if the disk
/// was written (and then synced).
fn sync_file(disk: &mut File, name: &str, tmp: &str, want: Option<&[u8]>) -> Result<bool> {
    let written = {
        let boot = BootFs::open(disk)?;
        let changed = if boot.read(name)?.as_deref() == want {
            false
        } else {
            match want {
                Some(data) => boot.replace(name, tmp, data)?,
                None => {
                    boot.remove(name)?;
                }
            }
            true
        };
        // A temporary file a power cut left behind goes too.
        let changed = boot.remove(tmp)? || changed;
        if changed {
            boot.finish()?;
        }
        changed
    };
    if written {
        disk.sync_all().map_err(Error::Finish)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use bramble_disk::mbr::{Partition, TYPE_FAT32_LBA, Table, write_table};

    const MIB: u64 = 1 << 20;

    /// A 40 MiB disk: MBR, p1 FAT32 `label` (36 MiB at 1 MiB) holding a
    /// `config.txt` and the shipped `bramble-extra.txt`.
    fn disk(label: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let mut img = vec![0u8; (40 * MIB) as usize];
        let extra = include_bytes!("../../../boot/bramble-extra.txt");
        let fat = bramble_image::fat::build(
            36 * MIB,
            label,
            0x1234_5678,
            1_700_000_000,
            bramble_image::fat::Content {
                dirs: &["A"],
                files: &[
                    ("config.txt", b"[all]\ninclude bramble-extra.txt\n"),
                    (EXTRA_FILE, extra),
                ],
            },
        )
        .unwrap();
        img[MIB as usize..MIB as usize + fat.len()].copy_from_slice(&fat);
        let table = Table {
            disk_signature: 1,
            primary: vec![Partition {
                index: 1,
                kind: TYPE_FAT32_LBA,
                start_lba: 2048,
                sectors: 36 * 2048,
                bootable: true,
            }],
            logical: vec![],
        };
        write_table(&mut io::Cursor::new(&mut img[..]), &table).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, img).unwrap();
        (dir, path)
    }

    fn open_rw(path: &std::path::Path) -> File {
        File::options().read(true).write(true).open(path).unwrap()
    }

    fn extra(path: &std::path::Path) -> String {
        let mut f = open_rw(path);
        let boot = BootFs::open(&mut f).unwrap();
        String::from_utf8(boot.read(EXTRA_FILE).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn the_shipped_file_is_the_empty_rendering() {
        assert_eq!(
            include_str!("../../../boot/bramble-extra.txt"),
            extra_txt(&[])
        );
        let settings: Vec<&str> = include_str!("../../../boot/config.txt")
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(
            settings[settings.len() - 2..],
            ["[all]", "include bramble-extra.txt"],
            "boot/config.txt must end by including {EXTRA_FILE} in an [all] section"
        );
    }

    #[test]
    fn writes_rewrites_only_on_change_and_clears() {
        let (_dir, path) = disk(BOOT_LABEL);
        let lines = vec!["dtoverlay=disable-wifi".to_owned()];

        // As shipped and nothing configured: nothing to write.
        assert!(!sync_extra(&mut open_rw(&path), &[]).unwrap());

        assert!(sync_extra(&mut open_rw(&path), &lines).unwrap());
        let text = extra(&path);
        assert!(text.starts_with(EXTRA_HEADER), "{text}");
        assert!(text.ends_with("\ndtoverlay=disable-wifi\n"), "{text}");

        // Same lines: the disk is not touched.
        let before = std::fs::read(&path).unwrap();
        assert!(!sync_extra(&mut open_rw(&path), &lines).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), before);

        // Other lines replace them; no temporary file stays.
        let two = vec!["dtoverlay=disable-bt".to_owned(), "hdmi_safe=1".to_owned()];
        assert!(sync_extra(&mut open_rw(&path), &two).unwrap());
        assert!(extra(&path).ends_with("\ndtoverlay=disable-bt\nhdmi_safe=1\n"));
        let mut f = open_rw(&path);
        let boot = BootFs::open(&mut f).unwrap();
        assert!(boot.read(EXTRA_NEW).unwrap().is_none());
        // The rest of the partition is intact.
        assert_eq!(
            boot.read("config.txt").unwrap().unwrap(),
            b"[all]\ninclude bramble-extra.txt\n"
        );
        drop(boot);

        // Cleared: the header only.
        assert!(sync_extra(&mut open_rw(&path), &[]).unwrap());
        assert_eq!(extra(&path), EXTRA_HEADER);
    }

    #[test]
    fn the_ca_marker_is_written_replaced_and_removed() {
        let (_dir, path) = disk(BOOT_LABEL);
        assert_eq!(read_ca(&mut open_rw(&path)).unwrap(), None);
        // Nothing to remove: the disk is not touched.
        let before = std::fs::read(&path).unwrap();
        assert!(!sync_ca(&mut open_rw(&path), None).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), before);

        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert!(sync_ca(&mut open_rw(&path), Some(ca)).unwrap());
        assert_eq!(read_ca(&mut open_rw(&path)).unwrap().as_deref(), Some(ca));
        assert!(!sync_ca(&mut open_rw(&path), Some(ca)).unwrap());
        let other = ca.replace("MIIB", "MIIC");
        assert!(sync_ca(&mut open_rw(&path), Some(&other)).unwrap());
        assert_eq!(read_ca(&mut open_rw(&path)).unwrap(), Some(other));

        // Back to maintenance mode: gone, and the Pi lines are untouched.
        assert!(sync_ca(&mut open_rw(&path), None).unwrap());
        assert_eq!(read_ca(&mut open_rw(&path)).unwrap(), None);
        assert_eq!(extra(&path), EXTRA_HEADER);
    }

    #[test]
    fn recovers_from_a_cut_between_remove_and_rename() {
        let (_dir, path) = disk(BOOT_LABEL);
        {
            let mut f = open_rw(&path);
            let boot = BootFs::open(&mut f).unwrap();
            boot.write(EXTRA_NEW, b"half").unwrap();
            assert!(boot.remove(EXTRA_FILE).unwrap());
            boot.finish().unwrap();
        }
        let lines = vec!["dtoverlay=disable-wifi".to_owned()];
        assert!(sync_extra(&mut open_rw(&path), &lines).unwrap());
        assert!(extra(&path).ends_with("\ndtoverlay=disable-wifi\n"));
    }

    #[test]
    fn refuses_a_disk_that_is_not_bramble() {
        let (_dir, path) = disk("OTHER");
        let e = sync_extra(&mut open_rw(&path), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("labelled \"OTHER\""), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("blank");
        std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
        let e = sync_extra(&mut open_rw(&blank), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("partition"), "{e}");
    }
}
