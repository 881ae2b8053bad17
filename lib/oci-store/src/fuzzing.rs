//! Entry points for the fuzz targets (`tests/fuzz/`), behind the `fuzzing`
//! feature: the document parsers and the layer unpacker, which the store
//! otherwise reaches only with blobs it has already verified against their
//! digests. Nothing here is built into the node.

use std::path::{Path, PathBuf};

use crate::manifest::{self, Compression, Document};
use crate::{Error, Platform};

/// Parses a manifest or index as the store does, then does what the store
/// does next with it: picks the entry for each of `platforms` from an index,
/// checks a manifest's config and every layer's media type.
pub fn check_document(bytes: &[u8], platforms: &[Platform]) -> Result<(), Error> {
    match manifest::parse_document(bytes, "fuzzed document")? {
        Document::Index(index) => {
            for want in platforms {
                if let Ok(entry) = manifest::select_platform(&index.manifests, want, "fuzzed index")
                {
                    let _ = manifest::is_index_type(&entry.media_type);
                    let _ = entry.ref_name();
                }
            }
            Ok(())
        }
        Document::Manifest(m) => {
            manifest::check_config_type(&m.config, "fuzzed manifest")?;
            for layer in &m.layers {
                manifest::layer_compression(&layer.media_type, "fuzzed layer")?;
            }
            Ok(())
        }
    }
}

/// Unpacks the layer blob at `blob` (gzip-compressed if `gzip`) into the
/// empty directory `dest` over the snapshots `lowers` (top first), as a pull
/// or an import does. The digests it is checked against are not the blob's,
/// so a layer that unpacks completely ends in a digest mismatch.
pub fn unpack_layer(blob: &Path, gzip: bool, dest: &Path, lowers: &[PathBuf]) -> Result<(), Error> {
    let unknown = format!("sha256:{}", "0".repeat(64));
    let compression = if gzip {
        Compression::Gzip
    } else {
        Compression::None
    };
    crate::unpack::unpack_layer(blob, &unknown, &unknown, compression, dest, lowers)
}
