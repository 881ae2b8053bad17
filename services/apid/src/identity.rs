//! The server's TLS identity in maintenance mode: a self-signed ECDSA P-256
//! certificate, generated on first start and kept in the state directory so
//! that its fingerprint stays the same across restarts and reboots.

use std::fmt;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// File name of the PEM certificate in the state directory.
pub const CERT_FILE: &str = "server.crt";
/// File name of the PEM (PKCS#8) private key in the state directory.
pub const KEY_FILE: &str = "server.key";

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

pub use bramble_pki::Fingerprint;

/// Where the identity in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read back from the state directory.
    Loaded,
    /// Generated now and persisted in the state directory.
    Generated,
}

/// The names the certificate is issued for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectNames {
    /// The node's host name (skipped if it is not a valid DNS name).
    pub hostname: String,
    /// Addresses besides the loopback ones (127.0.0.1 and ::1 are always in).
    pub addresses: Vec<IpAddr>,
}

impl SubjectNames {
    fn to_sans(&self) -> Vec<SanType> {
        let mut sans = Vec::new();
        let mut dns = Vec::new();
        if bramble_pki::is_dns_name(&self.hostname, false) {
            dns.push(self.hostname.to_ascii_lowercase());
        }
        if !dns.iter().any(|n| n == "localhost") {
            dns.push("localhost".to_owned());
        }
        for name in dns {
            if let Ok(name) = name.try_into() {
                sans.push(SanType::DnsName(name));
            }
        }
        let mut ips: Vec<IpAddr> = vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ];
        for ip in &self.addresses {
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }
        sans.extend(ips.into_iter().map(SanType::IpAddress));
        sans
    }
}

/// Certificate and key of the API server.
pub struct ServerIdentity {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("ServerIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// Generates a new self-signed certificate (ECDSA P-256) for `names`.
    pub fn generate(names: &SubjectNames) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let cn = if names.hostname.is_empty() {
            "bramble node".to_owned()
        } else {
            format!("bramble node {}", names.hostname)
        };
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, "Bramble maintenance mode");
        params.distinguished_name = dn;
        params.subject_alt_names = names.to_sans();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // Validity stays rcgen's default (1975 to 4096): a Raspberry Pi has no
        // real-time clock, and clients pin this certificate by fingerprint
        // rather than trusting it through a CA.
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().clone();
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            fingerprint: Fingerprint::of_der(&cert_der),
            cert_der,
        })
    }

    /// Parses and checks a PEM certificate and PEM PKCS#8 key: both must
    /// parse and the key must belong to the certificate.
    pub fn from_pem(cert_pem: String, key_pem: String) -> Result<Self, String> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("certificate: {e}"))?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("private key: {e}"))?;
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(vec![cert_der.clone()], key_der, &provider)
            .map_err(|e| format!("certificate and key do not go together: {e}"))?;
        Ok(Self {
            fingerprint: Fingerprint::of_der(&cert_der),
            cert_pem,
            key_pem,
            cert_der,
        })
    }

    /// Loads the identity persisted in `dir`, or generates one for `names`
    /// and persists it (key first, then certificate; each atomically).
    ///
    /// A missing, half-written or unusable pair is replaced by a new one, with
    /// a warning: the API must come up for the node to be reachable at all.
    pub fn load_or_generate(dir: &Path, names: &SubjectNames) -> Result<(Self, Origin), Error> {
        ensure_dir(dir)?;
        match bramble_atomic::remove_stale_temporaries(dir).map_err(io::Error::from) {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(dir = %dir.display(), count = n, "removed temporary files left by an interrupted write")
            }
            Err(source) => {
                return Err(Error::StateDir {
                    path: dir.to_owned(),
                    source,
                });
            }
        }
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        match Self::load(&cert_path, &key_path) {
            Ok(Some(identity)) => return Ok((identity, Origin::Loaded)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "replacing the unusable server certificate; its fingerprint changes")
            }
        }
        let identity = Self::generate(names)?;
        identity.persist(&cert_path, &key_path)?;
        tracing::info!(
            path = %cert_path.display(),
            fingerprint = %identity.fingerprint,
            "generated a self-signed server certificate"
        );
        Ok((identity, Origin::Generated))
    }

    /// `Ok(None)` when neither file exists yet.
    fn load(cert_path: &Path, key_path: &Path) -> Result<Option<Self>, Error> {
        let cert = read_optional(cert_path)?;
        let key = read_optional(key_path)?;
        let (cert, key) = match (cert, key) {
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (c, k),
            (None, Some(_)) => return Err(invalid(cert_path, "missing (the key exists)")),
            (Some(_), None) => return Err(invalid(key_path, "missing (the certificate exists)")),
        };
        let identity = Self::from_pem(cert, key).map_err(|reason| invalid(cert_path, &reason))?;
        tighten_key_mode(key_path);
        Ok(Some(identity))
    }

    fn persist(&self, cert_path: &Path, key_path: &Path) -> Result<(), Error> {
        bramble_atomic::write(key_path, self.key_pem.as_bytes(), KEY_MODE)
            .map_err(io::Error::from)
            .map_err(|source| Error::Persist {
                path: key_path.to_owned(),
                source,
            })?;
        bramble_atomic::write(cert_path, self.cert_pem.as_bytes(), CERT_MODE)
            .map_err(io::Error::from)
            .map_err(|source| Error::Persist {
                path: cert_path.to_owned(),
                source,
            })
    }

    /// SHA-256 fingerprint of the certificate.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// The certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The certificate, PEM-encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The identity as the transport takes it.
    pub(crate) fn to_tonic(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

fn invalid(path: &Path, reason: &str) -> Error {
    Error::InvalidIdentity {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(invalid(path, &e.to_string())),
    }
}

/// The key must be readable by its owner only; repair it if someone loosened it.
fn tighten_key_mode(key_path: &Path) {
    let Ok(meta) = fs::metadata(key_path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(path = %key_path.display(), mode = format!("{mode:o}"), "private key readable by others; setting mode 600");
        if let Err(e) = fs::set_permissions(key_path, fs::Permissions::from_mode(KEY_MODE)) {
            tracing::warn!(path = %key_path.display(), error = %e, "cannot restrict the private key");
        }
    }
}

fn ensure_dir(dir: &Path) -> Result<(), Error> {
    let state_err = |source| Error::StateDir {
        path: dir.to_owned(),
        source,
    };
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(state_err)?;
    // Make the new directory entry itself durable.
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        bramble_atomic::sync_dir(parent)
            .map_err(io::Error::from)
            .map_err(state_err)?;
    }
    Ok(())
}

