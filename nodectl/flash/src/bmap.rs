//! Reading bmaptool block maps (format 2.x, sha256), as `image/src/bmap.rs`
//! and `bmaptool create` write them.
//!
//! The file is parsed as XML (`roxmltree`: well-formedness, comments, entities
//! and CDATA are the parser's business; a DTD is refused); its structure is
//! then checked element by element, and anything unexpected is an error that
//! names it. `BmapFileChecksum` is checked: the sha256 of the whole file with
//! that field's value replaced by 64 ASCII zeros.

use roxmltree::{Document, Node};
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

/// The one child element `<name>` of `parent`.
fn child<'a, 'i>(parent: Node<'a, 'i>, name: &str) -> Result<Node<'a, 'i>, String> {
    let mut found = parent
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == name);
    let first = found.next().ok_or_else(|| format!("no <{name}> element"))?;
    if found.next().is_some() {
        return Err(format!("more than one <{name}> element"));
    }
    Ok(first)
}

/// The text of an element that holds only text (comments aside), trimmed.
fn value(node: Node<'_, '_>) -> Result<String, String> {
    let name = node.tag_name().name();
    let mut text = String::new();
    for c in node.children() {
        if c.is_element() {
            return Err(format!(
                "<{name}> holds a <{}> element, not a value",
                c.tag_name().name()
            ));
        }
        if c.is_text() {
            text.push_str(c.text().unwrap_or_default());
        }
    }
    Ok(text.trim().to_owned())
}

