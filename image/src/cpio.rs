//! The "newc" cpio format (`070701`), as the Linux kernel unpacks an initramfs.
//!
//! Writing is deterministic: entries are written in the order given, inode numbers
//! are assigned 1, 2, 3, ... in that order, and every header field comes from the
//! entry (no host uid, time or device numbers leak in). A cpio archive can carry
//! device nodes, so `/dev/console` needs no root. Depends on nothing but `std`.

use std::io::{self, Write};

/// newc magic.
const MAGIC: &[u8; 6] = b"070701";
/// Name of the end-of-archive entry.
pub const TRAILER: &str = "TRAILER!!!";
/// File type bits of `mode`.
pub const S_IFMT: u32 = 0o170_000;
/// Directory.
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link (the data is the target).
pub const S_IFLNK: u32 = 0o120_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;

/// One archive member to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Path without a leading `/` (`init`, `dev/console`).
    pub name: &'a str,
    /// Type and permission bits (`S_IFREG | 0o755`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
    /// File contents, or the link target for a symlink; empty otherwise.
    pub data: &'a [u8],
    /// Device number (major, minor) for device nodes.
    pub rdev: (u32, u32),
}

/// One archive member read back by [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedEntry {
    /// Inode number from the header.
    pub ino: u32,
    /// Path as stored.
    pub name: String,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time.
    pub mtime: u32,
    /// (major, minor) of the device the file was on.
    pub dev: (u32, u32),
    /// (major, minor) for device nodes.
    pub rdev: (u32, u32),
    /// Contents (or symlink target).
    pub data: Vec<u8>,
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

fn too_big(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} does not fit a 32-bit cpio field"),
    )
}

#[allow(clippy::too_many_arguments)]
fn write_header<W: Write>(
    w: &mut W,
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<u64> {
    let size = u32::try_from(size).map_err(|_| too_big(name))?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big(name))?;
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, rdev.0, rdev.1, 0
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    let used = 110 + name.len() + 1;
    let pad = pad4(used);
    w.write_all(&[0u8; 4][..pad])?;
    Ok((used + pad) as u64)
}

/// Writes `entries` and the trailer as a newc archive; returns the bytes written.
///
/// Parents must come before their children (the kernel creates entries in order).
/// Directories get a link count of 2, everything else 1.
pub fn write<W: Write>(w: &mut W, entries: &[Entry<'_>]) -> io::Result<u64> {
    let mut total = 0u64;
    for (i, e) in entries.iter().enumerate() {
        if e.name.is_empty() || e.name.starts_with('/') || e.name == TRAILER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio member name {:?} is not a relative path", e.name),
            ));
        }
        let ino = u32::try_from(i + 1).map_err(|_| too_big("inode number"))?;
        let nlink = if e.mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        total += write_header(
            w,
            ino,
            e.mode,
            e.uid,
            e.gid,
            nlink,
            e.mtime,
            e.data.len(),
            e.rdev,
            e.name,
        )?;
        w.write_all(e.data)?;
        let pad = pad4(e.data.len());
        w.write_all(&[0u8; 4][..pad])?;
        total += (e.data.len() + pad) as u64;
    }
    total += write_header(w, 0, 0, 0, 0, 1, 0, 0, (0, 0), TRAILER)?;
    Ok(total)
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn hex_field(h: &[u8], idx: usize, at: usize) -> io::Result<u32> {
    let s = &h[6 + idx * 8..6 + (idx + 1) * 8];
    let s = std::str::from_utf8(s).map_err(|_| bad(format!("offset {at}: non-ASCII header")))?;
    u32::from_str_radix(s, 16)
        .map_err(|_| bad(format!("offset {at}: bad hex field {s:?} in header")))
}

