//! Publishing images made with [`crate::build`] to a registry, byte for
//! byte (blobs, then the manifest, so its digest stays the one built).
//! The project's tests use it to give a node something to pull.

use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

use crate::build::{ImageParts, IndexParts};
use crate::error::Error;

/// Pushes to one registry.
#[derive(Clone)]
pub struct Pusher {
    client: Client,
    auth: RegistryAuth,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher").finish_non_exhaustive()
    }
}

fn registry_error(what: String, e: impl std::fmt::Display) -> Error {
    Error::Registry {
        what,
        message: e.to_string(),
    }
}

impl Pusher {
    /// An anonymous pusher speaking plain HTTP (`plain_http`) or HTTPS.
    pub fn new(plain_http: bool) -> Self {
        Self::with(plain_http, &[], None)
    }

    /// A pusher trusting `ca_certificates` (PEM) besides the system's, with
    /// basic credentials `(user, password)` if given.
    pub fn with(plain_http: bool, ca_certificates: &[String], basic: Option<(&str, &str)>) -> Self {
        let auth = basic.map_or(RegistryAuth::Anonymous, |(u, p)| {
            RegistryAuth::Basic(u.to_owned(), p.to_owned())
        });
        Self::with_auth(plain_http, ca_certificates, auth)
    }

    /// A plain-HTTP pusher sending `token` as a bearer token.
    pub fn with_bearer(token: &str) -> Self {
        Self::with_auth(true, &[], RegistryAuth::Bearer(token.to_owned()))
    }

    fn with_auth(plain_http: bool, ca_certificates: &[String], auth: RegistryAuth) -> Self {
        crate::pull::install_crypto_provider();
        let protocol = if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        Self {
            client: Client::new(ClientConfig {
                protocol,
                extra_root_certificates: crate::pull::extra_roots(ca_certificates),
                ..ClientConfig::default()
            }),
            auth,
        }
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Pushes `parts` under `reference` (its tag or digest).
    pub async fn image(&self, reference: &str, parts: &ImageParts) -> Result<(), Error> {
        let r = crate::reference::parse(reference)?;
        self.client
            .auth(&r, &self.auth, oci_client::RegistryOperation::Push)
            .await
            .map_err(|e| registry_error(format!("authenticating to push {reference}"), e))?;
        for (digest, data) in parts
            .layers
            .iter()
            .map(|l| (&l.digest, &l.data))
            .chain([(&parts.config_digest, &parts.config)])
        {
            self.client
                .push_blob(&r, data.clone(), digest)
                .await
                .map_err(|e| registry_error(format!("pushing blob {digest} to {reference}"), e))?;
        }
        let media_type = header(&parts.manifest_media_type)?;
        self.client
            .push_manifest_raw(&r, parts.manifest.clone(), media_type)
            .await
            .map_err(|e| registry_error(format!("pushing the manifest of {reference}"), e))?;
        Ok(())
    }

    /// Pushes every image of `parts` by digest, then the index under
    /// `reference`.
    pub async fn index(&self, reference: &str, parts: &IndexParts) -> Result<(), Error> {
        let r = crate::reference::parse(reference)?;
        for image in &parts.images {
            let by_digest = r.clone_with_digest(image.manifest_digest.clone());
            self.image(&by_digest.whole(), image).await?;
        }
        self.client
            .push_manifest_raw(&r, parts.index.clone(), header(&parts.media_type)?)
            .await
            .map_err(|e| registry_error(format!("pushing the index of {reference}"), e))?;
        Ok(())
    }
}

fn header(media_type: &str) -> Result<http::HeaderValue, Error> {
    http::HeaderValue::from_str(media_type).map_err(|e| Error::InvalidManifest {
        what: format!("media type {media_type:?}"),
        reason: e.to_string(),
    })
}
