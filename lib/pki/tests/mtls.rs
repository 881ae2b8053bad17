#![allow(clippy::unwrap_used)]
//! Real mutual-TLS handshakes over 127.0.0.1 with certificates from this crate.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bramble_pki::rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose,
};
use bramble_pki::{
    CertificateAuthority, IssuedCert, Role, Validity, client_config_mtls, role_of,
    server_config_mtls, subject_names,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const HOSTNAME: &str = "pi-1";
const NODE_ADDR: &str = "192.0.2.7";
const EXTRA_NAME: &str = "api.example.org";
const GREETING: &[u8] = b"ok\n";

fn valid() -> Validity {
    Validity::from_now(Duration::from_secs(3600))
}

fn expired() -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity::new(now - time::Duration::days(2), now - time::Duration::days(1))
}

fn not_yet_valid() -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity::new(now + time::Duration::days(1), now + time::Duration::days(2))
}

fn new_ca(name: &str) -> CertificateAuthority {
    CertificateAuthority::generate(name, valid()).unwrap()
}

fn server_cert(ca: &CertificateAuthority, validity: Validity) -> IssuedCert {
    ca.issue_server(
        HOSTNAME,
        &[NODE_ADDR.parse::<IpAddr>().unwrap()],
        &[EXTRA_NAME.to_owned()],
        validity,
    )
    .unwrap()
}

/// What each side saw of one connection attempt.
#[derive(Debug)]
struct Handshake {
    /// The server's result: the client's leaf certificate (DER) and ALPN protocol.
    server: Result<(Vec<u8>, Option<Vec<u8>>), String>,
    /// The client's result: what it read from the server and the ALPN protocol.
    client: Result<(Vec<u8>, Option<Vec<u8>>), String>,
}

impl Handshake {
    /// Both sides completed the handshake and the application data got through.
    fn accepted(&self) -> bool {
        self.server.is_ok() && matches!(&self.client, Ok((data, _)) if data == GREETING)
    }

    /// The server refused, with `reason` in its error, and the client got no data.
    fn assert_refused_by_server(&self, reason: &str) {
        match &self.server {
            Ok(_) => panic!("server accepted: {self:?}"),
            Err(e) => assert!(e.contains(reason), "server error {e:?} lacks {reason:?}"),
        }
        assert!(
            !matches!(&self.client, Ok((data, _)) if !data.is_empty()),
            "client got data: {self:?}"
        );
    }

    /// The client refused the server, with `reason` in its error.
    fn assert_refused_by_client(&self, reason: &str) {
        match &self.client {
            Ok(_) => panic!("client accepted: {self:?}"),
            Err(e) => assert!(e.contains(reason), "client error {e:?} lacks {reason:?}"),
        }
        assert!(self.server.is_err(), "server accepted: {self:?}");
    }

    /// The client's certificate as the server saw it.
    fn peer_cert(&self) -> &[u8] {
        &self.server.as_ref().unwrap().0
    }
}

/// One connection over 127.0.0.1: the server greets the client and closes;
/// the client connects to `name` and reads until the end.
async fn handshake(server: ServerConfig, client: ClientConfig, name: &str) -> Handshake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        let peer = conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|c| c.to_vec())
            .ok_or("no peer certificate")?;
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        tls.write_all(GREETING).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((peer, alpn))
    });

    let connector = TlsConnector::from(Arc::new(client));
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = async {
        let mut tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let mut data = Vec::new();
        tls.read_to_end(&mut data)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((data, alpn))
    }
    .await;
    let server = server_side.await.unwrap();
    Handshake { server, client }
}

#[tokio::test]
async fn each_role_is_accepted_and_read_back() {
    let ca = new_ca("cluster CA");
    let server = server_cert(&ca, valid());
    for role in Role::ALL {
        let client = ca
            .issue_client(&format!("{role} user"), role, valid())
            .unwrap();
        let h = handshake(
            server_config_mtls(ca.cert_pem(), &server).unwrap(),
            client_config_mtls(ca.cert_pem(), &client).unwrap(),
            "localhost",
        )
        .await;
        assert!(h.accepted(), "{role}: {h:?}");
        assert_eq!(role_of(h.peer_cert()), Some(role));
        assert_eq!(h.server.as_ref().unwrap().1.as_deref(), Some(&b"h2"[..]));
        assert_eq!(h.client.as_ref().unwrap().1.as_deref(), Some(&b"h2"[..]));
    }
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let ca = new_ca("cluster CA");
    let other = new_ca("other CA");
    let server = server_cert(&ca, valid());
    let client = other.issue_client("mallory", Role::Admin, valid()).unwrap();
    // The client trusts the right CA, so only the server can refuse.
    let h = handshake(
        server_config_mtls(ca.cert_pem(), &server).unwrap(),
        client_config_mtls(ca.cert_pem(), &client).unwrap(),
        "localhost",
    )
    .await;
    h.assert_refused_by_server("UnknownIssuer");
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let ca = new_ca("cluster CA");
    let server = server_cert(&ca, valid());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let mut client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let h = handshake(
        server_config_mtls(ca.cert_pem(), &server).unwrap(),
        client,
        "localhost",
    )
    .await;
    h.assert_refused_by_server("no certificate");
}

