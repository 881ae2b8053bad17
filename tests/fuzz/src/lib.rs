//! What the fuzz targets share.

use std::path::PathBuf;

/// Where targets that write make their temporary directories:
/// `BRAMBLE_FUZZ_SCRATCH` (run.sh makes one per run on tmpfs and removes it
/// afterwards, with whatever an input that crashed or hung left), else tmpfs
/// (`/dev/shm`) when there is one, where an fsync costs nothing, else the
/// system's temporary directory. Every target removes what it made.
pub fn scratch_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BRAMBLE_FUZZ_SCRATCH") {
        return PathBuf::from(dir);
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// A fresh temporary directory under [`scratch_dir`], removed on drop.
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(scratch_dir())
        .unwrap_or_else(|e| panic!("cannot make a temporary directory: {e}"))
}
