//! Mounting, with the target created first and errors that name everything.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result};

pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    fs::create_dir_all(target).map_err(|e| Error::io("creating mount point", target, e))?;
    nix::mount::mount(Some(source), target, Some(fstype), flags, data).map_err(|errno| {
        Error::Mount {
            source_dev: source.to_owned(),
            target: target.to_owned(),
            fstype: fstype.to_owned(),
            errno,
        }
    })
}

/// Mounts and reports a failure instead of returning it: for mounts the node
/// can run without.
pub fn mount_or_warn(source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    if let Err(err) = mount(source, Path::new(target), fstype, flags, data) {
        tracing::warn!("{err}");
    }
}

pub fn move_mount(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).map_err(|e| Error::io("creating mount point", to, e))?;
    nix::mount::mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(
        |errno| Error::Mount {
            source_dev: from.display().to_string(),
            target: to.to_owned(),
            fstype: "move".into(),
            errno,
        },
    )
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub read_only: bool,
}

pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mount_point = unescape(fields.get(4)?);
            let options = fields.get(5)?;
            let mut right = right.split(' ');
            let fstype = right.next()?.to_owned();
            let source = unescape(right.next().unwrap_or(""));
            Some(MountInfo {
                mount_point: PathBuf::from(mount_point),
                fstype,
                source,
                read_only: options.split(',').any(|o| o == "ro"),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn current() -> Vec<MountInfo> {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// Unmounts everything but `/`, deepest (most recently mounted) first; what
/// stays busy is remounted read-only. Finally `/` itself is remounted
/// read-only. Returns how many mounts could not be unmounted.
pub fn unmount_all() -> usize {
    let mut busy = 0;
    for info in current().iter().rev() {
        if info.mount_point == Path::new("/") {
            continue;
        }
        if nix::mount::umount2(&info.mount_point, MntFlags::empty()).is_err() {
            let remount = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            let _ = nix::mount::mount(
                None::<&str>,
                &info.mount_point,
                None::<&str>,
                remount,
                None::<&str>,
            );
            if !info.read_only
                && !matches!(
                    info.fstype.as_str(),
                    "proc" | "sysfs" | "devtmpfs" | "devpts" | "cgroup2" | "tmpfs"
                )
            {
                tracing::warn!(
                    "{} stayed mounted (remounted read-only)",
                    info.mount_point.display()
                );
                busy += 1;
            }
        }
    }
    let remount = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let _ = nix::mount::mount(None::<&str>, "/", None::<&str>, remount, None::<&str>);
    busy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let text = "22 1 254:2 / / ro,relatime shared:1 - squashfs /dev/vda2 ro,errors=continue\n\
                    30 22 254:6 / /var rw,noatime shared:9 - ext4 /dev/vda6 rw\n\
                    31 22 0:5 / /my\\040dir rw - tmpfs tmpfs rw\n\
                    garbage\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].mount_point, PathBuf::from("/"));
        assert!(mounts[0].read_only);
        assert_eq!(mounts[0].fstype, "squashfs");
        assert_eq!(mounts[0].source, "/dev/vda2");
        assert!(!mounts[1].read_only);
        assert_eq!(mounts[2].mount_point, PathBuf::from("/my dir"));
    }
}
