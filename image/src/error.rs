//! The builder's error type: every variant names the file, field or package it is
//! about and, where there is one, the fix.

use std::path::PathBuf;

/// Result alias for the image builder.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop an image build.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A malformed line in the package lock.
    #[error("{}:{line}: {reason}", path.display())]
    LockSyntax {
        /// The lock file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// A package the image needs is not in the lock.
    #[error("{}: no package `{name}` is pinned (the image needs it)", path.display())]
    LockMissingPackage {
        /// The lock file.
        path: PathBuf,
        /// The missing package name (or prefix).
        name: String,
    },

    /// A pinned .deb is not in the cache.
    #[error(
        "{}: not found (pinned with sha256 {expected}); run `make deps` to download the pinned packages",
        path.display()
    )]
    DebMissing {
        /// The expected cache path.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
    },

    /// A cached .deb does not have its pinned digest.
    #[error(
        "{}: sha256 mismatch: expected {expected}, actual {actual}; the cached file is corrupt or not the pinned version: delete it and run `make deps`",
        path.display()
    )]
    Sha256Mismatch {
        /// The cached file.
        path: PathBuf,
        /// Digest from the lock.
        expected: String,
        /// Digest of the file on disk.
        actual: String,
    },

    /// A .deb could not be read as a Debian package.
    #[error("{}: not a readable Debian package: {reason}", path.display())]
    BadDeb {
        /// The .deb.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A file the image needs is not in its package.
    #[error("package `{package}` has no `{member}`")]
    MissingInPackage {
        /// Package name.
        package: String,
        /// The path (or pattern) that was looked for.
        member: String,
    },

    /// A line of a file list (`boot/rootfs-packages.txt`) that cannot be used.
    #[error("{}:{line}: {reason}", path.display())]
    FileList {
        /// The list file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// A path wanted from a package is there, but as a directory or another
    /// kind of entry that cannot be copied as a file.
    #[error("package `{package}`: `{member}` is {what}, not a file or a symbolic link")]
    NotAFile {
        /// Package name.
        package: String,
        /// The path in the package.
        member: String,
        /// What it is (`a directory`).
        what: &'static str,
    },

    /// A symbolic link wanted from a package points to a path the package
    /// does not contain.
    #[error(
        "package `{package}`: `{link}` is a symbolic link to `{target}`, which the package does not contain"
    )]
    DanglingSymlink {
        /// Package name.
        package: String,
        /// The link's path in the package.
        link: String,
        /// Its target as stored.
        target: String,
    },

    /// A dynamically linked program (or a library it loads) needs a file the
    /// root file system does not carry.
    #[error(
        "{program}: needs the {what} `{name}`, which {looked}; add the package file that provides it to boot/rootfs-packages.txt"
    )]
    MissingDependency {
        /// The ELF file that needs it (`/usr/bin/etcd`, or a library with the
        /// program it is loaded for).
        program: String,
        /// `shared library` or `program interpreter`.
        what: &'static str,
        /// The DT_NEEDED name or PT_INTERP path.
        name: String,
        /// Where it was looked for.
        looked: String,
    },

    /// A kernel module problem (unknown name, missing dependency, bad ELF).
    #[error("kernel modules: {0}")]
    Modules(String),

    /// An input binary is missing or not an aarch64 executable.
    #[error("{}: {reason}", path.display())]
    BadBinary {
        /// The binary.
        path: PathBuf,
        /// Why it cannot go into the image.
        reason: String,
    },

    /// A command-line value or input file that cannot be used.
    #[error("{field}: {reason}")]
    Invalid {
        /// The option or file.
        field: String,
        /// Why.
        reason: String,
    },

    /// Some content does not fit its partition.
    #[error("{what} is {size} bytes, larger than its {limit}-byte partition")]
    TooLarge {
        /// What did not fit.
        what: String,
        /// Its size.
        size: u64,
        /// The partition size.
        limit: u64,
    },

    /// The initramfs could not be packed or unpacked.
    #[error("initramfs: {0}")]
    Initramfs(String),

    /// Building the squashfs failed.
    #[error("squashfs: {0}")]
    Squashfs(String),

    /// Building the FAT file system failed.
    #[error("FAT boot partition: {0}")]
    Fat(String),

    /// mke2fs is missing or failed.
    #[error("mke2fs: {0}")]
    Mke2fs(String),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
