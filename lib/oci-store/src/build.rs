//! Building small OCI images in memory, for tests (this crate's, the QEMU
//! tests') and tools: layers from a list of entries, a config, a manifest,
//! optionally an index over several platforms; written as an OCI image
//! layout tar or handed out as parts to push to a registry.
//!
//! Output is deterministic: every timestamp is [`BUILD_MTIME`], gzip headers
//! carry no time, JSON keys come in a fixed order.
//!
//! ```
//! use bramble_oci_store::build::{Entry, ImageBuilder};
//! let image = ImageBuilder::new("arm64")
//!     .layer(vec![Entry::file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n")])
//!     .config(&["/bin/hello"], &[], &["PATH=/bin"], "", "/")
//!     .annotate_ref("registry.example/hello:v1");
//! let mut tar = Vec::new();
//! image.write_archive(&mut tar).unwrap();
//! ```

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Component, Path};

use flate2::write::GzEncoder;
use serde::Serialize;

use crate::manifest::{
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST, REF_NAME_ANNOTATION,
};
use crate::{Error, Platform, digest};

/// The modification time of everything the builder writes (2023-11-14).
pub const BUILD_MTIME: u64 = 1_700_000_000;

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file.
    File {
        /// Path inside the image, e.g. `etc/hostname` (written as given:
        /// `../x` makes a path-traversal entry, for tests).
        path: String,
        /// Permission bits, e.g. `0o644` (set-id and sticky bits allowed).
        mode: u32,
        /// Owner.
        uid: u64,
        /// Group.
        gid: u64,
        /// Content.
        contents: Vec<u8>,
    },
    /// A directory.
    Dir {
        /// Path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u64,
        /// Group.
        gid: u64,
    },
    /// A symbolic link.
    Symlink {
        /// Path of the link.
        path: String,
        /// What it points to (not resolved).
        target: String,
    },
    /// A hard link to an earlier entry of the same layer.
    Hardlink {
        /// Path of the link.
        path: String,
        /// Path of the earlier entry.
        target: String,
    },
    /// A whiteout: `path` (from a lower layer) is deleted. Written as
    /// `dir/.wh.name`.
    Whiteout {
        /// Path of what is deleted.
        path: String,
    },
    /// An opaque directory: the lower layers' contents of `dir` are hidden.
    /// Written as `dir/.wh..wh..opq`.
    Opaque {
        /// The directory.
        dir: String,
    },
    /// A device node.
    Device {
        /// Path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// A block device (else a character device).
        block: bool,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

impl Entry {
    /// A file owned by root.
    pub fn file(path: &str, mode: u32, contents: &[u8]) -> Entry {
        Entry::File {
            path: path.to_owned(),
            mode,
            uid: 0,
            gid: 0,
            contents: contents.to_vec(),
        }
    }

    /// A directory owned by root.
    pub fn dir(path: &str, mode: u32) -> Entry {
        Entry::Dir {
            path: path.to_owned(),
            mode,
            uid: 0,
            gid: 0,
        }
    }

    /// A symbolic link.
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.to_owned(),
            target: target.to_owned(),
        }
    }

    /// A hard link.
    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::Hardlink {
            path: path.to_owned(),
            target: target.to_owned(),
        }
    }

    /// A whiteout of `path`.
    pub fn whiteout(path: &str) -> Entry {
        Entry::Whiteout {
            path: path.to_owned(),
        }
    }

    /// Makes `dir` opaque.
    pub fn opaque(dir: &str) -> Entry {
        Entry::Opaque {
            dir: dir.to_owned(),
        }
    }
}

/// How a layer built from entries is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    /// `tar+gzip` (the default).
    Gzip,
    /// Plain tar.
    Tar,
}

/// Which family of media types to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaTypes {
    /// OCI image spec (the default).
    Oci,
    /// Docker image manifest v2 schema 2 / manifest list.
    Docker,
}

