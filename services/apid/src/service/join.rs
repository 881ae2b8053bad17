//! NodeCertificate: a control-plane node issues a worker's API server
//! certificate from the cluster's OS CA (see `crate::join` for the worker's
//! side). The caller has no client certificate: the join token in its
//! request authenticates it, compared here in constant time.

use std::net::IpAddr;

use bramble_api::machine::v1::{NodeCertificateRequest, NodeCertificateResponse};
use tonic::{Request, Response, Status};

use super::MachineApi;

/// The largest signing request taken (a P-256 one is a few hundred bytes).
const MAX_CSR_BYTES: usize = 16 * 1024;
/// At most this many addresses and extra names each.
const MAX_NAMES: usize = 64;

/// Whether `a` and `b` are equal, in a time that does not depend on where
/// they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tracing::instrument(skip_all, fields(hostname = %request.get_ref().hostname))]
pub(super) async fn node_certificate(
    api: &MachineApi,
    request: Request<NodeCertificateRequest>,
) -> Result<Response<NodeCertificateResponse>, Status> {
    let req = request.into_inner();
    let Some(stored) = api.node.current().await else {
        return Err(Status::failed_precondition(
            "this node has no configuration",
        ));
    };
    let machine = &stored.config.machine;
    let (Some(key), Some(token)) = (&machine.ca.key, &machine.token) else {
        return Err(Status::failed_precondition(
            "this node holds no key of the cluster's CA: ask a control-plane node",
        ));
    };
    if !same_secret(req.token.as_bytes(), token.expose().as_bytes()) {
        tracing::warn!("NodeCertificate refused: wrong join token");
        return Err(Status::unauthenticated(
            "token: not this cluster's join token (machine.token)",
        ));
    }
    if req.csr.len() > MAX_CSR_BYTES {
        return Err(Status::invalid_argument(format!(
            "csr: {} bytes; at most {MAX_CSR_BYTES}",
            req.csr.len()
        )));
    }
    if req.addresses.len() > MAX_NAMES || req.cert_sans.len() > MAX_NAMES {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_NAMES} addresses and {MAX_NAMES} certSANs"
        )));
    }
    let addresses = req
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<IpAddr>().map_err(|_| {
                Status::invalid_argument(format!("addresses[{i}]: {a:?} is not an IP address"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ca = bramble_pki::CertificateAuthority::from_pem(&machine.ca.crt, key.expose())
        .map_err(|e| Status::internal(format!("the cluster's CA: {e}")))?;
    let certificate = ca
        .issue_server_for(
            &req.csr,
            &req.hostname,
            &addresses,
            &req.cert_sans,
            bramble_pki::Validity::from_now(crate::server::SERVER_CERT_LIFETIME),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    api.node.note(format!(
        "issued an API server certificate to worker {:?} ({})",
        req.hostname,
        req.addresses.join(", ")
    ));
    Ok(Response::new(NodeCertificateResponse { certificate }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare() {
        assert!(same_secret(
            b"abcdef.0123456789abcdef",
            b"abcdef.0123456789abcdef"
        ));
        assert!(!same_secret(
            b"abcdef.0123456789abcdef",
            b"abcdef.0123456789abcdeg"
        ));
        assert!(!same_secret(b"abcdef", b"abcdef.0123456789abcdef"));
        assert!(!same_secret(b"", b"x"));
    }
}
