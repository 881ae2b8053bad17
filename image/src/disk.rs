//! The disk layout and writing the raw image, its xz copy, bmap and checksums.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::bmap::{BLOCK_SIZE, BmapBuilder};
use crate::error::{Error, Result};
use crate::lock::hex;
use bramble_disk::mbr::{
    Logical, Partition, SECTOR_SIZE, TYPE_EXTENDED_LBA, TYPE_FAT32_LBA, TYPE_LINUX, Table,
};
use bramble_disk::{
    BOOT_PARTITION, DATA_PARTITION, EXTENDED_PARTITION, SLOT_A_PARTITION, SLOT_B_PARTITION,
    STATE_PARTITION,
};

/// Sectors per MiB.
const MIB: u64 = 2048;
/// p1: FAT32 boot partition.
pub const BOOT_MIB: u64 = 128;
/// p2/p3: root slots A and B.
pub const ROOT_MIB: u64 = 256;
/// p5: ext4 `STATE`.
pub const STATE_MIB: u64 = 32;
/// p6: ext4 `DATA` (grown on first boot).
pub const DATA_MIB: u64 = 64;

/// Where everything goes, in sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The partition table.
    pub table: Table,
    /// Disk size in sectors (p6 ends here).
    pub total_sectors: u64,
}

impl Layout {
    /// Bramble's layout: p1 FAT32 128 MiB (bootable), p2/p3 256 MiB root slots, p4
    /// extended to the end, p5 `STATE` 32 MiB and p6 `DATA` 64 MiB, each logical
    /// preceded by its EBR 1 MiB before it; everything 1 MiB-aligned.
    pub fn bramble(disk_signature: u32) -> Layout {
        let p1 = MIB;
        let p2 = p1 + BOOT_MIB * MIB;
        let p3 = p2 + ROOT_MIB * MIB;
        let p4 = p3 + ROOT_MIB * MIB;
        let ebr5 = p4;
        let p5 = ebr5 + MIB;
        let ebr6 = p5 + STATE_MIB * MIB;
        let p6 = ebr6 + MIB;
        let end = p6 + DATA_MIB * MIB;
        let primary = |index, kind, start, sectors, bootable| Partition {
            index,
            kind,
            start_lba: start,
            sectors,
            bootable,
        };
        Layout {
            table: Table {
                disk_signature,
                primary: vec![
                    primary(BOOT_PARTITION, TYPE_FAT32_LBA, p1, BOOT_MIB * MIB, true),
                    primary(SLOT_A_PARTITION, TYPE_LINUX, p2, ROOT_MIB * MIB, false),
                    primary(SLOT_B_PARTITION, TYPE_LINUX, p3, ROOT_MIB * MIB, false),
                    primary(EXTENDED_PARTITION, TYPE_EXTENDED_LBA, p4, end - p4, false),
                ],
                logical: vec![
                    Logical {
                        ebr_lba: ebr5,
                        kind: TYPE_LINUX,
                        start_lba: p5,
                        sectors: STATE_MIB * MIB,
                    },
                    Logical {
                        ebr_lba: ebr6,
                        kind: TYPE_LINUX,
                        start_lba: p6,
                        sectors: DATA_MIB * MIB,
                    },
                ],
            },
            total_sectors: end,
        }
    }

    /// Byte range `(offset, size)` of partition `index` (1, 2, 3, 5, 6).
    pub fn bytes(&self, index: u32) -> (u64, u64) {
        if index >= STATE_PARTITION {
            let l = &self.table.logical[(index - STATE_PARTITION) as usize];
            (l.start_lba * SECTOR_SIZE, l.sectors * SECTOR_SIZE)
        } else {
            let p = &self.table.primary[(index - 1) as usize];
            (p.start_bytes(), p.size_bytes())
        }
    }

    /// Disk size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.total_sectors * SECTOR_SIZE
    }
}

