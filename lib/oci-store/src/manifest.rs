//! The JSON documents of an image (OCI and Docker v2 schema 2): manifests,
//! indexes / manifest lists, configs, and platform selection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Platform};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer (not supported by the store).
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The annotation naming an image in an image layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The manifest media types the store accepts from registries.
pub(crate) const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

/// Largest manifest, index or config the store reads into memory.
pub(crate) const MAX_DOCUMENT: u64 = 8 << 20;

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    /// The descriptor's `org.opencontainers.image.ref.name`, if any.
    pub(crate) fn ref_name(&self) -> Option<&str> {
        self.annotations
            .as_ref()
            .and_then(|a| a.get(REF_NAME_ANNOTATION))
            .map(String::as_str)
    }
}

/// A platform as it appears in an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PlatformJson {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl PlatformJson {
    pub(crate) fn normalized(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

/// Either kind of document a manifest endpoint or index entry can hold.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyManifest {
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// An image manifest.
#[derive(Debug, Clone)]
pub(crate) struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An index or manifest list.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    pub manifests: Vec<Descriptor>,
}

/// A parsed manifest-like document.
#[derive(Debug, Clone)]
pub(crate) enum Document {
    Manifest(Manifest),
    Index(Index),
}

/// Parses a manifest or index (OCI or Docker), `what` naming it in errors.
pub(crate) fn parse_document(bytes: &[u8], what: &str) -> Result<Document, Error> {
    let invalid = |reason: String| Error::InvalidManifest {
        what: what.to_owned(),
        reason,
    };
    let any: AnyManifest = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("not a manifest or index: {e}")))?;
    match any.schema_version {
        Some(2) => {}
        Some(1) => {
            return Err(Error::UnsupportedMediaType {
                what: what.to_owned(),
                media_type: any.media_type.unwrap_or_else(|| {
                    "application/vnd.docker.distribution.manifest.v1+json".to_owned()
                }),
                hint: ": Docker schema 1 manifests are not supported".to_owned(),
            });
        }
        other => return Err(invalid(format!("schemaVersion is {other:?}, expected 2"))),
    }
    let is_index = match any.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        None => any.manifests.is_some(),
        Some(other) => {
            return Err(Error::UnsupportedMediaType {
                what: what.to_owned(),
                media_type: other.to_owned(),
                hint: ": not an image manifest or index".to_owned(),
            });
        }
    };
    if is_index {
        let manifests = any
            .manifests
            .ok_or_else(|| invalid("index without \"manifests\"".to_owned()))?;
        Ok(Document::Index(Index { manifests }))
    } else {
        let config = any
            .config
            .ok_or_else(|| invalid("manifest without \"config\"".to_owned()))?;
        let layers = any
            .layers
            .ok_or_else(|| invalid("manifest without \"layers\"".to_owned()))?;
        Ok(Document::Manifest(Manifest { config, layers }))
    }
}

