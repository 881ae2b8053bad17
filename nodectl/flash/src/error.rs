//! Why flashing stopped. Every message names the file or device and the reason,
//! and, once writing has begun, what is left on the target.

use std::path::PathBuf;

/// A failure of [`crate::prepare`] or [`crate::Plan::execute`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target must not be written (mounted, the running system's disk,
    /// swap, a partition, not a block device, too small, ...). Nothing was
    /// written.
    #[error("refusing to write {path}: {reason}")]
    Refused {
        /// The target as given.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The machine configuration given with `--config` is not valid.
    /// Nothing was written.
    #[error("{path}: invalid machine configuration (nothing was written):\n{reason}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// The validation errors, with their field paths.
        reason: String,
    },

    /// The block map cannot be used.
    #[error("block map {path}: {reason}")]
    Bmap {
        /// The `.bmap` file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A file does not match its line in `SHA256SUMS`. Nothing was written.
    #[error(
        "{path} does not match {sums}: sha256 {actual}, expected {expected} \
         (corrupted or incomplete download; nothing was written)"
    )]
    Checksum {
        /// The file checked.
        path: PathBuf,
        /// The checksum list.
        sums: PathBuf,
        /// Its line's sha256.
        expected: String,
        /// The file's sha256.
        actual: String,
    },

    /// The image cannot be read as what it claims to be (bad xz, shorter than
    /// its block map, ...).
    #[error("image {path}: {reason}")]
    Image {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A mapped range of the image did not match its bmap checksum while it
    /// was being written.
    #[error(
        "image {path}: blocks {first}-{last} do not match the block map's sha256 \
         (the image is corrupted). {left}"
    )]
    Corrupted {
        /// The image.
        path: PathBuf,
        /// First block of the range.
        first: u64,
        /// Last block of the range.
        last: u64,
        /// What is on the target now.
        left: String,
    },

    /// Reading back what was written gave different bytes.
    #[error(
        "{path}: reading back blocks {first}-{last} gave different data than was written \
         (a failing or counterfeit card?). {left}"
    )]
    Verify {
        /// The target.
        path: PathBuf,
        /// First block of the range.
        first: u64,
        /// Last block of the range.
        last: u64,
        /// What is on the target now.
        left: String,
    },

    /// The boot partition of the written target could not take the
    /// configuration.
    #[error("placing the machine configuration on {path}: {reason}")]
    BootPartition {
        /// The target.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// An I/O error on a named file or device.
    #[error("{path}: {what}: {source}{left}")]
    Io {
        /// The file or device.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// The error.
        source: std::io::Error,
        /// What is on the target now (empty before anything was written).
        left: String,
    },
}

impl Error {
    /// An I/O error before anything was written.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        what: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            path,
            what,
            source,
            left: String::new(),
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
