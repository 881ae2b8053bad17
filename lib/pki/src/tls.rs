//! Mutual-TLS configurations for the machine API.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::ca::{IssuedCert, pem_certs};
use crate::error::Error;

/// ALPN protocol id of HTTP/2, which gRPC runs on.
pub const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trust anchors from a PEM text holding one or more CA certificates (more
/// than one while a CA is being replaced).
fn root_store(ca_cert_pem: &str) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for der in pem_certs(ca_cert_pem, "CA certificate")? {
        roots.add(der)?;
    }
    Ok(Arc::new(roots))
}

/// Server side: presents `server` and requires every client to present a
/// certificate that chains to a CA in `ca_cert_pem`, is within its validity
/// and allows clientAuth. ALPN `h2`; TLS 1.3 and 1.2.
///
/// The client's role is then read from its certificate with
/// [`crate::role_of`].
pub fn server_config_mtls(ca_cert_pem: &str, server: &IssuedCert) -> Result<ServerConfig, Error> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(ca_cert_pem)?, provider.clone())
            .build()?;
    let (chain, key) = server.to_rustls()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Client side: presents `client` and verifies the server's certificate
/// against the CAs in `ca_cert_pem` and the name the connection is made to.
/// ALPN `h2`; TLS 1.3 and 1.2.
pub fn client_config_mtls(ca_cert_pem: &str, client: &IssuedCert) -> Result<ClientConfig, Error> {
    let provider = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(root_store(ca_cert_pem)?, provider.clone())
            .build()?;
    let (chain, key) = client.to_rustls()?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertificateAuthority, Role, Validity};
    use std::time::Duration;

    #[test]
    fn configs_build_and_refuse_bad_input() {
        let v = Validity::from_now(Duration::from_secs(60));
        let ca = CertificateAuthority::generate("ca", v).unwrap();
        let server = ca.issue_server("pi-1", &[], &[], v).unwrap();
        let client = ca.issue_client("alice", Role::Admin, v).unwrap();
        let s = server_config_mtls(ca.cert_pem(), &server).unwrap();
        assert_eq!(s.alpn_protocols, vec![b"h2".to_vec()]);
        let c = client_config_mtls(ca.cert_pem(), &client).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(c.client_auth_cert_resolver.has_certs());

        assert!(matches!(
            server_config_mtls("", &server),
            Err(Error::Pem { .. })
        ));
        let mismatched = IssuedCert {
            cert_pem: server.cert_pem.clone(),
            key_pem: client.key_pem.clone(),
        };
        assert!(server_config_mtls(ca.cert_pem(), &mismatched).is_err());
        assert!(client_config_mtls(ca.cert_pem(), &mismatched).is_err());
    }
}