/// Whether a descriptor's media type names an index or manifest list.
pub(crate) fn is_index_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// Checks a manifest's config descriptor is an image config.
pub(crate) fn check_config_type(desc: &Descriptor, what: &str) -> Result<(), Error> {
    match desc.media_type.as_str() {
        OCI_CONFIG | DOCKER_CONFIG => Ok(()),
        other => Err(Error::UnsupportedMediaType {
            what: format!("config of {what}"),
            media_type: other.to_owned(),
            hint: ": not a container image (an OCI artifact?)".to_owned(),
        }),
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
}

/// The compression of a layer, from its media type; zstd and anything
/// unknown is refused with a clear error.
pub(crate) fn layer_compression(media_type: &str, what: &str) -> Result<Compression, Error> {
    match media_type {
        OCI_LAYER_TAR
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        OCI_LAYER_GZIP
        | DOCKER_LAYER_GZIP
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
        t if t.ends_with("+zstd") || t.ends_with(".zstd") => Err(Error::UnsupportedMediaType {
            what: what.to_owned(),
            media_type: t.to_owned(),
            hint: ": zstd-compressed layers are not supported (use gzip or uncompressed layers)"
                .to_owned(),
        }),
        t => Err(Error::UnsupportedMediaType {
            what: what.to_owned(),
            media_type: t.to_owned(),
            hint: ": not a tar, tar+gzip layer".to_owned(),
        }),
    }
}

/// The fields of an image config the store itself needs.
#[derive(Debug, Deserialize)]
pub(crate) struct ConfigJson {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    pub rootfs: RootFsJson,
}

/// `rootfs` of an image config.
#[derive(Debug, Deserialize)]
pub(crate) struct RootFsJson {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

impl ConfigJson {
    pub(crate) fn platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

/// Picks the entry of `entries` for `want`: an exact variant match first,
/// then the first entry that matches. Entries that are not manifests (such
/// as attestations with platform `unknown/unknown`) never match. A single
/// entry without a platform is taken as it is (its config is checked later).
pub(crate) fn select_platform<'a>(
    entries: &'a [Descriptor],
    want: &Platform,
    what: &str,
) -> Result<&'a Descriptor, Error> {
    if let [only] = entries
        && only.platform.is_none()
    {
        return Ok(only);
    }
    let candidates: Vec<(&Descriptor, Platform)> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref().map(|p| (d, p.normalized())))
        .filter(|(_, p)| want.matches(p))
        .collect();
    if let Some((d, _)) = candidates.iter().find(|(_, p)| p.variant == want.variant) {
        return Ok(d);
    }
    if let Some((d, _)) = candidates.first() {
        return Ok(d);
    }
    let mut available: Vec<String> = entries
        .iter()
        .map(|d| {
            d.platform.as_ref().map_or_else(
                || "(no platform)".to_owned(),
                |p| p.normalized().to_string(),
            )
        })
        .collect();
    available.dedup();
    Err(Error::NoMatchingPlatform {
        what: what.to_owned(),
        wanted: want.to_string(),
        available: if available.is_empty() {
            "nothing (the index is empty)".to_owned()
        } else {
            available.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.to_owned(),
            digest: digest.to_owned(),
            size: 1,
            platform: Some(PlatformJson {
                architecture: arch.to_owned(),
                os: "linux".to_owned(),
                variant: variant.map(str::to_owned),
            }),
            annotations: None,
        }
    }

    #[test]
    fn selects_platforms() {
        let entries = vec![
            entry("amd64", None, "a"),
            entry("arm", Some("v7"), "b"),
            entry("arm64", Some("v8"), "c"),
        ];
        let got = select_platform(&entries, &Platform::linux_arm64(), "index").expect("arm64");
        assert_eq!(got.digest, "c");
        let got = select_platform(&entries, &Platform::linux_amd64(), "index").expect("amd64");
        assert_eq!(got.digest, "a");
        let err = select_platform(
            &entries,
            &Platform::new("linux", "riscv64", None),
            "index X",
        )
        .expect_err("no riscv");
        let msg = err.to_string();
        assert!(msg.contains("index X"), "{msg}");
        assert!(msg.contains("linux/riscv64"), "{msg}");
        assert!(
            msg.contains("linux/amd64, linux/arm/v7, linux/arm64"),
            "{msg}"
        );
    }

    #[test]
    fn parses_documents() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:x","size":3},
            "layers":[]}"#;
        assert!(matches!(parse_document(m, "m"), Ok(Document::Manifest(_))));
        let i = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse_document(i, "i"), Ok(Document::Index(_))));
        let s1 = br#"{"schemaVersion":1,"name":"x"}"#;
        let err = parse_document(s1, "old").expect_err("schema 1");
        assert!(err.to_string().contains("schema 1"), "{err}");
        assert!(parse_document(b"not json", "junk").is_err());
    }

    #[test]
    fn layer_types() {
        for (t, want) in [
            (OCI_LAYER_GZIP, Compression::Gzip),
            (DOCKER_LAYER_GZIP, Compression::Gzip),
            (OCI_LAYER_TAR, Compression::None),
        ] {
            assert_eq!(layer_compression(t, "l").expect(t), want);
        }
        let err = layer_compression(OCI_LAYER_ZSTD, "layer 1").expect_err("zstd");
        assert!(
            err.to_string()
                .contains("zstd-compressed layers are not supported"),
            "{err}"
        );
        assert!(layer_compression("text/plain", "l").is_err());
    }
}
