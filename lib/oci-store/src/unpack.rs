//! Unpacking a layer blob into an overlayfs lower directory.
//!
//! Every path is resolved one component at a time from the snapshot's root
//! directory with `O_NOFOLLOW`, so neither `..`, absolute paths nor symbolic
//! links planted by earlier entries can make the layer write outside it.
//! OCI whiteouts become overlayfs whiteouts: `.wh.NAME` a character device
//! 0:0 named `NAME`, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on
//! its directory.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use flate2::read::MultiGzDecoder;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use tracing::{debug, warn};

use crate::Error;
use crate::digest::{Tally, TallyReader};
use crate::limits::BoundedReader;
use crate::manifest::Compression;

/// The xattr overlayfs reads to make a directory opaque.
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How much one layer may unpack to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds<'a> {
    /// The layer, for errors: "layer 2 (sha256:...) of manifest sha256:...".
    pub what: &'a str,
    /// Uncompressed bytes this layer may still read (what is left of the
    /// image's bound).
    pub max_bytes: u64,
    /// The image's bound, for the error.
    pub image_bytes: u64,
    /// Entries the layer may hold.
    pub max_entries: u64,
}

/// [`unpack_layer_within`] the default [`crate::Limits`] (kept for callers
/// outside the store, which has its own bounds).
#[allow(dead_code)]
pub(crate) fn unpack_layer(
    blob: &Path,
    digest: &str,
    diff_id: &str,
    compression: Compression,
    dest: &Path,
    lowers: &[PathBuf],
) -> Result<(), Error> {
    let limits = crate::Limits::default();
    let what = format!("layer {digest}");
    unpack_layer_within(
        blob,
        digest,
        diff_id,
        compression,
        dest,
        lowers,
        &Bounds {
            what: &what,
            max_bytes: limits.image_bytes,
            image_bytes: limits.image_bytes,
            max_entries: limits.layer_entries,
        },
    )
    .map(drop)
}

/// Unpacks the layer blob at `blob` into the empty directory `dest`,
/// checking the blob hashes to `digest` and its uncompressed tar to
/// `diff_id`. `lowers` are the snapshots of the layers below, top first:
/// a parent directory the layer does not list is created with the
/// attributes it has there (overlayfs shows the upper directory's mode and
/// owner, so a `tmp/x` entry must not turn `/tmp` into 0755 root).
/// Stops with [`Error::TooLarge`] once the uncompressed stream passes
/// `bounds.max_bytes` or the entries `bounds.max_entries`; returns the
/// uncompressed bytes read.
pub(crate) fn unpack_layer_within(
    blob: &Path,
    digest: &str,
    diff_id: &str,
    compression: Compression,
    dest: &Path,
    lowers: &[PathBuf],
    bounds: &Bounds<'_>,
) -> Result<u64, Error> {
    let layer_err = |reason: String| Error::InvalidManifest {
        what: format!("layer {digest}"),
        reason,
    };
    let file =
        File::open(blob).map_err(Error::io(format!("opening layer blob {}", blob.display())))?;
    let compressed_tally = Tally::shared();
    let uncompressed_tally = Tally::shared();
    let compressed = TallyReader::new(BufReader::new(file), Rc::clone(&compressed_tally));
    let decompressed: Box<dyn Read> = match compression {
        Compression::None => Box::new(compressed),
        Compression::Gzip => Box::new(MultiGzDecoder::new(compressed)),
    };
    let over = Rc::new(Cell::new(false));
    let bounded = BoundedReader::new(decompressed, bounds.max_bytes, Rc::clone(&over));
    let uncompressed = TallyReader::new(bounded, Rc::clone(&uncompressed_tally));
    let mut archive = tar::Archive::new(uncompressed);
    let too_large = || Error::TooLarge {
        what: bounds.what.to_owned(),
        detail: if bounds.max_bytes == bounds.image_bytes {
            format!("it unpacks to more than {} bytes", bounds.max_bytes)
        } else {
            format!(
                "it unpacks to more than the {} bytes left of the image's bound after the layers below",
                bounds.max_bytes
            )
        },
        bound: format!(
            "{} uncompressed bytes per image (Limits::image_bytes)",
            bounds.image_bytes
        ),
    };

    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Io {
        context: format!("opening snapshot directory {}", dest.display()),
        source: e.into(),
    })?;
    let mut unpacker = Unpacker {
        layer: digest.to_owned(),
        root,
        dest: dest.to_owned(),
        dir_times: Vec::new(),
        entries: 0,
        lowers: lowers.to_vec(),
    };
    let entries = archive
        .entries()
        .map_err(|e| layer_err(format!("not a tar archive: {e}")))?;
    let mut seen = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            if over.get() {
                too_large()
            } else {
                layer_err(format!("reading the layer's tar: {e}"))
            }
        })?;
        seen += 1;
        if seen > bounds.max_entries {
            return Err(Error::TooLarge {
                what: bounds.what.to_owned(),
                detail: format!("it holds more than {} entries", bounds.max_entries),
                bound: format!(
                    "{} entries per layer (Limits::layer_entries)",
                    bounds.max_entries
                ),
            });
        }
        match unpacker.entry(&mut entry) {
            Err(_) if over.get() => return Err(too_large()),
            other => other?,
        }
    }
    if over.get() {
        return Err(too_large());
    }
    unpacker.finish()?;
    // Read what the tar reader left (end-of-archive blocks, padding, the
    // gzip trailer) so both digests cover the whole blob.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| {
        if over.get() {
            too_large()
        } else {
            layer_err(format!("reading the end of the layer: {e}"))
        }
    })?;
    drop(rest);

    let (actual, _) = Tally::take(&compressed_tally);
    if actual != digest {
        return Err(Error::DigestMismatch {
            what: format!("layer blob {digest}"),
            expected: digest.to_owned(),
            actual,
        });
    }
    let (actual, size) = Tally::take(&uncompressed_tally);
    if actual != diff_id {
        return Err(Error::DigestMismatch {
            what: format!("uncompressed layer {digest} (the config's rootfs.diff_ids)"),
            expected: diff_id.to_owned(),
            actual,
        });
    }
    debug!(
        layer = digest,
        entries = unpacker.entries,
        bytes = size,
        "layer unpacked"
    );
    Ok(size)
}

