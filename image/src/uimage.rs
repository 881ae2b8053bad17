//! U-Boot legacy images (`mkimage -T script`): the `boot.scr` U-Boot's distro boot
//! runs. Made here so the build needs no `u-boot-tools`.
//!
//! Layout: a 64-byte big-endian header (magic `0x27051956`, header CRC32, time,
//! data size, load address, entry point, data CRC32, OS, architecture, image type,
//! compression, 32-byte name), then for a script the multi-file payload: each
//! file's length as a 4-byte big-endian word, a zero word ending the list, then the
//! script itself.

use std::io;

/// `IH_MAGIC`.
pub const MAGIC: u32 = 0x2705_1956;
/// Header length.
pub const HEADER_LEN: usize = 64;
/// `IH_OS_LINUX`.
pub const OS_LINUX: u8 = 5;
/// `IH_ARCH_ARM64`.
pub const ARCH_ARM64: u8 = 22;
/// `IH_TYPE_SCRIPT`.
pub const TYPE_SCRIPT: u8 = 6;
/// `IH_COMP_NONE`.
pub const COMP_NONE: u8 = 0;

/// A decoded legacy image header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `ih_magic`.
    pub magic: u32,
    /// `ih_hcrc`: CRC32 of the header with this field zeroed.
    pub header_crc: u32,
    /// `ih_time`: creation time (SOURCE_DATE_EPOCH).
    pub time: u32,
    /// `ih_size`: payload length.
    pub size: u32,
    /// `ih_load`.
    pub load: u32,
    /// `ih_ep`.
    pub entry: u32,
    /// `ih_dcrc`: CRC32 of the payload.
    pub data_crc: u32,
    /// `ih_os`.
    pub os: u8,
    /// `ih_arch`.
    pub arch: u8,
    /// `ih_type`.
    pub kind: u8,
    /// `ih_comp`.
    pub comp: u8,
    /// `ih_name`, NUL-padded.
    pub name: [u8; 32],
}

impl Header {
    /// The name up to its first NUL.
    pub fn name_str(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(32);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&self.magic.to_be_bytes());
        h[4..8].copy_from_slice(&self.header_crc.to_be_bytes());
        h[8..12].copy_from_slice(&self.time.to_be_bytes());
        h[12..16].copy_from_slice(&self.size.to_be_bytes());
        h[16..20].copy_from_slice(&self.load.to_be_bytes());
        h[20..24].copy_from_slice(&self.entry.to_be_bytes());
        h[24..28].copy_from_slice(&self.data_crc.to_be_bytes());
        h[28] = self.os;
        h[29] = self.arch;
        h[30] = self.kind;
        h[31] = self.comp;
        h[32..64].copy_from_slice(&self.name);
        h
    }
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Builds a script image of `script` with header time `time`, like
/// `mkimage -A arm64 -O linux -T script -C none -n NAME -d FILE`.
pub fn script_image(script: &[u8], name: &str, time: u32) -> io::Result<Vec<u8>> {
    if name.len() > 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("image name {name:?} is longer than 32 bytes"),
        ));
    }
    let len = u32::try_from(script.len())
        .ok()
        .filter(|&l| l < u32::MAX - 8)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "script too large"))?;
    let mut payload = Vec::with_capacity(script.len() + 8);
    payload.extend_from_slice(&len.to_be_bytes());
    payload.extend_from_slice(&[0u8; 4]);
    payload.extend_from_slice(script);
    let mut name_field = [0u8; 32];
    name_field[..name.len()].copy_from_slice(name.as_bytes());
    let mut header = Header {
        magic: MAGIC,
        header_crc: 0,
        time,
        size: len + 8,
        load: 0,
        entry: 0,
        data_crc: crc32fast::hash(&payload),
        os: OS_LINUX,
        arch: ARCH_ARM64,
        kind: TYPE_SCRIPT,
        comp: COMP_NONE,
        name: name_field,
    };
    header.header_crc = crc32fast::hash(&header.encode());
    let mut out = header.encode().to_vec();
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Parses and checks a legacy image: magic, both CRCs and the payload length.
/// Returns the header and the payload.
pub fn parse(image: &[u8]) -> io::Result<(Header, &[u8])> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    if image.len() < HEADER_LEN {
        return Err(bad(format!(
            "{} bytes is too short for a header",
            image.len()
        )));
    }
    let h = &image[..HEADER_LEN];
    let mut name = [0u8; 32];
    name.copy_from_slice(&h[32..64]);
    let header = Header {
        magic: be32(h, 0),
        header_crc: be32(h, 4),
        time: be32(h, 8),
        size: be32(h, 12),
        load: be32(h, 16),
        entry: be32(h, 20),
        data_crc: be32(h, 24),
        os: h[28],
        arch: h[29],
        kind: h[30],
        comp: h[31],
        name,
    };
    if header.magic != MAGIC {
        return Err(bad(format!("bad magic {:#010x}", header.magic)));
    }
    let mut zeroed = header;
    zeroed.header_crc = 0;
    let hcrc = crc32fast::hash(&zeroed.encode());
    if hcrc != header.header_crc {
        return Err(bad(format!(
            "header CRC {:#010x} does not match computed {hcrc:#010x}",
            header.header_crc
        )));
    }
    let payload = image
        .get(HEADER_LEN..HEADER_LEN + header.size as usize)
        .ok_or_else(|| bad(format!("payload of {} bytes is truncated", header.size)))?;
    let dcrc = crc32fast::hash(payload);
    if dcrc != header.data_crc {
        return Err(bad(format!(
            "data CRC {:#010x} does not match computed {dcrc:#010x}",
            header.data_crc
        )));
    }
    Ok((header, payload))
}

