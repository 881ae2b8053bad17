//! Importing an OCI image layout from a tar stream (`skopeo copy ...
//! oci-archive:image.tar`, `umoci`, [`crate::build`]), in one pass.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path};
use std::rc::Rc;

use flate2::read::MultiGzDecoder;
use serde::Deserialize;
use tracing::{debug, info};

use crate::limits::BoundedReader;
use crate::manifest::{self, Descriptor, Document, MAX_DOCUMENT};
use crate::store::{Prepared, TagItem, Written};
use crate::{Error, Guard, ImageInfo, Store, digest, reference};

/// `oci-layout`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciLayout {
    image_layout_version: String,
}

/// Remembers whether the underlying reader hit its end: `tar` stops at the
/// first all-zero block of a complete archive, so reaching the end of the
/// stream means the archive was cut short.
struct EofTracker<R> {
    inner: R,
    hit_eof: bool,
}

impl<R: Read> Read for EofTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        Ok(n)
    }
}

fn read_error(e: io::Error) -> Error {
    let text = e.to_string();
    if e.kind() == io::ErrorKind::UnexpectedEof
        || text.contains("unexpected EOF")
        || text.contains("failed to read entire block")
    {
        Error::Truncated {
            reason: format!("reading the archive: {e}"),
        }
    } else {
        Error::InvalidArchive {
            reason: format!("reading the archive: {e}"),
        }
    }
}

