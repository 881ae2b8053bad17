//! A worker's API server certificate, from a control-plane node.
//!
//! A worker's configuration carries the cluster CA's certificate and the
//! join token (`machine.token`), never the CA's private key (what Talos's
//! trustd does): root on a worker must not be able to mint admin client
//! certificates for every node. So a worker's apid makes a key it keeps, and
//! asks a control-plane node's apid to issue its server certificate for it
//! (`NodeCertificate`, authenticated by the token), over TLS that verifies
//! the control-plane node's certificate against the cluster CA.
//!
//! The control-plane node is reached at the host of
//! `cluster.controlPlane.endpoint`, port 50000, unless the server's
//! [`crate::Config::control_plane_api`] names another address.

use std::net::IpAddr;
use std::time::Duration;

use bramble_api::machine::v1::NodeCertificateRequest;
use bramble_api::machine::v1::machine_service_client::MachineServiceClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::identity::ServerIdentity;
use crate::store::Stored;

/// The machine API's port.
const API_PORT: u16 = 50000;
/// How long connecting to the control-plane node and its answer may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `host:port` of the control-plane node's API: `over` if given, else the
/// host of `cluster.controlPlane.endpoint` (`https://HOST:PORT/...`) on
/// port 50000.
pub fn control_plane_api(stored: &Stored, over: Option<&str>) -> Result<String, String> {
    if let Some(addr) = over {
        return Ok(addr.to_owned());
    }
    let endpoint = &stored.config.cluster.control_plane.endpoint;
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint.as_str(), |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().map(|h| format!("[{h}]"))
    } else {
        authority
            .rsplit_once(':')
            .map_or(Some(authority), |(h, _)| Some(h))
            .map(str::to_owned)
    };
    match host {
        Some(host) if !host.is_empty() && host != "[]" => Ok(format!("{host}:{API_PORT}")),
        _ => Err(format!(
            "cluster.controlPlane.endpoint {endpoint:?} names no host to ask for a certificate"
        )),
    }
}

/// Asks the control-plane node at `api` for a server certificate for
/// `hostname` and `addresses` (and `machine.certSANs`), for a key made now.
pub async fn request_identity(
    api: &str,
    stored: &Stored,
    hostname: &str,
    addresses: &[IpAddr],
) -> Result<ServerIdentity, String> {
    let machine = &stored.config.machine;
    let token = machine
        .token
        .as_ref()
        .ok_or("machine.token is missing: a node without machine.ca.key needs the join token")?;
    let request = bramble_pki::server_request().map_err(|e| e.to_string())?;
    let endpoint = Endpoint::from_shared(format!("https://{api}"))
        .map_err(|e| format!("{api}: {e}"))?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&machine.ca.crt)))
        .map_err(|e| format!("{api}: {e}"))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach {api}: {}", chain(&e)))?;
    let answer = MachineServiceClient::new(channel)
        .node_certificate(NodeCertificateRequest {
            token: token.expose().to_owned(),
            csr: request.csr_der,
            hostname: hostname.to_owned(),
            addresses: addresses.iter().map(ToString::to_string).collect(),
            cert_sans: machine.cert_sans.clone(),
        })
        .await
        .map_err(|s| format!("{api} refused: {}", s.message()))?
        .into_inner();
    ServerIdentity::from_pem(answer.certificate, request.key_pem)
        .map_err(|e| format!("the certificate from {api}: {e}"))
}

/// An error and its sources, `a: b: c`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(endpoint: &str) -> Stored {
        let raw = include_str!("../../../lib/config/tests/data/full.yaml")
            .replace("https://10.0.0.10:6443", endpoint);
        Stored {
            config: bramble_config::MachineConfig::parse(&raw).unwrap(),
            raw,
        }
    }

    #[test]
    fn the_control_plane_is_the_endpoints_host_on_the_api_port() {
        let api = |e: &str| control_plane_api(&stored(e), None);
        assert_eq!(api("https://10.0.0.10:6443").unwrap(), "10.0.0.10:50000");
        assert_eq!(api("https://cp.lan:443").unwrap(), "cp.lan:50000");
        assert_eq!(api("https://[fd00::1]:6443").unwrap(), "[fd00::1]:50000");
        assert_eq!(
            control_plane_api(&stored("https://cp.lan:6443"), Some("127.0.0.1:4000")).unwrap(),
            "127.0.0.1:4000"
        );
    }
}
