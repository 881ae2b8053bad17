//! Reading bmaptool block maps (format 2.x, sha256), as `image/src/bmap.rs`
//! and `bmaptool create` write them.
//!
//! The format is small and fixed, so it is read by looking for its elements
//! rather than with a general XML parser; anything unexpected is an error that
//! names it. `BmapFileChecksum` is checked: the sha256 of the whole file with
//! that field's value replaced by 64 ASCII zeros.

use sha2::{Digest, Sha256};

/// One run of mapped blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// First block.
    pub first: u64,
    /// Last block (inclusive).
    pub last: u64,
    /// sha256 of the range's bytes (the last block cut at the image's end).
    pub sha256: [u8; 32],
}

/// A parsed, checked block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    /// Size of the raw image in bytes.
    pub image_size: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// Blocks in the image.
    pub blocks_count: u64,
    /// Mapped ranges, in order, not overlapping.
    pub ranges: Vec<Range>,
}

impl Bmap {
    /// Byte range `[start, end)` of `range` in the image.
    pub fn bytes(&self, range: &Range) -> (u64, u64) {
        let start = range.first * self.block_size;
        let end = ((range.last + 1) * self.block_size).min(self.image_size);
        (start, end)
    }

    /// Bytes of mapped data.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| {
                let (a, b) = self.bytes(r);
                b - a
            })
            .sum()
    }
}

/// The text between `<name>` and `</name>`, trimmed.
fn element<'a>(text: &'a str, name: &str) -> Result<&'a str, String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text
        .find(&open)
        .ok_or_else(|| format!("no <{name}> element"))?
        + open.len();
    let len = text[start..]
        .find(&close)
        .ok_or_else(|| format!("<{name}> is not closed"))?;
    Ok(text[start..start + len].trim())
}

fn number(text: &str, name: &str) -> Result<u64, String> {
    let v = element(text, name)?;
    v.parse()
        .map_err(|_| format!("<{name}> {v:?} is not a whole number"))
}

