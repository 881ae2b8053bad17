//! Bramble's unprivileged, reproducible SD-card image builder.
//!
//! `bramble-image build` turns the pinned Debian packages (kernel, Pi firmware,
//! U-Boot, CA certificates), the boot assets in `boot/` and the cross-built node
//! binaries into `dist/bramble-arm64.img` (+ `.xz`, `.bmap`, `SHA256SUMS`) with no
//! root, no loop devices and no mounts; the same inputs and SOURCE_DATE_EPOCH give
//! byte-identical outputs.
//!
//! The disk layout (partition numbers, labels) and its partition table and
//! superblock readers are `bramble-disk`'s. The small readers the boot-test
//! harness needs of the image's own formats, [`cpio`] and [`uimage`], depend
//! only on `std` (and `crc32fast`) and are available with
//! `default-features = false`; the rest is behind the default `builder` feature.

pub mod cpio;
pub mod uimage;

#[cfg(feature = "builder")]
pub mod bmap;
#[cfg(feature = "builder")]
pub mod builder;
#[cfg(feature = "builder")]
pub mod content;
#[cfg(feature = "builder")]
pub mod deb;
#[cfg(feature = "builder")]
pub mod disk;
#[cfg(feature = "builder")]
pub mod elf;
#[cfg(feature = "builder")]
pub mod error;
#[cfg(feature = "builder")]
pub mod fat;
#[cfg(feature = "builder")]
pub mod lock;
#[cfg(feature = "builder")]
pub mod lz4;
#[cfg(feature = "builder")]
pub mod mkext4;
#[cfg(feature = "builder")]
pub mod modules;
#[cfg(feature = "builder")]
pub mod packages;
#[cfg(feature = "builder")]
pub mod squashfs;
#[cfg(feature = "builder")]
pub mod time;
#[cfg(feature = "builder")]
pub mod tree;
