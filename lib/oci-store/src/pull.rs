//! Pulling images from registries (and their mirrors) with `oci-client`.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWrite;
use tracing::{debug, info, warn};

use crate::error::chain;
use crate::fsutil::{self, TempPath};
use crate::manifest::{self, Descriptor, Document};
use crate::store::{TagItem, Written};
use crate::{Error, Guard, ImageInfo, Store, digest, reference};

/// How to reach registries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryConfig {
    /// Registry host (as in the normalised reference: `docker.io`,
    /// `ghcr.io`, `10.0.2.100:5000`) -> mirror URLs such as
    /// `http://10.0.2.100:5000`, tried in order before the registry itself.
    /// A mirror is `scheme://host[:port]` without a path; `http://` makes it
    /// plain HTTP, no scheme means HTTPS unless the host is in `insecure`.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// `host[:port]` of registries reached over plain HTTP.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// Credentials by registry or mirror host (`host[:port]`); hosts
    /// without an entry are accessed anonymously.
    #[serde(default)]
    pub auth: BTreeMap<String, Credentials>,
    /// PEM certificates of authorities trusted for HTTPS registries besides
    /// the system's (`/etc/ssl/certs`): a private registry's CA.
    #[serde(default)]
    pub ca_certificates: Vec<String>,
}

/// `ca_certificates` as the registry client takes them.
pub(crate) fn extra_roots(pems: &[String]) -> Vec<oci_client::client::Certificate> {
    pems.iter()
        .map(|pem| oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Pem,
            data: pem.as_bytes().to_vec(),
        })
        .collect()
}

/// Credentials for a registry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credentials {
    /// HTTP basic authentication (also used for the token exchange of
    /// registries that answer with a bearer challenge).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// A bearer token sent as it is.
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer(_) => f.debug_tuple("Bearer").field(&"<redacted>").finish(),
        }
    }
}

impl Credentials {
    fn registry_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

/// The result of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullReport {
    /// The image as tagged.
    pub image: ImageInfo,
    /// Bytes of config and layer blobs downloaded (blobs already stored are
    /// not downloaded; manifests are not counted).
    pub fetched_bytes: u64,
    /// How long the pull took.
    pub duration: Duration,
}

/// How long to wait for a TCP connection to a registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a read from a registry may stall.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long fetching one manifest may take in all.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Most bytes of a registry's error answer kept for the message.
const ERROR_BODY: usize = 4096;

/// Fetches manifests and indexes itself: `oci-client` reads a manifest
/// whole into memory before anything can check it, so a registry could
/// make it buffer an endless one. Here the `Content-Length` is checked
/// first and the bytes are counted as they arrive, so neither a large
/// announcement, nor a lie, nor an answer without a length gets past the
/// bound. Authentication is `oci-client`'s (its token exchange).
struct ManifestFetcher {
    http: reqwest::Client,
    /// `host[:port]` reached over plain HTTP.
    http_hosts: Vec<String>,
    /// [`crate::Limits::manifest_bytes`], capped.
    limit: u64,
    /// Bearer tokens got for a registry and repository, for the pull's
    /// next manifest (an index's image) there.
    tokens: std::sync::Mutex<BTreeMap<String, Option<String>>>,
}

impl ManifestFetcher {
    fn new(
        registries: &RegistryConfig,
        http_hosts: Vec<String>,
        limit: u64,
    ) -> Result<Self, Error> {
        let mut roots = Vec::new();
        for pem in &registries.ca_certificates {
            let cert =
                reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| Error::Registry {
                    what: "machine.registries CA certificates".to_owned(),
                    message: chain(&e),
                })?;
            roots.push(cert);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .tls_certs_merge(roots)
            .build()
            .map_err(|e| Error::Registry {
                what: "setting up the registry client".to_owned(),
                message: chain(&e),
            })?;
        Ok(Self {
            http,
            http_hosts,
            limit,
            tokens: std::sync::Mutex::default(),
        })
    }