/// Paths of the persisted certificate and key in `dir`.
pub fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CERT_FILE), dir.join(KEY_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> SubjectNames {
        SubjectNames {
            hostname: "pi-1".into(),
            addresses: vec!["192.0.2.7".parse().unwrap()],
        }
    }

    #[test]
    fn fingerprint_format() {
        let f = Fingerprint::of_der(b"");
        assert_eq!(
            f.to_string(),
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn is_dns_name(name: &str) -> bool {
        bramble_pki::is_dns_name(name, false)
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("pi-1"));
        assert!(is_dns_name("node.example.org"));
        assert!(!is_dns_name(""));
        assert!(!is_dns_name("(none)"));
        assert!(!is_dns_name("-a"));
        assert!(!is_dns_name("a..b"));
    }

    #[test]
    fn sans_always_cover_loopback() {
        let sans = SubjectNames::default().to_sans();
        assert!(sans.contains(&SanType::IpAddress("127.0.0.1".parse().unwrap())));
        assert!(sans.contains(&SanType::IpAddress("::1".parse().unwrap())));
        assert!(sans.contains(&SanType::DnsName("localhost".try_into().unwrap())));
        let sans = names().to_sans();
        assert!(sans.contains(&SanType::DnsName("pi-1".try_into().unwrap())));
        assert!(sans.contains(&SanType::IpAddress("192.0.2.7".parse().unwrap())));
    }

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/apid");
        let (first, origin) = ServerIdentity::load_or_generate(&state, &names()).unwrap();
        assert_eq!(origin, Origin::Generated);
        let (second, origin) = ServerIdentity::load_or_generate(&state, &names()).unwrap();
        assert_eq!(origin, Origin::Loaded);
        assert_eq!(first.fingerprint(), second.fingerprint());
        let (cert, key) = paths(&state);
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            fs::read_to_string(&cert)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn mismatched_pair_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = ServerIdentity::load_or_generate(dir.path(), &names()).unwrap();
        let b = ServerIdentity::generate(&names()).unwrap();
        // Simulate a crash between writing the new key and the new certificate.
        let (_, key) = paths(dir.path());
        fs::write(&key, &b.key_pem).unwrap();
        let (c, origin) = ServerIdentity::load_or_generate(dir.path(), &names()).unwrap();
        assert_eq!(origin, Origin::Generated);
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert!(ServerIdentity::from_pem(a.cert_pem.clone(), b.key_pem.clone()).is_err());
    }

    #[test]
    fn loose_key_mode_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        ServerIdentity::load_or_generate(dir.path(), &names()).unwrap();
        let (_, key) = paths(dir.path());
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        ServerIdentity::load_or_generate(dir.path(), &names()).unwrap();
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
