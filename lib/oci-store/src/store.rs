//! The store: layout on disk, references, blobs, snapshots, gc.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_spec::image::ImageConfiguration;
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::digest::{self, HashingReader};
use crate::fsutil::{self, Lock, TempPath};
use crate::manifest::{self, ConfigJson, Descriptor, Document, MAX_DOCUMENT};
use crate::{Error, Limits, Platform, reference, unpack};

/// The node's image store: a directory holding content-addressed blobs,
/// one unpacked snapshot per layer (keyed by chain ID), and `refs.json`
/// mapping references to manifest digests.
///
/// ```text
/// <root>/blobs/sha256/<hex>      every blob (manifests, configs, layers), verified
/// <root>/snapshots/<chain-hex>/  one overlayfs lower directory per layer
/// <root>/refs.json               reference -> manifest digest, stored time, ...
/// <root>/tmp/                    work in progress; emptied by open and gc
/// <root>/gc.lock, refs.lock      flock(2) files
/// ```
///
/// A `Store` is cheap to clone and may be shared between threads and
/// processes: writers (pull, import) hold `gc.lock` shared while they work,
/// `gc` holds it exclusively, so gc never removes the blobs of an image
/// being stored. The methods other than [`Store::pull`] block (file I/O,
/// unpacking, locks); call them from `spawn_blocking` in async code.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    platform: Platform,
    limits: Limits,
}

/// What a pull or import may not change: references in use, each with who
/// uses it. Storing another image under one of them is refused
/// ([`Error::InUse`]); storing the image it already names is not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    in_use: BTreeMap<String, String>,
}

impl Guard {
    /// Nothing protected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Protects `reference` (normalised here; one that does not parse
    /// protects nothing, as nothing can be stored under it), used by
    /// `user` (e.g. `workload "web"`, for the error).
    pub fn protect(&mut self, reference: &str, user: &str) {
        if let Ok(whole) = reference::normalize_reference(reference) {
            self.in_use
                .entry(whole)
                .and_modify(|u| {
                    u.push_str(", ");
                    u.push_str(user);
                })
                .or_insert_with(|| user.to_owned());
        }
    }

    /// Who uses `reference` (normalised), if protected.
    fn user_of(&self, reference: &str) -> Option<&str> {
        self.in_use.get(reference).map(String::as_str)
    }
}

/// A tagged image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// The image manifest's digest, `sha256:...` (for a multi-platform
    /// image: the manifest of the store's platform, not the index).
    pub digest: String,
    /// Manifest, config and (compressed) layer blobs, in bytes.
    pub size_bytes: u64,
    /// When the reference was written, in seconds since the epoch.
    pub stored_unix: u64,
    /// The image's platform from its config, e.g. `linux/arm64`.
    pub platform: String,
}

/// What the runtime needs to run an image.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The image.
    pub info: ImageInfo,
    /// Its config (entrypoint, cmd, env, user, working dir, ...).
    pub config: ImageConfiguration,
    /// One snapshot directory per layer, BOTTOM layer first. overlayfs
    /// wants them the other way round: `lowerdir=<last>:...:<first>`.
    pub layers: Vec<PathBuf>,
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub removed_blobs: u32,
    /// Snapshot directories removed.
    pub removed_snapshots: u32,
}

/// An image whose blobs are verified and whose layers are unpacked, ready
/// to be tagged.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub digest: String,
    pub size_bytes: u64,
    pub platform: String,
}

/// What one pull or import added to the store (blobs by digest, snapshots
/// by chain ID hex), so that a refused one can take it away again.
#[derive(Debug, Clone, Default)]
pub(crate) struct Written(Arc<Mutex<(Vec<String>, Vec<String>)>>);

impl Written {
    pub(crate) fn blob(&self, digest: &str) {
        if let Ok(mut w) = self.0.lock() {
            w.0.push(digest.to_owned());
        }
    }

    fn snapshot(&self, chain_hex: &str) {
        if let Ok(mut w) = self.0.lock() {
            w.1.push(chain_hex.to_owned());
        }
    }

