//! bmaptool block maps (format 2.0).
//!
//! The mapped blocks are the 4096-byte blocks of the image that are not all zero
//! (the builder writes the raw image sparse, with holes exactly there, so
//! `bmaptool create` on it gives the same map). Each range carries the sha256 of
//! its bytes; `BmapFileChecksum` is the sha256 of the whole file with that field
//! set to 64 ASCII zeros, as bmaptool computes and checks it. The text follows
//! bmaptool's own writer, padding included.

use sha2::{Digest, Sha256};

use crate::lock::hex;

/// Block size used in Bramble's bmaps.
pub const BLOCK_SIZE: u64 = 4096;

/// Builds a bmap from the image's bytes, fed in order in any chunk sizes.
#[derive(Debug)]
pub struct BmapBuilder {
    size: u64,
    /// Bytes of the current, not yet complete block.
    partial: Vec<u8>,
    /// Completed mapped ranges: (first, last, sha256).
    ranges: Vec<(u64, u64, String)>,
    /// The open range: first block, last block, running hash.
    open: Option<(u64, u64, Sha256)>,
}

impl Default for BmapBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BmapBuilder {
    /// A builder at offset 0.
    pub fn new() -> BmapBuilder {
        BmapBuilder {
            size: 0,
            partial: Vec::with_capacity(BLOCK_SIZE as usize),
            ranges: Vec::new(),
            open: None,
        }
    }

    fn block(&mut self, index: u64, data: &[u8]) {
        if data.iter().all(|&b| b == 0) {
            if let Some((first, last, h)) = self.open.take() {
                self.ranges.push((first, last, hex(&h.finalize())));
            }
            return;
        }
        match &mut self.open {
            Some((_, last, h)) => {
                *last = index;
                h.update(data);
            }
            None => {
                let mut h = Sha256::new();
                h.update(data);
                self.open = Some((index, index, h));
            }
        }
    }

    /// Feeds the next bytes of the image.
    pub fn update(&mut self, mut data: &[u8]) {
        let bs = BLOCK_SIZE as usize;
        if !self.partial.is_empty() {
            let take = (bs - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.size += take as u64;
            if self.partial.len() == bs {
                let block = std::mem::take(&mut self.partial);
                self.block((self.size - 1) / BLOCK_SIZE, &block);
                self.partial = block;
                self.partial.clear();
            }
        }
        while data.len() >= bs {
            let (block, rest) = data.split_at(bs);
            self.size += BLOCK_SIZE;
            self.block(self.size / BLOCK_SIZE - 1, block);
            data = rest;
        }
        if !data.is_empty() {
            self.partial.extend_from_slice(data);
            self.size += data.len() as u64;
        }
    }

    /// Finishes and returns `(bmap XML, mapped block count)`.
    pub fn finish(mut self) -> (String, u64) {
        if !self.partial.is_empty() {
            let block = std::mem::take(&mut self.partial);
            self.block(self.size / BLOCK_SIZE, &block);
        }
        if let Some((first, last, h)) = self.open.take() {
            self.ranges.push((first, last, hex(&h.finalize())));
        }
        let blocks = self.size.div_ceil(BLOCK_SIZE);
        let mapped: u64 = self.ranges.iter().map(|(f, l, _)| l - f + 1).sum();
        (render(self.size, blocks, mapped, &self.ranges), mapped)
    }
}

/// bmaptool's `human_size`.
pub fn human_size(size: u64) -> String {
    if size == 1 {
        return "1 byte".into();
    }
    if size < 512 {
        return format!("{size} bytes");
    }
    let mut s = size as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB"] {
        s /= 1024.0;
        if s < 1024.0 {
            return format!("{s:.1} {unit}");
        }
    }
    format!("{s:.1} EiB")
}

/// Overwrites the start of `placeholder` with `value`, as bmaptool does when it
/// seeks back into its pre-padded fields.
fn overwrite(placeholder: &str, value: &str) -> String {
    if value.len() >= placeholder.len() {
        value.to_string()
    } else {
        format!("{value}{}", &placeholder[value.len()..])
    }
}