/// A layer blob as stored in a registry or layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// Its media type.
    pub media_type: String,
    /// The blob (compressed or not).
    pub data: Vec<u8>,
    /// sha256 of `data`.
    pub digest: String,
    /// sha256 of the uncompressed tar (the config's diff_id).
    pub diff_id: String,
}

/// A single-platform image, serialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageParts {
    /// The image's platform.
    pub platform: Platform,
    /// The manifest JSON.
    pub manifest: Vec<u8>,
    /// Its digest.
    pub manifest_digest: String,
    /// Its media type.
    pub manifest_media_type: String,
    /// The config JSON.
    pub config: Vec<u8>,
    /// Its digest.
    pub config_digest: String,
    /// Its media type.
    pub config_media_type: String,
    /// The layers, bottom first.
    pub layers: Vec<LayerBlob>,
}

impl ImageParts {
    /// Every blob of the image (layers, config, manifest) by digest.
    pub fn blobs(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = self
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.data.clone()))
            .collect();
        out.push((self.config_digest.clone(), self.config.clone()));
        out.push((self.manifest_digest.clone(), self.manifest.clone()));
        out
    }
}

/// A multi-platform image, serialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexParts {
    /// The index (manifest list) JSON.
    pub index: Vec<u8>,
    /// Its digest.
    pub index_digest: String,
    /// Its media type.
    pub media_type: String,
    /// The images it lists, in order.
    pub images: Vec<ImageParts>,
}

/// An OCI image layout in memory: `index.json` and the blobs. Tests can
/// change it (corrupt or drop blobs) before writing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The `index.json` bytes.
    pub index_json: Vec<u8>,
    /// `(digest, content)` of each blob, written in this order as
    /// `blobs/sha256/<hex>`.
    pub blobs: Vec<(String, Vec<u8>)>,
}

impl Layout {
    /// The content of a blob.
    pub fn blob_mut(&mut self, digest: &str) -> Option<&mut Vec<u8>> {
        self.blobs
            .iter_mut()
            .find(|(d, _)| d == digest)
            .map(|(_, b)| b)
    }

    /// Drops a blob from the layout.
    pub fn remove_blob(&mut self, digest: &str) -> Option<Vec<u8>> {
        let i = self.blobs.iter().position(|(d, _)| d == digest)?;
        Some(self.blobs.remove(i).1)
    }

    /// Writes the layout as a tar: `oci-layout`, `index.json`, `blobs/`.
    pub fn write_archive<W: Write>(&self, w: W) -> Result<(), Error> {
        let ctx = || "writing the image archive".to_owned();
        let mut tar = tar::Builder::new(w);
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        append_file(&mut tar, "oci-layout", layout).map_err(Error::io(ctx()))?;
        append_file(&mut tar, "index.json", &self.index_json).map_err(Error::io(ctx()))?;
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            tar.append_data(&mut h, dir, io::empty())
                .map_err(Error::io(ctx()))?;
        }
        for (digest, data) in &self.blobs {
            let hex = digest.strip_prefix(digest::SHA256).unwrap_or(digest);
            append_file(&mut tar, &format!("blobs/sha256/{hex}"), data)
                .map_err(Error::io(ctx()))?;
        }
        tar.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(Error::io(ctx()))
    }
}

#[derive(Debug, Clone)]
enum LayerSpec {
    Entries(Vec<Entry>, LayerFormat),
    Blob(LayerBlob),
}

#[derive(Debug, Clone, Default)]
struct Settings {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    user: String,
    working_dir: String,
}

/// Builds a single-platform image.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    platform: Platform,
    layers: Vec<LayerSpec>,
    settings: Settings,
    ref_name: Option<String>,
    media_types: MediaTypes,
}

impl ImageBuilder {
    /// An image for `linux/<arch>` (`arm64`, `amd64`, `aarch64`, ...).
    pub fn new(arch: &str) -> Self {
        Self::for_platform(Platform::new("linux", arch, None))
    }

