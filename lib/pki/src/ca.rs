//! Certificate authorities and the certificates they issue.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;

use crate::error::Error;
use crate::inspect::parse_der;
use crate::role::Role;
use crate::validity::Validity;

/// Common name of a server certificate issued without a host name.
const DEFAULT_SERVER_CN: &str = "bramble node";

/// SHA-256 fingerprint of a DER certificate, shown as `SHA256:<hex>` (the
/// way `apid` prints its certificate and `nodectl --cert-fingerprint` takes it).
pub fn fingerprint(cert_der: &[u8]) -> String {
    crate::Fingerprint::of_der(cert_der).to_string()
}

/// A certificate authority: its certificate and private key, both PEM.
///
/// The pair is checked on construction: the certificate is a CA and the key
/// is its key. In YAML it is `{cert: <PEM>, key: <PEM>}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CaPem", into = "CaPem")]
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
}

/// How a [`CertificateAuthority`] is written in the secrets bundle.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaPem {
    cert: String,
    key: String,
}

impl TryFrom<CaPem> for CertificateAuthority {
    type Error = Error;

    fn try_from(pem: CaPem) -> Result<Self, Error> {
        Self::from_pem(&pem.cert, &pem.key)
    }
}

impl From<CertificateAuthority> for CaPem {
    fn from(ca: CertificateAuthority) -> Self {
        Self {
            cert: ca.cert_pem,
            key: ca.key_pem,
        }
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a new CA: ECDSA P-256 key, self-signed, `CA:TRUE` with path
    /// length 0 (it signs end-entity certificates only), key usages
    /// keyCertSign and cRLSign.
    pub fn generate(common_name: &str, validity: Validity) -> Result<Self, Error> {
        validity.check()?;
        check_common_name(common_name)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        })
    }

    /// Takes an existing CA: a PEM certificate (exactly one) and its PEM
    /// PKCS#8 private key. Refused when the certificate is not a CA
    /// (`CA:TRUE`, keyCertSign if key usages are listed) or the key is not
    /// the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let cert_der = single_cert(cert_pem, "CA certificate")?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::Pem {
            what: "CA private key",
            reason: e.to_string(),
        })?;
        {
            let x509 = parse_der(&cert_der)?;
            check_is_ca(&x509)?;
            check_subject(&x509)?;
            if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
                return Err(Error::KeyMismatch);
            }
        }
        let ca = Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
        };
        // Fails now rather than at the first issue if rcgen cannot sign with it.
        ca.issuer()?;
        Ok(ca)
    }

    /// The certificate, PEM-encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM-encoded (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 fingerprint of the certificate: `SHA256:<hex>`.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// Issues a client certificate for the machine API: subject
    /// `CN=<common_name>, O=bramble:role:<role>`, extended key usage
    /// clientAuth, key usage digitalSignature, a new ECDSA P-256 key.
    pub fn issue_client(
        &self,
        common_name: &str,
        role: Role,
        validity: Validity,
    ) -> Result<IssuedCert, Error> {
        check_common_name(common_name)?;
        let mut params = leaf_params(validity)?;
        params.distinguished_name = subject(common_name, &[role.organization()]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(&params)
    }

    /// Issues a server certificate for a node: extended key usage
    /// serverAuth, key usage digitalSignature, a new ECDSA P-256 key.
    ///
    /// Subject alternative names: `hostname`, `localhost`, 127.0.0.1, ::1
    /// (so a node reached through a forwarded loopback port verifies
    /// normally), each of `addresses`, and each of `extra_dns` (an entry that
    /// is an IP address becomes an IP name; `*.domain` wildcards are
    /// allowed). Names are lower-cased and de-duplicated.
    ///
    /// The node's API must come up even when its host name is unusable (the
    /// kernel's `(none)` before one is set): a `hostname` that is not a DNS
    /// name is left out, with a warning, and the common name becomes
    /// `bramble node`. An unusable `extra_dns` entry is an error.
    pub fn issue_server(
        &self,
        hostname: &str,
        addresses: &[IpAddr],
        extra_dns: &[String],
        validity: Validity,
    ) -> Result<IssuedCert, Error> {
        self.sign(&server_params(hostname, addresses, extra_dns, validity)?)
    }

    /// Issues a server certificate as [`CertificateAuthority::issue_server`]
    /// does, for the key of a certificate signing request made by
    /// [`server_request`] on a node that holds no CA key (a worker): the
    /// request's signature is checked (it proves the requester holds the
    /// key) and nothing else of it is used; the names are the arguments'.
    /// Returns the certificate, PEM; the private key never left the
    /// requester.
    pub fn issue_server_for(
        &self,
        csr_der: &[u8],
        hostname: &str,
        addresses: &[IpAddr],
        extra_dns: &[String],
        validity: Validity,
    ) -> Result<String, Error> {
        let params = server_params(hostname, addresses, extra_dns, validity)?;
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| Error::Certificate(format!("certificate signing request: {e}")))?;
        Ok(params.signed_by(&csr.public_key, &self.issuer()?)?.pem())
    }

    /// Issues one of an etcd member's certificates for the node `hostname`
    /// with `addresses` (see [`EtcdCert`]). A new ECDSA P-256 key each time.
    pub fn issue_etcd(
        &self,
        kind: EtcdCert,
        hostname: &str,
        addresses: &[IpAddr],
        validity: Validity,
    ) -> Result<IssuedCert, Error> {
        let mut params = match kind {
            EtcdCert::Peer | EtcdCert::Server => server_params(hostname, addresses, &[], validity)?,
            EtcdCert::Client => {
                check_common_name(hostname)?;
                let mut params = leaf_params(validity)?;
                params.distinguished_name = subject(hostname, &[]);
                params
            }
        };
        params.extended_key_usages = match kind {
            // Peers dial each other with the same certificate they serve
            // with; etcd 3.4's gRPC gateway dials its own client port with
            // the server certificate.
            EtcdCert::Peer | EtcdCert::Server => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            EtcdCert::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        self.sign(&params)
    }

    /// Issues a certificate from caller-made parameters, for certificates
    /// this crate has no dedicated constructor for (and for tests of how
    /// odd certificates are treated). A new ECDSA P-256 key is generated; the
    /// serial number is random unless the parameters set one.
    pub fn issue_custom(&self, params: &CertificateParams) -> Result<IssuedCert, Error> {
        Validity::new(params.not_before, params.not_after).check()?;
        if params.serial_number.is_some() {
            self.sign(params)
        } else {
            let mut params = params.clone();
            params.serial_number = Some(random_serial()?);
            self.sign(&params)
        }
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, Error> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| Error::Pem {
            what: "CA private key",
            reason: e.to_string(),
        })?;
        Ok(Issuer::from_ca_cert_der(&self.cert_der, key)?)
    }

    fn sign(&self, params: &CertificateParams) -> Result<IssuedCert, Error> {
        let issuer = self.issuer()?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The certificates an etcd member holds, all from the cluster's etcd CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdCert {
    /// Raft traffic between members (port 2380): serverAuth and clientAuth,
    /// the node's names and addresses.
    Peer,
    /// The client API (port 2379): serverAuth (and clientAuth, which etcd's
    /// own gateway needs), the node's names, addresses and loopback.
    Server,
    /// A client of the API: clientAuth, the common name given.
    Client,
}

