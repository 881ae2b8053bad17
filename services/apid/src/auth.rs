//! Who may call what: the one table of required roles, enforced in one place.
//!
//! Every RPC of `bramble.machine.v1.MachineService` appears in [`RULES`] with
//! the least role it needs and whether it is open in maintenance mode. The
//! [`AuthLayer`] wraps the whole gRPC router: before a call reaches its
//! handler it looks the method up, reads the caller's role from the verified
//! client certificate (the TLS layer has already checked it chains to the
//! node's CA and is in its validity period) and either lets the call through,
//! with the [`Caller`] in its extensions, or answers with a gRPC status.
//! A method missing from the table needs `admin`. The one exception,
//! [`JOIN`], is authenticated by the join token its request carries (a
//! worker asking for its server certificate has no client certificate);
//! the handler checks the token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bramble_pki::Role;
use tonic::Status;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// gRPC path prefix of the service.
const SERVICE: &str = "/bramble.machine.v1.MachineService/";

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Method name.
    pub method: &'static str,
    /// Least role a configured node requires.
    pub role: Role,
    /// Whether the call is open (without a client certificate) in
    /// maintenance mode.
    pub maintenance: bool,
}

const fn rule(method: &'static str, role: Role, maintenance: bool) -> Rule {
    Rule {
        method,
        role,
        maintenance,
    }
}

/// Every RPC and what it needs.
pub const RULES: &[Rule] = &[
    rule("Version", Role::Reader, true),
    rule("ApplyConfiguration", Role::Admin, true),
    rule("GetConfig", Role::Reader, false),
    rule("ServiceList", Role::Reader, false),
    rule("Logs", Role::Reader, false),
    rule("Dmesg", Role::Reader, false),
    rule("Events", Role::Reader, false),
    rule("Memory", Role::Reader, false),
    rule("LoadAvg", Role::Reader, false),
    rule("Processes", Role::Reader, false),
    rule("Mounts", Role::Reader, false),
    rule("Hostname", Role::Reader, false),
    rule("Links", Role::Reader, false),
    rule("Addresses", Role::Reader, false),
    rule("Routes", Role::Reader, false),
    rule("Resolvers", Role::Reader, false),
    rule("Time", Role::Reader, false),
    rule("EtcdMembers", Role::Reader, false),
    rule("EtcdStatus", Role::Reader, false),
    rule("EtcdAlarmList", Role::Reader, false),
    rule("Images", Role::Reader, false),
    rule("Containers", Role::Reader, false),
    rule("ContainerLogs", Role::Reader, false),
    rule("ContainerStats", Role::Reader, false),
    rule("ImagePull", Role::Operator, false),
    rule("ImageImport", Role::Operator, false),
    rule("ImageRemove", Role::Operator, false),
    rule("ContainerRestart", Role::Operator, false),
    rule("ServiceStart", Role::Operator, false),
    rule("ServiceStop", Role::Operator, false),
    rule("ServiceRestart", Role::Operator, false),
    rule("Reboot", Role::Operator, false),
    rule("Shutdown", Role::Operator, false),
    rule("EtcdDefragment", Role::Operator, false),
    rule("EtcdAlarmDisarm", Role::Operator, false),
    rule("Reset", Role::Admin, false),
    rule("Bootstrap", Role::Admin, false),
    rule("BootstrapRecover", Role::Admin, false),
    rule("EtcdLeave", Role::Admin, false),
    rule("EtcdRemoveMember", Role::Admin, false),
    // A snapshot holds every key of the cluster, secrets included.
    rule("EtcdSnapshot", Role::Admin, false),
    // Authenticated by the join token, whatever the certificate: see JOIN.
    rule("NodeCertificate", Role::Admin, false),
];

/// The calls a configured node admits without a client certificate: each
/// request carries the cluster's join token, which its handler checks.
pub const JOIN: &[&str] = &["NodeCertificate"];

/// The rule for a gRPC path; unknown methods need `admin` and are closed in
/// maintenance mode.
pub fn rule_for(path: &str) -> Rule {
    let method = path.strip_prefix(SERVICE).unwrap_or(path);
    RULES
        .iter()
        .find(|r| r.method == method)
        .copied()
        .unwrap_or(Rule {
            method: "",
            role: Role::Admin,
            maintenance: false,
        })
}