/// An entry's path without `./` or a leading `/`.
fn clean_path(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

impl Store {
    /// Imports the images of an OCI image layout tar stream (optionally
    /// gzip-compressed), reading it once: every blob is streamed into the
    /// store and verified against the digest its path names. Then
    /// `index.json` is resolved to image manifests (nested indexes and
    /// multi-platform sets by the store's platform), every needed blob is
    /// checked, layers are unpacked, and the references are written together.
    ///
    /// The reference is `tag` if given (the archive must then hold one
    /// image), else each image's `org.opencontainers.image.ref.name`
    /// annotation, which must be a full reference (a bare tag like `v1` is
    /// refused). On error nothing is tagged, and the blobs and snapshots
    /// it had stored are taken away again (unless a reference needs them).
    ///
    /// The archive is cut off past [`crate::Limits::archive_bytes`]
    /// decompressed or [`crate::Limits::layer_entries`] entries, and its
    /// layers unpack within the same bounds as a pull's.
    pub fn import_archive<R: Read>(
        &self,
        archive: R,
        tag: Option<&str>,
    ) -> Result<Vec<ImageInfo>, Error> {
        self.import_archive_guarded(archive, tag, &Guard::default())
    }

    /// [`Store::import_archive`], refusing to move a reference `guard`
    /// protects to another image ([`Error::InUse`]).
    pub fn import_archive_guarded<R: Read>(
        &self,
        archive: R,
        tag: Option<&str>,
        guard: &Guard,
    ) -> Result<Vec<ImageInfo>, Error> {
        let tag = tag.map(reference::normalize_reference).transpose()?;
        if let Some(tag) = &tag
            && tag.contains('@')
        {
            return Err(Error::InvalidReference {
                reference: tag.clone(),
                reason: "a tag for an import cannot carry a digest".to_owned(),
            });
        }
        let _writer = self.writer_lock()?;
        let written = Written::default();
        let result = self.import_locked(archive, tag.as_deref(), guard, &written);
        if result.is_err() {
            self.discard(&written);
        }
        result
    }

    fn import_locked<R: Read>(
        &self,
        archive: R,
        tag: Option<&str>,
        guard: &Guard,
        written: &Written,
    ) -> Result<Vec<ImageInfo>, Error> {
        let index = self.stream_layout(archive, written)?;
        let items = self.resolve_layout(&index, tag)?;
        let mut prepared: Vec<TagItem> = Vec::with_capacity(items.len());
        for (reference, digest, via) in items {
            let p: Prepared = match prepared.iter().find(|i| i.prepared.digest == digest) {
                Some(i) => i.prepared.clone(),
                None => self.prepare(&digest, written)?,
            };
            prepared.push(TagItem {
                reference,
                prepared: p,
                via,
            });
        }
        let infos = self.tag(&prepared, guard)?;
        info!(images = infos.len(), "archive imported");
        Ok(infos)
    }

    /// Reads the tar stream, storing blobs; returns `index.json`.
    /// Blobs it adds are recorded in `written`.
    fn stream_layout<R: Read>(&self, archive: R, written: &Written) -> Result<Vec<u8>, Error> {
        let mut buffered = BufReader::new(archive);
        let head = buffered.fill_buf().map_err(read_error)?;
        let gzip = head.starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn Read> = if gzip {
            Box::new(MultiGzDecoder::new(buffered))
        } else {
            Box::new(buffered)
        };
        let limits = self.limits();
        let over = Rc::new(Cell::new(false));
        let mut tracker = EofTracker {
            inner: BoundedReader::new(reader, limits.archive_bytes, Rc::clone(&over)),
            hit_eof: false,
        };
        let too_large = || Error::TooLarge {
            what: "the image archive".to_owned(),
            detail: format!("it holds more than {} bytes", limits.archive_bytes),
            bound: format!(
                "{} bytes per archive, decompressed (Limits::archive_bytes)",
                limits.archive_bytes
            ),
        };
        let mut tar = tar::Archive::new(&mut tracker);
        let mut index_json: Option<Vec<u8>> = None;
        let mut layout_seen = false;
        let mut docker_manifest_seen = false;
        let mut blobs = 0usize;
        let mut seen = 0usize;
        for entry in tar.entries().map_err(read_error)? {
            let mut entry = entry.map_err(|e| {
                if over.get() {
                    too_large()
                } else if seen == 0 {
                    Error::InvalidArchive {
                        reason: format!(
                            "not a tar archive (or cut short before its first entry): {e}"
                        ),
                    }
                } else {
                    read_error(e)
                }
            })?;
            seen += 1;
            if seen as u64 > limits.layer_entries {
                return Err(Error::TooLarge {
                    what: "the image archive".to_owned(),
                    detail: format!("it holds more than {} entries", limits.layer_entries),
                    bound: format!(
                        "{} entries per archive (Limits::layer_entries)",
                        limits.layer_entries
                    ),
                });
            }
            let raw = entry.path().map_err(read_error)?.into_owned();
            let Some(path) = clean_path(&raw) else {
                return Err(Error::InvalidArchive {
                    reason: format!("entry {:?} has a path outside the layout", raw.display()),
                });
            };
            let is_file = entry.header().entry_type().is_file();
            let size = entry.size();
            match path.as_str() {
                "oci-layout" if is_file => {
                    let bytes = read_small(&mut entry, size, "oci-layout")?;
                    let layout: OciLayout =
                        serde_json::from_slice(&bytes).map_err(|e| Error::InvalidArchive {
                            reason: format!("oci-layout does not parse: {e}"),
                        })?;
                    if layout.image_layout_version != "1.0.0" {
                        return Err(Error::InvalidArchive {
                            reason: format!(
                                "image layout version {:?} is not supported (only 1.0.0)",
                                layout.image_layout_version
                            ),
                        });
                    }
                    layout_seen = true;
                }
                "index.json" if is_file => {
                    index_json = Some(read_small(&mut entry, size, "index.json")?)
                }
                "manifest.json" => docker_manifest_seen = true,
                p if p.starts_with("blobs/") && is_file => {
                    let rest = &p["blobs/".len()..];
                    let Some(hex) = rest.strip_prefix("sha256/") else {
                        return Err(Error::InvalidArchive {
                            reason: format!("blob {p}: only sha256 blobs are supported"),
                        });
                    };
                    let digest = format!("{}{hex}", digest::SHA256);
                    if digest::hex_of(&digest).is_err() {
                        return Err(Error::InvalidArchive {
                            reason: format!("blob {p}: the name is not a sha256 digest"),
                        });
                    }
                    let what = format!("blob {digest} in the archive");
                    let new = !self.has_blob(&digest)?;
                    match self.write_blob(&mut entry, &digest, Some(size), &what) {
                        Ok(_) if new => written.blob(&digest),
                        Ok(_) => {}
                        Err(Error::SizeMismatch {
                            actual, expected, ..
                        }) if actual < expected => {
                            return Err(Error::Truncated {
                                reason: format!(
                                    "{what} ends after {actual} of its {expected} bytes"
                                ),
                            });
                        }
                        Err(_) if over.get() => return Err(too_large()),
                        Err(Error::Io { source, .. }) => return Err(read_error(source)),
                        Err(e) => return Err(e),
                    }
                    blobs += 1;
                }
                _ => debug!(path, "ignoring an archive entry"),
            }
        }
        if over.get() {
            return Err(too_large());
        }
        if seen == 0 {
            return Err(Error::InvalidArchive {
                reason: "the archive is empty".to_owned(),
            });
        }
        if tracker.hit_eof {
            return Err(Error::Truncated {
                reason: "it ends without the tar end-of-archive marker".to_owned(),
            });
        }
        debug!(blobs, "archive read");
        let Some(index_json) = index_json else {
            let hint = if docker_manifest_seen {
                " (this looks like a `docker save` archive; convert it with `skopeo copy docker-archive:... oci-archive:...`)"
            } else {
                ""
            };
            return Err(Error::InvalidArchive {
                reason: format!("no index.json: not an OCI image layout{hint}"),
            });
        };
        if !layout_seen {
            return Err(Error::InvalidArchive {
                reason: "no oci-layout file: not an OCI image layout".to_owned(),
            });
        }
        Ok(index_json)
    }

    /// (reference, image manifest digest, the digests of the indexes that
    /// led to it) for each image to tag.
    fn resolve_layout(
        &self,
        index_json: &[u8],
        tag: Option<&str>,
    ) -> Result<Vec<(String, String, Vec<String>)>, Error> {
        let Document::Index(index) = manifest::parse_document(index_json, "index.json")? else {
            return Err(Error::InvalidArchive {
                reason: "index.json is not an image index".to_owned(),
            });
        };
        if index.manifests.is_empty() {
            return Err(Error::InvalidArchive {
                reason: "index.json lists no images".to_owned(),
            });
        }
        // Entries naming the same reference (or none) are one image, possibly
        // for several platforms.
        let mut groups: Vec<(Option<String>, Vec<Descriptor>)> = Vec::new();
        for d in &index.manifests {
            let name = d.ref_name().map(str::to_owned);
            match groups.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(d.clone()),
                None => groups.push((name, vec![d.clone()])),
            }
        }
        let mut resolved: Vec<(Option<String>, String, Vec<String>)> = Vec::new();
        for (name, entries) in &groups {
            let what = match name {
                Some(n) => format!("image {n:?} of index.json"),
                None => "index.json".to_owned(),
            };
            let chosen = manifest::select_platform(entries, self.platform(), &what)?;
            let mut via = Vec::new();
            let digest = self.resolve_descriptor(chosen, &what, 0, &mut via)?;
            resolved.push((name.clone(), digest, via));
        }
        if let Some(tag) = tag {
            let distinct: BTreeSet<&String> = resolved.iter().map(|(_, d, _)| d).collect();
            if distinct.len() != 1 {
                return Err(Error::AmbiguousTag {
                    count: distinct.len(),
                });
            }
            let (_, digest, via) = resolved.swap_remove(0);
            return Ok(vec![(tag.to_owned(), digest, via)]);
        }
        let mut out = Vec::with_capacity(resolved.len());
        for (name, digest, via) in resolved {
            let Some(name) = name else {
                return Err(Error::NoReference);
            };
            if !reference::is_full_reference(&name) {
                return Err(Error::BareTag { name });
            }
            out.push((reference::normalize_reference(&name)?, digest, via));
        }
        Ok(out)
    }

    /// Follows (nested) indexes to the image manifest for the store's
    /// platform; every document is read from the store, verified. The
    /// digests of the indexes followed are added to `via`.
    fn resolve_descriptor(
        &self,
        d: &Descriptor,
        what: &str,
        depth: u32,
        via: &mut Vec<String>,
    ) -> Result<String, Error> {
        if depth > 4 {
            return Err(Error::InvalidManifest {
                what: what.to_owned(),
                reason: "indexes nested too deeply".to_owned(),
            });
        }
        digest::hex_of(&d.digest)?;
        let doc_what = format!(
            "{} {} (from {what})",
            if manifest::is_index_type(&d.media_type) {
                "index"
            } else {
                "manifest"
            },
            d.digest
        );
        let bytes = self.read_blob(&d.digest, Some(d.size), &doc_what)?;
        match manifest::parse_document(&bytes, &doc_what)? {
            Document::Manifest(_) => Ok(d.digest.clone()),
            Document::Index(index) => {
                via.push(d.digest.clone());
                let chosen =
                    manifest::select_platform(&index.manifests, self.platform(), &doc_what)?;
                self.resolve_descriptor(chosen, &doc_what, depth + 1, via)
            }
        }
    }
}

fn read_small<R: Read>(entry: &mut R, size: u64, what: &str) -> Result<Vec<u8>, Error> {
    if size > MAX_DOCUMENT {
        return Err(Error::InvalidArchive {
            reason: format!("{what} is {size} bytes, too large"),
        });
    }
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry.take(size).read_to_end(&mut out).map_err(read_error)?;
    if (out.len() as u64) < size {
        return Err(Error::Truncated {
            reason: format!("{what} ends after {} of its {size} bytes", out.len()),
        });
    }
    Ok(out)
}