    /// `GET /v2/<repository>/manifests/<digest or tag>` of `target`, within
    /// the bound; `what` names it in errors.
    async fn get(
        &self,
        client: &Client,
        target: &Reference,
        auth: &RegistryAuth,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        let host = target.resolve_registry();
        let key = format!("{host}/{}", target.repository());
        let cached = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned());
        let token = match cached {
            Some(token) => token,
            None => {
                let token = client
                    .auth(target, auth, RegistryOperation::Pull)
                    .await
                    .map_err(registry_error(format!("fetching {what}: authenticating")))?;
                if let Ok(mut t) = self.tokens.lock() {
                    t.insert(key, token.clone());
                }
                token
            }
        };
        let scheme = if self.http_hosts.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        };
        let url = format!(
            "{scheme}://{host}/v2/{}/manifests/{}",
            target.repository(),
            target
                .digest()
                .unwrap_or_else(|| target.tag().unwrap_or("latest"))
        );
        let mut request = self.http.get(&url).timeout(MANIFEST_TIMEOUT).header(
            http::header::ACCEPT,
            manifest::ACCEPTED_MANIFEST_TYPES.join(", "),
        );
        request = match (token, auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let fetch_err = |e: reqwest::Error| Error::Registry {
            what: format!("fetching {what} from {url}"),
            message: chain(&e),
        };
        let mut response = request.send().await.map_err(fetch_err)?;
        let status = response.status();
        if !status.is_success() {
            let mut body = Vec::new();
            while body.len() < ERROR_BODY
                && let Ok(Some(chunk)) = response.chunk().await
            {
                body.extend_from_slice(&chunk);
            }
            body.truncate(ERROR_BODY);
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            let message = if status == reqwest::StatusCode::UNAUTHORIZED {
                format!("not authorized (HTTP {status}): {text}")
            } else {
                format!("HTTP {status}: {text}")
            };
            return Err(Error::Registry {
                what: format!("fetching {what} from {url}"),
                message,
            });
        }
        let bound = || format!("{} bytes per manifest (Limits::manifest_bytes)", self.limit);
        let announced = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(length) = announced
            && length > self.limit
        {
            return Err(Error::TooLarge {
                what: what.to_owned(),
                detail: format!("the registry announces {length} bytes (Content-Length)"),
                bound: bound(),
            });
        }
        let capacity = announced.unwrap_or(0).min(self.limit);
        let mut body = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        while let Some(chunk) = response.chunk().await.map_err(fetch_err)? {
            if (body.len() + chunk.len()) as u64 > self.limit {
                // Dropping the response closes the connection: nothing more
                // is read.
                return Err(Error::TooLarge {
                    what: what.to_owned(),
                    detail: format!(
                        "the registry sent more than {} bytes{}",
                        self.limit,
                        match announced {
                            Some(n) => format!(" (it announced {n})"),
                            None => " (without a Content-Length)".to_owned(),
                        }
                    ),
                    bound: bound(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// One place to pull from.
#[derive(Debug)]
struct Endpoint {
    /// For messages: "mirror http://..." or "registry docker.io".
    label: String,
    /// `host[:port]` as the client addresses it (None if the mirror URL is
    /// unusable; `error` says why).
    host: Option<String>,
    insecure: bool,
    auth: RegistryAuth,
    error: Option<Error>,
}

pub(crate) fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another part of the program installed one: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `scheme://host[:port]` -> (host, insecure).
fn parse_mirror(url: &str, insecure: &[String]) -> Result<(String, bool), Error> {
    let bad = |reason: &str| Error::InvalidMirror {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let (rest, scheme_insecure) = if let Some(r) = url.strip_prefix("http://") {
        (r, Some(true))
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, Some(false))
    } else if url.contains("://") {
        return Err(bad("only http:// and https:// mirrors are supported"));
    } else {
        (url, None)
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.contains('/') || host.contains('?') || host.contains('#') {
        return Err(bad(
            "a mirror URL must be scheme://host[:port] without a path",
        ));
    }
    let insecure = scheme_insecure.unwrap_or_else(|| insecure.iter().any(|h| h == host));
    Ok((host.to_owned(), insecure))
}

fn endpoints(reference: &Reference, config: &RegistryConfig) -> Vec<Endpoint> {
    let registry = reference.registry();
    let auth_for = |host: &str| {
        config
            .auth
            .get(host)
            .map_or(RegistryAuth::Anonymous, Credentials::registry_auth)
    };
    let mut out = Vec::new();
    for url in config.mirrors.get(registry).into_iter().flatten() {
        let label = format!("mirror {url}");
        match parse_mirror(url, &config.insecure) {
            Ok((host, insecure)) => out.push(Endpoint {
                label,
                auth: auth_for(&host),
                host: Some(host),
                insecure,
                error: None,
            }),
            Err(e) => out.push(Endpoint {
                label,
                host: None,
                insecure: false,
                auth: RegistryAuth::Anonymous,
                error: Some(e),
            }),
        }
    }
    let host = reference.resolve_registry().to_owned();
    let insecure = config.insecure.iter().any(|h| h == registry || *h == host);
    let mut auth = auth_for(registry);
    if auth == RegistryAuth::Anonymous {
        auth = auth_for(&host);
    }
    out.push(Endpoint {
        label: format!("registry {registry}"),
        host: Some(host),
        insecure,
        auth,
        error: None,
    });
    out
}

/// `reference` as served by `host`.
fn at_host(reference: &Reference, host: &str) -> Reference {
    let registry = host.to_owned();
    let repo = reference.repository().to_owned();
    match (reference.tag(), reference.digest()) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repo, t.to_owned(), d.to_owned())
        }
        (None, Some(d)) => Reference::with_digest(registry, repo, d.to_owned()),
        (t, None) => Reference::with_tag(registry, repo, t.unwrap_or("latest").to_owned()),
    }
}

fn registry_error(what: String) -> impl FnOnce(oci_client::errors::OciDistributionError) -> Error {
    move |e| Error::Registry {
        what,
        message: chain(&e),
    }
}

/// Counts and hashes what the registry client writes, refusing more than
/// the descriptor's size.
struct HashingWriter {
    file: tokio::fs::File,
    hasher: Sha256,
    bytes: u64,
    limit: u64,
}

impl AsyncWrite for HashingWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.bytes + buf.len() as u64 > self.limit {
            return Poll::Ready(Err(io::Error::other(format!(
                "the registry sent more than the descriptor's {} bytes",
                self.limit
            ))));
        }
        let this = &mut *self;
        match Pin::new(&mut this.file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.bytes += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl Store {
    /// Pulls `reference` (normalised first) into the store and tags it:
    /// tries each mirror configured for its registry in order, then the
    /// registry; from an index picks the store's platform; downloads only
    /// blobs not yet stored, streaming them to disk and verifying each;
    /// unpacks the layers; then writes the reference. If every source fails
    /// the error names each attempt. Manifests, blobs and layers are held
    /// to the store's [`crate::Limits`].
    pub async fn pull(
        &self,
        reference: &str,
        registries: &RegistryConfig,
    ) -> Result<PullReport, Error> {
        self.pull_guarded(reference, registries, &Guard::default())
            .await
    }

    /// [`Store::pull`], refusing to move a reference `guard` protects to
    /// another image ([`Error::InUse`]).
    pub async fn pull_guarded(
        &self,
        reference: &str,
        registries: &RegistryConfig,
        guard: &Guard,
    ) -> Result<PullReport, Error> {
        let started = Instant::now();
        let parsed = reference::parse(reference)?;
        let whole = parsed.whole();
        install_crypto_provider();
        let lock_store = self.clone();
        let writer = tokio::task::spawn_blocking(move || lock_store.writer_lock())
            .await
            .map_err(|e| Error::Task {
                what: "locking the store".to_owned(),
                reason: e.to_string(),
            })??;

        let endpoints = endpoints(&parsed, registries);
        let mut http_hosts: Vec<String> = endpoints
            .iter()
            .filter(|e| e.insecure)
            .filter_map(|e| e.host.clone())
            .collect();
        http_hosts.extend(registries.insecure.iter().cloned());
        let manifests = ManifestFetcher::new(
            registries,
            http_hosts.clone(),
            self.limits().manifest_bound(),
        )?;
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(http_hosts),
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            extra_root_certificates: extra_roots(&registries.ca_certificates),
            ..ClientConfig::default()
        });

        let mut fetched = 0u64;
        let written = Written::default();
        let mut attempts = Vec::new();
        let mut found = None;
        for ep in endpoints {
            let result = match (&ep.host, ep.error) {
                (_, Some(e)) => Err(e),
                (Some(host), None) => {
                    let target = at_host(&parsed, host);
                    self.fetch(
                        &client,
                        &manifests,
                        &target,
                        &ep.auth,
                        &parsed,
                        &mut fetched,
                        &written,
                    )
                    .await
                }
                (None, None) => Err(Error::InvalidMirror {
                    url: ep.label.clone(),
                    reason: "no host".to_owned(),
                }),
            };
            match result {
                Ok(digest) => {
                    debug!(reference = whole, source = ep.label, "fetched");
                    found = Some(digest);
                    break;
                }
                Err(e) => {
                    warn!(reference = whole, source = ep.label, error = %e, "pull attempt failed");
                    attempts.push(format!("{}: {e}", ep.label));
                }
            }
        }
        let Some((manifest_digest, via)) = found else {
            let store = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                store.discard(&written);
                drop(writer);
            })
            .await;
            return Err(Error::Pull {
                reference: whole,
                attempts,
            });
        };

        let store = self.clone();
        let tag = whole.clone();
        let guard = guard.clone();
        let image = tokio::task::spawn_blocking(move || {
            let result = store
                .prepare(&manifest_digest, &written)
                .and_then(|prepared| {
                    let item = TagItem {
                        reference: tag,
                        prepared,
                        via,
                    };
                    store.tag(&[item], &guard)
                });
            if result.is_err() {
                store.discard(&written);
            }
            drop(writer);
            result?.pop().ok_or_else(|| Error::Corrupt {
                reason: "tagging returned nothing".to_owned(),
            })
        })
        .await
        .map_err(|e| Error::Task {
            what: format!("storing {whole}"),
            reason: e.to_string(),
        })??;
        let report = PullReport {
            image,
            fetched_bytes: fetched,
            duration: started.elapsed(),
        };
        info!(
            reference = report.image.reference,
            digest = report.image.digest,
            fetched_bytes = report.fetched_bytes,
            millis = report.duration.as_millis() as u64,
            "pulled"
        );
        Ok(report)
    }

    /// Fetches the manifest for the store's platform and every blob it
    /// needs from one endpoint; returns the manifest's digest and those of
    /// the indexes that led to it.
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
        client: &Client,
        manifests: &ManifestFetcher,
        target: &Reference,
        auth: &RegistryAuth,
        asked: &Reference,
        fetched: &mut u64,
        written: &Written,
    ) -> Result<(String, Vec<String>), Error> {
        let (body, mut manifest_digest) = self
            .fetch_manifest(
                client,
                manifests,
                target,
                auth,
                asked.digest(),
                &format!("manifest {}", asked.whole()),
            )
            .await?;
        let mut body = body;
        let mut depth = 0;
        let mut via = Vec::new();
        let m = loop {
            let what = format!("manifest {manifest_digest} of {}", asked.whole());
            match manifest::parse_document(&body, &what)? {
                Document::Manifest(m) => break m,
                Document::Index(index) => {
                    depth += 1;
                    if depth > 4 {
                        return Err(Error::InvalidManifest {
                            what,
                            reason: "indexes nested too deeply".to_owned(),
                        });
                    }
                    let what = format!("index {manifest_digest} of {}", asked.whole());
                    let chosen =
                        manifest::select_platform(&index.manifests, self.platform(), &what)?;
                    digest::hex_of(&chosen.digest)?;
                    if chosen.size > manifests.limit {
                        return Err(Error::TooLarge {
                            what: format!("manifest {} from {what}", chosen.digest),
                            detail: format!("the index says {} bytes", chosen.size),
                            bound: format!(
                                "{} bytes per manifest (Limits::manifest_bytes)",
                                manifests.limit
                            ),
                        });
                    }
                    via.push(manifest_digest.clone());
                    let child = target.clone_with_digest(chosen.digest.clone());
                    let (b, d) = self
                        .fetch_manifest(
                            client,
                            manifests,
                            &child,
                            auth,
                            Some(&chosen.digest),
                            &format!("manifest {} from {what}", chosen.digest),
                        )
                        .await?;
                    if b.len() as u64 != chosen.size {
                        return Err(Error::SizeMismatch {
                            what: format!("manifest {d}"),
                            expected: chosen.size,
                            actual: b.len() as u64,
                        });
                    }
                    body = b;
                    manifest_digest = d;
                }
            }
        };
        let what = format!("manifest {manifest_digest} of {}", asked.whole());
        // Refuse what cannot be stored before downloading anything big.
        manifest::check_config_type(&m.config, &what)?;
        for (i, layer) in m.layers.iter().enumerate() {
            manifest::layer_compression(
                &layer.media_type,
                &format!("layer {} ({}) of {what}", i + 1, layer.digest),
            )?;
            digest::hex_of(&layer.digest)?;
        }
        digest::hex_of(&m.config.digest)?;
        self.check_declared_sizes(&m, &what)?;
        if self.store_bytes(&body, &manifest_digest, &what)? {
            written.blob(&manifest_digest);
        }
        if self
            .download(
                client,
                target,
                &m.config,
                &format!("config of {what}"),
                fetched,
            )
            .await?
        {
            written.blob(&m.config.digest);
        }
        for (i, layer) in m.layers.iter().enumerate() {
            if self
                .download(
                    client,
                    target,
                    layer,
                    &format!("layer {} of {what}", i + 1),
                    fetched,
                )
                .await?
            {
                written.blob(&layer.digest);
            }
        }
        Ok((manifest_digest, via))
    }

    /// Fetches a manifest document, verifying it hashes to `expected` if
    /// given; returns it and its digest.
    async fn fetch_manifest(
        &self,
        client: &Client,
        manifests: &ManifestFetcher,
        target: &Reference,
        auth: &RegistryAuth,
        expected: Option<&str>,
        what: &str,
    ) -> Result<(Vec<u8>, String), Error> {
        let body = manifests.get(client, target, auth, what).await?;
        let actual = digest::sha256_of(&body);
        if let Some(expected) = expected
            && actual != expected
        {
            return Err(Error::DigestMismatch {
                what: what.to_owned(),
                expected: expected.to_owned(),
                actual,
            });
        }
        Ok((body, actual))
    }

    /// Stores bytes already in memory as a blob; true if it was not there.
    fn store_bytes(&self, bytes: &[u8], digest: &str, what: &str) -> Result<bool, Error> {
        if self.has_blob(digest)? {
            return Ok(false);
        }
        self.write_blob(bytes, digest, Some(bytes.len() as u64), what)?;
        Ok(true)
    }

    /// Streams a blob from the registry into the store unless present;
    /// true if it was not there.
    async fn download(
        &self,
        client: &Client,
        target: &Reference,
        desc: &Descriptor,
        what: &str,
        fetched: &mut u64,
    ) -> Result<bool, Error> {
        if self.has_blob(&desc.digest)? {
            debug!(digest = desc.digest, "blob already stored");
            return Ok(false);
        }
        let dest = self.blob_path(&desc.digest)?;
        let tmp = TempPath::new(self.tmp_dir().join(fsutil::unique_name("pull")));
        let file = tokio::fs::File::create(tmp.path())
            .await
            .map_err(Error::io(format!("creating {}", tmp.path().display())))?;
        let mut writer = HashingWriter {
            file,
            hasher: Sha256::new(),
            bytes: 0,
            limit: desc.size,
        };
        client
            .pull_blob(target, desc.digest.as_str(), &mut writer)
            .await
            .map_err(registry_error(format!("fetching {what} ({})", desc.digest)))?;
        let HashingWriter {
            file,
            hasher,
            bytes,
            ..
        } = writer;
        if bytes != desc.size {
            return Err(Error::SizeMismatch {
                what: what.to_owned(),
                expected: desc.size,
                actual: bytes,
            });
        }
        let actual = digest::finish(hasher);
        if actual != desc.digest {
            return Err(Error::DigestMismatch {
                what: what.to_owned(),
                expected: desc.digest.clone(),
                actual,
            });
        }
        file.sync_all()
            .await
            .map_err(Error::io(format!("syncing {}", tmp.path().display())))?;
        drop(file);
        bramble_atomic::rename(tmp.path(), &dest)?;
        tmp.disarm();
        *fetched += bytes;
        debug!(digest = desc.digest, bytes, "blob downloaded");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_parse() {
        let insecure = vec!["mirror.lan:5000".to_owned()];
        assert_eq!(
            parse_mirror("http://10.0.2.100:5000", &[]).expect("http"),
            ("10.0.2.100:5000".to_owned(), true)
        );
        assert_eq!(
            parse_mirror("https://mirror.example/", &[]).expect("https"),
            ("mirror.example".to_owned(), false)
        );
        assert_eq!(
            parse_mirror("mirror.lan:5000", &insecure).expect("bare"),
            ("mirror.lan:5000".to_owned(), true)
        );
        for bad in ["ftp://x", "http://", "https://m.example/v2/prefix"] {
            let err = parse_mirror(bad, &[]).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn endpoints_are_mirrors_then_the_registry() {
        let r = reference::parse("busybox").expect("ref");
        let mut config = RegistryConfig::default();
        config.mirrors.insert(
            "docker.io".to_owned(),
            vec![
                "http://127.0.0.1:1".to_owned(),
                "https://m2.example".to_owned(),
            ],
        );
        config
            .auth
            .insert("m2.example".to_owned(), Credentials::Bearer("t".to_owned()));
        let eps = endpoints(&r, &config);
        let hosts: Vec<_> = eps.iter().map(|e| (e.host.clone(), e.insecure)).collect();
        assert_eq!(
            hosts,
            vec![
                (Some("127.0.0.1:1".to_owned()), true),
                (Some("m2.example".to_owned()), false),
                (Some("index.docker.io".to_owned()), false),
            ]
        );
        assert_eq!(eps[1].auth, RegistryAuth::Bearer("t".to_owned()));
        let mirror_ref = at_host(&r, "127.0.0.1:1");
        assert_eq!(mirror_ref.whole(), "127.0.0.1:1/library/busybox:latest");
        assert!(!format!("{:?}", Credentials::Bearer("secret".to_owned())).contains("secret"));
    }
}