/// Ownership, permissions and time of an entry.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

impl Meta {
    fn times(&self) -> Timestamps {
        let t = Timespec {
            tv_sec: i64::try_from(self.mtime).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }
}

struct Unpacker {
    layer: String,
    root: OwnedFd,
    dest: PathBuf,
    /// Directories whose mtime is set at the end (adding entries to a
    /// directory changes its mtime).
    dir_times: Vec<(Vec<OsString>, Meta)>,
    entries: u64,
    /// Snapshots of the layers below, top first.
    lowers: Vec<PathBuf>,
}

impl Unpacker {
    fn bad(&self, path: &str, reason: impl Into<String>) -> Error {
        Error::BadLayerEntry {
            layer: self.layer.clone(),
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    fn sys(&self, path: &str, what: &str) -> impl FnOnce(Errno) -> Error {
        let layer = self.layer.clone();
        let path = path.to_owned();
        let what = what.to_owned();
        move |e| Error::Unpack {
            layer,
            path,
            source: io::Error::other(format!("{what}: {}", io::Error::from(e))),
        }
    }

    /// The normal components of an entry path; `..`, `/` and the like are
    /// refused.
    fn components(&self, raw: &[u8], shown: &str) -> Result<Vec<OsString>, Error> {
        let mut out = Vec::new();
        for c in Path::new(OsStr::from_bytes(raw)).components() {
            match c {
                Component::Normal(s) => out.push(s.to_owned()),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(Error::PathTraversal {
                        layer: self.layer.clone(),
                        path: shown.to_owned(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The attributes of the directory `comps` as the layers below show it,
    /// if they have it (and do not hide it by a whiteout or opaque dir).
    fn lower_dir_meta(&self, comps: &[OsString]) -> Option<Meta> {
        for lower in &self.lowers {
            let mut path = lower.clone();
            for (i, c) in comps.iter().enumerate() {
                path.push(c);
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {
                        if i + 1 == comps.len() {
                            return Some(Meta {
                                mode: m.mode() & 0o7777,
                                uid: m.uid(),
                                gid: m.gid(),
                                mtime: u64::try_from(m.mtime()).unwrap_or(0),
                            });
                        }
                    }
                    // A whiteout, file or symlink hides everything below.
                    Ok(_) => return None,
                    Err(_) => {
                        // Not in this layer; an opaque parent hides the
                        // layers further down.
                        let mut parent = path.clone();
                        parent.pop();
                        let mut buf = [0u8; 4];
                        if rustix::fs::lgetxattr(&parent, OPAQUE_XATTR, &mut buf[..]).is_ok() {
                            return None;
                        }
                        break;
                    }
                }
            }
        }
        None
    }

    /// Opens the directory at `comps` below the root, never following
    /// symbolic links, creating missing directories if `create` (with the
    /// attributes of the layers below, else 0755 root).
    fn open_dir(
        &mut self,
        comps: &[OsString],
        shown: &str,
        create: bool,
    ) -> Result<OwnedFd, Error> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut fd = rustix::fs::openat(&self.root, ".", flags, Mode::empty())
            .map_err(self.sys(shown, "opening the snapshot root"))?;
        for (i, c) in comps.iter().enumerate() {
            let next = match rustix::fs::openat(&fd, c.as_os_str(), flags, Mode::empty()) {
                Ok(next) => next,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&fd, c.as_os_str(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.sys(shown, "creating a parent directory")(e)),
                    }
                    let next = rustix::fs::openat(&fd, c.as_os_str(), flags, Mode::empty())
                        .map_err(self.sys(shown, "opening a parent directory"))?;
                    let implicit = &comps[..=i];
                    match self.lower_dir_meta(implicit) {
                        Some(meta) => {
                            self.apply_fd_meta(next.as_fd(), meta, &[], shown, false)?;
                            self.dir_times.push((implicit.to_vec(), meta));
                        }
                        None => rustix::fs::fchmod(&next, Mode::from_raw_mode(0o755))
                            .map_err(self.sys(shown, "chmod of a parent directory"))?,
                    }
                    next
                }
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    let so_far = join(&comps[..=i]);
                    return Err(self.bad(
                        shown,
                        format!(
                            "{so_far} is a symbolic link or not a directory; refusing to write through it"
                        ),
                    ));
                }
                Err(e) => return Err(self.sys(shown, "opening a parent directory")(e)),
            };
            fd = next;
        }
        Ok(fd)
    }

    /// The type of `name` in `dir`, if it exists.
    fn existing(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        shown: &str,
    ) -> Result<Option<FileType>, Error> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.sys(shown, "stat")(e)),
        }
    }