/// A certificate issued by a [`CertificateAuthority`] and its private key,
/// both PEM (the key PKCS#8).
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate, PEM-encoded.
    pub cert_pem: String,
    /// The private key, PEM-encoded (PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        let fingerprint = self.cert_der().map(|der| fingerprint(&der));
        f.debug_struct("IssuedCert")
            .field(
                "fingerprint",
                &fingerprint.as_deref().unwrap_or("unreadable"),
            )
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The (first) certificate, DER-encoded.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, Error> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|e| Error::Pem {
            what: "certificate",
            reason: e.to_string(),
        })
    }

    /// The certificate chain (leaf first) and key as rustls takes them.
    pub fn to_rustls(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
        let chain = pem_certs(&self.cert_pem, "certificate")?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| Error::Pem {
                what: "private key",
                reason: e.to_string(),
            })?;
        Ok((chain, key))
    }
}

/// Every certificate in a PEM text, in order; at least one.
pub(crate) fn pem_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            what,
            reason: "no certificate found".to_owned(),
        });
    }
    Ok(certs)
}

fn single_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, Error> {
    let mut certs = pem_certs(pem, what)?;
    if certs.len() > 1 {
        return Err(Error::Pem {
            what,
            reason: format!("expected one certificate, found {}", certs.len()),
        });
    }
    certs.pop().ok_or(Error::Pem {
        what,
        reason: "no certificate found".to_owned(),
    })
}