    /// An image for `platform`.
    pub fn for_platform(platform: Platform) -> Self {
        Self {
            platform,
            layers: Vec::new(),
            settings: Settings::default(),
            ref_name: None,
            media_types: MediaTypes::Oci,
        }
    }

    /// Adds a gzip-compressed layer on top.
    pub fn layer(self, entries: Vec<Entry>) -> Self {
        self.layer_as(entries, LayerFormat::Gzip)
    }

    /// Adds a layer stored as `format`.
    pub fn layer_as(mut self, entries: Vec<Entry>, format: LayerFormat) -> Self {
        self.layers.push(LayerSpec::Entries(entries, format));
        self
    }

    /// Adds a ready-made layer blob, any media type, with the diff_id the
    /// config should list (for tests: zstd, corrupt or hand-made tars).
    pub fn raw_layer(mut self, media_type: &str, data: Vec<u8>, diff_id: &str) -> Self {
        let digest = digest::sha256_of(&data);
        self.layers.push(LayerSpec::Blob(LayerBlob {
            media_type: media_type.to_owned(),
            data,
            digest,
            diff_id: diff_id.to_owned(),
        }));
        self
    }

    /// Sets the config's entrypoint, cmd, env (`KEY=value`), user and
    /// working directory (empty strings leave them out).
    pub fn config(
        mut self,
        entrypoint: &[&str],
        cmd: &[&str],
        env: &[&str],
        user: &str,
        working_dir: &str,
    ) -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        self.settings = Settings {
            entrypoint: owned(entrypoint),
            cmd: owned(cmd),
            env: owned(env),
            user: user.to_owned(),
            working_dir: working_dir.to_owned(),
        };
        self
    }

    /// Names the image in the layout's `index.json`
    /// (`org.opencontainers.image.ref.name`).
    pub fn annotate_ref(mut self, name: &str) -> Self {
        self.ref_name = Some(name.to_owned());
        self
    }

    /// Uses Docker media types instead of OCI ones.
    pub fn docker_media_types(mut self) -> Self {
        self.media_types = MediaTypes::Docker;
        self
    }

    /// The image's platform.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Serialises the image.
    pub fn parts(&self) -> Result<ImageParts, Error> {
        let docker = self.media_types == MediaTypes::Docker;
        let mut layers = Vec::with_capacity(self.layers.len());
        for spec in &self.layers {
            layers.push(match spec {
                LayerSpec::Blob(b) => b.clone(),
                LayerSpec::Entries(entries, format) => {
                    let tar = layer_tar(entries).map_err(Error::io("building a layer"))?;
                    let diff_id = digest::sha256_of(&tar);
                    let (media_type, data) = match format {
                        LayerFormat::Tar => (OCI_LAYER_TAR, tar),
                        LayerFormat::Gzip => {
                            let data = gzip(&tar).map_err(Error::io("compressing a layer"))?;
                            (
                                if docker {
                                    DOCKER_LAYER_GZIP
                                } else {
                                    OCI_LAYER_GZIP
                                },
                                data,
                            )
                        }
                    };
                    LayerBlob {
                        media_type: media_type.to_owned(),
                        digest: digest::sha256_of(&data),
                        data,
                        diff_id,
                    }
                }
            });
        }
        let s = &self.settings;
        let config = ConfigOut {
            created: "2023-11-14T22:13:20Z",
            architecture: &self.platform.architecture,
            os: &self.platform.os,
            variant: self.platform.variant.as_deref(),
            config: ContainerConfigOut {
                user: non_empty(&s.user),
                env: non_empty_vec(&s.env),
                entrypoint: non_empty_vec(&s.entrypoint),
                cmd: non_empty_vec(&s.cmd),
                working_dir: non_empty(&s.working_dir),
            },
            rootfs: RootFsOut {
                kind: "layers",
                diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
            },
        };
        let config_bytes = serde_json::to_vec(&config).map_err(Error::json("image config"))?;
        let config_digest = digest::sha256_of(&config_bytes);
        let (manifest_type, config_type) = if docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG)
        } else {
            (OCI_MANIFEST, OCI_CONFIG)
        };
        let manifest = ManifestOut {
            schema_version: 2,
            media_type: manifest_type,
            config: DescriptorOut::new(config_type, &config_digest, config_bytes.len()),
            layers: layers
                .iter()
                .map(|l| DescriptorOut::new(&l.media_type, &l.digest, l.data.len()))
                .collect(),
        };
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(Error::json("image manifest"))?;
        Ok(ImageParts {
            platform: self.platform.clone(),
            manifest_digest: digest::sha256_of(&manifest_bytes),
            manifest: manifest_bytes,
            manifest_media_type: manifest_type.to_owned(),
            config: config_bytes,
            config_digest,
            config_media_type: config_type.to_owned(),
            layers,
        })
    }

    /// The image as an OCI image layout: `index.json` lists the manifest
    /// (with its platform and, if set, its reference annotation).
    pub fn layout(&self) -> Result<Layout, Error> {
        let parts = self.parts()?;
        let mut entry = DescriptorOut::new(
            &parts.manifest_media_type,
            &parts.manifest_digest,
            parts.manifest.len(),
        );
        entry.platform = Some(PlatformOut::of(&parts.platform));
        entry.annotations = self.ref_name.as_ref().map(|n| ref_annotation(n));
        let index = IndexOut {
            schema_version: 2,
            media_type: OCI_INDEX,
            manifests: vec![entry],
        };
        Ok(Layout {
            index_json: serde_json::to_vec(&index).map_err(Error::json("index.json"))?,
            blobs: parts.blobs(),
        })
    }

    /// Writes the image as an OCI image layout tar.
    pub fn write_archive<W: Write>(&self, w: W) -> Result<(), Error> {
        self.layout()?.write_archive(w)
    }
}

