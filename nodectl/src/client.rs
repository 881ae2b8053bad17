//! Connecting to a node's machine API.
//!
//! TLS is done here (not by tonic) so that the server certificate can be
//! checked the way each mode needs:
//! - maintenance mode (`--insecure`): the node's certificate is self-signed,
//!   so it is not verified against a CA — only the handshake signatures are
//!   checked, and `--cert-fingerprint` pins the exact certificate;
//! - configured nodes (next step, `nodectl gen config`): a client
//!   configuration file supplies the cluster CA and a client certificate, and
//!   [`ClientTls::from_rustls`] takes the resulting mutual-TLS config.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bramble_api::machine::v1::machine_service_client::MachineServiceClient;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, NodeError, chain_message, find_in_chain};
use crate::nodes::NodeAddr;

/// ALPN protocol id of HTTP/2, which gRPC runs on.
const ALPN_H2: &[u8] = b"h2";

pub use bramble_pki::Fingerprint;

/// The pin did not match; carried through rustls as the handshake error.
#[derive(Debug)]
struct PinMismatch {
    expected: Fingerprint,
    actual: Fingerprint,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate {} is not the pinned {}",
            self.actual, self.expected
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Server verification for maintenance mode: no CA (the certificate is
/// self-signed), optional fingerprint pin; handshake signatures are always
/// verified, so a replayed certificate without its key is refused.
#[derive(Debug)]
struct MaintenanceVerifier {
    pin: Option<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for MaintenanceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(expected) = &self.pin {
            let actual = Fingerprint::of_der(end_entity);
            if &actual != expected {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(PinMismatch {
                        expected: expected.clone(),
                        actual,
                    })),
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// How the client authenticates the server (and, later, itself).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ClientTls {
    /// Picks the TLS setup from the command-line flags.
    ///
    /// - `--cert-fingerprint` (with or without `--insecure`): maintenance
    ///   mode, the server must present exactly that certificate;
    /// - `--insecure`: maintenance mode, any server certificate;
    /// - neither: a client configuration would be used; it does not exist
    ///   yet (it comes with `nodectl gen config`), so this is an error.
    pub fn from_flags(insecure: bool, pin: Option<Fingerprint>) -> Result<Self, Error> {
        match (insecure, pin) {
            (_, Some(pin)) => Self::maintenance(Some(pin)),
            (true, None) => Self::maintenance(None),
            (false, None) => Err(Error::NoClientConfig),
        }
    }

    /// TLS for a node in maintenance mode: no CA, optional pin, no client
    /// certificate.
    pub fn maintenance(pin: Option<Fingerprint>) -> Result<Self, Error> {
        Self::self_signed(pin, None)
    }

    /// TLS for a node whose certificate is self-signed, pinned to `pin`,
    /// offering `identity` (a client certificate of the client
    /// configuration) when the node asks for one: a node that lost its
    /// configuration admits only its cluster's admins, with the certificate
    /// it shows on its console.
    pub fn pinned_with_identity(
        pin: Fingerprint,
        identity: &bramble_pki::IssuedCert,
    ) -> Result<Self, Error> {
        Self::self_signed(Some(pin), Some(identity))
    }

    fn self_signed(
        pin: Option<Fingerprint>,
        identity: Option<&bramble_pki::IssuedCert>,
    ) -> Result<Self, Error> {
        let provider = provider();
        let verifier = Arc::new(MaintenanceVerifier {
            pin,
            algorithms: provider.signature_verification_algorithms,
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let (chain, key) = identity
                    .to_rustls()
                    .map_err(|e| Error::Usage(format!("the client certificate: {e}")))?;
                builder.with_client_auth_cert(chain, key)?
            }
        };
        Ok(Self::from_rustls(config))
    }

    /// Uses a complete rustls client configuration (the hook for mutual TLS
    /// with a client configuration file). ALPN is set to HTTP/2.
    pub fn from_rustls(mut config: ClientConfig) -> Self {
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Self {
            config: Arc::new(config),
        }
    }
}

/// Resolves `addr`, connects over TCP (trying each address in turn) and does
/// the TLS handshake.
pub async fn dial(addr: &NodeAddr, tls: &ClientTls) -> Result<TlsStream<TcpStream>, NodeError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((addr.host.as_str(), addr.port))
        .await
        .map_err(|e| NodeError::Resolve {
            host: addr.host.clone(),
            reason: e.to_string(),
        })?
        .collect();
    let mut last = NodeError::Resolve {
        host: addr.host.clone(),
        reason: "no addresses".into(),
    };
    for sa in addrs {
        match TcpStream::connect(sa).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return handshake(tcp, sa, addr, tls).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = NodeError::Refused { addr: sa };
            }
            Err(e) => {
                last = NodeError::Connect {
                    addr: sa,
                    reason: e.to_string(),
                };
            }
        }
    }
    Err(last)
}

