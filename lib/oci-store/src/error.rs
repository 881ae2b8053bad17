//! The store's error type.

use std::io;

/// Everything that can go wrong in the image store. Every message names the
/// thing it is about (the reference, the blob digest, the layer entry), so it
/// can be shown to an operator as it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, and on which path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A JSON document could not be read or written.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// An image reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it is invalid.
        reason: String,
    },

    /// No image with this reference is in the store.
    #[error("image {reference} is not in the store")]
    NotFound {
        /// The (normalised) reference.
        reference: String,
    },

    /// A digest is not of the form `sha256:<64 lowercase hex digits>`.
    #[error("invalid digest {digest:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest {
        /// The digest as given.
        digest: String,
    },

    /// Content does not hash to the digest it is named by.
    #[error("{what}: content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob or layer.
        what: String,
        /// The digest it is named by.
        expected: String,
        /// The digest of what was read.
        actual: String,
    },

    /// A blob's size differs from its descriptor's.
    #[error("{what}: size is {actual} bytes, but its descriptor says {expected} bytes")]
    SizeMismatch {
        /// Which blob.
        what: String,
        /// The size in the descriptor.
        expected: u64,
        /// The size found.
        actual: u64,
    },

    /// A blob an image needs is neither in the archive nor in the store.
    #[error("{what} is missing: blob {digest} is not in the store (nor in the archive)")]
    MissingBlob {
        /// What needs it (e.g. "layer 2 of manifest sha256:...").
        what: String,
        /// The blob's digest.
        digest: String,
    },

    /// A media type the store cannot handle.
    #[error("{what}: unsupported media type {media_type:?}{hint}")]
    UnsupportedMediaType {
        /// Which descriptor.
        what: String,
        /// Its media type.
        media_type: String,
        /// An explanation, with a leading separator, or empty.
        hint: String,
    },

    /// A manifest, index or config that does not make sense.
    #[error("{what}: {reason}")]
    InvalidManifest {
        /// Which document.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An index has no manifest for the store's platform.
    #[error("{what} has no image for platform {wanted}; it has: {available}")]
    NoMatchingPlatform {
        /// Which index.
        what: String,
        /// The store's platform.
        wanted: String,
        /// The platforms the index offers, comma separated.
        available: String,
    },

    /// An image is built for another platform than the store's.
    #[error("{what} is an image for {found}, but this store holds images for {wanted}")]
    WrongPlatform {
        /// Which image.
        what: String,
        /// The image's platform.
        found: String,
        /// The store's platform.
        wanted: String,
    },

    /// A layer entry would be written outside the snapshot directory.
    #[error(
        "layer {layer}: entry {path:?} escapes the snapshot directory (path traversal); refusing the layer"
    )]
    PathTraversal {
        /// The layer's digest.
        layer: String,
        /// The entry's path as stored in the layer.
        path: String,
    },

    /// A layer entry that cannot be unpacked.
    #[error("layer {layer}: entry {path:?}: {reason}")]
    BadLayerEntry {
        /// The layer's digest.
        layer: String,
        /// The entry's path.
        path: String,
        /// What is wrong.
        reason: String,
    },

    /// Unpacking a layer entry failed at the filesystem level.
    #[error("layer {layer}: unpacking {path:?}: {source}")]
    Unpack {
        /// The layer's digest.
        layer: String,
        /// The entry's path.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An image archive that is not a valid OCI image layout.
    #[error("invalid image archive: {reason}")]
    InvalidArchive {
        /// What is wrong.
        reason: String,
    },

    /// An image archive (or layer) that ends early.
    #[error("the image archive is truncated: {reason}")]
    Truncated {
        /// Where it ended.
        reason: String,
    },

    /// An archive was imported without a tag and names no reference itself.
    #[error("the archive names no reference; give one")]
    NoReference,

    /// The archive's `org.opencontainers.image.ref.name` is only a tag.
    #[error(
        "the archive names its image {name:?} (org.opencontainers.image.ref.name), which is only a tag, not a full reference; give a reference such as registry.example/name:tag"
    )]
    BareTag {
        /// The annotation's value.
        name: String,
    },

    /// One tag was given for an archive holding several images.
    #[error("the archive holds {count} different images; one tag cannot name them all")]
    AmbiguousTag {
        /// How many images.
        count: usize,
    },

    /// Every source for a pull failed; each attempt is named.
    #[error("pulling {reference} failed: {}", attempts.join("; "))]
    Pull {
        /// The normalised reference.
        reference: String,
        /// One entry per mirror or registry tried: "where: why".
        attempts: Vec<String>,
    },

    /// A registry request failed.
    #[error("{what}: {message}")]
    Registry {
        /// What was being fetched.
        what: String,
        /// The registry client's error, with its causes.
        message: String,
    },

    /// A mirror URL in the registry configuration that cannot be used.
    #[error("mirror {url:?}: {reason}")]
    InvalidMirror {
        /// The URL as configured.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// Input past one of the store's bounds ([`crate::Limits`]): cut off
    /// there, nothing of it stored.
    #[error("{what}: {detail}; the store's bound is {bound}")]
    TooLarge {
        /// Which manifest, blob, layer or archive.
        what: String,
        /// How far it went.
        detail: String,
        /// The bound, with its unit and name.
        bound: String,
    },

    /// Storing an image under a reference something uses would move it
    /// to another image.
    #[error(
        "{reference} names image {current}, which {user} uses; storing image {new} under it would repoint it, refused unless forced"
    )]
    InUse {
        /// The normalised reference.
        reference: String,
        /// Who uses it, e.g. `workload "web"`.
        user: String,
        /// The manifest digest it names now.
        current: String,
        /// The manifest digest it would name.
        new: String,
    },

    /// A reference pinned by digest would name another image.
    #[error(
        "{reference} is pinned to {pinned}, but the image is {actual}: a reference by digest names only that digest"
    )]
    PinMismatch {
        /// The normalised reference.
        reference: String,
        /// The digest it carries.
        pinned: String,
        /// The manifest digest of the image that was to be stored.
        actual: String,
    },

    /// The store's own files are damaged.
    #[error("the image store is damaged: {reason}")]
    Corrupt {
        /// What was found.
        reason: String,
    },

    /// A background task died.
    #[error("{what}: background task failed: {reason}")]
    Task {
        /// What the task did.
        what: String,
        /// Why it ended.
        reason: String,
    },
}

impl Error {
    /// A closure turning an I/O error into [`Error::Io`] with `context`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// A closure turning a JSON error into [`Error::Json`] about `what`.
    pub(crate) fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Error {
        let what = what.into();
        move |source| Error::Json { what, source }
    }
}

/// Formats an error with all its causes: "outer: cause: root cause".
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

impl From<bramble_atomic::FileError> for Error {
    fn from(e: bramble_atomic::FileError) -> Self {
        Error::Io {
            context: format!("{} {}", e.what, e.path.display()),
            source: e.source,
        }
    }
}