/// Builds a multi-platform image: an index over several images.
#[derive(Debug, Clone, Default)]
pub struct IndexBuilder {
    images: Vec<ImageBuilder>,
    ref_name: Option<String>,
    docker: bool,
}

impl IndexBuilder {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an image (its own `annotate_ref` is ignored).
    pub fn image(mut self, image: ImageBuilder) -> Self {
        self.images.push(image);
        self
    }

    /// Names the index in the layout's `index.json`.
    pub fn annotate_ref(mut self, name: &str) -> Self {
        self.ref_name = Some(name.to_owned());
        self
    }

    /// Makes a Docker manifest list (the images should use Docker media
    /// types too).
    pub fn docker_manifest_list(mut self) -> Self {
        self.docker = true;
        self
    }

    /// Serialises the index and its images.
    pub fn parts(&self) -> Result<IndexParts, Error> {
        let images = self
            .images
            .iter()
            .map(ImageBuilder::parts)
            .collect::<Result<Vec<_>, _>>()?;
        let media_type = if self.docker {
            DOCKER_MANIFEST_LIST
        } else {
            OCI_INDEX
        };
        let index = IndexOut {
            schema_version: 2,
            media_type,
            manifests: images
                .iter()
                .map(|p| {
                    let mut d = DescriptorOut::new(
                        &p.manifest_media_type,
                        &p.manifest_digest,
                        p.manifest.len(),
                    );
                    d.platform = Some(PlatformOut::of(&p.platform));
                    d
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&index).map_err(Error::json("image index"))?;
        Ok(IndexParts {
            index_digest: digest::sha256_of(&bytes),
            index: bytes,
            media_type: media_type.to_owned(),
            images,
        })
    }

    /// The index as an OCI image layout, the way `skopeo` writes a
    /// multi-platform image: `index.json` points at the index blob.
    pub fn layout(&self) -> Result<Layout, Error> {
        let parts = self.parts()?;
        let mut entry =
            DescriptorOut::new(&parts.media_type, &parts.index_digest, parts.index.len());
        entry.annotations = self.ref_name.as_ref().map(|n| ref_annotation(n));
        let index = IndexOut {
            schema_version: 2,
            media_type: OCI_INDEX,
            manifests: vec![entry],
        };
        let mut blobs = Vec::new();
        for image in &parts.images {
            for blob in image.blobs() {
                if !blobs.iter().any(|(d, _): &(String, Vec<u8>)| *d == blob.0) {
                    blobs.push(blob);
                }
            }
        }
        blobs.push((parts.index_digest.clone(), parts.index.clone()));
        Ok(Layout {
            index_json: serde_json::to_vec(&index).map_err(Error::json("index.json"))?,
            blobs,
        })
    }

    /// Writes the index as an OCI image layout tar.
    pub fn write_archive<W: Write>(&self, w: W) -> Result<(), Error> {
        self.layout()?.write_archive(w)
    }
}

fn ref_annotation(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(REF_NAME_ANNOTATION.to_owned(), name.to_owned())])
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn non_empty_vec(v: &[String]) -> Option<&[String]> {
    (!v.is_empty()).then_some(v)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorOut {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<PlatformOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
}

impl DescriptorOut {
    fn new(media_type: &str, digest: &str, size: usize) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            size: size as u64,
            platform: None,
            annotations: None,
        }
    }
}