async fn handshake(
    tcp: TcpStream,
    sa: SocketAddr,
    addr: &NodeAddr,
    tls: &ClientTls,
) -> Result<TlsStream<TcpStream>, NodeError> {
    // SNI/name: the host as given; an IP address is fine (rustls sends no SNI
    // for it). A name rustls cannot take falls back to the dialled IP.
    let name = ServerName::try_from(addr.host.clone())
        .unwrap_or_else(|_| ServerName::IpAddress(sa.ip().into()));
    TlsConnector::from(tls.config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| tls_error(&e, sa))
}

fn tls_error(e: &std::io::Error, addr: SocketAddr) -> NodeError {
    let rustls_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other)))) =
        rustls_err
        && let Some(m) = other.downcast_ref::<PinMismatch>()
    {
        return NodeError::FingerprintMismatch {
            expected: m.expected.to_string(),
            actual: m.actual.to_string(),
        };
    }
    let mut reason = match rustls_err {
        Some(r) => r.to_string(),
        None => e.to_string(),
    };
    if matches!(
        rustls_err,
        Some(rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. })
    ) || e.kind() == std::io::ErrorKind::UnexpectedEof
    {
        reason.push_str(" (is this the Bramble API port, speaking TLS?)");
    }
    NodeError::Tls { addr, reason }
}

/// A connected machine API client.
pub type MachineClient = MachineServiceClient<Channel>;

/// Connects to `addr` and returns a client; the connection is made now, so
/// errors name the address and the cause.
pub async fn connect(
    addr: &NodeAddr,
    tls: &ClientTls,
    timeout: Duration,
) -> Result<MachineClient, NodeError> {
    let authority = format!("{}:{}", addr.uri_host(), addr.port);
    // The connector below does TLS itself, so tonic must see a plain URI; the
    // origin (used for :scheme and :authority) is the https one.
    let plain = format!("http://{authority}");
    let origin = format!("https://{authority}")
        .parse::<Uri>()
        .map_err(|e| NodeError::Transport(e.to_string()))?;
    let endpoint = Endpoint::from_shared(plain)
        .map_err(|e| NodeError::Transport(chain_message(&e)))?
        .origin(origin)
        .connect_timeout(timeout)
        .timeout(timeout);
    let dial_addr = addr.clone();
    let tls = tls.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let dial_addr = dial_addr.clone();
        let tls = tls.clone();
        async move { dial(&dial_addr, &tls).await.map(TokioIo::new) }
    });
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| find_in_chain(&e).unwrap_or_else(|| transport_error(&e, timeout)))?;
    Ok(MachineServiceClient::new(channel))
}

fn transport_error(e: &tonic::transport::Error, timeout: Duration) -> NodeError {
    let msg = chain_message(e);
    if msg.contains("timed out") || msg.contains("elapsed") {
        NodeError::Timeout { after: timeout }
    } else {
        NodeError::Transport(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_select_tls() {
        assert!(matches!(
            ClientTls::from_flags(false, None),
            Err(Error::NoClientConfig)
        ));
        assert!(ClientTls::from_flags(true, None).is_ok());
        assert!(ClientTls::from_flags(false, Some(Fingerprint::of_der(b""))).is_ok());
    }
}
