//! LZ4's "legacy" frame, the one format of LZ4 the kernel unpacks an
//! initramfs from (`lib/decompress_unlz4.c`).
//!
//! The frame is a 4-byte magic number, then chunks of at most 8 MiB of input,
//! each an LZ4 block preceded by its compressed length (32-bit, little-endian).
//! It has no end marker and no checksum: the kernel stops at the end of the
//! initramfs U-Boot hands it, whose length U-Boot passes exactly. LZ4 is
//! chosen over gzip because it unpacks several times faster on a slow CPU.

use crate::error::{Error, Result};

/// The legacy frame's magic number.
pub const LEGACY_MAGIC: u32 = 0x184C_2102;

/// Input bytes per chunk: what the kernel's decompressor expects of every
/// chunk but the last.
pub const LEGACY_CHUNK: usize = 8 << 20;

/// `data` as a legacy LZ4 frame. Deterministic: same input, same output.
pub fn compress_legacy(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 + 16);
    out.extend_from_slice(&LEGACY_MAGIC.to_le_bytes());
    for chunk in data.chunks(LEGACY_CHUNK) {
        let block = lz4_flex::block::compress(chunk);
        // A chunk is at most 8 MiB, so its compressed size fits in 32 bits.
        let len = u32::try_from(block.len()).expect("an LZ4 block of 8 MiB of input fits u32");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&block);
    }
    out
}

/// Unpacks a legacy LZ4 frame (the image's own initramfs, in tests and checks).
pub fn decompress_legacy(frame: &[u8]) -> Result<Vec<u8>> {
    let bad = |why: String| Error::Initramfs(format!("LZ4 legacy frame: {why}"));
    let magic = frame
        .get(..4)
        .ok_or_else(|| bad("shorter than its magic number".into()))?;
    if magic != LEGACY_MAGIC.to_le_bytes() {
        return Err(bad(format!("magic {magic:02x?} is not {LEGACY_MAGIC:#x}")));
    }
    let mut out = Vec::new();
    let mut rest = &frame[4..];
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad(format!("{} stray bytes at the end", rest.len())))?;
        let len = u32::from_le_bytes(*len) as usize;
        let block = tail.get(..len).ok_or_else(|| {
            bad(format!(
                "a chunk of {len} bytes with {} bytes left",
                tail.len()
            ))
        })?;
        let chunk = lz4_flex::block::decompress(block, LEGACY_CHUNK)
            .map_err(|e| bad(format!("chunk at byte {}: {e}", frame.len() - rest.len())))?;
        out.extend_from_slice(&chunk);
        rest = &tail[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: a repeating ramp with a varying stride.
        (0..len).map(|i| ((i / 7) ^ (i % 251)) as u8).collect()
    }

    #[test]
    fn round_trips_across_chunks() {
        for len in [0, 1, 1000, LEGACY_CHUNK, LEGACY_CHUNK + 12345] {
            let data = sample(len);
            let frame = compress_legacy(&data);
            assert_eq!(
                &frame[..4],
                &[0x02, 0x21, 0x4c, 0x18],
                "magic, little-endian"
            );
            assert_eq!(decompress_legacy(&frame).unwrap(), data, "length {len}");
            assert_eq!(compress_legacy(&data), frame, "deterministic");
        }
    }

    #[test]
    fn chunks_are_eight_mib_of_input() {
        let frame = compress_legacy(&sample(LEGACY_CHUNK + 1));
        let first = u32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
        let first_chunk = lz4_flex::block::decompress(&frame[8..8 + first], LEGACY_CHUNK).unwrap();
        assert_eq!(first_chunk.len(), LEGACY_CHUNK);
        let second_at = 8 + first;
        let second = u32::from_le_bytes(frame[second_at..second_at + 4].try_into().unwrap());
        assert_eq!(
            second_at + 4 + second as usize,
            frame.len(),
            "two chunks in all"
        );
    }

    #[test]
    fn damaged_frames_are_refused() {
        let frame = compress_legacy(&sample(5000));
        let err = |f: &[u8]| decompress_legacy(f).unwrap_err().to_string();
        assert!(err(&frame[..2]).contains("shorter than its magic"));
        let mut wrong = frame.clone();
        wrong[0] = 0x1f;
        assert!(err(&wrong).contains("magic"));
        assert!(err(&frame[..frame.len() - 3]).contains("bytes left"));
        let mut stray = frame.clone();
        stray.extend_from_slice(&[1, 2]);
        assert!(err(&stray).contains("2 stray bytes"));
    }
}