#[derive(Serialize)]
struct PlatformOut {
    architecture: String,
    os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
}

impl PlatformOut {
    fn of(p: &Platform) -> Self {
        Self {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: p.variant.clone(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexOut {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<DescriptorOut>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestOut {
    schema_version: u32,
    media_type: &'static str,
    config: DescriptorOut,
    layers: Vec<DescriptorOut>,
}

#[derive(Serialize)]
struct ConfigOut<'a> {
    created: &'static str,
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    config: ContainerConfigOut<'a>,
    rootfs: RootFsOut,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfigOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entrypoint: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<&'a str>,
}

#[derive(Serialize)]
struct RootFsOut {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(BUILD_MTIME);
    h.set_size(size);
    h
}

fn append_file<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8]) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    tar.append_data(&mut h, path, data)
}

/// Whether `tar` would refuse the path (`..`, absolute): those are written
/// into the header as they are, for path-traversal tests.
fn unusual(path: &str) -> bool {
    Path::new(path).components().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    })
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    mut h: tar::Header,
    path: &str,
    link: Option<&str>,
    data: &[u8],
) -> io::Result<()> {
    if unusual(path) || link.is_some_and(unusual) {
        let name = path.as_bytes();
        if name.len() > 100 || link.is_some_and(|l| l.len() > 100) {
            return Err(io::Error::other(format!(
                "raw tar path {path:?} longer than 100 bytes"
            )));
        }
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        return tar.append(&h, data);
    }
    match link {
        Some(link) => tar.append_link(&mut h, path, link),
        None => tar.append_data(&mut h, path, data),
    }
}

