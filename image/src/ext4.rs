//! Reading an ext4 superblock (size and label), e.g. to check that PID 1 grew the
//! `DATA` file system. Depends on nothing but `std`.

use std::io::{self, Read, Seek, SeekFrom};

/// The ext2/3/4 superblock magic.
const EXT4_MAGIC: u16 = 0xEF53;
/// `INCOMPAT_64BIT`: the block count has a high 32-bit half.
const INCOMPAT_64BIT: u32 = 0x80;

/// Reads the superblock of the ext4 file system that starts `partition_start_bytes`
/// into `disk`. Returns `(block count, block size in bytes, volume label)`.
///
/// Errors with `InvalidData` if there is no ext2/3/4 superblock there.
pub fn ext4_block_count<R: Read + Seek>(
    disk: &mut R,
    partition_start_bytes: u64,
) -> io::Result<(u64, u32, String)> {
    let mut sb = [0u8; 1024];
    disk.seek(SeekFrom::Start(partition_start_bytes + 1024))?;
    disk.read_exact(&mut sb)?;
    parse_superblock(&sb)
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Parses a 1024-byte ext4 superblock: `(block count, block size, label)`.
pub fn parse_superblock(sb: &[u8; 1024]) -> io::Result<(u64, u32, String)> {
    let magic = u16::from_le_bytes([sb[0x38], sb[0x39]]);
    if magic != EXT4_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no ext4 superblock (magic {magic:#06x}, expected {EXT4_MAGIC:#06x})"),
        ));
    }
    let log = le32(sb, 0x18);
    if log > 6 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("ext4 superblock: implausible s_log_block_size {log}"),
        ));
    }
    let block_size = 1024u32 << log;
    let mut blocks = u64::from(le32(sb, 0x04));
    if le32(sb, 0x60) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(le32(sb, 0x150)) << 32;
    }
    let name = &sb[0x78..0x88];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let label = String::from_utf8_lossy(&name[..end]).into_owned();
    Ok((blocks, block_size, label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields() {
        let mut sb = [0u8; 1024];
        sb[0x38..0x3a].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
        sb[0x04..0x08].copy_from_slice(&16384u32.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&INCOMPAT_64BIT.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        sb[0x78..0x7c].copy_from_slice(b"DATA");
        let (blocks, bs, label) = parse_superblock(&sb).unwrap();
        assert_eq!(blocks, (1 << 32) + 16384);
        assert_eq!(bs, 4096);
        assert_eq!(label, "DATA");
        sb[0x38] = 0;
        assert!(parse_superblock(&sb).is_err());
    }
}