    fn take(&self) -> (Vec<String>, Vec<String>) {
        self.0
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }
}

/// An image to tag: the reference, the prepared image, and the digests of
/// the verified indexes that led to its manifest (a reference pinned to
/// one of them names this image).
#[derive(Debug, Clone)]
pub(crate) struct TagItem {
    pub reference: String,
    pub prepared: Prepared,
    pub via: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RefsFile {
    version: u32,
    refs: BTreeMap<String, RefEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefEntry {
    digest: String,
    stored_unix: u64,
    size_bytes: u64,
    platform: String,
    /// For a reference pinned to an index: that index's digest (verified
    /// when stored), from which `digest` was picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index: Option<String>,
}

impl RefEntry {
    /// Whether the entry may stand for `reference`: one pinned by digest
    /// names only that manifest, or the index it was picked from.
    fn honours_pin(&self, reference: &str) -> bool {
        match pinned_digest(reference) {
            Some(pin) => self.digest == pin || self.index.as_deref() == Some(pin),
            None => true,
        }
    }
}

/// The digest a (normalised) reference is pinned to, if any.
fn pinned_digest(reference: &str) -> Option<&str> {
    reference
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| d.starts_with(digest::SHA256))
}

impl RefEntry {
    fn info(&self, reference: &str) -> ImageInfo {
        ImageInfo {
            reference: reference.to_owned(),
            digest: self.digest.clone(),
            size_bytes: self.size_bytes,
            stored_unix: self.stored_unix,
            platform: self.platform.clone(),
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root` for the platform this
    /// program was built for ([`Platform::host`]: `linux/arm64` on the
    /// node). Removes leftovers of interrupted writes from `tmp/` when no
    /// other process is writing to the store.
    pub fn open(root: &Path) -> Result<Store, Error> {
        Self::open_for_platform(root, Platform::host())
    }

    /// Like [`Store::open`], for images of `platform` (what it picks from
    /// multi-platform indexes, and what it accepts).
    pub fn open_for_platform(root: &Path, platform: Platform) -> Result<Store, Error> {
        let store = Store {
            root: root.to_owned(),
            platform: Platform::new(
                &platform.os,
                &platform.architecture,
                platform.variant.as_deref(),
            ),
            limits: Limits::default(),
        };
        for dir in [store.blobs_dir(), store.snapshots_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        match Lock::try_exclusive(&store.gc_lock_path())? {
            Some(_lock) => {
                let removed = store.clear_tmp()?;
                if removed > 0 {
                    info!(removed, "removed leftovers of interrupted writes");
                }
            }
            None => debug!("the store is in use; leaving tmp/ alone"),
        }
        store.load_refs()?;
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The platform the store holds images for.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The same store with other bounds on pulls and imports
    /// ([`Limits::default`] unless set).
    pub fn with_limits(mut self, limits: Limits) -> Store {
        self.limits = limits;
        self
    }

    /// The bounds on pulls and imports.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Every tagged reference, sorted by reference.
    pub fn list(&self) -> Result<Vec<ImageInfo>, Error> {
        let refs = self.load_refs()?;
        Ok(refs.refs.iter().map(|(r, e)| e.info(r)).collect())
    }

    /// Looks a reference up after normalising it (`busybox` finds
    /// `docker.io/library/busybox:latest`). `name@sha256:...` finds only
    /// the image with that digest (stored under that reference, whose index
    /// it may name, or under a tag of that repository whose manifest has
    /// that digest), and a bare `sha256:...` any reference to that manifest.
    pub fn resolve(&self, reference: &str) -> Result<Option<ImageInfo>, Error> {
        let refs = self.load_refs()?;
        if let Some(hex) = reference.strip_prefix(digest::SHA256)
            && digest::is_hex64(hex)
        {
            return Ok(refs
                .refs
                .iter()
                .find(|(_, e)| e.digest == reference)
                .map(|(r, e)| e.info(r)));
        }
        let parsed = reference::parse(reference)?;
        let whole = parsed.whole();
        if let Some(e) = refs.refs.get(&whole) {
            if e.honours_pin(&whole) {
                return Ok(Some(e.info(&whole)));
            }
            warn!(
                reference = whole,
                digest = e.digest,
                "a reference pinned by digest names another image; ignoring it"
            );
        }
        if let Some(wanted) = parsed.digest() {
            let repo = reference::repository_of(&parsed);
            for (r, e) in &refs.refs {
                let same_repo = reference::parse(r)
                    .map(|p| reference::repository_of(&p) == repo)
                    .unwrap_or(false);
                if same_repo && e.digest == wanted {
                    return Ok(Some(e.info(r)));
                }
            }
        }
        Ok(None)
    }

    /// The config and snapshot directories of a stored image, for running
    /// it. Errors if it is not stored or its snapshots are missing.
    pub fn image(&self, reference: &str) -> Result<ResolvedImage, Error> {
        let info = self.resolve(reference)?.ok_or_else(|| Error::NotFound {
            reference: reference::normalize_reference(reference)
                .unwrap_or_else(|_| reference.to_owned()),
        })?;
        let what = format!("manifest {} of {}", info.digest, info.reference);
        let bytes = self.read_blob(&info.digest, None, &what)?;
        let Document::Manifest(m) = manifest::parse_document(&bytes, &what)? else {
            return Err(Error::Corrupt {
                reason: format!("{what} is an index, not an image manifest"),
            });
        };
        let config_bytes = self.read_blob(
            &m.config.digest,
            Some(m.config.size),
            &format!("config of {what}"),
        )?;
        let (cfg, config) = parse_config(&config_bytes, &what)?;
        let mut layers = Vec::with_capacity(cfg.rootfs.diff_ids.len());
        for chain in digest::chain_ids(&cfg.rootfs.diff_ids) {
            let dir = self.snapshots_dir().join(digest::hex_of(&chain)?);
            if !dir.is_dir() {
                return Err(Error::Corrupt {
                    reason: format!(
                        "snapshot {} of {} is missing; remove the image and store it again",
                        dir.display(),
                        info.reference
                    ),
                });
            }
            layers.push(dir);
        }
        Ok(ResolvedImage {
            info,
            config,
            layers,
        })
    }

    /// Removes the reference only (blobs stay until the next [`Store::gc`]).
    pub fn untag(&self, reference: &str) -> Result<ImageInfo, Error> {
        let whole = reference::normalize_reference(reference)?;
        let _refs_lock = Lock::exclusive(&self.refs_lock_path())?;
        let mut refs = self.load_refs()?;
        let entry = refs.refs.remove(&whole).ok_or_else(|| Error::NotFound {
            reference: whole.clone(),
        })?;
        self.save_refs(&refs)?;
        info!(reference = whole, digest = entry.digest, "untagged");
        Ok(entry.info(&whole))
    }

    /// Untags `reference`, then collects garbage keeping only what other
    /// references need. If containers may run untagged images, use
    /// [`Store::remove_keeping`] with their manifest digests instead.
    pub fn remove(&self, reference: &str) -> Result<GcReport, Error> {
        self.remove_keeping(reference, &[])
    }

    /// Untags `reference`, then collects garbage keeping the manifests in
    /// `keep` (digests of images in use by containers) and everything
    /// referenced.
    pub fn remove_keeping(&self, reference: &str, keep: &[String]) -> Result<GcReport, Error> {
        for digest in keep {
            digest::hex_of(digest)?;
        }
        self.untag(reference)?;
        self.gc(keep)
    }

    /// Removes every blob and snapshot not reachable from a reference nor
    /// from a manifest digest in `keep`, and everything in `tmp/`. Waits for
    /// running pulls and imports to finish first.
    pub fn gc(&self, keep: &[String]) -> Result<GcReport, Error> {
        for digest in keep {
            digest::hex_of(digest)?;
        }
        let _gc_lock = Lock::exclusive(&self.gc_lock_path())?;
        let refs = self.load_refs()?;
        let roots: Vec<&String> = refs.refs.values().map(|e| &e.digest).chain(keep).collect();
        let mut blobs: HashSet<String> = HashSet::new();
        let mut snapshots: HashSet<String> = HashSet::new();
        for root in roots {
            self.mark(root, &mut blobs, &mut snapshots, 0);
        }
        let mut report = GcReport::default();
        for entry in read_dir(&self.blobs_dir())? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !blobs.contains(&name) {
                let path = entry.path();
                fs::remove_file(&path)
                    .map_err(Error::io(format!("removing {}", path.display())))?;
                report.removed_blobs += 1;
            }
        }
        for entry in read_dir(&self.snapshots_dir())? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !snapshots.contains(&name) {
                // Move it out of snapshots/ first: a half-removed snapshot
                // must never look like a complete one.
                let path = entry.path();
                let doomed = self.tmp_dir().join(fsutil::unique_name("gc"));
                fs::rename(&path, &doomed)
                    .map_err(Error::io(format!("moving {} away", path.display())))?;
                fs::remove_dir_all(&doomed)
                    .map_err(Error::io(format!("removing {}", doomed.display())))?;
                report.removed_snapshots += 1;
            }
        }
        if report.removed_snapshots > 0 {
            bramble_atomic::sync_dir(&self.snapshots_dir())?;
        }
        self.clear_tmp()?;
        info!(
            removed_blobs = report.removed_blobs,
            removed_snapshots = report.removed_snapshots,
            "garbage collected"
        );
        Ok(report)
    }

    /// Marks what the manifest (or index) `digest` needs.
    fn mark(
        &self,
        digest: &str,
        blobs: &mut HashSet<String>,
        snapshots: &mut HashSet<String>,
        depth: u32,
    ) {
        let Ok(hex) = digest::hex_of(digest) else {
            warn!(digest, "gc: not a digest");
            return;
        };
        blobs.insert(hex.to_owned());
        let what = format!("manifest {digest}");
        let doc = match self
            .read_blob(digest, None, &what)
            .and_then(|b| manifest::parse_document(&b, &what))
        {
            Ok(doc) => doc,
            Err(e) => {
                warn!(digest, error = %e, "gc: cannot read a root manifest");
                return;
            }
        };
        match doc {
            Document::Index(index) if depth < 4 => {
                for child in &index.manifests {
                    self.mark(&child.digest, blobs, snapshots, depth + 1);
                }
            }
            Document::Index(_) => warn!(digest, "gc: indexes nested too deeply"),
            Document::Manifest(m) => {
                for d in std::iter::once(&m.config).chain(&m.layers) {
                    if let Ok(hex) = digest::hex_of(&d.digest) {
                        blobs.insert(hex.to_owned());
                    }
                }
                let config = self
                    .read_blob(&m.config.digest, Some(m.config.size), &what)
                    .and_then(|b| parse_config_json(&b, &what));
                match config {
                    Ok(cfg) => {
                        for chain in digest::chain_ids(&cfg.rootfs.diff_ids) {
                            if let Ok(hex) = digest::hex_of(&chain) {
                                snapshots.insert(hex.to_owned());
                            }
                        }
                    }
                    Err(e) => warn!(digest, error = %e, "gc: cannot read a config"),
                }
            }
        }
    }

    /// Takes away what a refused pull or import added, except what a
    /// reference needs (another writer may have stored the same image
    /// meanwhile). Failures are logged: the refusal is what matters.
    pub(crate) fn discard(&self, written: &Written) {
        let (blobs, snapshots) = written.take();
        if blobs.is_empty() && snapshots.is_empty() {
            return;
        }
        let _refs_lock = match Lock::exclusive(&self.refs_lock_path()) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot lock the references to clean up a refused image");
                return;
            }
        };
        let mut keep_blobs: HashSet<String> = HashSet::new();
        let mut keep_snapshots: HashSet<String> = HashSet::new();
        match self.load_refs() {
            Ok(refs) => {
                for e in refs.refs.values() {
                    self.mark(&e.digest, &mut keep_blobs, &mut keep_snapshots, 0);
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot read the references to clean up a refused image");
                return;
            }
        }
        let mut removed = 0usize;
        for digest in &blobs {
            let Ok(hex) = digest::hex_of(digest) else {
                continue;
            };
            if keep_blobs.contains(hex) {
                continue;
            }
            let path = self.blobs_dir().join(hex);
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(path = %path.display(), error = %e, "cannot remove a blob"),
            }
        }
        for hex in &snapshots {
            if keep_snapshots.contains(hex) {
                continue;
            }
            let path = self.snapshots_dir().join(hex);
            let doomed = self.tmp_dir().join(fsutil::unique_name("discard"));
            match fs::rename(&path, &doomed) {
                Ok(()) => {
                    fsutil::remove_any(&doomed);
                    removed += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(path = %path.display(), error = %e, "cannot remove a snapshot"),
            }
        }
        info!(removed, "took away what a refused image had stored");
    }

    // --- layout ---

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    fn gc_lock_path(&self) -> PathBuf {
        self.root.join("gc.lock")
    }

    fn refs_lock_path(&self) -> PathBuf {
        self.root.join("refs.lock")
    }

    /// The path of a blob (which may not exist).
    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, Error> {
        Ok(self.blobs_dir().join(digest::hex_of(digest)?))
    }

    /// Whether the blob is stored.
    pub(crate) fn has_blob(&self, digest: &str) -> Result<bool, Error> {
        Ok(self.blob_path(digest)?.is_file())
    }

    /// A shared hold on the store for a writer: gc waits until it is gone.
    pub(crate) fn writer_lock(&self) -> Result<Lock, Error> {
        Lock::shared(&self.gc_lock_path())
    }

    fn clear_tmp(&self) -> Result<usize, Error> {
        let mut removed = 0;
        for entry in read_dir(&self.tmp_dir())? {
            fsutil::remove_any(&entry.path());
            removed += 1;
        }
        Ok(removed)
    }

    // --- refs ---

    fn load_refs(&self) -> Result<RefsFile, Error> {
        let path = self.refs_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                reason: format!("{} does not parse: {e}", path.display()),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RefsFile {
                version: 1,
                refs: BTreeMap::new(),
            }),
            Err(e) => Err(Error::Io {
                context: format!("reading {}", path.display()),
                source: e,
            }),
        }
    }

    fn save_refs(&self, refs: &RefsFile) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(refs).map_err(Error::json("refs.json"))?;
        fsutil::write_atomic(&self.tmp_dir(), &self.refs_path(), &bytes)
    }

    /// Writes references to prepared images, all at once, or none: a
    /// reference pinned by digest only to that image ([`Error::PinMismatch`]),
    /// and a reference `guard` protects not to another image than the one
    /// it names ([`Error::InUse`]).
    pub(crate) fn tag(&self, items: &[TagItem], guard: &Guard) -> Result<Vec<ImageInfo>, Error> {
        let _refs_lock = Lock::exclusive(&self.refs_lock_path())?;
        let mut refs = self.load_refs()?;
        refs.version = 1;
        let now = fsutil::now_unix();
        let mut entries = Vec::with_capacity(items.len());
        for item in items {
            let p = &item.prepared;
            let index = match pinned_digest(&item.reference) {
                None => None,
                Some(pin) if pin == p.digest => None,
                Some(pin) if item.via.iter().any(|d| d == pin) => Some(pin.to_owned()),
                Some(pin) => {
                    return Err(Error::PinMismatch {
                        reference: item.reference.clone(),
                        pinned: pin.to_owned(),
                        actual: p.digest.clone(),
                    });
                }
            };
            if let (Some(user), Some(current)) = (
                guard.user_of(&item.reference),
                refs.refs.get(&item.reference),
            ) && current.digest != p.digest
            {
                return Err(Error::InUse {
                    reference: item.reference.clone(),
                    user: user.to_owned(),
                    current: current.digest.clone(),
                    new: p.digest.clone(),
                });
            }
            entries.push((
                item.reference.clone(),
                RefEntry {
                    digest: p.digest.clone(),
                    stored_unix: now,
                    size_bytes: p.size_bytes,
                    platform: p.platform.clone(),
                    index,
                },
            ));
        }
        let mut out = Vec::with_capacity(entries.len());
        for (reference, entry) in entries {
            if let Some(old) = refs.refs.get(&reference)
                && old.digest != entry.digest
            {
                info!(
                    reference,
                    from = old.digest,
                    to = entry.digest,
                    "reference repointed"
                );
            }
            out.push(entry.info(&reference));
            refs.refs.insert(reference, entry);
        }
        self.save_refs(&refs)?;
        for i in &out {
            info!(reference = i.reference, digest = i.digest, "tagged");
        }
        Ok(out)
    }

    // --- blobs ---

    /// Streams `reader` into the blob `digest`, verifying content and
    /// (if given) size; nothing is stored unless both match. Returns the
    /// number of bytes read.
    pub(crate) fn write_blob<R: Read>(
        &self,
        reader: R,
        digest: &str,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<u64, Error> {
        let dest = self.blob_path(digest)?;
        let mut hashing = HashingReader::new(reader);
        let tmp = if dest.is_file() {
            io::copy(&mut hashing, &mut io::sink())
                .map_err(Error::io(format!("reading {what}")))?;
            None
        } else {
            let tmp = TempPath::new(self.tmp_dir().join(fsutil::unique_name("blob")));
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(tmp.path())
                .map_err(Error::io(format!("creating {}", tmp.path().display())))?;
            io::copy(&mut hashing, &mut file).map_err(Error::io(format!("storing {what}")))?;
            Some((tmp, file))
        };
        let (actual, size) = hashing.finish();
        if let Some(expected) = expected_size
            && size != expected
        {
            return Err(Error::SizeMismatch {
                what: what.to_owned(),
                expected,
                actual: size,
            });
        }
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: what.to_owned(),
                expected: digest.to_owned(),
                actual,
            });
        }
        if let Some((tmp, file)) = tmp {
            file.sync_all()
                .map_err(Error::io(format!("syncing {}", tmp.path().display())))?;
            drop(file);
            bramble_atomic::rename(tmp.path(), &dest)?;
            tmp.disarm();
            debug!(digest, size, "blob stored");
        }
        Ok(size)
    }

    /// Reads a (small) blob, checking its size and content.
    pub(crate) fn read_blob(
        &self,
        digest: &str,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        let path = self.blob_path(digest)?;
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::MissingBlob {
                    what: what.to_owned(),
                    digest: digest.to_owned(),
                });
            }
            Err(e) => {
                return Err(Error::Io {
                    context: format!("opening {}", path.display()),
                    source: e,
                });
            }
        };
        let len = file
            .metadata()
            .map_err(Error::io(format!("stat of {}", path.display())))?
            .len();
        if let Some(expected) = expected_size
            && len != expected
        {
            return Err(Error::SizeMismatch {
                what: what.to_owned(),
                expected,
                actual: len,
            });
        }
        if len > MAX_DOCUMENT {
            return Err(Error::InvalidManifest {
                what: what.to_owned(),
                reason: format!(
                    "{len} bytes is too large for a manifest or config (limit {MAX_DOCUMENT})"
                ),
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut bytes)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        let actual = digest::sha256_of(&bytes);
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: what.to_owned(),
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Checks a layer blob is stored with the descriptor's size.
    fn check_layer_blob(&self, layer: &Descriptor, what: &str) -> Result<(), Error> {
        let path = self.blob_path(&layer.digest)?;
        match fs::metadata(&path) {
            Ok(m) if m.len() == layer.size => Ok(()),
            Ok(m) => Err(Error::SizeMismatch {
                what: what.to_owned(),
                expected: layer.size,
                actual: m.len(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::MissingBlob {
                what: what.to_owned(),
                digest: layer.digest.clone(),
            }),
            Err(e) => Err(Error::Io {
                context: format!("stat of {}", path.display()),
                source: e,
            }),
        }
    }

    // --- images ---

    /// Verifies the image manifest `digest` and everything it needs, and
    /// unpacks its layers; the caller then tags it with [`Store::tag`].
    /// Snapshots it unpacks are recorded in `written`.
    pub(crate) fn prepare(&self, digest: &str, written: &Written) -> Result<Prepared, Error> {
        let what = format!("manifest {digest}");
        let bytes = self.read_blob(digest, None, &what)?;
        let Document::Manifest(m) = manifest::parse_document(&bytes, &what)? else {
            return Err(Error::InvalidManifest {
                what,
                reason: "is an index, expected an image manifest".to_owned(),
            });
        };
        manifest::check_config_type(&m.config, &what)?;
        if m.layers.is_empty() {
            return Err(Error::InvalidManifest {
                what,
                reason: "has no layers".to_owned(),
            });
        }
        self.check_declared_sizes(&m, &what)?;
        let mut compressions = Vec::with_capacity(m.layers.len());
        for (i, layer) in m.layers.iter().enumerate() {
            let layer_what = format!("layer {} ({}) of {what}", i + 1, layer.digest);
            compressions.push(manifest::layer_compression(&layer.media_type, &layer_what)?);
            digest::hex_of(&layer.digest)?;
            self.check_layer_blob(layer, &layer_what)?;
        }
        let config_what = format!("config of {what}");
        let config_bytes = self.read_blob(&m.config.digest, Some(m.config.size), &config_what)?;
        let (cfg, _) = parse_config(&config_bytes, &config_what)?;
        let platform = cfg.platform();
        if !self.platform.matches(&platform) {
            return Err(Error::WrongPlatform {
                what,
                found: platform.to_string(),
                wanted: self.platform.to_string(),
            });
        }
        if cfg.rootfs.kind != "layers" {
            return Err(Error::InvalidManifest {
                what: config_what,
                reason: format!("rootfs.type is {:?}, expected \"layers\"", cfg.rootfs.kind),
            });
        }
        if cfg.rootfs.diff_ids.len() != m.layers.len() {
            return Err(Error::InvalidManifest {
                what: config_what,
                reason: format!(
                    "lists {} diff_ids for {} layers",
                    cfg.rootfs.diff_ids.len(),
                    m.layers.len()
                ),
            });
        }
        for diff_id in &cfg.rootfs.diff_ids {
            digest::hex_of(diff_id)?;
        }
        let chains = digest::chain_ids(&cfg.rootfs.diff_ids);
        // What this image may still unpack to, across its layers.
        let mut budget = self.limits.image_bytes;
        for (i, layer) in m.layers.iter().enumerate() {
            let lowers = chains[..i]
                .iter()
                .rev()
                .map(|c| digest::hex_of(c).map(|hex| self.snapshots_dir().join(hex)))
                .collect::<Result<Vec<_>, _>>()?;
            let unpacked = self.ensure_snapshot(
                layer,
                &cfg.rootfs.diff_ids[i],
                &chains[i],
                compressions[i],
                &lowers,
                &format!("layer {} ({}) of {what}", i + 1, layer.digest),
                budget,
            )?;
            if let Some(bytes) = unpacked {
                written.snapshot(digest::hex_of(&chains[i])?);
                budget = budget.saturating_sub(bytes);
            }
        }
        let size_bytes =
            bytes.len() as u64 + m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>();
        Ok(Prepared {
            digest: digest.to_owned(),
            size_bytes,
            platform: platform.to_string(),
        })
    }

    /// Refuses a manifest whose config or layers declare more than the
    /// store reads or holds, before anything big is fetched or unpacked.
    pub(crate) fn check_declared_sizes(
        &self,
        m: &manifest::Manifest,
        what: &str,
    ) -> Result<(), Error> {
        if m.config.size > MAX_DOCUMENT {
            return Err(Error::TooLarge {
                what: format!("config of {what}"),
                detail: format!("its descriptor says {} bytes", m.config.size),
                bound: format!("{MAX_DOCUMENT} bytes per image config"),
            });
        }
        let layers = m
            .layers
            .iter()
            .fold(0u64, |sum, l| sum.saturating_add(l.size));
        if layers > self.limits.image_bytes {
            return Err(Error::TooLarge {
                what: what.to_owned(),
                detail: format!(
                    "its {} layers declare {layers} bytes compressed",
                    m.layers.len()
                ),
                bound: format!("{} bytes per image", self.limits.image_bytes),
            });
        }
        if m.layers.len() as u64 > MAX_LAYERS {
            return Err(Error::TooLarge {
                what: what.to_owned(),
                detail: format!("it has {} layers", m.layers.len()),
                bound: format!("{MAX_LAYERS} layers per image"),
            });
        }
        Ok(())
    }

    /// Unpacks a layer into `snapshots/<chain>` unless it is there already,
    /// refusing it past `max_bytes` uncompressed or the store's entries
    /// bound; returns the uncompressed bytes read, or None if it was there.
    #[allow(clippy::too_many_arguments)]
    fn ensure_snapshot(
        &self,
        layer: &Descriptor,
        diff_id: &str,
        chain_id: &str,
        compression: manifest::Compression,
        lowers: &[PathBuf],
        what: &str,
        max_bytes: u64,
    ) -> Result<Option<u64>, Error> {
        let dest = self.snapshots_dir().join(digest::hex_of(chain_id)?);
        if dest.is_dir() {
            debug!(layer = layer.digest, "snapshot already present");
            return Ok(None);
        }
        let tmp = TempPath::new(self.tmp_dir().join(fsutil::unique_name("unpack")));
        fs::create_dir(tmp.path())
            .map_err(Error::io(format!("creating {}", tmp.path().display())))?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
            .map_err(Error::io(format!("chmod of {}", tmp.path().display())))?;
        let unpacked = unpack::unpack_layer_within(
            &self.blob_path(&layer.digest)?,
            &layer.digest,
            diff_id,
            compression,
            tmp.path(),
            lowers,
            &unpack::Bounds {
                what,
                max_bytes,
                image_bytes: self.limits.image_bytes,
                max_entries: self.limits.layer_entries,
            },
        )?;
        // One syncfs rather than an fsync per file: everything of the
        // snapshot is on disk before it appears under snapshots/.
        let fd = rustix::fs::open(
            tmp.path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .and_then(|fd| rustix::fs::syncfs(&fd))
        .map_err(|e| Error::Io {
            context: format!("syncing {}", tmp.path().display()),
            source: e.into(),
        });
        fd?;
        match fs::rename(tmp.path(), &dest) {
            Ok(()) => {
                tmp.disarm();
                bramble_atomic::sync_dir(&self.snapshots_dir())?;
                info!(layer = layer.digest, chain_id, "layer unpacked");
                Ok(Some(unpacked))
            }
            // Another writer unpacked the same layer meanwhile.
            Err(_) if dest.is_dir() => Ok(None),
            Err(e) => Err(Error::Io {
                context: format!("renaming {} to {}", tmp.path().display(), dest.display()),
                source: e,
            }),
        }
    }
}

/// Most layers an image may have (overlayfs stacks at most 500 lower
/// directories; real images have tens).
const MAX_LAYERS: u64 = 256;

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, Error> {
    fs::read_dir(dir)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(Error::io(format!("listing {}", dir.display())))
}

fn parse_config_json(bytes: &[u8], what: &str) -> Result<ConfigJson, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::InvalidManifest {
        what: what.to_owned(),
        reason: format!("not an image config: {e}"),
    })
}

/// The store's view of a config and the full OCI one.
fn parse_config(bytes: &[u8], what: &str) -> Result<(ConfigJson, ImageConfiguration), Error> {
    let cfg = parse_config_json(bytes, what)?;
    let full = ImageConfiguration::from_reader(bytes).map_err(|e| Error::InvalidManifest {
        what: what.to_owned(),
        reason: format!("not an OCI image config: {e}"),
    })?;
    Ok((cfg, full))
}