    /// Removes whatever is at `comps` (a file or a whole tree).
    fn remove(&self, dir: &OwnedFd, comps: &[OsString], shown: &str) -> Result<(), Error> {
        let Some(name) = comps.last() else {
            return Ok(());
        };
        match self.existing(dir, name, shown)? {
            None => Ok(()),
            Some(FileType::Directory) => {
                // The parents were opened without following links, so the
                // plain path names the same directory.
                let path = comps.iter().fold(self.dest.clone(), |p, c| p.join(c));
                std::fs::remove_dir_all(&path).map_err(|e| Error::Unpack {
                    layer: self.layer.clone(),
                    path: shown.to_owned(),
                    source: e,
                })
            }
            Some(_) => rustix::fs::unlinkat(dir, name.as_os_str(), AtFlags::empty())
                .map_err(self.sys(shown, "removing the existing entry")),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Error> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let header = entry.header();
        let kind = header.entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            return Ok(());
        }
        self.entries += 1;
        let comps = self.components(&raw, &shown)?;
        let num = |v: io::Result<u64>, what: &str| -> Result<u32, Error> {
            let v =
                v.map_err(|e| self.bad(&shown, format!("bad {what} in the tar header: {e}")))?;
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| self.bad(&shown, format!("{what} {v} is out of range")))
        };
        let meta = Meta {
            mode: header
                .mode()
                .map_err(|e| self.bad(&shown, format!("bad mode in the tar header: {e}")))?
                & 0o7777,
            uid: num(header.uid(), "uid")?,
            gid: num(header.gid(), "gid")?,
            mtime: header
                .mtime()
                .map_err(|e| self.bad(&shown, format!("bad mtime in the tar header: {e}")))?,
        };
        let device = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let size = entry.size();
        let xattrs =
            pax_xattrs(entry).map_err(|e| self.bad(&shown, format!("bad PAX header: {e}")))?;