fn render(size: u64, blocks: u64, mapped: u64, ranges: &[(u64, u64, String)]) -> String {
    let size_human = human_size(size);
    let mapped_human = human_size(mapped * BLOCK_SIZE);
    let percent = if blocks == 0 {
        0.0
    } else {
        mapped as f64 * 100.0 / blocks as f64
    };
    let mut x = String::new();
    x.push_str(
        r#"<?xml version="1.0" ?>
<!-- This file contains the block map for an image file, which is basically
     a list of useful (mapped) block numbers in the image file. In other words,
     it lists only those blocks which contain data (boot sector, partition
     table, file-system metadata, files, directories, extents, etc). These
     blocks have to be copied to the target device. The other blocks do not
     contain any useful data and do not have to be copied to the target
     device.

     The block map an optimization which allows to copy or flash the image to
     the image quicker than copying of flashing the entire image. This is
     because with bmap less data is copied: <MappedBlocksCount> blocks instead
     of <BlocksCount> blocks.

     Besides the machine-readable data, this file contains useful commentaries
     which contain human-readable information like image size, percentage of
     mapped data, etc.

     The 'version' attribute is the block map file format version in the
     'major.minor' format. The version major number is increased whenever an
     incompatible block map format change is made. The minor number changes
     in case of minor backward-compatible changes. -->

<bmap version="2.0">
"#,
    );
    x.push_str(&format!(
        "    <!-- Image size in bytes: {size_human} -->\n    <ImageSize> {size} </ImageSize>\n\n"
    ));
    x.push_str(&format!(
        "    <!-- Size of a block in bytes -->\n    <BlockSize> {BLOCK_SIZE} </BlockSize>\n\n"
    ));
    x.push_str(&format!(
        "    <!-- Count of blocks in the image file -->\n    <BlocksCount> {blocks} </BlocksCount>\n\n"
    ));
    let placeholder = format!("{} or {}", " ".repeat(size_human.len()), " ".repeat(6));
    x.push_str(&format!(
        "    <!-- Count of mapped blocks: {}   -->\n",
        overwrite(&placeholder, &format!("{mapped_human} or {percent:.1}%"))
    ));
    x.push_str(&format!(
        "    <MappedBlocksCount> {} </MappedBlocksCount>\n\n",
        overwrite(&" ".repeat(blocks.to_string().len()), &mapped.to_string())
    ));
    x.push_str("    <!-- Type of checksum used in this file -->\n");
    x.push_str("    <ChecksumType> sha256 </ChecksumType>\n\n");
    x.push_str("    <!-- The checksum of this bmap file. When it is calculated, the value of\n");
    x.push_str("         the checksum has be zero (all ASCII \"0\" symbols).  -->\n");
    x.push_str("    <BmapFileChecksum> ");
    let checksum_at = x.len();
    x.push_str(&"0".repeat(64));
    x.push_str(" </BmapFileChecksum>\n\n");
    x.push_str("    <!-- The block map which consists of elements which may either be a\n");
    x.push_str("         range of blocks or a single block. The 'chksum' attribute\n");
    x.push_str("         (if present) is the checksum of this blocks range. -->\n");
    x.push_str("    <BlockMap>\n");
    for (first, last, sum) in ranges {
        if first == last {
            x.push_str(&format!(
                "        <Range chksum=\"{sum}\"> {first} </Range>\n"
            ));
        } else {
            x.push_str(&format!(
                "        <Range chksum=\"{sum}\"> {first}-{last} </Range>\n"
            ));
        }
    }
    x.push_str("    </BlockMap>\n</bmap>\n");
    let sum = hex(&Sha256::digest(x.as_bytes()));
    x.replace_range(checksum_at..checksum_at + 64, &sum);
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    /// A sparse synthetic image: data in blocks 0, 2-4 (with a zero block written
    /// explicitly at 3? no: only non-zero blocks are written), 10, and a partial
    /// last block.
    fn synthetic() -> (Vec<u8>, Vec<(u64, u64)>) {
        let bs = BLOCK_SIZE as usize;
        let mut img = vec![0u8; 12 * bs + 512];
        img[0] = 1;
        for b in 2..=4 {
            img[b * bs + 100] = b as u8;
        }
        img[10 * bs + bs - 1] = 0xff;
        img[12 * bs + 7] = 9;
        (img, vec![(0, 0), (2, 4), (10, 10), (12, 12)])
    }

    fn ranges_of(xml: &str) -> Vec<(u64, u64, String)> {
        xml.lines()
            .filter_map(|l| {
                let l = l.trim();
                let rest = l.strip_prefix("<Range chksum=\"")?;
                let (sum, rest) = rest.split_once("\"> ")?;
                let span = rest.strip_suffix(" </Range>")?;
                let (a, b) = span.split_once('-').unwrap_or((span, span));
                Some((a.parse().ok()?, b.parse().ok()?, sum.to_string()))
            })
            .collect()
    }

    #[test]
    fn ranges_checksums_and_file_checksum() {
        let (img, expect) = synthetic();
        // Feed in awkward chunk sizes: the result must not depend on them.
        let mut a = BmapBuilder::new();
        for chunk in img.chunks(1000) {
            a.update(chunk);
        }
        let (xml, mapped) = a.finish();
        let mut b = BmapBuilder::new();
        b.update(&img);
        assert_eq!(b.finish().0, xml);
        assert_eq!(mapped, 1 + 3 + 1 + 1);

        let ranges = ranges_of(&xml);
        let got: Vec<(u64, u64)> = ranges.iter().map(|(a, b, _)| (*a, *b)).collect();
        assert_eq!(got, expect);
        for (first, last, sum) in &ranges {
            let start = (*first * BLOCK_SIZE) as usize;
            let end = (((*last + 1) * BLOCK_SIZE) as usize).min(img.len());
            assert_eq!(*sum, hex(&Sha256::digest(&img[start..end])));
        }
        assert!(xml.contains(&format!("<ImageSize> {} </ImageSize>", img.len())));
        assert!(xml.contains("<BlocksCount> 13 </BlocksCount>"));
        assert!(xml.contains("<MappedBlocksCount> 6  </MappedBlocksCount>"));

        // BmapFileChecksum: sha256 of the file with the field zeroed.
        let line = xml
            .lines()
            .find(|l| l.contains("<BmapFileChecksum>"))
            .unwrap();
        let sum = line.split_whitespace().nth(1).unwrap();
        let zeroed = xml.replacen(sum, &"0".repeat(64), 1);
        assert_eq!(sum, hex(&Sha256::digest(zeroed.as_bytes())));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(1), "1 byte");
        assert_eq!(human_size(100), "100 bytes");
        assert_eq!(human_size(774_897_664), "739.0 MiB");
    }

    /// Byte-for-byte against `bmaptool create` on the same sparse file, and
    /// `bmaptool copy` accepting our bmap, when bmaptool is installed.
    #[test]
    fn matches_bmaptool_when_available() {
        let (img, _) = synthetic();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(img.len() as u64).unwrap();
        for (i, block) in img.chunks(BLOCK_SIZE as usize).enumerate() {
            if block.iter().any(|&b| b != 0) {
                f.seek(SeekFrom::Start(i as u64 * BLOCK_SIZE)).unwrap();
                f.write_all(block).unwrap();
            }
        }
        f.sync_all().unwrap();
        drop(f);
        let mut b = BmapBuilder::new();
        b.update(&img);
        let (ours, _) = b.finish();
        bramble_testkit::skip_unless!(
            bramble_testkit::find_program("bmaptool").is_some(),
            "bmaptool (Debian's bmap-tools) is not installed: nothing to compare with"
        );
        let out = std::process::Command::new("bmaptool")
            .arg("create")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bmaptool create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = String::from_utf8(out.stdout).unwrap();
        bramble_testkit::skip_unless!(
            ranges_of(&theirs).len() != 1,
            "the file system under {} does not report holes to bmaptool",
            dir.path().display()
        );
        assert_eq!(ours, theirs);

        let bmap = dir.path().join("img.bmap");
        std::fs::write(&bmap, &ours).unwrap();
        let dest = dir.path().join("copy");
        let st = std::process::Command::new("bmaptool")
            .arg("-q")
            .arg("copy")
            .arg("--bmap")
            .arg(&bmap)
            .arg(&path)
            .arg(&dest)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read(&dest).unwrap(), img);
    }
}
