//! Crash-safe file replacement: write a temporary file next to the target,
//! fsync it, rename it over the target, fsync the directory.
//!
//! After a power cut the target holds either the old or the new contents,
//! never a mix, and no temporary file is left behind by a successful write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Name of the temporary file used while `path` is written.
///
/// It is hidden, fixed (a crash leaves at most one per target, removed by the
/// next write) and ends in `.tmp`, so [`remove_stale_temporaries`] finds it.
pub fn temporary_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(".tmp");
    Ok(path.with_file_name(tmp))
}

/// Replaces `path` with `contents` atomically; the new file gets `mode`
/// (further restricted by the umask).
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temporary_path(path)?;
    let dir = parent_dir(path);
    // A crash during an earlier write may have left the temporary behind;
    // `create_new` below must not inherit its permissions.
    remove_if_exists(&tmp)?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = remove_if_exists(&tmp);
    }
    result
}

/// Flushes a directory's entries (a rename or a new file in it) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes the temporary files a crash during [`write_file`] left in `dir`.
/// Returns how many were removed.
pub fn remove_stale_temporaries(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") && entry.file_type()?.is_file() {
            remove_if_exists(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_contents_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_file(&path, b"one", 0o600).unwrap();
        write_file(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn stale_temporary_from_a_crash_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let tmp = temporary_path(&path).unwrap();
        fs::write(&tmp, b"half-written").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666)).unwrap();
        write_file(&path, b"secret", 0o600).unwrap();
        assert!(!tmp.exists());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn failed_write_leaves_target_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_file(&path, b"old", 0o644).unwrap();
        // Renaming over a non-empty directory fails after the temporary was written.
        let blocker = dir.path().join("d");
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("x"), b"").unwrap();
        assert!(write_file(&blocker, b"new", 0o644).is_err());
        assert!(!temporary_path(&blocker).unwrap().exists());
        assert_eq!(fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn removes_stale_temporaries_only() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".server.key.tmp"), b"").unwrap();
        fs::write(dir.path().join("server.key"), b"").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()).unwrap(), 1);
        assert!(dir.path().join("server.key").exists());
    }
}