        // Whiteouts.
        if let Some(last) = comps.last() {
            let name = last.as_bytes();
            if let Some(target) = name.strip_prefix(b".wh.") {
                let parent = &comps[..comps.len() - 1];
                let dir = self.open_dir(parent, &shown, true)?;
                if target == b".wh..opq" {
                    return rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
                        .map_err(self.sys(&shown, "setting trusted.overlay.opaque"));
                }
                if target.starts_with(b".wh.") {
                    debug!(path = shown, "skipping an aufs metadata entry");
                    return Ok(());
                }
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(Error::PathTraversal {
                        layer: self.layer.clone(),
                        path: shown,
                    });
                }
                let mut victim = parent.to_vec();
                victim.push(OsStr::from_bytes(target).to_owned());
                self.remove(&dir, &victim, &shown)?;
                return rustix::fs::mknodat(
                    &dir,
                    OsStr::from_bytes(target),
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(self.sys(&shown, "creating the whiteout device 0:0"));
            }
        }

        let Some(name) = comps.last().cloned() else {
            // The layer's root directory itself ("./").
            if kind.is_dir() {
                self.apply_fd_meta(&self.root, meta, &xattrs, &shown, false)?;
                self.dir_times.push((Vec::new(), meta));
            }
            return Ok(());
        };
        let parent = &comps[..comps.len() - 1];
        let dir = self.open_dir(parent, &shown, true)?;
        let name = name.as_os_str();

        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.remove(&dir, &comps, &shown)?;
                let fd = rustix::fs::openat(
                    &dir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(self.sys(&shown, "creating the file"))?;
                let mut file = File::from(fd);
                let written = io::copy(entry, &mut file).map_err(|e| Error::Unpack {
                    layer: self.layer.clone(),
                    path: shown.clone(),
                    source: e,
                })?;
                if kind != tar::EntryType::GNUSparse && written != size {
                    return Err(self.bad(
                        &shown,
                        format!("the layer is truncated: {written} of {size} bytes"),
                    ));
                }
                self.apply_fd_meta(file.as_fd(), meta, &xattrs, &shown, true)?;
            }
            tar::EntryType::Directory => {
                match self.existing(&dir, name, &shown)? {
                    Some(FileType::Directory) => {}
                    Some(_) => {
                        self.remove(&dir, &comps, &shown)?;
                        self.mkdir(&dir, name, &shown)?;
                    }
                    None => self.mkdir(&dir, name, &shown)?,
                }
                let fd = rustix::fs::openat(
                    &dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(self.sys(&shown, "opening the directory"))?;
                self.apply_fd_meta(fd.as_fd(), meta, &xattrs, &shown, false)?;
                self.dir_times.push((comps.clone(), meta));
            }
            tar::EntryType::Symlink => {
                let target =
                    link.ok_or_else(|| self.bad(&shown, "symbolic link without a target"))?;
                self.remove(&dir, &comps, &shown)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, name)
                    .map_err(self.sys(&shown, "creating the symbolic link"))?;
                self.chown_at(&dir, name, &meta, &shown, "chown of the symbolic link")?;
                self.times_at(
                    &dir,
                    name,
                    &meta,
                    &shown,
                    "setting the symbolic link's times",
                )?;
            }
            tar::EntryType::Link => {
                let target = link.ok_or_else(|| self.bad(&shown, "hard link without a target"))?;
                let target_shown = String::from_utf8_lossy(&target).into_owned();
                let target_comps = self.components(&target, &target_shown)?;
                let Some(target_name) = target_comps.last() else {
                    return Err(self.bad(&shown, "hard link to the layer's root"));
                };
                let target_dir =
                    match self.open_dir(&target_comps[..target_comps.len() - 1], &shown, false) {
                        Ok(d) => d,
                        Err(Error::Unpack { .. }) => {
                            return Err(self.bad(
                                &shown,
                                format!("hard link target {target_shown:?} is not in this layer"),
                            ));
                        }
                        Err(e) => return Err(e),
                    };
                if self.existing(&target_dir, target_name, &shown)?.is_none() {
                    return Err(self.bad(
                        &shown,
                        format!("hard link target {target_shown:?} is not in this layer"),
                    ));
                }
                if target_comps != comps {
                    self.remove(&dir, &comps, &shown)?;
                    rustix::fs::linkat(
                        &target_dir,
                        target_name.as_os_str(),
                        &dir,
                        name,
                        AtFlags::empty(),
                    )
                    .map_err(self.sys(&shown, "creating the hard link"))?;
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let file_type = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                self.remove(&dir, &comps, &shown)?;
                rustix::fs::mknodat(
                    &dir,
                    name,
                    file_type,
                    Mode::from_raw_mode(meta.mode),
                    rustix::fs::makedev(device.0, device.1),
                )
                .map_err(self.sys(&shown, "creating the device node"))?;
                self.chown_at(&dir, name, &meta, &shown, "chown of the device node")?;
                rustix::fs::chmodat(&dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                    .map_err(self.sys(&shown, "chmod of the device node"))?;
                self.times_at(&dir, name, &meta, &shown, "setting the device node's times")?;
            }
            other => {
                return Err(self.bad(&shown, format!("unsupported tar entry type {other:?}")));
            }
        }
        Ok(())
    }