/// The uncompressed tar of a layer.
fn layer_tar(entries: &[Entry]) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for entry in entries {
        match entry {
            Entry::File {
                path,
                mode,
                uid,
                gid,
                contents,
            } => {
                let mut h = header(tar::EntryType::Regular, *mode, contents.len() as u64);
                h.set_uid(*uid);
                h.set_gid(*gid);
                append(&mut tar, h, path, None, contents)?;
            }
            Entry::Dir {
                path,
                mode,
                uid,
                gid,
            } => {
                let mut h = header(tar::EntryType::Directory, *mode, 0);
                h.set_uid(*uid);
                h.set_gid(*gid);
                let path = if path.ends_with('/') {
                    path.clone()
                } else {
                    format!("{path}/")
                };
                append(&mut tar, h, &path, None, &[])?;
            }
            Entry::Symlink { path, target } => {
                append(
                    &mut tar,
                    header(tar::EntryType::Symlink, 0o777, 0),
                    path,
                    Some(target),
                    &[],
                )?;
            }
            Entry::Hardlink { path, target } => {
                append(
                    &mut tar,
                    header(tar::EntryType::Link, 0o644, 0),
                    path,
                    Some(target),
                    &[],
                )?;
            }
            Entry::Whiteout { path } => {
                let p = Path::new(path);
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| {
                        io::Error::other(format!("whiteout of {path:?}: no file name"))
                    })?;
                let wh = match p.parent().map(|d| d.to_string_lossy().into_owned()) {
                    Some(dir) if !dir.is_empty() => format!("{dir}/.wh.{name}"),
                    _ => format!(".wh.{name}"),
                };
                append(
                    &mut tar,
                    header(tar::EntryType::Regular, 0o644, 0),
                    &wh,
                    None,
                    &[],
                )?;
            }
            Entry::Opaque { dir } => {
                let dir = dir.trim_end_matches('/');
                let wh = if dir.is_empty() {
                    ".wh..wh..opq".to_owned()
                } else {
                    format!("{dir}/.wh..wh..opq")
                };
                append(
                    &mut tar,
                    header(tar::EntryType::Regular, 0o644, 0),
                    &wh,
                    None,
                    &[],
                )?;
            }
            Entry::Device {
                path,
                mode,
                block,
                major,
                minor,
            } => {
                let kind = if *block {
                    tar::EntryType::Block
                } else {
                    tar::EntryType::Char
                };
                let mut h = header(kind, *mode, 0);
                h.set_device_major(*major)?;
                h.set_device_minor(*minor)?;
                append(&mut tar, h, path, None, &[])?;
            }
        }
    }
    tar.into_inner()
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

/// A plain tar with one regular file at a raw `path` (any bytes, e.g.
/// `../../etc/evil`), for path-traversal tests; returns `(tar, diff_id)`.
pub fn raw_tar_with_file(path: &str, contents: &[u8]) -> Result<(Vec<u8>, String), Error> {
    let tar =
        layer_tar(&[Entry::file(path, 0o644, contents)]).map_err(Error::io("building a tar"))?;
    let diff_id = digest::sha256_of(&tar);
    Ok((tar, diff_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_deterministic() {
        let build = || {
            let mut out = Vec::new();
            ImageBuilder::new("arm64")
                .layer(vec![
                    Entry::file("a", 0o644, b"a"),
                    Entry::symlink("b", "a"),
                ])
                .config(&["/a"], &[], &[], "", "")
                .annotate_ref("example.com/a:1")
                .write_archive(&mut out)
                .expect("write");
            out
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn manifest_lists_layers_and_config() {
        let parts = ImageBuilder::new("amd64")
            .layer(vec![Entry::file("x", 0o600, b"x")])
            .layer_as(vec![Entry::whiteout("x")], LayerFormat::Tar)
            .parts()
            .expect("parts");
        let m: serde_json::Value = serde_json::from_slice(&parts.manifest).expect("json");
        assert_eq!(m["layers"].as_array().map(Vec::len), Some(2));
        assert_eq!(m["layers"][1]["mediaType"], OCI_LAYER_TAR);
        assert_eq!(m["config"]["digest"], parts.config_digest.as_str());
        let c: serde_json::Value = serde_json::from_slice(&parts.config).expect("json");
        assert_eq!(c["architecture"], "amd64");
        assert_eq!(c["rootfs"]["diff_ids"][1], parts.layers[1].diff_id.as_str());
        // An uncompressed layer's digest is its diff_id.
        assert_eq!(parts.layers[1].digest, parts.layers[1].diff_id);
    }

    #[test]
    fn raw_paths_are_kept() {
        let (tar, _) = raw_tar_with_file("../evil", b"x").expect("tar");
        let mut archive = tar::Archive::new(&tar[..]);
        let entry = archive
            .entries()
            .expect("entries")
            .next()
            .expect("one entry")
            .expect("entry");
        assert_eq!(&*entry.path_bytes(), b"../evil");
    }
}