/// Who is calling, put into each authorised request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Maintenance mode: nobody is authenticated.
    Anonymous,
    /// A client certificate carrying this role.
    Role(Role),
    /// A [`JOIN`] call on a configured node: authenticated by the join
    /// token in its request, not (or not only) by a certificate.
    Joining,
}

impl Caller {
    /// Whether the caller may see secrets (an admin).
    pub fn is_admin(self) -> bool {
        self == Self::Role(Role::Admin)
    }
}

/// What the server admits, by the state of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Never configured: no client certificates; [`Rule::maintenance`] calls
    /// only, from anyone.
    Maintenance,
    /// Configured: client certificates from the cluster's CA; every call by
    /// role.
    Configured,
    /// Configured once (the boot partition says so) but without its
    /// configuration (its `STATE` partition was lost): client certificates
    /// from the cluster's CA, and only [`RECOVERY`] calls, by role.
    Recovery,
}

/// The calls a node that lost its configuration answers: enough for an
/// admin to configure it again or reset it.
pub const RECOVERY: &[&str] = &["Version", "ApplyConfiguration", "Reset"];

/// Decides one call. `role` is what the client certificate carries: `None`
/// when it carries none (or, in maintenance mode, when there is no
/// certificate).
pub fn authorize(path: &str, mode: Mode, role: Option<Role>) -> Result<Caller, Status> {
    let rule = rule_for(path);
    let name = path.strip_prefix(SERVICE).unwrap_or(path);
    match mode {
        Mode::Maintenance if rule.maintenance => return Ok(Caller::Anonymous),
        Mode::Maintenance => {
            return Err(Status::failed_precondition(format!(
                "{name} is not available in maintenance mode: apply a configuration first \
                 (nodectl apply-config --insecure -f controlplane.yaml)"
            )));
        }
        Mode::Recovery if !RECOVERY.contains(&rule.method) => {
            return Err(Status::failed_precondition(format!(
                "{name} is not available: this node has no usable configuration (its STATE \
                 partition lost it, or it does not parse); an admin can apply one again or \
                 reset the node"
            )));
        }
        Mode::Configured if JOIN.contains(&rule.method) => return Ok(Caller::Joining),
        Mode::Recovery | Mode::Configured => {}
    }
    match role {
        None => Err(Status::permission_denied(
            "this call needs a client certificate of the cluster carrying a role (its subject needs \
             O=bramble:role:<admin|operator|reader>): none was presented, or it carries no role",
        )),
        Some(role) if role.allows(rule.role) => Ok(Caller::Role(role)),
        Some(role) => Err(Status::permission_denied(format!(
            "{name} needs the {} role; this client certificate has {role}",
            rule.role
        ))),
    }
}

/// Wraps the router with [`authorize`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    mode: Mode,
}

