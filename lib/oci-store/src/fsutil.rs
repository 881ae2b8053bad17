//! Small filesystem helpers: temporary paths that clean up after themselves
//! and the store's lock files. Durable writes and renames are `bramble-atomic`'s.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::FlockOperation;
use tracing::warn;

use crate::Error;

/// A name no other temporary file of this or another process uses.
pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id())
}

/// Seconds since the epoch, now.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A temporary file or directory, removed when dropped unless kept.
#[derive(Debug)]
pub(crate) struct TempPath {
    path: Option<PathBuf>,
}

impl TempPath {
    /// Takes charge of `path` (which need not exist yet).
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path: Some(path) }
    }

    /// The path.
    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Stops cleaning up (the path was renamed away).
    pub(crate) fn disarm(mut self) {
        self.path = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            remove_any(&path);
        }
    }
}

/// Removes a file or a directory tree, logging (not failing) on errors.
pub(crate) fn remove_any(path: &Path) {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        warn!(path = %path.display(), error = %e, "could not remove a temporary path");
    }
}

/// Writes `bytes` to `dest` atomically (`bramble-atomic`), through a
/// temporary file of a unique name in `tmp_dir`, on the same filesystem.
pub(crate) fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = TempPath::new(tmp_dir.join(unique_name("write")));
    bramble_atomic::write_via(tmp.path(), dest, bytes, 0o644)?;
    tmp.disarm();
    Ok(())
}

/// An advisory lock (flock) on a lock file, released when dropped.
#[derive(Debug)]
pub(crate) struct Lock {
    _file: File,
}

impl Lock {
    fn open(path: &Path) -> Result<File, Error> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(Error::io(format!("opening lock file {}", path.display())))
    }

    /// Waits for a shared lock.
    pub(crate) fn shared(path: &Path) -> Result<Lock, Error> {
        Self::take(path, FlockOperation::LockShared)
    }

    /// Waits for an exclusive lock.
    pub(crate) fn exclusive(path: &Path) -> Result<Lock, Error> {
        Self::take(path, FlockOperation::LockExclusive)
    }

    /// An exclusive lock if nobody holds any lock on `path` now.
    pub(crate) fn try_exclusive(path: &Path) -> Result<Option<Lock>, Error> {
        let file = Self::open(path)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Lock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(Error::Io {
                context: format!("locking {}", path.display()),
                source: e.into(),
            }),
        }
    }

    fn take(path: &Path, op: FlockOperation) -> Result<Lock, Error> {
        let file = Self::open(path)?;
        loop {
            match rustix::fs::flock(&file, op) {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(Error::Io {
                        context: format!("locking {}", path.display()),
                        source: e.into(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_paths_clean_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(unique_name("t"));
        {
            let t = TempPath::new(p.clone());
            fs::create_dir_all(t.path().join("a/b")).expect("mkdir");
        }
        assert!(!p.exists());
        let t = TempPath::new(p.clone());
        fs::write(t.path(), b"x").expect("write");
        t.disarm();
        assert!(p.exists());
    }

    #[test]
    fn atomic_writes_and_locks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("f");
        write_atomic(dir.path(), &dest, b"one").expect("write");
        write_atomic(dir.path(), &dest, b"two").expect("rewrite");
        assert_eq!(fs::read(&dest).expect("read"), b"two");
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);

        let lock = dir.path().join("lock");
        let shared = Lock::shared(&lock).expect("shared");
        assert!(Lock::try_exclusive(&lock).expect("try").is_none());
        drop(shared);
        assert!(Lock::try_exclusive(&lock).expect("try").is_some());
        assert_ne!(unique_name("x"), unique_name("x"));
    }
}