/// Parses a (decompressed) newc archive up to its trailer.
pub fn parse(data: &[u8]) -> io::Result<Vec<OwnedEntry>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        let h = data
            .get(at..at + 110)
            .ok_or_else(|| bad(format!("offset {at}: truncated header (no trailer)")))?;
        if &h[..6] != MAGIC {
            return Err(bad(format!("offset {at}: bad magic {:?}", &h[..6])));
        }
        let f = |i| hex_field(h, i, at);
        let (ino, mode, uid, gid, nlink, mtime, size) =
            (f(0)?, f(1)?, f(2)?, f(3)?, f(4)?, f(5)?, f(6)?);
        let dev = (f(7)?, f(8)?);
        let rdev = (f(9)?, f(10)?);
        let namesize = f(11)? as usize;
        if namesize == 0 {
            return Err(bad(format!("offset {at}: empty name")));
        }
        let name_start = at + 110;
        let name_bytes = data
            .get(name_start..name_start + namesize)
            .ok_or_else(|| bad(format!("offset {at}: truncated name")))?;
        if name_bytes[namesize - 1] != 0 {
            return Err(bad(format!("offset {at}: name not NUL-terminated")));
        }
        let name = String::from_utf8(name_bytes[..namesize - 1].to_vec())
            .map_err(|_| bad(format!("offset {at}: name is not UTF-8")))?;
        let data_start = name_start + namesize + pad4(110 + namesize);
        if name == TRAILER {
            return Ok(out);
        }
        let size = size as usize;
        let body = data
            .get(data_start..data_start + size)
            .ok_or_else(|| bad(format!("offset {at}: `{name}` is truncated")))?;
        out.push(OwnedEntry {
            ino,
            name,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            dev,
            rdev,
            data: body.to_vec(),
        });
        at = data_start + size + pad4(size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let entries = [
            Entry {
                name: "dev",
                mode: S_IFDIR | 0o755,
                uid: 0,
                gid: 0,
                mtime: 1_700_000_000,
                data: b"",
                rdev: (0, 0),
            },
            Entry {
                name: "dev/console",
                mode: S_IFCHR | 0o600,
                uid: 0,
                gid: 0,
                mtime: 1_700_000_000,
                data: b"",
                rdev: (5, 1),
            },
            Entry {
                name: "init",
                mode: S_IFREG | 0o755,
                uid: 0,
                gid: 0,
                mtime: 1_700_000_000,
                data: b"\x7fELF12345",
                rdev: (0, 0),
            },
            Entry {
                name: "lnk",
                mode: S_IFLNK | 0o777,
                uid: 0,
                gid: 0,
                mtime: 1_700_000_000,
                data: b"init",
                rdev: (0, 0),
            },
        ];
        let mut buf = Vec::new();
        let n = write(&mut buf, &entries).unwrap();
        assert_eq!(n as usize, buf.len());
        assert_eq!(buf.len() % 4, 0);
        let back = parse(&buf).unwrap();
        assert_eq!(back.len(), entries.len());
        for (i, (a, b)) in entries.iter().zip(&back).enumerate() {
            assert_eq!(b.ino as usize, i + 1);
            assert_eq!(b.name, a.name);
            assert_eq!(b.mode, a.mode);
            assert_eq!(b.mtime, a.mtime);
            assert_eq!(b.data, a.data);
            assert_eq!(b.rdev, a.rdev);
            assert_eq!(b.dev, (0, 0));
        }
        assert_eq!(back[0].nlink, 2);
        assert_eq!(back[2].nlink, 1);
        // Byte layout of the first header and the trailer.
        assert!(buf.starts_with(b"07070100000001000041ed"));
        let tail = String::from_utf8_lossy(&buf[buf.len() - 124..]).into_owned();
        assert!(tail.contains("TRAILER!!!"), "{tail}");
        // Deterministic.
        let mut again = Vec::new();
        write(&mut again, &entries).unwrap();
        assert_eq!(buf, again);
    }

    #[test]
    fn rejects_absolute_names_and_garbage() {
        let e = Entry {
            name: "/init",
            mode: S_IFREG,
            uid: 0,
            gid: 0,
            mtime: 0,
            data: b"",
            rdev: (0, 0),
        };
        assert!(write(&mut Vec::new(), &[e]).is_err());
        assert!(parse(b"not a cpio archive at all, no, not even close; it is just text that goes on and on and on and on and on and on").is_err());
        assert!(parse(b"").is_err());
    }
}