impl AuthLayer {
    /// For a server in `mode`.
    pub fn new(mode: Mode) -> Self {
        Self { mode }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            mode: self.mode,
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    mode: Mode,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let role = peer_role(&req);
        match authorize(req.uri().path(), self.mode, role) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                tracing::info!(path = req.uri().path(), code = ?status.code(), "call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// The role in the verified client certificate of the connection.
fn peer_role<B>(req: &http::Request<B>) -> Option<Role> {
    let info = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs: Arc<Vec<_>> = info.peer_certs()?;
    certs.first().and_then(|leaf| bramble_pki::role_of(leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(m: &str) -> String {
        format!("{SERVICE}{m}")
    }

    #[test]
    fn every_rule_is_enforced_for_every_role() {
        let roles = [Role::Reader, Role::Operator, Role::Admin];
        for rule in RULES.iter().filter(|r| !JOIN.contains(&r.method)) {
            for role in roles {
                let got = authorize(&path(rule.method), Mode::Configured, Some(role));
                assert_eq!(
                    got.is_ok(),
                    role.allows(rule.role),
                    "{} as {role}",
                    rule.method
                );
                if let Err(s) = got {
                    assert_eq!(s.code(), tonic::Code::PermissionDenied);
                    assert!(
                        s.message().contains(&rule.role.to_string()),
                        "{}",
                        s.message()
                    );
                }
            }
            let none = authorize(&path(rule.method), Mode::Configured, None).unwrap_err();
            assert_eq!(none.code(), tonic::Code::PermissionDenied);
        }
    }

    #[test]
    fn required_roles_are_as_documented() {
        // The table in docs/architecture.md, written out independently.
        let expected = [
            (
                Role::Reader,
                "Version GetConfig ServiceList Logs Dmesg Events Memory LoadAvg Processes Mounts Hostname \
                 Links Addresses Routes Resolvers Time Images Containers ContainerLogs ContainerStats \
                 EtcdMembers EtcdStatus EtcdAlarmList",
            ),
            (
                Role::Operator,
                "ServiceStart ServiceStop ServiceRestart Reboot Shutdown ImagePull ImageImport \
                 ImageRemove ContainerRestart EtcdDefragment EtcdAlarmDisarm",
            ),
            (
                Role::Admin,
                "ApplyConfiguration Reset NodeCertificate Bootstrap BootstrapRecover EtcdLeave \
                 EtcdRemoveMember EtcdSnapshot",
            ),
        ];
        let mut listed = 0;
        for (role, methods) in expected {
            for method in methods.split_whitespace() {
                assert_eq!(rule_for(&path(method)).role, role, "{method}");
                listed += 1;
            }
        }
        assert_eq!(listed, RULES.len());
    }

    #[test]
    fn maintenance_mode_opens_only_version_and_apply() {
        let open: Vec<_> = RULES
            .iter()
            .filter(|r| authorize(&path(r.method), Mode::Maintenance, None).is_ok())
            .map(|r| r.method)
            .collect();
        assert_eq!(open, ["Version", "ApplyConfiguration"]);
        let e = authorize(&path("Reboot"), Mode::Maintenance, None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("maintenance mode"));
    }

    #[test]
    fn a_node_that_lost_its_configuration_admits_only_admins_recovering_it() {
        let open = |role| -> Vec<&str> {
            RULES
                .iter()
                .filter(|r| authorize(&path(r.method), Mode::Recovery, role).is_ok())
                .map(|r| r.method)
                .collect()
        };
        assert_eq!(
            open(Some(Role::Admin)),
            ["Version", "ApplyConfiguration", "Reset"]
        );
        assert_eq!(open(Some(Role::Reader)), ["Version"]);
        assert_eq!(open(None), Vec::<&str>::new());
        let e = authorize(&path("GetConfig"), Mode::Recovery, Some(Role::Admin)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("no usable configuration"), "{e:?}");
        let e = authorize(&path("Reset"), Mode::Recovery, Some(Role::Operator)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn every_rpc_of_the_proto_has_a_rule() {
        let proto = include_str!("../../../lib/api/proto/bramble/machine/v1/machine.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .collect();
        assert!(rpcs.len() >= 18, "{rpcs:?}");
        for rpc in &rpcs {
            assert!(RULES.iter().any(|r| r.method == *rpc), "no rule for {rpc}");
        }
        assert_eq!(
            rpcs.len(),
            RULES.len(),
            "a rule for an RPC that does not exist"
        );
    }

    #[test]
    fn the_join_call_is_left_to_its_token_on_a_configured_node_only() {
        for role in [None, Some(Role::Reader), Some(Role::Admin)] {
            assert_eq!(
                authorize(&path("NodeCertificate"), Mode::Configured, role).unwrap(),
                Caller::Joining
            );
            assert!(authorize(&path("NodeCertificate"), Mode::Recovery, role).is_err());
        }
        assert!(authorize(&path("NodeCertificate"), Mode::Maintenance, None).is_err());
        // Without a certificate, nothing else.
        for rule in RULES.iter().filter(|r| !JOIN.contains(&r.method)) {
            let e = authorize(&path(rule.method), Mode::Configured, None).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{}", rule.method);
        }
    }

    #[test]
    fn unknown_methods_need_admin() {
        assert!(authorize(&path("Nope"), Mode::Configured, Some(Role::Operator)).is_err());
        assert!(authorize(&path("Nope"), Mode::Configured, Some(Role::Admin)).is_ok());
        assert!(authorize(&path("Nope"), Mode::Maintenance, None).is_err());
    }
}
