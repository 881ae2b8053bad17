//! Is the target safe to overwrite? Every check here only reads (`stat`,
//! `/proc/self/mountinfo`, `/proc/swaps`, `/sys`); nothing opens the target for
//! writing.
//!
//! A block device is refused when it is a partition rather than a whole disk,
//! when it or any of its partitions is mounted (matched by major:minor and by
//! the mount source's path), holds the running system's root, is in use as swap
//! (a swap partition, or a swap file on one of its file systems), or is held by
//! another device (device-mapper, RAID). A regular file is refused unless
//! explicitly allowed (`--allow-file`: tests and image copies), and then still
//! when it backs a loop device or is the image itself.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A device number, `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNum {
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
}

impl DevNum {
    /// From a `dev_t` (glibc's encoding, which Linux uses for every libc).
    pub fn from_dev_t(dev: u64) -> DevNum {
        DevNum {
            major: ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff),
            minor: ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff),
        }
    }

    /// From `"8:1"`.
    pub fn parse(s: &str) -> Option<DevNum> {
        let (a, b) = s.trim().split_once(':')?;
        Some(DevNum {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// A whole disk and its partitions, as `/sys` describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSet {
    /// `(name, number)`: the disk first (`sdb`), then its partitions (`sdb1`).
    pub devices: Vec<(String, DevNum)>,
}

impl DeviceSet {
    fn name_of(&self, n: DevNum) -> Option<&str> {
        self.devices
            .iter()
            .find(|(_, d)| *d == n)
            .map(|(name, _)| name.as_str())
    }

    fn name_of_path(&self, path: &Path) -> Option<&str> {
        let resolved = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Ok(meta) = fs::metadata(&resolved)
            && meta.file_type().is_block_device()
        {
            return self.name_of(DevNum::from_dev_t(meta.rdev()));
        }
        let name = resolved.strip_prefix("/dev").ok()?.to_str()?;
        self.devices
            .iter()
            .find(|(n, _)| n == name)
            .map(|(n, _)| n.as_str())
    }
}

/// What is known about a target that passed every check.
#[derive(Debug, Clone)]
pub struct Target {
    /// The path as given.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// A block device (otherwise an allowed regular file).
    pub block_device: bool,
    /// For a block device, the model and size as `/sys` names them.
    pub description: String,
}

fn refused(path: &Path, reason: impl Into<String>) -> Error {
    Error::Refused {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo and /proc/swaps.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(d)) = (bytes[i], octal) {
            let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/mountinfo`: `(device number, mount point, source)`.
fn mountinfo_line(line: &str) -> Option<(DevNum, String, String)> {
    let (left, right) = line.split_once(" - ")?;
    let fields: Vec<&str> = left.split(' ').collect();
    let dev = DevNum::parse(fields.get(2)?)?;
    let mount_point = unescape(fields.get(4)?);
    let source = unescape(right.split(' ').nth(1)?);
    Some((dev, mount_point, source))
}

/// Whether any device of `set` is mounted according to `mountinfo` (the text
/// of `/proc/self/mountinfo`): the reason, naming the device and where it is
/// mounted, with the running system's root named as such.
pub fn check_mounts(set: &DeviceSet, mountinfo: &str) -> Option<String> {
    let mut hits: Vec<(String, String)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((dev, mount_point, source)) = mountinfo_line(line) else {
            continue;
        };
        let name = set.name_of(dev).or_else(|| {
            source
                .starts_with("/dev/")
                .then(|| set.name_of_path(Path::new(&source)))
                .flatten()
        });
        if let Some(name) = name {
            hits.push((name.to_owned(), mount_point));
        }
    }
    if let Some((name, _)) = hits.iter().find(|(_, m)| m == "/") {
        return Some(format!(
            "/dev/{name} holds the running system's root filesystem (/)"
        ));
    }
    let (name, mount_point) = hits.first()?;
    let more = if hits.len() > 1 {
        format!(" (and {} more mounts)", hits.len() - 1)
    } else {
        String::new()
    };
    Some(format!(
        "/dev/{name} is mounted on {mount_point}{more}: unmount it first"
    ))
}

/// Whether any device of `set` is in use as swap according to `swaps` (the
/// text of `/proc/swaps`): a swap partition, or a swap file on one of its
/// file systems.
pub fn check_swaps(set: &DeviceSet, swaps: &str) -> Option<String> {
    for line in swaps.lines().skip(1) {
        let Some(file) = line.split_whitespace().next() else {
            continue;
        };
        let file = unescape(file);
        let Ok(meta) = fs::metadata(&file) else {
            // Deleted swap files show as "/swapfile (deleted)"; the device
            // check by name still applies.
            if let Some(name) = set.name_of_path(Path::new(&file)) {
                return Some(format!("/dev/{name} is in use as swap"));
            }
            continue;
        };
        if meta.file_type().is_block_device() {
            if let Some(name) = set.name_of(DevNum::from_dev_t(meta.rdev())) {
                return Some(format!(
                    "/dev/{name} is in use as swap (the running system's swap)"
                ));
            }
        } else if let Some(name) = set.name_of(DevNum::from_dev_t(meta.dev())) {
            return Some(format!(
                "/dev/{name} holds the running system's swap file {file}"
            ));
        }
    }
    None
}

/// The disk and its partitions, from `/sys/dev/block/<major:minor>`.
/// Refuses a partition (the whole disk must be flashed) and a device another
/// one is stacked on (`holders/`: device-mapper, RAID, ...).
pub fn device_set(path: &Path, dev: DevNum, sys: &Path) -> Result<DeviceSet> {
    let link = sys.join(format!("dev/block/{dev}"));
    let dir = fs::canonicalize(&link).map_err(|e| {
        refused(
            path,
            format!("block device {dev} has no {} ({e})", link.display()),
        )
    })?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dir.join("partition").exists() {
        let disk = dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "?".into());
        return Err(refused(
            path,
            format!(
                "/dev/{name} is a partition of /dev/{disk}: flash the whole disk (/dev/{disk})"
            ),
        ));
    }
    let mut set = DeviceSet {
        devices: vec![(name.clone(), dev)],
    };
    let mut dirs = vec![(name, dir.clone())];
    let mut parts: Vec<(String, PathBuf)> = fs::read_dir(&dir)
        .map_err(|e| refused(path, format!("cannot list {}: {e}", dir.display())))?
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(_, p)| p.join("partition").exists())
        .collect();
    parts.sort();
    for (pname, pdir) in parts {
        let num = fs::read_to_string(pdir.join("dev"))
            .ok()
            .and_then(|s| DevNum::parse(&s))
            .ok_or_else(|| refused(path, format!("cannot read {}/dev", pdir.display())))?;
        set.devices.push((pname.clone(), num));
        dirs.push((pname, pdir));
    }
    for (dname, d) in &dirs {
        let holders: Vec<String> = fs::read_dir(d.join("holders"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !holders.is_empty() {
            return Err(refused(
                path,
                format!(
                    "/dev/{dname} is in use by {} (device-mapper, LVM, RAID or encryption): stop that first",
                    holders.join(", ")
                ),
            ));
        }
    }
    Ok(set)
}

fn sys_text(dir: &Path, name: &str) -> Option<String> {
    fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The size of an opened (read-only) device or file.
fn size_of(path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = fs::File::open(path).map_err(Error::io(path, "cannot open for reading"))?;
    f.seek(SeekFrom::End(0))
        .map_err(Error::io(path, "cannot find its size"))
}

/// Checks that `path` may be overwritten with an image of `image_size`
/// bytes; `image` is the image file itself (never a valid target). Only
/// reads. `allow_file` lets a regular file stand in for a disk.
pub fn check(path: &Path, image_size: u64, image: &Path, allow_file: bool) -> Result<Target> {
    check_with(
        path,
        image_size,
        image,
        allow_file,
        Path::new("/sys"),
        Path::new("/proc/self/mountinfo"),
        Path::new("/proc/swaps"),
    )
}

fn check_with(
    path: &Path,
    image_size: u64,
    image: &Path,
    allow_file: bool,
    sys: &Path,
    mountinfo: &Path,
    swaps: &Path,
) -> Result<Target> {
    let meta = fs::metadata(path).map_err(|e| {
        refused(
            path,
            if e.kind() == std::io::ErrorKind::NotFound {
                "no such device (with --allow-file, create the file first, at least as big as the image)".to_owned()
            } else {
                e.to_string()
            },
        )
    })?;
    let ft = meta.file_type();
    let mut description = String::new();
    let block_device = ft.is_block_device();
    if block_device {
        let dev = DevNum::from_dev_t(meta.rdev());
        let set = device_set(path, dev, sys)?;
        let info = fs::read_to_string(mountinfo)
            .map_err(|e| refused(path, format!("cannot read {}: {e}", mountinfo.display())))?;
        if let Some(reason) = check_mounts(&set, &info) {
            return Err(refused(path, reason));
        }
        let swaps_text = fs::read_to_string(swaps).unwrap_or_default();
        if let Some(reason) = check_swaps(&set, &swaps_text) {
            return Err(refused(path, reason));
        }
        let dir = sys.join(format!("dev/block/{dev}"));
        let model = sys_text(&dir, "device/model")
            .or_else(|| sys_text(&dir, "device/name"))
            .unwrap_or_else(|| "unknown model".into());
        let removable = sys_text(&dir, "removable").is_some_and(|r| r == "1");
        description = format!(
            "/dev/{} ({model}{}, {} partition(s))",
            set.devices[0].0,
            if removable { ", removable" } else { "" },
            set.devices.len() - 1
        );
    } else if ft.is_file() {
        if !allow_file {
            return Err(refused(
                path,
                "not a block device (to write into a regular file on purpose, pass --allow-file)",
            ));
        }
        if let Ok(img) = fs::metadata(image)
            && img.dev() == meta.dev()
            && img.ino() == meta.ino()
        {
            return Err(refused(path, "it is the image itself"));
        }
        if let Some(loop_dev) = backing_loop(path, sys) {
            return Err(refused(
                path,
                format!("the file backs loop device /dev/{loop_dev}: detach it first"),
            ));
        }
    } else {
        return Err(refused(path, "not a block device nor a regular file"));
    }
    let size = size_of(path)?;
    if size < image_size {
        return Err(refused(
            path,
            format!(
                "it holds {size} bytes ({:.1} MiB), smaller than the image's {image_size} bytes ({:.1} MiB)",
                size as f64 / 1048576.0,
                image_size as f64 / 1048576.0
            ),
        ));
    }
    Ok(Target {
        path: path.to_path_buf(),
        size,
        block_device,
        description,
    })
}

/// The loop device whose backing file is `file`, if any.
fn backing_loop(file: &Path, sys: &Path) -> Option<String> {
    let canonical = fs::canonicalize(file).ok()?;
    let meta = fs::metadata(&canonical).ok()?;
    for entry in fs::read_dir(sys.join("block")).ok()?.flatten() {
        let Some(backing) = sys_text(&entry.path(), "loop/backing_file") else {
            continue;
        };
        let same = fs::metadata(&backing)
            .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
            || Path::new(&backing) == canonical;
        if same {
            return Some(entry.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> DeviceSet {
        DeviceSet {
            devices: vec![
                (
                    "sdz".into(),
                    DevNum {
                        major: 8,
                        minor: 240,
                    },
                ),
                (
                    "sdz1".into(),
                    DevNum {
                        major: 8,
                        minor: 241,
                    },
                ),
                (
                    "sdz2".into(),
                    DevNum {
                        major: 8,
                        minor: 242,
                    },
                ),
            ],
        }
    }

    #[test]
    fn dev_t_encoding() {
        // makedev(8, 1) and makedev(259, 65536).
        assert_eq!(DevNum::from_dev_t(0x801), DevNum { major: 8, minor: 1 });
        let big = ((259u64 & 0xfff) << 8) | ((65536u64 & !0xff) << 12);
        assert_eq!(
            DevNum::from_dev_t(big),
            DevNum {
                major: 259,
                minor: 65536
            }
        );
    }

    #[test]
    fn mountinfo_by_number_and_by_path() {
        let info = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    40 27 8:242 / /media/me/my\\040card rw - vfat /dev/sdz2 rw\n";
        assert_eq!(
            check_mounts(&set(), info).as_deref(),
            Some("/dev/sdz2 is mounted on /media/me/my card: unmount it first")
        );
        // btrfs and others report an anonymous 0:N: the source path still counts.
        let info = "40 27 0:55 / /mnt rw - btrfs /dev/sdz1 rw\n";
        assert!(check_mounts(&set(), info).unwrap().starts_with("/dev/sdz1"));
        let root = "27 1 8:241 / / rw - ext4 /dev/sdz1 rw\n40 27 8:242 / /boot rw - vfat x rw\n";
        assert_eq!(
            check_mounts(&set(), root).as_deref(),
            Some("/dev/sdz1 holds the running system's root filesystem (/)")
        );
        let other = "27 1 254:0 / / rw - ext4 /dev/vda rw\n";
        assert_eq!(check_mounts(&set(), other), None);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\011c"), "a b\tc");
        assert_eq!(unescape("plain\\"), "plain\\");
    }

    #[test]
    fn refuses_regular_files_unless_allowed_and_small_targets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("card");
        let img = dir.path().join("img");
        fs::write(&img, b"x").unwrap();
        let f = fs::File::create(&file).unwrap();
        f.set_len(4096).unwrap();
        let err = check(&file, 4096, &img, false).unwrap_err().to_string();
        assert!(err.contains("not a block device"), "{err}");
        let err = check(&file, 8192, &img, true).unwrap_err().to_string();
        assert!(err.contains("smaller than the image"), "{err}");
        let t = check(&file, 4096, &img, true).unwrap();
        assert_eq!(t.size, 4096);
        assert!(!t.block_device);
        let err = check(&img, 1, &img, true).unwrap_err().to_string();
        assert!(err.contains("the image itself"), "{err}");
        let err = check(&dir.path().join("none"), 1, &img, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such device"), "{err}");
    }
}