fn number(parent: Node<'_, '_>, name: &str) -> Result<u64, String> {
    let v = value(child(parent, name)?)?;
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

/// Where `<BmapFileChecksum>`'s value is in the file's bytes: it must be
/// written as it is (one text node, no entity or CDATA), since the checksum
/// is over the file with exactly those bytes zeroed.
fn checksum_span(
    text: &str,
    node: Node<'_, '_>,
    sum: &str,
) -> Result<std::ops::Range<usize>, String> {
    let mut texts = node.children().filter(|c| c.is_text());
    let span = texts
        .next()
        .map(|t| t.range())
        .filter(|_| texts.next().is_none())
        .and_then(|r| {
            let raw = text.get(r.clone())?;
            let at = raw.find(sum)?;
            (raw.trim() == sum).then_some(r.start + at..r.start + at + sum.len())
        });
    span.ok_or_else(|| "<BmapFileChecksum> is not written as plain hex text".to_owned())
}

/// Parses and checks a block map; the error says what is wrong.
pub fn parse(text: &str) -> Result<Bmap, String> {
    let doc = Document::parse(text).map_err(|e| format!("not a well-formed XML file: {e}"))?;
    let root = doc.root_element();
    let version = root
        .has_tag_name("bmap")
        .then(|| root.attribute("version"))
        .flatten()
        .ok_or("no <bmap version=\"...\"> element: not a bmaptool block map")?;
    if !version.starts_with("2.") {
        return Err(format!(
            "format version {version} is not supported (only 2.x, with sha256 checksums)"
        ));
    }
    let checksum_type = value(child(root, "ChecksumType")?)?;
    if checksum_type != "sha256" {
        return Err(format!(
            "checksum type {checksum_type:?} is not supported (only sha256)"
        ));
    }
    let sum_node = child(root, "BmapFileChecksum")?;
    let file_sum = value(sum_node)?;
    if parse_hex32(&file_sum).is_none() {
        return Err(format!(
            "<BmapFileChecksum> {file_sum:?} is not a sha256 in hex"
        ));
    }
    let span = checksum_span(text, sum_node, &file_sum)?;
    let mut zeroed = text.to_owned();
    zeroed.replace_range(span, &"0".repeat(64));
    let actual = hex(&Sha256::digest(zeroed.as_bytes()));
    if actual != file_sum.to_ascii_lowercase() {
        return Err(format!(
            "the file's own checksum does not match (BmapFileChecksum {file_sum}, computed {actual}): \
             the block map is corrupted or was edited"
        ));
    }

    let image_size = number(root, "ImageSize")?;
    let block_size = number(root, "BlockSize")?;
    let blocks_count = number(root, "BlocksCount")?;
    let mapped_count = number(root, "MappedBlocksCount")?;
    if block_size == 0 || block_size % 512 != 0 {
        return Err(format!("block size {block_size} is not a multiple of 512"));
    }
    if image_size.div_ceil(block_size) != blocks_count {
        return Err(format!(
            "{blocks_count} blocks of {block_size} bytes do not make an image of {image_size} bytes"
        ));
    }

    let map = child(root, "BlockMap")?;
    let mut ranges: Vec<Range> = Vec::new();
    for node in map.children().filter(Node::is_element) {
        if !node.has_tag_name("Range") {
            return Err(format!(
                "<BlockMap> holds a <{}> element: only <Range> belongs there",
                node.tag_name().name()
            ));
        }
        let body = value(node)?;
        let sum = node
            .attribute("chksum")
            .ok_or_else(|| format!("range {body:?} has no chksum attribute"))?;
        let sha256 = parse_hex32(sum)
            .ok_or_else(|| format!("range {body:?}: chksum {sum:?} is not a sha256"))?;
        let (a, b) = body.split_once('-').unwrap_or((&body, &body));
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

    /// `xml` with its `BmapFileChecksum` computed again, as the writer does
    /// (unchanged without one).
    fn resign(xml: &str) -> String {
        let open = "<BmapFileChecksum> ";
        let mut x = xml.to_owned();
        let Some(at) = xml.find(open).map(|at| at + open.len()) else {
            return x;
        };
        x.replace_range(at..at + 64, &"0".repeat(64));
        let sum = hex(&Sha256::digest(x.as_bytes()));
        x.replace_range(at..at + 64, &sum);
        x
    }

    /// The error for `sample()` edited by `edit` (and signed again).
    fn error_of(edit: impl Fn(&str) -> String) -> String {
        let (_, xml) = sample();
        let edited = edit(&xml);
        assert_ne!(edited, xml, "the edit changed nothing");
        parse(&resign(&edited)).unwrap_err()
    }

    #[test]
    fn a_signed_again_sample_still_parses() {
        let (_, xml) = sample();
        assert_eq!(resign(&xml), xml);
        // Comments anywhere are not content: a range commented out is not
        // a range.
        let r = xml.find("<Range").unwrap();
        let mut x = xml.clone();
        x.insert_str(r, "<!-- <Range chksum=\"x\"> 1 </Range> -->");
        x = x.replace("<ImageSize> ", "<ImageSize> <!-- bytes --> ");
        let b = parse(&resign(&x)).unwrap();
        assert_eq!(b, parse(&xml).unwrap());
    }

    #[test]
    fn malformed_xml_is_named() {
        let (_, xml) = sample();
        let err = parse(&xml[..xml.len() / 2]).unwrap_err();
        assert!(err.starts_with("not a well-formed XML file"), "{err}");
        let err = parse("hello").unwrap_err();
        assert!(err.starts_with("not a well-formed XML file"), "{err}");
        let err = parse("<?xml version=\"1.0\" ?><svg version=\"2.0\"/>").unwrap_err();
        assert!(err.contains("not a bmaptool block map"), "{err}");
        // No DTD, so no entity expansion.
        let err = error_of(|x| {
            x.replace(
                "<bmap version",
                "<!DOCTYPE bmap [<!ENTITY n \"4096\">]>\n<bmap version",
            )
        });
        assert!(err.starts_with("not a well-formed XML file"), "{err}");
    }

    #[test]
    fn a_missing_or_doubled_element_is_named() {
        for name in [
            "ImageSize",
            "BlockSize",
            "BlocksCount",
            "MappedBlocksCount",
            "ChecksumType",
        ] {
            let err = error_of(|x| {
                // The last: the sample's first comment names some of them.
                let start = x.rfind(&format!("<{name}>")).unwrap();
                let close = format!("</{name}>");
                let end = x.find(&close).unwrap() + close.len();
                format!("{}{}", &x[..start], &x[end..])
            });
            assert_eq!(err, format!("no <{name}> element"));
            let err =
                error_of(|x| x.replace("<BlockMap>", &format!("<{name}> 1 </{name}>\n<BlockMap>")));
            assert_eq!(err, format!("more than one <{name}> element"));
        }
        let err = error_of(|x| {
            let start = x.find("<BlockMap>").unwrap();
            let end = x.find("</BlockMap>").unwrap() + "</BlockMap>".len();
            format!("{}{}", &x[..start], &x[end..])
        });
        assert_eq!(err, "no <BlockMap> element");
        let err = error_of(|x| {
            x.replace("<BmapFileChecksum>", "<Checksum>")
                .replace("</BmapFileChecksum>", "</Checksum>")
        });
        assert_eq!(err, "no <BmapFileChecksum> element");
    }

    #[test]
    fn a_bad_checksum_type_or_file_checksum_is_named() {
        let err = error_of(|x| x.replace("<ChecksumType> sha256 <", "<ChecksumType> sha1 <"));
        assert_eq!(err, "checksum type \"sha1\" is not supported (only sha256)");
        let err = error_of(|x| x.replace("<ChecksumType> sha256 <", "<ChecksumType> <sha256/> <"));
        assert_eq!(err, "<ChecksumType> holds a <sha256> element, not a value");
        let (_, xml) = sample();
        let at = xml.find("<BmapFileChecksum> ").unwrap() + 19;
        let short = format!("{}{}", &xml[..at], &xml[at + 1..]);
        assert!(
            parse(&short)
                .unwrap_err()
                .contains("is not a sha256 in hex")
        );
        // The checksum must be where the writer puts it, plain: hidden in
        // CDATA it cannot be zeroed in place.
        let sum = &xml[at..at + 64];
        let cdata = xml.replace(sum, &format!("<![CDATA[{sum}]]>"));
        assert_eq!(
            parse(&cdata).unwrap_err(),
            "<BmapFileChecksum> is not written as plain hex text"
        );
    }

    #[test]
    fn numbers_and_ranges_are_checked() {
        let err = error_of(|x| x.replace("<ImageSize> ", "<ImageSize> 0x"));
        assert!(err.starts_with("<ImageSize> \"0x"), "{err}");
        assert!(err.ends_with("is not a whole number"), "{err}");
        let err = error_of(|x| x.replace("<BlockSize> 4096 <", "<BlockSize> -4096 <"));
        assert_eq!(err, "<BlockSize> \"-4096\" is not a whole number");
        let err = error_of(|x| x.replace("<BlockSize> 4096 <", "<BlockSize> 4000 <"));
        assert_eq!(err, "block size 4000 is not a multiple of 512");
        let err = error_of(|x| x.replace("<BlocksCount> 3 <", "<BlocksCount> 4 <"));
        assert!(err.contains("do not make an image of"), "{err}");
        let err = error_of(|x| x.replace("\"> 2 </Range>", "\"> two </Range>"));
        assert_eq!(err, "range \"two\" is not N or N-M");
        let err = error_of(|x| x.replace("\"> 2 </Range>", "\"> 2-1 </Range>"));
        assert_eq!(err, "range \"2-1\" ends before it starts");
        // A range beyond the image's blocks.
        let err = error_of(|x| x.replace("\"> 2 </Range>", "\"> 2-3 </Range>"));
        assert_eq!(err, "range \"2-3\" goes past the image's 3 blocks");
        let err = error_of(|x| x.replace("\"> 2 </Range>", "\"> 0 </Range>"));
        assert!(err.contains("overlaps or precedes"), "{err}");
        let err = error_of(|x| x.replace("<MappedBlocksCount> 2 <", "<MappedBlocksCount> 3 <"));
        assert_eq!(
            err,
            "the ranges hold 2 blocks but <MappedBlocksCount> says 3"
        );
        let err = error_of(|x| x.replacen("<Range chksum=", "<Range sum=", 1));
        assert_eq!(err, "range \"0\" has no chksum attribute");
        let err = error_of(|x| x.replacen("<Range chksum=\"", "<Range chksum=\"g", 1));
        assert!(err.contains("is not a sha256"), "{err}");
        let err = error_of(|x| x.replace("</BlockMap>", "<Hole> 1 </Hole></BlockMap>"));
        assert_eq!(
            err,
            "<BlockMap> holds a <Hole> element: only <Range> belongs there"
        );
    }
}