/// The script inside a script image's payload (after the length list).
pub fn script_of(payload: &[u8]) -> io::Result<&[u8]> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    if payload.len() < 8 {
        return Err(bad("script payload too short"));
    }
    let len = be32(payload, 0) as usize;
    if be32(payload, 4) != 0 {
        return Err(bad("script payload has more than one file"));
    }
    payload
        .get(8..8 + len)
        .ok_or_else(|| bad("script payload shorter than its length word"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &[u8] = b"echo hello\nboot\n";

    #[test]
    fn header_fields_and_crcs() {
        let img = script_image(SCRIPT, "Bramble boot script", 1_700_000_000).unwrap();
        assert_eq!(img.len(), 64 + 8 + SCRIPT.len());
        assert_eq!(&img[0..4], &[0x27, 0x05, 0x19, 0x56]);
        assert_eq!(be32(&img, 8), 1_700_000_000);
        assert_eq!(be32(&img, 12) as usize, 8 + SCRIPT.len());
        assert_eq!(be32(&img, 16), 0);
        assert_eq!(be32(&img, 20), 0);
        assert_eq!(&img[28..32], &[5, 22, 6, 0]);
        assert_eq!(&img[32..51], b"Bramble boot script");
        assert!(img[51..64].iter().all(|&b| b == 0));
        // Payload: length word, end-of-list word, script.
        assert_eq!(be32(&img, 64) as usize, SCRIPT.len());
        assert_eq!(be32(&img, 68), 0);
        assert_eq!(&img[72..], SCRIPT);
        // CRCs computed independently of the encoder.
        assert_eq!(be32(&img, 24), crc32fast::hash(&img[64..]));
        let mut h = img[..64].to_vec();
        h[4..8].fill(0);
        assert_eq!(be32(&img, 4), crc32fast::hash(&h));

        let (header, payload) = parse(&img).unwrap();
        assert_eq!(header.name_str(), "Bramble boot script");
        assert_eq!(script_of(payload).unwrap(), SCRIPT);
    }

    #[test]
    fn corruption_is_detected() {
        let img = script_image(SCRIPT, "x", 0).unwrap();
        let mut bad = img.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(parse(&bad).unwrap_err().to_string().contains("data CRC"));
        let mut bad = img.clone();
        bad[10] ^= 1;
        assert!(parse(&bad).unwrap_err().to_string().contains("header CRC"));
        assert!(script_image(SCRIPT, &"n".repeat(33), 0).is_err());
    }

    /// Byte-for-byte against U-Boot's own `mkimage`, when it is installed.
    #[test]
    fn matches_mkimage_when_available() {
        bramble_testkit::skip_unless!(
            bramble_testkit::find_program("mkimage").is_some(),
            "mkimage (Debian's u-boot-tools) is not installed: nothing to compare with"
        );
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("boot.cmd");
        let out = dir.path().join("boot.scr");
        let script = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../boot/boot.cmd"))
            .unwrap_or_else(|_| SCRIPT.to_vec());
        std::fs::write(&src, &script).unwrap();
        let status = std::process::Command::new("mkimage")
            .args(["-A", "arm64", "-O", "linux", "-T", "script", "-C", "none"])
            .args(["-n", "Bramble boot script", "-d"])
            .arg(&src)
            .arg(&out)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .stdout(std::process::Stdio::null())
            .status();
        assert!(status.unwrap().success(), "mkimage failed");
        let theirs = std::fs::read(&out).unwrap();
        let ours = script_image(&script, "Bramble boot script", 1_700_000_000).unwrap();
        assert_eq!(ours, theirs, "boot.scr differs from mkimage's");
    }
}