fn check_is_ca(x509: &X509Certificate<'_>) -> Result<(), Error> {
    let constraints = x509
        .basic_constraints()
        .map_err(|e| Error::Certificate(format!("basic constraints: {e}")))?;
    match constraints {
        Some(bc) if bc.value.ca => {}
        _ => return Err(Error::NotCa("basic constraints do not say CA:TRUE")),
    }
    let usage = x509
        .key_usage()
        .map_err(|e| Error::Certificate(format!("key usage: {e}")))?;
    if let Some(usage) = usage
        && !usage.value.key_cert_sign()
    {
        return Err(Error::NotCa("key usage does not include keyCertSign"));
    }
    Ok(())
}

/// The issuer name of issued certificates is copied from the CA's subject,
/// which must therefore be a plain sequence of single-valued attributes.
fn check_subject(x509: &X509Certificate<'_>) -> Result<(), Error> {
    if x509.subject().iter().all(|rdn| rdn.iter().count() == 1) {
        Ok(())
    } else {
        Err(Error::Certificate(
            "the CA's subject has an empty or multi-valued component".to_owned(),
        ))
    }
}

fn check_common_name(cn: &str) -> Result<(), Error> {
    if cn.trim().is_empty() {
        return Err(Error::Name {
            name: cn.to_owned(),
            reason: "a common name must not be empty",
        });
    }
    if cn.chars().any(char::is_control) {
        return Err(Error::Name {
            name: cn.to_owned(),
            reason: "a common name must not contain control characters",
        });
    }
    Ok(())
}

fn subject(common_name: &str, organizations: &[String]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in organizations {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A node's new private key and a certificate signing request for it, to
/// send to a node whose CA issues it a server certificate
/// ([`CertificateAuthority::issue_server_for`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ServerRequest {
    /// The request, DER-encoded.
    pub csr_der: Vec<u8>,
    /// The private key (PKCS#8 PEM); it stays with the node.
    pub key_pem: String,
}

impl fmt::Debug for ServerRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("ServerRequest")
            .field("csr_bytes", &self.csr_der.len())
            .finish_non_exhaustive()
    }
}

/// A new ECDSA P-256 key and a certificate signing request signed with it.
pub fn server_request() -> Result<ServerRequest, Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(DEFAULT_SERVER_CN, &[]);
    let csr = params.serialize_request(&key)?;
    Ok(ServerRequest {
        csr_der: csr.der().to_vec(),
        key_pem: key.serialize_pem(),
    })
}

