//! Empty ext4 file systems for `STATE` and `DATA`, made by e2fsprogs' `mke2fs` on a
//! plain file (no root, no loop device).
//!
//! Reproducible: `E2FSPROGS_FAKE_TIME` pins every timestamp (superblock, root and
//! `lost+found` inodes) to SOURCE_DATE_EPOCH; the file system UUID (`-U`) and the
//! directory hash seed (`-E hash_seed=`) are derived from the build's inputs;
//! `root_owner=0:0` stops the caller's uid leaking in; and the feature set comes
//! from a `mke2fs.conf` written here (via `MKE2FS_CONFIG`) so the host's
//! `/etc/mke2fs.conf` does not matter. What remains host-dependent is the
//! e2fsprogs version itself (tested with 1.47.0).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Our `mke2fs.conf`: 4 KiB blocks (so `DATA` can later grow to a whole card),
/// the bookworm ext4 feature set, no periodic fsck.
const MKE2FS_CONF: &str = "\
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
";

/// A UUID in text form from 16 bytes (RFC 4122 version-4/variant bits set).
pub fn uuid_from(bytes: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::lock::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parameters of one file system.
#[derive(Debug, Clone)]
pub struct Ext4Spec<'a> {
    /// Volume label (`STATE`, `DATA`).
    pub label: &'a str,
    /// Size in bytes (a multiple of 4096).
    pub size: u64,
    /// File system UUID.
    pub uuid: String,
    /// Directory hash seed (a UUID).
    pub hash_seed: String,
    /// SOURCE_DATE_EPOCH.
    pub time: u64,
}

/// Makes an empty ext4 file system in a new file at `image`; `scratch` is a
/// directory for the config file. Returns the image bytes.
pub fn make(image: &Path, scratch: &Path, spec: &Ext4Spec<'_>) -> Result<Vec<u8>> {
    let conf = scratch.join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).map_err(Error::io(&conf))?;
    let f = std::fs::File::create(image).map_err(Error::io(image))?;
    f.set_len(spec.size).map_err(Error::io(image))?;
    drop(f);
    let mut cmd = Command::new("mke2fs");
    cmd.args([
        "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-L", spec.label,
    ])
    .arg("-U")
    .arg(&spec.uuid)
    .arg("-E")
    .arg(format!(
        "hash_seed={},root_owner=0:0,nodiscard",
        spec.hash_seed
    ))
    .arg(image)
    .env("MKE2FS_CONFIG", &conf)
    .env("E2FSPROGS_FAKE_TIME", spec.time.to_string())
    .env("LC_ALL", "C")
    .env_remove("MKE2FS_SYNC")
    .env_remove("MKE2FS_FIRST_META_BG")
    .env_remove("MKE2FS_DEVICE_SECTSIZE")
    .env_remove("MKE2FS_DEVICE_PHYS_SECTSIZE")
    .stdin(Stdio::null());
    tracing::debug!(?cmd, "running mke2fs");
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Mke2fs(
                "`mke2fs` not found in PATH: install e2fsprogs (`apt-get install e2fsprogs`)"
                    .into(),
            )
        } else {
            Error::Mke2fs(format!("cannot run mke2fs: {e}"))
        }
    })?;
    if !out.status.success() {
        return Err(Error::Mke2fs(format!(
            "making `{}` failed ({}): {}{}",
            spec.label,
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let data = std::fs::read(image).map_err(Error::io(image))?;
    let sb = bramble_disk::ext4::read(&mut std::io::Cursor::new(&data), 0)
        .map_err(|e| Error::Mke2fs(format!("`{}`: reading back: {e}", spec.label)))?;
    if sb.label != spec.label || sb.size_bytes() != spec.size {
        return Err(Error::Mke2fs(format!(
            "`{}`: made {} blocks of {} bytes labelled {:?}, expected {} bytes labelled {:?}",
            spec.label, sb.blocks, sb.block_size, sb.label, spec.size, spec.label
        )));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_format() {
        let u = uuid_from(&[0xffu8; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }

    /// mke2fs output is byte-identical across runs (when mke2fs is installed).
    #[test]
    fn reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Ext4Spec {
            label: "STATE",
            size: 32 << 20,
            uuid: uuid_from(&[1u8; 16]),
            hash_seed: uuid_from(&[2u8; 16]),
            time: 1_700_000_000,
        };
        bramble_testkit::skip_unless!(
            bramble_testkit::find_program("mke2fs").is_some(),
            "mke2fs (Debian's e2fsprogs) is not installed"
        );
        let a = make(&dir.path().join("a.img"), dir.path(), &spec).unwrap();
        // The second run starts in a wall-clock second the first never saw:
        // nothing of the clock may reach the file system.
        let second = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        let first = second();
        bramble_testkit::wait_for(
            "the wall clock's second to change",
            std::time::Duration::from_secs(3),
            || (second() != first).then_some(()),
        );
        let b = make(&dir.path().join("b.img"), dir.path(), &spec).unwrap();
        assert!(a == b, "mke2fs output differs between runs");
        let sb = bramble_disk::ext4::read(&mut std::io::Cursor::new(&a), 0).unwrap();
        assert_eq!(
            (sb.blocks, sb.block_size, sb.label.as_str()),
            (8192, 4096, "STATE")
        );
    }
}