#[tokio::test]
async fn expired_and_future_client_certs_are_refused() {
    let ca = new_ca("cluster CA");
    let server = server_cert(&ca, valid());
    for (validity, reason) in [
        (expired(), "certificate expired"),
        (not_yet_valid(), "certificate not valid yet"),
    ] {
        let client = ca.issue_client("late", Role::Admin, validity).unwrap();
        let h = handshake(
            server_config_mtls(ca.cert_pem(), &server).unwrap(),
            client_config_mtls(ca.cert_pem(), &client).unwrap(),
            "localhost",
        )
        .await;
        h.assert_refused_by_server(reason);
    }
}

#[tokio::test]
async fn server_certificate_is_not_a_client_certificate() {
    let ca = new_ca("cluster CA");
    let server = server_cert(&ca, valid());
    let h = handshake(
        server_config_mtls(ca.cert_pem(), &server).unwrap(),
        client_config_mtls(ca.cert_pem(), &server).unwrap(),
        "localhost",
    )
    .await;
    h.assert_refused_by_server("extended key usage for client authentication");
}

#[tokio::test]
async fn server_is_verified_by_each_of_its_names() {
    let ca = new_ca("cluster CA");
    let server = server_cert(&ca, valid());
    let client = ca.issue_client("alice", Role::Reader, valid()).unwrap();
    for name in [
        "localhost",
        "127.0.0.1",
        "::1",
        HOSTNAME,
        NODE_ADDR,
        EXTRA_NAME,
    ] {
        let h = handshake(
            server_config_mtls(ca.cert_pem(), &server).unwrap(),
            client_config_mtls(ca.cert_pem(), &client).unwrap(),
            name,
        )
        .await;
        assert!(h.accepted(), "{name}: {h:?}");
    }
    for name in ["pi-2", "192.0.2.8", "example.org"] {
        let h = handshake(
            server_config_mtls(ca.cert_pem(), &server).unwrap(),
            client_config_mtls(ca.cert_pem(), &client).unwrap(),
            name,
        )
        .await;
        h.assert_refused_by_client("certificate not valid for name");
    }
}

#[tokio::test]
async fn server_from_another_ca_or_expired_is_refused() {
    let ca = new_ca("cluster CA");
    let other = new_ca("other CA");
    let client = ca.issue_client("alice", Role::Admin, valid()).unwrap();

    let foreign = server_cert(&other, valid());
    // The server trusts the client's CA, so only the client can refuse.
    let h = handshake(
        server_config_mtls(ca.cert_pem(), &foreign).unwrap(),
        client_config_mtls(ca.cert_pem(), &client).unwrap(),
        "localhost",
    )
    .await;
    h.assert_refused_by_client("UnknownIssuer");

    let stale = server_cert(&ca, expired());
    let h = handshake(
        server_config_mtls(ca.cert_pem(), &stale).unwrap(),
        client_config_mtls(ca.cert_pem(), &client).unwrap(),
        "localhost",
    )
    .await;
    h.assert_refused_by_client("certificate expired");
}

/// A client certificate from the right CA with the given subject Organizations.
fn client_with_organizations(ca: &CertificateAuthority, organizations: &[&str]) -> IssuedCert {
    let validity = valid();
    let mut params = CertificateParams::default();
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let mut dn = DistinguishedName::new();
    for (i, o) in organizations.iter().enumerate() {
        // The distinguished name holds one value per type; a custom type with
        // the Organization OID adds a second Organization attribute.
        let ty = if i == 0 {
            DnType::OrganizationName
        } else {
            DnType::CustomDnType(vec![2, 5, 4, 10])
        };
        dn.push(ty, *o);
    }
    dn.push(DnType::CommonName, "odd client");
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    ca.issue_custom(&params).unwrap()
}

#[tokio::test]
async fn unknown_or_ambiguous_roles_give_no_role() {
    let ca = new_ca("cluster CA");
    let server = server_cert(&ca, valid());
    let cases: [&[&str]; 4] = [
        &["bramble:role:root"],
        &["bramble:role:reader", "bramble:role:admin"],
        &["bramble:role:admin", "bramble:role:admin"],
        &["example corp"],
    ];
    for organizations in cases {
        let client = client_with_organizations(&ca, organizations);
        let der = client.cert_der().unwrap();
        assert_eq!(
            subject_names(&der).unwrap().organizations,
            organizations
                .iter()
                .map(|o| (*o).to_owned())
                .collect::<Vec<_>>()
        );
        // Trusted (it chains to the CA), yet it carries no role.
        let h = handshake(
            server_config_mtls(ca.cert_pem(), &server).unwrap(),
            client_config_mtls(ca.cert_pem(), &client).unwrap(),
            "localhost",
        )
        .await;
        assert!(h.accepted(), "{organizations:?}: {h:?}");
        assert_eq!(role_of(h.peer_cert()), None, "{organizations:?}");
    }
    // The same construction with a single valid role does carry it.
    let client = client_with_organizations(&ca, &["example corp", "bramble:role:operator"]);
    assert_eq!(role_of(&client.cert_der().unwrap()), Some(Role::Operator));
}

#[tokio::test]
async fn ca_read_back_from_pem_issues_trusted_certificates() {
    let ca = new_ca("cluster CA");
    let again = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    let server = server_cert(&again, valid());
    let client = again.issue_client("bob", Role::Operator, valid()).unwrap();
    let h = handshake(
        server_config_mtls(ca.cert_pem(), &server).unwrap(),
        client_config_mtls(ca.cert_pem(), &client).unwrap(),
        HOSTNAME,
    )
    .await;
    assert!(h.accepted(), "{h:?}");
    assert_eq!(role_of(h.peer_cert()), Some(Role::Operator));
}