/// The parameters of a node's server certificate (see
/// [`CertificateAuthority::issue_server`]).
fn server_params(
    hostname: &str,
    addresses: &[IpAddr],
    extra_dns: &[String],
    validity: Validity,
) -> Result<CertificateParams, Error> {
    let mut params = leaf_params(validity)?;
    let hostname = if is_dns_name(hostname, false) {
        Some(hostname)
    } else {
        if !hostname.is_empty() {
            tracing::warn!(
                hostname,
                "host name is not a DNS name; leaving it out of the server certificate"
            );
        }
        None
    };
    params.distinguished_name = subject(hostname.unwrap_or(DEFAULT_SERVER_CN), &[]);
    params.subject_alt_names = server_sans(hostname, addresses, extra_dns)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

/// Parameters shared by every end-entity certificate.
fn leaf_params(validity: Validity) -> Result<CertificateParams, Error> {
    validity.check()?;
    let mut params = CertificateParams::default();
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(random_serial()?);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A random, positive 128-bit serial number.
fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Random)?;
    // Positive, and 16 bytes long once encoded.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn server_sans(
    hostname: Option<&str>,
    addresses: &[IpAddr],
    extra: &[String],
) -> Result<Vec<SanType>, Error> {
    let mut dns: Vec<String> = Vec::new();
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(Ipv6Addr::LOCALHOST),
    ];
    let mut add_dns = |name: String| {
        if !dns.contains(&name) {
            dns.push(name);
        }
    };
    if let Some(hostname) = hostname {
        add_dns(hostname.to_ascii_lowercase());
    }
    add_dns("localhost".to_owned());
    let mut extra_ips = Vec::new();
    for name in extra {
        if let Ok(ip) = name.parse::<IpAddr>() {
            extra_ips.push(ip);
        } else if is_dns_name(name, true) {
            add_dns(name.to_ascii_lowercase());
        } else {
            return Err(Error::Name {
                name: name.clone(),
                reason: "neither a DNS name nor an IP address",
            });
        }
    }
    for ip in addresses.iter().chain(&extra_ips) {
        if !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    let mut sans = Vec::with_capacity(dns.len() + ips.len());
    for name in dns {
        let ia5 = name.as_str().try_into().map_err(|_| Error::Name {
            name: name.clone(),
            reason: "not ASCII",
        })?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(ips.into_iter().map(SanType::IpAddress));
    Ok(sans)
}

/// A DNS name: dot-separated labels of 1–63 letters, digits and hyphens, not
/// starting or ending with a hyphen, 253 characters at most; with
/// `wildcard`, the first label may be `*`.
pub fn is_dns_name(name: &str, wildcard: bool) -> bool {
    let rest = match name.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => name,
    };
    !rest.is_empty()
        && name.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::{not_after, subject_names};
    use std::time::Duration;
    use time::OffsetDateTime;

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("test CA", Validity::from_now(Duration::from_secs(3600)))
            .unwrap()
    }

    #[test]
    fn generated_ca_is_a_constrained_ca() {
        let ca = ca();
        let x509 = parse_der(ca.cert_der()).unwrap();
        let bc = x509.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!(!ku.digital_signature());
        assert!(x509.validity().not_before.to_datetime() < OffsetDateTime::now_utc());
        assert_eq!(x509.subject(), x509.issuer());
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn from_pem_round_trip() {
        let ca = ca();
        let again = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(ca, again);
        assert_eq!(ca.fingerprint(), again.fingerprint());
        assert!(ca.fingerprint().starts_with("SHA256:"));
        assert_eq!(ca.fingerprint().len(), "SHA256:".len() + 64);
    }

    #[test]
    fn from_pem_refuses_mismatched_key() {
        let a = ca();
        let b = ca();
        let err = CertificateAuthority::from_pem(a.cert_pem(), b.key_pem()).unwrap_err();
        assert!(matches!(err, Error::KeyMismatch), "{err}");
    }

    #[test]
    fn from_pem_refuses_leaf_and_garbage() {
        let ca = ca();
        let leaf = ca
            .issue_client(
                "alice",
                Role::Admin,
                Validity::from_now(Duration::from_secs(60)),
            )
            .unwrap();
        let err = CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(matches!(err, Error::NotCa(_)), "{err}");
        assert!(matches!(
            CertificateAuthority::from_pem("nothing", ca.key_pem()),
            Err(Error::Pem { .. })
        ));
        assert!(matches!(
            CertificateAuthority::from_pem(ca.cert_pem(), "nothing"),
            Err(Error::Pem { .. })
        ));
        let two = format!("{}{}", ca.cert_pem(), ca.cert_pem());
        assert!(matches!(
            CertificateAuthority::from_pem(&two, ca.key_pem()),
            Err(Error::Pem { .. })
        ));
    }

    #[test]
    fn client_cert_carries_role_and_explicit_validity() {
        let ca = ca();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let validity = Validity::new(now - time::Duration::DAY, now + time::Duration::DAY);
        let cert = ca.issue_client("alice", Role::Operator, validity).unwrap();
        let der = cert.cert_der().unwrap();
        let names = subject_names(&der).unwrap();
        assert_eq!(names.common_name.as_deref(), Some("alice"));
        assert_eq!(
            names.organizations,
            vec!["bramble:role:operator".to_owned()]
        );
        assert_eq!(crate::role_of(&der), Some(Role::Operator));
        assert_eq!(not_after(&der).unwrap(), now + time::Duration::DAY);
        let x509 = parse_der(&der).unwrap();
        assert_eq!(x509.issuer(), parse_der(ca.cert_der()).unwrap().subject());
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!x509.basic_constraints().unwrap().unwrap().value.ca);
        assert!(!format!("{cert:?}").contains("PRIVATE"));
    }

    #[test]
    fn serials_differ() {
        let ca = ca();
        let v = Validity::from_now(Duration::from_secs(60));
        let a = ca.issue_client("a", Role::Reader, v).unwrap();
        let b = ca.issue_client("a", Role::Reader, v).unwrap();
        let sa = parse_der(&a.cert_der().unwrap())
            .unwrap()
            .raw_serial()
            .to_vec();
        let sb = parse_der(&b.cert_der().unwrap())
            .unwrap()
            .raw_serial()
            .to_vec();
        assert_ne!(sa, sb);
        assert_eq!(sa.len(), 16);
    }

    #[test]
    fn reversed_validity_is_refused() {
        let ca = ca();
        let now = OffsetDateTime::now_utc();
        let v = Validity::new(now, now - time::Duration::HOUR);
        assert!(matches!(
            ca.issue_client("a", Role::Reader, v),
            Err(Error::Validity { .. })
        ));
        assert!(matches!(
            CertificateAuthority::generate("x", v),
            Err(Error::Validity { .. })
        ));
    }

    #[test]
    fn a_server_certificate_for_a_request_keeps_the_key_with_the_requester() {
        let ca = ca();
        let request = server_request().unwrap();
        let cert_pem = ca
            .issue_server_for(
                &request.csr_der,
                "worker-1",
                &["192.0.2.8".parse().unwrap()],
                &[],
                Validity::from_now(Duration::from_secs(60)),
            )
            .unwrap();
        // The certificate and the requester's key go together, and it
        // chains to the CA with the node's names.
        let issued = IssuedCert {
            cert_pem,
            key_pem: request.key_pem.clone(),
        };
        let (chain, key) = issued.to_rustls().unwrap();
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider).unwrap();
        let der = issued.cert_der().unwrap();
        let cert = parse_der(&der).unwrap();
        assert_eq!(cert.issuer(), parse_der(ca.cert_der()).unwrap().subject());
        let names = subject_names(&der).unwrap();
        assert_eq!(names.common_name.as_deref(), Some("worker-1"));
        assert!(names.ip_addresses.contains(&"192.0.2.8".parse().unwrap()));
        assert!(!format!("{request:?}").contains("PRIVATE"));

        // A request whose signature does not hold, or that is not one.
        let mut forged = request.csr_der.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        for bad in [forged, b"not a request".to_vec()] {
            let e = ca
                .issue_server_for(
                    &bad,
                    "worker-1",
                    &[],
                    &[],
                    Validity::from_now(Duration::from_secs(60)),
                )
                .unwrap_err();
            assert!(e.to_string().contains("certificate signing request"), "{e}");
        }
    }

    #[test]
    fn server_sans() {
        let ca = ca();
        let cert = ca
            .issue_server(
                "Pi-1",
                &["192.0.2.7".parse().unwrap(), "127.0.0.1".parse().unwrap()],
                &[
                    "api.example.org".to_owned(),
                    "*.nodes.example.org".to_owned(),
                    "2001:db8::1".to_owned(),
                    "localhost".to_owned(),
                ],
                Validity::from_now(Duration::from_secs(60)),
            )
            .unwrap();
        let names = subject_names(&cert.cert_der().unwrap()).unwrap();
        assert_eq!(names.common_name.as_deref(), Some("Pi-1"));
        assert_eq!(
            names.dns_names,
            [
                "pi-1",
                "localhost",
                "api.example.org",
                "*.nodes.example.org"
            ]
        );
        let ips: Vec<IpAddr> = ["127.0.0.1", "::1", "192.0.2.7", "2001:db8::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(names.ip_addresses, ips);
        assert_eq!(crate::role_of(&cert.cert_der().unwrap()), None);
    }

    #[test]
    fn etcd_certificates_carry_the_usages_etcd_checks() {
        use x509_parser::extensions::ParsedExtension;
        let ca = ca();
        let addr: IpAddr = "10.77.0.11".parse().unwrap();
        let usages = |cert: &IssuedCert| {
            let der = cert.cert_der().unwrap();
            let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
            x509.extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::ExtendedKeyUsage(u) => Some((u.server_auth, u.client_auth)),
                    _ => None,
                })
                .unwrap()
        };
        let validity = || Validity::from_now(Duration::from_secs(60));
        for kind in [EtcdCert::Peer, EtcdCert::Server] {
            let cert = ca.issue_etcd(kind, "cp1", &[addr], validity()).unwrap();
            assert_eq!(usages(&cert), (true, true), "{kind:?}");
            let names = subject_names(&cert.cert_der().unwrap()).unwrap();
            assert!(names.ip_addresses.contains(&addr), "{kind:?}");
            assert!(names.dns_names.contains(&"cp1".to_owned()), "{kind:?}");
        }
        let client = ca
            .issue_etcd(EtcdCert::Client, "cp1", &[addr], validity())
            .unwrap();
        assert_eq!(usages(&client), (false, true));
        let names = subject_names(&client.cert_der().unwrap()).unwrap();
        assert_eq!(names.common_name.as_deref(), Some("cp1"));
        assert!(names.ip_addresses.is_empty());
    }

    #[test]
    fn server_without_hostname_and_bad_names() {
        let ca = ca();
        let v = Validity::from_now(Duration::from_secs(60));
        let cert = ca.issue_server("", &[], &[], v).unwrap();
        let names = subject_names(&cert.cert_der().unwrap()).unwrap();
        assert_eq!(names.common_name.as_deref(), Some(DEFAULT_SERVER_CN));
        assert_eq!(names.dns_names, ["localhost"]);
        let cert = ca.issue_server("(none)", &[], &[], v).unwrap();
        let names = subject_names(&cert.cert_der().unwrap()).unwrap();
        assert_eq!(names.common_name.as_deref(), Some(DEFAULT_SERVER_CN));
        assert_eq!(names.dns_names, ["localhost"]);
        assert!(matches!(
            ca.issue_server("pi", &[], &["bad name".to_owned()], v),
            Err(Error::Name { .. })
        ));
        assert!(matches!(
            ca.issue_client(" ", Role::Admin, v),
            Err(Error::Name { .. })
        ));
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("pi-1", false));
        assert!(is_dns_name("node.example.org", false));
        assert!(!is_dns_name("*.example.org", false));
        assert!(is_dns_name("*.example.org", true));
        assert!(!is_dns_name("*", true));
        assert!(!is_dns_name("", false));
        assert!(!is_dns_name("-a", false));
        assert!(!is_dns_name("a..b", false));
        assert!(!is_dns_name(&"a".repeat(64), false));
    }

    #[test]
    fn fingerprint_format() {
        assert_eq!(
            fingerprint(b""),
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