    /// Owner of `name` in `dir`, not following a symbolic link (for entries
    /// that cannot be opened: links, device nodes).
    fn chown_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        shown: &str,
        what: &str,
    ) -> Result<(), Error> {
        rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(self.sys(shown, what))
    }

    /// Times of `name` in `dir`, not following a symbolic link.
    fn times_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        shown: &str,
        what: &str,
    ) -> Result<(), Error> {
        rustix::fs::utimensat(dir, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(self.sys(shown, what))
    }

    fn mkdir(&self, dir: &OwnedFd, name: &OsStr, shown: &str) -> Result<(), Error> {
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
            .map_err(self.sys(shown, "creating the directory"))
    }

    /// chown, chmod (after chown, which clears set-id bits), xattrs and, for
    /// non-directories, times.
    fn apply_fd_meta(
        &self,
        fd: impl AsFd,
        meta: Meta,
        xattrs: &[(String, Vec<u8>)],
        shown: &str,
        times: bool,
    ) -> Result<(), Error> {
        let fd = fd.as_fd();
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        )
        .map_err(self.sys(shown, "chown"))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(self.sys(shown, "chmod"))?;
        for (name, value) in xattrs {
            if name.starts_with("trusted.") {
                warn!(
                    layer = self.layer,
                    path = shown,
                    xattr = name,
                    "ignoring a trusted.* xattr in a layer"
                );
                continue;
            }
            match rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::OPNOTSUPP) => {
                    warn!(
                        layer = self.layer,
                        path = shown,
                        xattr = name,
                        "the filesystem does not support this xattr"
                    );
                }
                Err(e) => return Err(self.sys(shown, &format!("setting xattr {name}"))(e)),
            }
        }
        if times {
            rustix::fs::futimens(fd, &meta.times()).map_err(self.sys(shown, "setting times"))?;
        }
        Ok(())
    }

    /// Sets the directories' mtimes, deepest first.
    fn finish(&mut self) -> Result<(), Error> {
        let dirs = std::mem::take(&mut self.dir_times);
        for (comps, meta) in dirs.iter().rev() {
            let shown = join(comps);
            let fd = self.open_dir(comps, &shown, false)?;
            rustix::fs::futimens(&fd, &meta.times())
                .map_err(self.sys(&shown, "setting the directory's times"))?;
        }
        Ok(())
    }
}

/// `SCHILY.xattr.*` records of an entry's PAX header.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Ok(key) = ext.key()
                && let Some(name) = key.strip_prefix("SCHILY.xattr.")
            {
                out.push((name.to_owned(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

fn join(comps: &[OsString]) -> String {
    comps
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}