/// Writes `data` at `offset`, skipping all-zero 4 KiB blocks so they stay holes.
/// `offset` must be 4 KiB-aligned for the holes to line up with the bmap's blocks.
pub fn write_sparse(f: &mut File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    debug_assert_eq!(offset % BLOCK_SIZE, 0);
    let bs = BLOCK_SIZE as usize;
    let mut i = 0;
    while i < data.len() {
        // Find the next run of non-zero blocks and write it in one go.
        while i < data.len() && data[i..(i + bs).min(data.len())].iter().all(|&b| b == 0) {
            i += bs;
        }
        let start = i;
        while i < data.len() && data[i..(i + bs).min(data.len())].iter().any(|&b| b != 0) {
            i += bs;
        }
        if i > start {
            f.seek(SeekFrom::Start(offset + start as u64))?;
            f.write_all(&data[start..i.min(data.len())])?;
        }
    }
    Ok(())
}

/// Contents of the partitions.
#[derive(Debug)]
pub struct Contents<'a> {
    /// p1.
    pub boot: &'a [u8],
    /// p2.
    pub root_a: &'a [u8],
    /// p5.
    pub state: &'a [u8],
    /// p6.
    pub data: &'a [u8],
}

/// Writes the raw image (sparse) to `path`.
pub fn write_image(path: &Path, layout: &Layout, c: &Contents<'_>) -> Result<()> {
    let io = Error::io(path);
    let mut f = File::create(path).map_err(Error::io(path))?;
    f.set_len(layout.size_bytes()).map_err(Error::io(path))?;
    for (index, what, data) in [
        (BOOT_PARTITION, "boot partition", c.boot),
        (SLOT_A_PARTITION, "root file system", c.root_a),
        (STATE_PARTITION, "STATE file system", c.state),
        (DATA_PARTITION, "DATA file system", c.data),
    ] {
        let (off, size) = layout.bytes(index);
        if data.len() as u64 > size {
            return Err(Error::TooLarge {
                what: what.into(),
                size: data.len() as u64,
                limit: size,
            });
        }
        write_sparse(&mut f, off, data).map_err(Error::io(path))?;
    }
    bramble_disk::mbr::write_table(&mut f, &layout.table).map_err(Error::io(path))?;
    f.sync_all().map_err(io)?;
    Ok(())
}

/// A writer that hashes what passes through.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// xz settings for the compressed image: fixed so the output is reproducible
/// (multi-threaded xz output depends on the block size, which is fixed here,
/// and not on the thread count).
pub const XZ_PRESET: u32 = 1;
/// Uncompressed bytes per independently compressed xz block.
pub const XZ_BLOCK: u64 = 16 << 20;

/// What one pass over the raw image produced.
#[derive(Debug)]
pub struct Derived {
    /// sha256 of the raw image.
    pub img_sha256: String,
    /// sha256 of the `.xz`.
    pub xz_sha256: String,
    /// Size of the `.xz`.
    pub xz_size: u64,
    /// The bmap XML.
    pub bmap: String,
    /// Mapped 4 KiB blocks.
    pub mapped_blocks: u64,
}

