//! Putting the machine configuration on the written card's FAT boot partition
//! (partition 1, label `BRAMBLE`), with `fatfs` working directly on that
//! partition's byte range of the target: no mount, no root beyond opening the
//! device.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use fatfs::{FileSystem, FsOptions};

/// Name of the file at the FAT root that the node adopts on its first boot
/// (`init/src/stage1.rs` takes it off the FAT; `services/apid/src/store.rs`
/// validates and stores it).
pub const CONFIG_FILE: &str = "machine-config.yaml";
/// Volume label of the boot partition.
pub const BOOT_LABEL: &str = "BRAMBLE";

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

/// Opens partition 1 of `disk` as a FAT file system and checks its label.
fn boot_window(disk: &mut File) -> Result<Window<'_>, String> {
    let parts = bramble_image::mbr::read_partitions(disk)
        .map_err(|e| format!("cannot read the partition table: {e}"))?;
    let p1 = parts
        .iter()
        .find(|p| p.index == 1)
        .ok_or("the partition table has no partition 1")?;
    if !matches!(p1.kind, 0x0b | 0x0c) {
        return Err(format!(
            "partition 1 has type {:#04x}, not FAT32 (0x0b/0x0c)",
            p1.kind
        ));
    }
    Ok(Window {
        start: p1.start_bytes(),
        len: p1.size_bytes(),
        pos: 0,
        file: disk,
    })
}

fn open_fs(disk: &mut File) -> Result<FileSystem<Window<'_>>, String> {
    let window = boot_window(disk)?;
    let fs = FileSystem::new(window, FsOptions::new())
        .map_err(|e| format!("partition 1 is not a readable FAT file system: {e}"))?;
    let label = fs.volume_label();
    if label.trim_end() != BOOT_LABEL {
        return Err(format!(
            "partition 1 is labelled {:?}, not {BOOT_LABEL}: not a Bramble boot partition",
            label.trim_end()
        ));
    }
    Ok(fs)
}

/// Writes `data` as [`CONFIG_FILE`] at the root of the boot partition of
/// `disk` (replacing one already there).
pub fn place(disk: &mut File, data: &[u8]) -> Result<(), String> {
    let fs = open_fs(disk)?;
    {
        let root = fs.root_dir();
        let mut file = root
            .create_file(CONFIG_FILE)
            .map_err(|e| format!("cannot create {CONFIG_FILE}: {e}"))?;
        file.truncate()
            .and_then(|()| file.write_all(data))
            .and_then(|()| file.flush())
            .map_err(|e| format!("cannot write {CONFIG_FILE}: {e}"))?;
    }
    fs.unmount()
        .map_err(|e| format!("cannot finish the FAT update: {e}"))
}

/// Reads [`CONFIG_FILE`] back from the boot partition of `disk`; `None` when
/// it is not there.
pub fn read(disk: &mut File) -> Result<Option<Vec<u8>>, String> {
    let fs = open_fs(disk)?;
    let root = fs.root_dir();
    let mut file = match root.open_file(CONFIG_FILE) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {CONFIG_FILE}: {e}")),
    };
    let mut out = Vec::new();
    file.read_to_end(&mut out)
        .map_err(|e| format!("cannot read {CONFIG_FILE}: {e}"))?;
    Ok(Some(out))
}
