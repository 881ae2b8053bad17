//! Crash-safe file replacement, the one way Bramble persists a file.
//!
//! [`write`] puts the new contents in a temporary file beside the target,
//! fsyncs it, renames it over the target and fsyncs the directory. After a
//! power cut the target holds the old contents or the new, never a mix, and a
//! successful write leaves no temporary behind. PID 1, the node's daemons, the
//! image store and `nodectl` all write through this crate.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A file operation failed; names the operation and the file.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct FileError {
    /// The operation, for example `write` or `rename into place`.
    pub what: &'static str,
    /// The file concerned.
    pub path: PathBuf,
    /// The error from the kernel.
    #[source]
    pub source: io::Error,
}

impl FileError {
    /// A closure that wraps an [`io::Error`] from `what` on `path`.
    pub fn wrap<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

impl From<FileError> for io::Error {
    /// Keeps the kernel's error kind and puts the operation and the path in
    /// the message, for callers whose errors carry an [`io::Error`].
    fn from(e: FileError) -> Self {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

/// The temporary file used while `path` is written: hidden, beside it, and
/// ending in `.tmp`, so [`remove_stale_temporaries`] finds what a crash left.
pub fn temporary_path(path: &Path) -> Result<PathBuf, FileError> {
    let name = path.file_name().ok_or_else(|| FileError {
        what: "write",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
    })?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(".tmp");
    Ok(path.with_file_name(tmp))
}

/// Replaces `path` with `contents`; the new file gets `mode` (further
/// restricted by the umask). The directory is created if it is missing.
pub fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir).map_err(FileError::wrap("create directory", dir))?;
    write_via(&temporary_path(path)?, path, contents, mode)
}

/// Like [`write`], with the temporary file `tmp` chosen by the caller (it
/// must be on the same filesystem as `path`; a file already there is
/// replaced). The image store stages its writes in a directory of its own.
pub fn write_via(tmp: &Path, path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    // A crash during an earlier write may have left the temporary behind;
    // `create_new` below must not inherit its permissions or contents.
    remove_if_exists_unsynced(tmp)?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(tmp)
            .map_err(FileError::wrap("create", tmp))?;
        file.write_all(contents)
            .map_err(FileError::wrap("write", tmp))?;
        file.sync_all().map_err(FileError::wrap("fsync", tmp))?;
        drop(file);
        rename(tmp, path)
    })();
    if result.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Renames `from` to `to` and makes the rename durable (fsync of `to`'s
/// directory, and of `from`'s when it is another one).
pub fn rename(from: &Path, to: &Path) -> Result<(), FileError> {
    fs::rename(from, to).map_err(FileError::wrap("rename into place", to))?;
    sync_dir(parent_dir(to))?;
    if parent_dir(from) != parent_dir(to) {
        sync_dir(parent_dir(from))?;
    }
    Ok(())
}

/// Removes `path` if it exists, durably; returns whether it did.
pub fn remove_if_exists(path: &Path) -> Result<bool, FileError> {
    let removed = remove_if_exists_unsynced(path)?;
    if removed {
        sync_dir(parent_dir(path))?;
    }
    Ok(removed)
}

/// Makes a directory's entries (a rename, a new file, a removal) durable.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FileError::wrap("fsync directory", dir))
}

/// Removes the temporaries a crash during [`write`] left in `dir`; returns
/// how many it removed.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize, FileError> {
    let mut removed = 0;
    let entries = fs::read_dir(dir).map_err(FileError::wrap("read directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(FileError::wrap("read directory", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_file = entry
            .file_type()
            .map_err(FileError::wrap("stat", &entry.path()))?
            .is_file();
        if name.starts_with('.') && name.ends_with(".tmp") && is_file {
            remove_if_exists_unsynced(&entry.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

fn remove_if_exists_unsynced(path: &Path) -> Result<bool, FileError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(FileError {
            what: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<OsString> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replaces_contents_with_the_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/seed");
        write(&path, b"one", 0o600).unwrap();
        write(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(names(&dir.path().join("sub")), vec![OsString::from("seed")]);
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_stale_temporary_from_a_crash_does_not_lend_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let tmp = temporary_path(&path).unwrap();
        fs::write(&tmp, b"half-written").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666)).unwrap();
        write(&path, b"secret", 0o600).unwrap();
        assert!(!tmp.exists());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"secret");
    }

    #[test]
    fn a_failed_write_names_the_file_and_leaves_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write(&path, b"old", 0o644).unwrap();
        // Renaming over a non-empty directory fails after the temporary was written.
        let blocker = dir.path().join("taken");
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("x"), b"keep").unwrap();
        let err = write(&blocker, b"new", 0o644).unwrap_err();
        assert!(err.to_string().contains("taken"), "{err}");
        assert_eq!(err.what, "rename into place");
        assert!(!temporary_path(&blocker).unwrap().exists());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(
            names(dir.path()),
            vec![OsString::from("f"), OsString::from("taken")]
        );
        let io: io::Error = err.into();
        assert!(io.to_string().contains("taken"), "{io}");
    }

    #[test]
    fn writes_through_a_temporary_the_caller_chose() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        let tmp = dir.path().join("tmp/staged-1");
        let dest = dir.path().join("refs.json");
        write_via(&tmp, &dest, b"{}", 0o644).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"{}");
        assert!(!tmp.exists());
    }

    #[test]
    fn removes_files_and_stale_temporaries_only() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".server.key.tmp"), b"").unwrap();
        fs::write(dir.path().join("server.key"), b"").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()).unwrap(), 1);
        assert_eq!(names(dir.path()), vec![OsString::from("server.key")]);
        assert!(remove_if_exists(&dir.path().join("server.key")).unwrap());
        assert!(!remove_if_exists(&dir.path().join("server.key")).unwrap());
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let err = write(Path::new("/"), b"x", 0o644).unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::InvalidInput);
    }
}
