//! A real registry (Debian's `docker-registry`, the CNCF distribution
//! registry, from `bramble-testkit`) on loopback, and pushing images to it.

use bramble_oci_store::build::{ImageParts, IndexParts};
use bramble_oci_store::push::Pusher;
use oci_client::Reference;
use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;

/// A plain-HTTP pusher.
pub fn push_client() -> Pusher {
    Pusher::new(true)
}

/// Pushes an image's exact bytes (blobs, then the manifest under
/// `reference`'s tag or digest).
pub async fn push_image(pusher: &Pusher, reference: &str, parts: &ImageParts) {
    pusher
        .image(reference, parts)
        .await
        .unwrap_or_else(|e| panic!("pushing {reference}: {e}"));
}

/// Pushes an image with oci-client's high-level `push` (it re-serialises
/// the manifest, so the stored manifest digest is the registry's).
pub async fn push_with_client_push(pusher: &Pusher, reference: &str, parts: &ImageParts) -> String {
    let r: Reference = reference.parse().expect("reference");
    let layers: Vec<ImageLayer> = parts
        .layers
        .iter()
        .map(|l| ImageLayer::new(l.data.clone(), l.media_type.clone(), None))
        .collect();
    let config = Config::new(parts.config.clone(), parts.config_media_type.clone(), None);
    let manifest: OciImageManifest =
        serde_json::from_slice(&parts.manifest).expect("manifest parses");
    let resp = pusher
        .client()
        .push(
            &r,
            &layers,
            config,
            &RegistryAuth::Anonymous,
            Some(manifest),
        )
        .await
        .expect("oci-client push");
    resp.manifest_url
}

/// Pushes every image of an index by digest, then the index under
/// `reference`.
pub async fn push_index(pusher: &Pusher, reference: &str, parts: &IndexParts) {
    pusher
        .index(reference, parts)
        .await
        .unwrap_or_else(|e| panic!("pushing {reference}: {e}"));
}