pub(crate) fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The text without its `<!-- ... -->` comments.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("<!--") {
        out.push_str(&rest[..at]);
        match rest[at..].find("-->") {
            Some(end) => rest = &rest[at + end + 3..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parses and checks a block map; the error says what is wrong.
pub fn parse(text: &str) -> Result<Bmap, String> {
    let stripped = strip_comments(text);
    let version = stripped
        .find("<bmap version=\"")
        .map(|i| &stripped[i + 15..])
        .and_then(|rest| rest.split('"').next())
        .ok_or("no <bmap version=\"...\"> element: not a bmaptool block map")?;
    if !version.starts_with("2.") {
        return Err(format!(
            "format version {version} is not supported (only 2.x, with sha256 checksums)"
        ));
    }
    let checksum_type = element(&stripped, "ChecksumType")?;
    if checksum_type != "sha256" {
        return Err(format!(
            "checksum type {checksum_type:?} is not supported (only sha256)"
        ));
    }
    let file_sum = element(&stripped, "BmapFileChecksum")?;
    if parse_hex32(file_sum).is_none() {
        return Err(format!(
            "<BmapFileChecksum> {file_sum:?} is not a sha256 in hex"
        ));
    }
    let zeroed = text.replacen(file_sum, &"0".repeat(64), 1);
    let actual = hex(&Sha256::digest(zeroed.as_bytes()));
    if actual != file_sum.to_ascii_lowercase() {
        return Err(format!(
            "the file's own checksum does not match (BmapFileChecksum {file_sum}, computed {actual}): \
             the block map is corrupted or was edited"
        ));
    }

    let text = &stripped;
    let image_size = number(text, "ImageSize")?;
    let block_size = number(text, "BlockSize")?;
    let blocks_count = number(text, "BlocksCount")?;
    let mapped_count = number(text, "MappedBlocksCount")?;
    if block_size == 0 || block_size % 512 != 0 {
        return Err(format!("block size {block_size} is not a multiple of 512"));
    }
    if image_size.div_ceil(block_size) != blocks_count {
        return Err(format!(
            "{blocks_count} blocks of {block_size} bytes do not make an image of {image_size} bytes"
        ));
    }

    let map = element(text, "BlockMap")?;
    let mut ranges: Vec<Range> = Vec::new();
    let mut rest = map;
    while let Some(at) = rest.find("<Range") {
        let after = &rest[at..];
        let open_end = after.find('>').ok_or("unterminated <Range> tag")?;
        let tag = &after[..open_end];
        let body_len = after[open_end + 1..]
            .find("</Range>")
            .ok_or("<Range> is not closed")?;
        let body = after[open_end + 1..open_end + 1 + body_len].trim();
        rest = &after[open_end + 1 + body_len + "</Range>".len()..];

        let sum = tag
            .split("chksum=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .ok_or_else(|| format!("range {body:?} has no chksum attribute"))?;
        let sha256 = parse_hex32(sum)
            .ok_or_else(|| format!("range {body:?}: chksum {sum:?} is not a sha256"))?;
        let (a, b) = body.split_once('-').unwrap_or((body, body));
        let parse_block = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("range {body:?} is not N or N-M"))
        };
        let (first, last) = (parse_block(a)?, parse_block(b)?);
        if last < first {
            return Err(format!("range {body:?} ends before it starts"));
        }
        if last >= blocks_count {
            return Err(format!(
                "range {body:?} goes past the image's {blocks_count} blocks"
            ));
        }
        if let Some(prev) = ranges.last()
            && first <= prev.last
        {
            return Err(format!(
                "range {body:?} overlaps or precedes the range ending at block {}",
                prev.last
            ));
        }
        ranges.push(Range {
            first,
            last,
            sha256,
        });
    }
    let mapped: u64 = ranges.iter().map(|r| r.last - r.first + 1).sum();
    if mapped != mapped_count {
        return Err(format!(
            "the ranges hold {mapped} blocks but <MappedBlocksCount> says {mapped_count}"
        ));
    }
    Ok(Bmap {
        image_size,
        block_size,
        blocks_count,
        ranges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block map as `image/src/bmap.rs` writes it, for a 3-block image with
    /// data in blocks 0 and 2 (the last one partial).
    pub(crate) fn sample() -> (Vec<u8>, String) {
        let mut img = vec![0u8; 2 * 4096 + 100];
        img[5] = 1;
        img[2 * 4096 + 50] = 2;
        let r0 = hex(&Sha256::digest(&img[..4096]));
        let r2 = hex(&Sha256::digest(&img[2 * 4096..]));
        let mut xml = format!(
            "<?xml version=\"1.0\" ?>\n<!-- <MappedBlocksCount> blocks instead of <BlocksCount> blocks -->\n<bmap version=\"2.0\">\n    <ImageSize> {} </ImageSize>\n    \
             <BlockSize> 4096 </BlockSize>\n    <BlocksCount> 3 </BlocksCount>\n    \
             <MappedBlocksCount> 2 </MappedBlocksCount>\n    <ChecksumType> sha256 </ChecksumType>\n    \
             <BmapFileChecksum> {} </BmapFileChecksum>\n    <BlockMap>\n        \
             <Range chksum=\"{r0}\"> 0 </Range>\n        <Range chksum=\"{r2}\"> 2 </Range>\n    \
             </BlockMap>\n</bmap>\n",
            img.len(),
            "0".repeat(64)
        );
        let sum = hex(&Sha256::digest(xml.as_bytes()));
        xml = xml.replacen(&"0".repeat(64), &sum, 1);
        (img, xml)
    }

    #[test]
    fn parses_and_checks() {
        let (img, xml) = sample();
        let b = parse(&xml).unwrap();
        assert_eq!(b.image_size, img.len() as u64);
        assert_eq!(b.ranges.len(), 2);
        assert_eq!((b.ranges[1].first, b.ranges[1].last), (2, 2));
        assert_eq!(b.bytes(&b.ranges[1]), (8192, img.len() as u64));
        assert_eq!(b.mapped_bytes(), 4096 + 100);
    }

    #[test]
    fn refuses_edited_or_foreign_maps() {
        let (_, xml) = sample();
        let edited = xml.replace("<Range chksum", "<Range  chksum");
        assert!(parse(&edited).unwrap_err().contains("own checksum"));
        let old = xml.replace("version=\"2.0\"", "version=\"1.4\"");
        assert!(parse(&old).unwrap_err().contains("1.4"));
        assert!(parse("hello").is_err());
    }
}
