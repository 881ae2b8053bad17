//! The node's OCI image store.
//!
//! [`Store`] keeps images under one directory (on the node
//! `/var/lib/bramble/images`): content-addressed blobs, one unpacked
//! snapshot directory per layer for overlayfs, and the references. Images
//! come in by [`Store::pull`] from registries (with mirrors, plain-HTTP
//! registries and credentials from [`RegistryConfig`]) or by
//! [`Store::import_archive`] from an OCI image layout tar. The runtime asks
//! [`Store::image`] for the config and the layer directories of an image and
//! mounts `overlay` with `lowerdir=<top>:...:<bottom>` itself.
//!
//! Everything is verified before it is tagged: every blob against its
//! digest as it streams in, every layer's uncompressed content against the
//! config's `rootfs.diff_ids`. Nothing half-written is ever visible: blobs,
//! snapshots and `refs.json` are written in `tmp/` and renamed into place
//! after an fsync. A hostile source is cut off at the store's [`Limits`]
//! (manifest bytes as they stream, blob sizes as declared, uncompressed
//! bytes per image, entries per layer, archive bytes), and a refused pull
//! or import takes away what it had stored.
//!
//! A reference pinned by digest (`name@sha256:...`) names only that
//! manifest (or the verified index it names); [`Store::pull_guarded`] and
//! [`Store::import_archive_guarded`] refuse to move a reference a [`Guard`]
//! protects (one a workload uses) to another image.
//!
//! With the `testing` feature, `build` makes small images in memory and
//! `push` publishes them to a registry, for tests; the node is built without.
//!
//! # For the runtime
//!
//! - Mount an image read-only as
//!   `mount -t overlay overlay -o lowerdir=<layers[n-1]>:...:<layers[0]>,upperdir=...,workdir=...`:
//!   [`ResolvedImage::layers`] is bottom first, overlayfs wants the top
//!   first. Whiteouts are character devices 0:0 and opaque directories carry
//!   `trusted.overlay.opaque=y`, so do not mount with `userxattr`. Never
//!   write into a snapshot directory: layers are shared between images.
//! - [`Store::open`] picks the platform of the build target (`linux/arm64`
//!   on the node, `linux/amd64` in host tests);
//!   [`Store::open_for_platform`] picks another. Indexes are resolved to
//!   that platform and images of other platforms are refused.
//! - [`Store::gc`] keeps what references need plus the manifest digests
//!   passed in `keep`: pass the [`ImageInfo::digest`] of every image a
//!   container runs, or gc deletes the snapshots under a running untagged
//!   container. [`Store::remove`] keeps nothing extra; use
//!   [`Store::remove_keeping`] while containers run.
//! - Everything but [`Store::pull`] blocks; gc waits for pulls and imports
//!   in progress (in any process) to finish.

#[cfg(any(test, feature = "testing"))]
pub mod build;
mod digest;
mod error;
mod fsutil;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod import;
mod limits;
pub mod manifest;
mod platform;
mod pull;
#[cfg(any(test, feature = "testing"))]
pub mod push;
mod reference;
mod store;
mod unpack;

pub use error::Error;
pub use limits::Limits;
pub use platform::Platform;
pub use pull::{Credentials, PullReport, RegistryConfig};
pub use reference::normalize_reference;
pub use store::{GcReport, Guard, ImageInfo, ResolvedImage, Store};

/// The xattr that marks an overlayfs directory opaque (set on snapshot
/// directories for OCI `.wh..wh..opq` entries).
pub const OPAQUE_XATTR: &str = unpack::OPAQUE_XATTR;
