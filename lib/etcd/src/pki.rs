//! The member's certificates: issued from the etcd CA of the machine
//! configuration for the node's host name and current addresses, written
//! for etcd (owned by its user) at every start.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bramble_pki::{CertificateAuthority, EtcdCert, IssuedCert, Validity};

use crate::Error;

/// How long the member's certificates are valid. They are issued anew at
/// every start of `etcdd` and whenever the node's addresses change.
pub const MEMBER_CERT_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(365 * 24 * 3600);

/// A member's certificates, with the CA that checks its peers and clients.
#[derive(Debug, Clone)]
pub struct MemberCerts {
    /// The etcd CA's certificate, PEM.
    pub ca_pem: String,
    /// For raft traffic (port 2380).
    pub peer: IssuedCert,
    /// For the client API (port 2379).
    pub server: IssuedCert,
    /// For the node's own calls to the client API.
    pub client: IssuedCert,
}

/// The files [`MemberCerts::write`] makes, relative to its directory.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// `ca.crt`.
    pub ca: PathBuf,
    /// `peer.crt`, `peer.key`.
    pub peer: (PathBuf, PathBuf),
    /// `server.crt`, `server.key`.
    pub server: (PathBuf, PathBuf),
    /// `client.crt`, `client.key`.
    pub client: (PathBuf, PathBuf),
}

impl CertFiles {
    /// The files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        let pair = |name: &str| {
            (
                dir.join(format!("{name}.crt")),
                dir.join(format!("{name}.key")),
            )
        };
        Self {
            ca: dir.join("ca.crt"),
            peer: pair("peer"),
            server: pair("server"),
            client: pair("client"),
        }
    }
}

impl MemberCerts {
    /// Issues the three certificates for `hostname` and `addresses`.
    pub fn issue(
        ca: &CertificateAuthority,
        hostname: &str,
        addresses: &[IpAddr],
    ) -> Result<Self, Error> {
        let validity = || Validity::from_now(MEMBER_CERT_LIFETIME);
        Ok(Self {
            ca_pem: ca.cert_pem().to_owned(),
            peer: ca.issue_etcd(EtcdCert::Peer, hostname, addresses, validity())?,
            server: ca.issue_etcd(EtcdCert::Server, hostname, addresses, validity())?,
            client: ca.issue_etcd(EtcdCert::Client, hostname, addresses, validity())?,
        })
    }

    /// Writes the certificates and keys into `dir` (created 0700), each
    /// atomically, keys 0600; everything owned by `owner` (uid, gid) when
    /// given, so etcd reads them as its own user.
    pub fn write(&self, dir: &Path, owner: Option<(u32, u32)>) -> Result<CertFiles, Error> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io("setting the mode of", dir))?;
        let files = CertFiles::in_dir(dir);
        let mut writes: Vec<(&Path, &str, u32)> = vec![(&files.ca, &self.ca_pem, 0o644)];
        for (cert, (crt, key)) in [
            (&self.peer, &files.peer),
            (&self.server, &files.server),
            (&self.client, &files.client),
        ] {
            writes.push((crt, &cert.cert_pem, 0o644));
            writes.push((key, &cert.key_pem, 0o600));
        }
        for (path, text, mode) in writes {
            bramble_atomic::write(path, text.as_bytes(), mode)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(Error::io("handing to etcd's user", path))?;
            }
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .map_err(Error::io("handing to etcd's user", dir))?;
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn written_keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let ca = CertificateAuthority::generate(
            "test etcd CA",
            Validity::from_now(std::time::Duration::from_secs(3600)),
        )
        .unwrap();
        let certs = MemberCerts::issue(&ca, "cp1", &["10.77.0.11".parse().unwrap()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = certs.write(&dir.path().join("pki"), None).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("pki")), 0o700);
        assert_eq!(mode(&files.peer.1), 0o600);
        assert_eq!(mode(&files.client.1), 0o600);
        assert_eq!(mode(&files.server.0), 0o644);
        assert_eq!(std::fs::read_to_string(&files.ca).unwrap(), ca.cert_pem());
    }
}