/// Reads the raw image once, producing its sha256, the bmap and the `.xz` file.
pub fn derive(img: &Path, xz_out: &Path) -> Result<Derived> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
        .clamp(1, 8);
    let stream = liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        .block_size(XZ_BLOCK)
        .preset(XZ_PRESET)
        .check(liblzma::stream::Check::Crc64)
        .encoder()
        .map_err(|e| Error::Invalid {
            field: "xz".into(),
            reason: format!("cannot start the encoder: {e}"),
        })?;
    let out = File::create(xz_out).map_err(Error::io(xz_out))?;
    let hashing = HashingWriter {
        inner: BufWriter::new(out),
        hash: Sha256::new(),
        len: 0,
    };
    let mut xz = liblzma::write::XzEncoder::new_stream(hashing, stream);
    let mut input = File::open(img).map_err(Error::io(img))?;
    let mut bmap = BmapBuilder::new();
    // The whole-image sha256 runs on its own thread: it is the slowest consumer.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<[u8]>>(4);
    let img_sha256 = std::thread::scope(|s| -> Result<String> {
        let hasher = s.spawn(move || {
            let mut sha = Sha256::new();
            for chunk in rx {
                sha.update(&chunk[..]);
            }
            hex(&sha.finalize())
        });
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = input.read(&mut buf).map_err(Error::io(img))?;
            if n == 0 {
                break;
            }
            let chunk: Arc<[u8]> = Arc::from(&buf[..n]);
            // A send error means the hasher is gone; its join below reports it.
            let _ = tx.send(chunk.clone());
            bmap.update(&chunk);
            xz.write_all(&chunk).map_err(Error::io(xz_out))?;
        }
        drop(tx);
        hasher.join().map_err(|_| Error::Invalid {
            field: img.display().to_string(),
            reason: "the sha256 thread panicked".into(),
        })
    })?;
    let mut hashing = xz.finish().map_err(Error::io(xz_out))?;
    hashing.flush().map_err(Error::io(xz_out))?;
    let HashingWriter { inner, hash, len } = hashing;
    inner
        .into_inner()
        .map_err(|e| Error::io(xz_out)(e.into_error()))?
        .sync_all()
        .map_err(Error::io(xz_out))?;
    let (bmap, mapped_blocks) = bmap.finish();
    Ok(Derived {
        img_sha256,
        xz_sha256: hex(&hash.finalize()),
        xz_size: len,
        bmap,
        mapped_blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_design() {
        let l = Layout::bramble(1);
        let parts: Vec<_> = l
            .table
            .primary
            .iter()
            .map(|p| (p.index, p.kind, p.start_lba, p.sectors, p.bootable))
            .collect();
        assert_eq!(
            parts,
            vec![
                (1, 0x0c, 2048, 262_144, true),
                (2, 0x83, 264_192, 524_288, false),
                (3, 0x83, 788_480, 524_288, false),
                (4, 0x0f, 1_312_768, 200_704, false),
            ]
        );
        assert_eq!(l.total_sectors, 1_513_472);
        assert_eq!(l.bytes(6), (1_382_400 * 512, 64 << 20));
        assert_eq!(l.bytes(6).0 + l.bytes(6).1, l.size_bytes());
        for i in [1, 2, 3, 5, 6] {
            assert_eq!(l.bytes(i).0 % (1 << 20), 0, "p{i} is 1 MiB-aligned");
        }
        bramble_disk::mbr::encode(&l.table).unwrap();
    }

    #[test]
    fn xz_output_does_not_depend_on_thread_count() {
        let data: Vec<u8> = (0..(40u32 << 20))
            .map(|i| {
                if (i >> 20) % 3 == 0 {
                    (i.wrapping_mul(2_654_435_761) >> 13) as u8
                } else {
                    0
                }
            })
            .collect();
        let enc = |threads| {
            let s = liblzma::stream::MtStreamBuilder::new()
                .threads(threads)
                .block_size(XZ_BLOCK)
                .preset(XZ_PRESET)
                .check(liblzma::stream::Check::Crc64)
                .encoder()
                .unwrap();
            let mut w = liblzma::write::XzEncoder::new_stream(Vec::new(), s);
            w.write_all(&data).unwrap();
            w.finish().unwrap()
        };
        let one = enc(1);
        assert_eq!(one, enc(2));
        assert_eq!(one, enc(3));
        let mut back = Vec::new();
        liblzma::read::XzDecoder::new_multi_decoder(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
    }

    #[test]
    fn sparse_writes_leave_zero_blocks_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let mut f = File::create(&p).unwrap();
        f.set_len(64 << 10).unwrap();
        let mut data = vec![0u8; 5 * 4096 + 100];
        data[4096] = 1;
        data[3 * 4096 + 5] = 2;
        data[5 * 4096 + 99] = 3;
        write_sparse(&mut f, 8192, &data).unwrap();
        drop(f);
        let back = std::fs::read(&p).unwrap();
        assert_eq!(&back[8192..8192 + data.len()], &data[..]);
        assert!(back[..8192].iter().all(|&b| b == 0));
    }
}
