//! Public-key infrastructure of the machine API.
//!
//! Used by `nodectl gen secrets` / `nodectl gen config` (on the operator's
//! machine), by `apid` (on the node) and by `nodectl`'s client:
//!
//! - [`CertificateAuthority`]: generate a CA (ECDSA P-256, path length 0) or
//!   read one back from PEM; issue client certificates carrying a [`Role`]
//!   ([`CertificateAuthority::issue_client`]) and node server certificates
//!   ([`CertificateAuthority::issue_server`]).
//! - [`role_of`]: the role a client certificate carries, from its subject
//!   Organization `bramble:role:<admin|operator|reader>`.
//! - [`server_config_mtls`] / [`client_config_mtls`]: rustls configurations
//!   that require and verify certificates issued by the cluster CA.
//! - [`SecretsBundle`]: the CAs and secrets a cluster is made from, as YAML.
//!
//! Nothing here touches files: callers read and write the PEM and YAML.

mod ca;
mod error;
mod fingerprint;
mod inspect;
mod role;
mod secrets;
mod tls;
mod validity;

pub use ca::{
    CertificateAuthority, EtcdCert, IssuedCert, ServerRequest, fingerprint, is_dns_name,
    server_request,
};
pub use error::Error;
pub use fingerprint::Fingerprint;
pub use inspect::{SubjectNames, not_after, role_from_organizations, role_of, subject_names};
pub use role::{ROLE_ORGANIZATION_PREFIX, Role, UnknownRole};
pub use secrets::{SecretsBundle, is_bootstrap_token};
pub use tls::{ALPN_H2, client_config_mtls, server_config_mtls};
pub use validity::{CA_LIFETIME, CERT_LIFETIME, CLOCK_SKEW_ALLOWANCE, Validity};

/// The certificate generator and the date library, at the versions this
/// crate's API uses ([`CertificateAuthority::issue_custom`] takes rcgen's
/// parameters, [`Validity`] holds `time` dates).
pub use {rcgen, time};

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
