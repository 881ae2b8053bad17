//! Reading peer certificates: the role a client carries, the names a
//! certificate is for, when it expires.

use std::net::IpAddr;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::error::Error;
use crate::role::{ROLE_ORGANIZATION_PREFIX, Role};

/// Parses one DER certificate; trailing bytes are refused.
pub(crate) fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, Error> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(Error::Certificate(format!(
            "{} bytes after the certificate",
            rest.len()
        ))),
        Err(e) => Err(Error::Certificate(e.to_string())),
    }
}

/// The role a client certificate carries: its subject has exactly one
/// Organization of the form `bramble:role:<role>` naming a known role.
///
/// `None` when there is no such Organization, several of them, an unknown
/// role, an Organization that cannot be decoded as a string, or the
/// certificate cannot be parsed. Other Organizations are ignored.
///
/// This reads the certificate only; whether it is trusted is for the TLS
/// handshake to establish (see [`crate::server_config_mtls`]).
pub fn role_of(cert_der: &[u8]) -> Option<Role> {
    let cert = parse_der(cert_der).ok()?;
    let mut organizations = Vec::new();
    for attr in cert.subject().iter_organization() {
        // An undecodable Organization might be a role: refuse rather than guess.
        organizations.push(attr.as_str().ok()?);
    }
    role_from_organizations(organizations)
}

/// The role named by a subject's Organizations (see [`role_of`]).
pub fn role_from_organizations<'a>(
    organizations: impl IntoIterator<Item = &'a str>,
) -> Option<Role> {
    let mut roles = organizations
        .into_iter()
        .filter_map(|o| o.strip_prefix(ROLE_ORGANIZATION_PREFIX));
    let role = roles.next()?;
    if roles.next().is_some() {
        return None;
    }
    role.parse().ok()
}

/// The names in a certificate's subject and subject alternative names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectNames {
    /// The subject's (first) Common Name.
    pub common_name: Option<String>,
    /// The subject's Organizations, in order.
    pub organizations: Vec<String>,
    /// DNS subject alternative names, in order.
    pub dns_names: Vec<String>,
    /// IP address subject alternative names, in order.
    pub ip_addresses: Vec<IpAddr>,
}

/// Reads the subject and subject alternative names of a DER certificate.
pub fn subject_names(cert_der: &[u8]) -> Result<SubjectNames, Error> {
    let cert = parse_der(cert_der)?;
    let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        attr.as_str()
            .map(str::to_owned)
            .map_err(|e| Error::Certificate(format!("subject: {e}")))
    };
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .map(text)
        .transpose()?;
    let organizations = cert
        .subject()
        .iter_organization()
        .map(text)
        .collect::<Result<Vec<_>, _>>()?;
    let mut names = SubjectNames {
        common_name,
        organizations,
        ..SubjectNames::default()
    };
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Error::Certificate(format!("subject alternative names: {e}")))?;
    for name in san.iter().flat_map(|ext| &ext.value.general_names) {
        match name {
            GeneralName::DNSName(dns) => names.dns_names.push((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                    _ => None,
                };
                let ip = ip.ok_or_else(|| {
                    Error::Certificate(format!("IP address name of {} bytes", bytes.len()))
                })?;
                names.ip_addresses.push(ip);
            }
            _ => {}
        }
    }
    Ok(names)
}

/// The last moment a DER certificate is valid (`notAfter`).
pub fn not_after(cert_der: &[u8]) -> Result<OffsetDateTime, Error> {
    Ok(parse_der(cert_der)?.validity().not_after.to_datetime())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_from_organizations_rules() {
        assert_eq!(
            role_from_organizations(["bramble:role:admin"]),
            Some(Role::Admin)
        );
        assert_eq!(
            role_from_organizations(["example corp", "bramble:role:reader"]),
            Some(Role::Reader)
        );
        assert_eq!(role_from_organizations([]), None);
        assert_eq!(role_from_organizations(["example corp"]), None);
        assert_eq!(role_from_organizations(["bramble:role:root"]), None);
        assert_eq!(role_from_organizations(["bramble:role:"]), None);
        assert_eq!(role_from_organizations(["bramble:role:Admin"]), None);
        assert_eq!(
            role_from_organizations(["bramble:role:admin", "bramble:role:admin"]),
            None
        );
        assert_eq!(
            role_from_organizations(["bramble:role:reader", "bramble:role:admin"]),
            None
        );
        // An unknown role next to a known one is still two role Organizations.
        assert_eq!(
            role_from_organizations(["bramble:role:root", "bramble:role:reader"]),
            None
        );
    }

    #[test]
    fn garbage_has_no_role_and_no_names() {
        assert_eq!(role_of(b"not a certificate"), None);
        assert!(matches!(subject_names(b""), Err(Error::Certificate(_))));
        assert!(matches!(not_after(b"\x30\x00"), Err(Error::Certificate(_))));
    }
}
