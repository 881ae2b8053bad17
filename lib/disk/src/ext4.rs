//! Reading an ext2/3/4 superblock: the file system's size and label. PID 1
//! finds `STATE` and `DATA` by label and grows `DATA` to its partition; the
//! image builder and the boot tests check what was written.

use std::io::{self, Read, Seek, SeekFrom};

/// The superblock sits 1024 bytes into the file system and is 1024 bytes long.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// The ext2/3/4 superblock magic.
const MAGIC: u16 = 0xEF53;
/// `INCOMPAT_64BIT`: the block count has a high 32-bit half.
const INCOMPAT_64BIT: u32 = 0x80;

/// What Bramble needs of an ext4 superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// The volume label (`STATE`, `DATA`).
    pub label: String,
    /// Bytes per block.
    pub block_size: u64,
    /// Size of the file system in blocks.
    pub blocks: u64,
}

impl Superblock {
    /// Size of the file system in bytes; `u64::MAX` for a damaged
    /// superblock whose 64-bit block count does not fit in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size)
    }
}

fn le32(b: &[u8; 1024], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Parses the 1024 bytes of a superblock. Errors with `InvalidData`, naming
/// what is wrong, when they are not an ext2/3/4 superblock.
pub fn parse(sb: &[u8; 1024]) -> io::Result<Superblock> {
    let magic = u16::from_le_bytes([sb[0x38], sb[0x39]]);
    if magic != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no ext4 superblock (magic {magic:#06x}, expected {MAGIC:#06x})"),
        ));
    }
    let log = le32(sb, 0x18);
    if log > 6 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("ext4 superblock: implausible s_log_block_size {log}"),
        ));
    }
    let mut blocks = u64::from(le32(sb, 0x04));
    if le32(sb, 0x60) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(le32(sb, 0x150)) << 32;
    }
    let name = &sb[0x78..0x88];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(Superblock {
        label: String::from_utf8_lossy(&name[..end]).into_owned(),
        block_size: 1024 << log,
        blocks,
    })
}

/// Reads the superblock of the ext4 file system that starts `offset` bytes
/// into `disk` (0 for a partition's own device or an image of the file
/// system alone).
pub fn read<R: Read + Seek>(disk: &mut R, offset: u64) -> io::Result<Superblock> {
    let mut sb = [0u8; 1024];
    disk.seek(SeekFrom::Start(offset + SUPERBLOCK_OFFSET))?;
    disk.read_exact(&mut sb)?;
    parse(&sb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields() {
        let mut sb = [0u8; 1024];
        sb[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
        sb[0x04..0x08].copy_from_slice(&16384u32.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&INCOMPAT_64BIT.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        sb[0x78..0x7c].copy_from_slice(b"DATA");
        let got = parse(&sb).unwrap();
        assert_eq!(
            got,
            Superblock {
                label: "DATA".into(),
                block_size: 4096,
                blocks: (1 << 32) + 16384,
            }
        );
        // Without INCOMPAT_64BIT the high half is not read.
        sb[0x60] = 0;
        assert_eq!(parse(&sb).unwrap().blocks, 16384);
        sb[0x18] = 7;
        let err = parse(&sb).unwrap_err();
        assert!(err.to_string().contains("s_log_block_size 7"), "{err}");
        sb[0x18] = 2;
        sb[0x38] = 0;
        let err = parse(&sb).unwrap_err();
        assert!(err.to_string().contains("no ext4 superblock"), "{err}");
    }

    #[test]
    fn an_absurd_size_saturates() {
        // Found by the disk_fs fuzz target: a 64-bit block count times 64 KiB
        // blocks overflowed (a panic with overflow checks, a wrapped size
        // without).
        let mut sb = [0u8; 1024];
        sb[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&6u32.to_le_bytes());
        sb[0x04..0x08].copy_from_slice(&u32::MAX.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&INCOMPAT_64BIT.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&u32::MAX.to_le_bytes());
        let got = parse(&sb).unwrap();
        assert_eq!((got.blocks, got.block_size), (u64::MAX, 64 * 1024));
        assert_eq!(got.size_bytes(), u64::MAX);
    }

    #[test]
    fn reads_at_an_offset() {
        let mut disk = vec![0u8; 8192];
        let sb = 4096 + 1024;
        disk[sb + 0x38..sb + 0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        disk[sb + 0x04..sb + 0x08].copy_from_slice(&64u32.to_le_bytes());
        disk[sb + 0x78..sb + 0x7d].copy_from_slice(b"STATE");
        let got = read(&mut io::Cursor::new(&disk), 4096).unwrap();
        assert_eq!((got.label.as_str(), got.size_bytes()), ("STATE", 64 * 1024));
        assert!(read(&mut io::Cursor::new(&disk), 0).is_err());
    }
}
