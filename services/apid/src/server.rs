//! Binding the listener and serving the machine API over TLS.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bramble_api::machine::v1::machine_service_server::MachineServiceServer;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Server, ServerTlsConfig};

use crate::auth::{AuthLayer, Mode};
use crate::error::Error;
use crate::identity::{Fingerprint, Origin, ServerIdentity, SubjectNames};
use crate::info::{NodeInfoSource, Uname};
use crate::service::{MachineApi, Node};
use crate::store::{ConfigStore, Stored};

/// Default listen address: every IPv6 and (dual-stack) IPv4 address.
pub const DEFAULT_LISTEN: &str = "[::]:50000";
/// Default state directory on the node.
pub const DEFAULT_STATE_DIR: &str = "/system/state/apid";
/// Default directory of the machine configuration on the node.
pub const DEFAULT_CONFIG_DIR: &str = "/system/state/config";
/// Tells PID 1 to empty /var at the next boot (see `init/src/stage1.rs`).
pub const DEFAULT_WIPE_DATA_MARKER: &str = "/system/state/wipe-data";
/// Under which etcd's state lives (`bramble_etcd::Layout::under`).
pub const DEFAULT_ETCD_ROOT: &str = "/";
/// PID 1's control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/bramble/init.sock";
/// How long a configured node's server certificate is valid; it is issued
/// anew at every start of the server.
pub(crate) const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; `[::]:PORT` also accepts IPv4 (dual-stack).
    pub listen: SocketAddr,
    /// Where the maintenance-mode certificate and key are kept.
    pub state_dir: PathBuf,
    /// Where the machine configuration is kept.
    pub config_dir: PathBuf,
    /// PID 1's control socket (services, logs, reboot).
    pub control_socket: PathBuf,
    /// The container runtime's socket (images, containers).
    pub runtime_socket: PathBuf,
    /// The file whose presence tells PID 1 to empty /var at the next boot.
    pub wipe_data_marker: PathBuf,
    /// The file where PID 1 names the boot disk, whose FAT partition gets
    /// the Raspberry Pi lines of `machine.pi.configTxt` ([`crate::pi`]);
    /// `None`: not on a node, nothing is written.
    pub boot_device_file: Option<PathBuf>,
    /// Where `Version` reads its facts.
    pub info: NodeInfoSource,
    /// How long a client gets to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long in-flight calls get after a shutdown request.
    pub shutdown_grace: Duration,
    /// `host:port` of the control-plane node a worker (a configuration
    /// without `machine.ca.key`) asks for its server certificate; `None`:
    /// the host of `cluster.controlPlane.endpoint`, port 50000
    /// ([`crate::join`]).
    pub control_plane_api: Option<String>,
    /// How long a worker that could not get its certificate waits before
    /// asking again.
    pub join_retry: Duration,
    /// The root under which etcd's state is (`bramble_etcd::Layout::under`:
    /// its data, the bootstrap request); `/` on a node.
    pub etcd_root: PathBuf,
}

impl Config {
    /// Defaults for everything but the two command-line settings.
    /// The configuration directory is `config` inside `state_dir`.
    pub fn new(listen: SocketAddr, state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        Self {
            listen,
            config_dir: state_dir.join("config"),
            wipe_data_marker: state_dir.join("wipe-data"),
            boot_device_file: None,
            control_socket: DEFAULT_CONTROL_SOCKET.into(),
            runtime_socket: crate::runtime::DEFAULT_RUNTIME_SOCKET.into(),
            state_dir,
            info: NodeInfoSource::system(),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            control_plane_api: None,
            join_retry: Duration::from_secs(15),
            etcd_root: DEFAULT_ETCD_ROOT.into(),
        }
    }
}

/// A server whose identity is loaded and whose listener is bound: clients can
/// connect from now on (their connections wait in the backlog until
/// [`BoundServer::serve`] runs).
#[derive(Debug)]
pub struct BoundServer {
    config: Config,
    node: Arc<Node>,
    tls: Tls,
    origin: Origin,
    /// The bound socket, kept for the server's whole life: each listener
    /// lifetime serves a duplicate of it, so a reload never closes the port
    /// (connections arriving meanwhile wait in the backlog).
    listener: TcpListener,
    local_addr: SocketAddr,
}

/// The TLS side of the server in its current mode.
#[derive(Debug)]
enum Tls {
    /// No configuration: a self-signed certificate, no client certificates.
    Maintenance(ServerIdentity),
    /// Configured: a certificate issued from the configuration's CA, and
    /// client certificates from that CA required.
    Mutual {
        identity: ServerIdentity,
        client_ca: String,
    },
    /// Configured once, configuration lost (see [`tls_for`]): the
    /// maintenance certificate (the CA's key went with the configuration),
    /// and client certificates from the CA the boot partition recorded.
    Recovery {
        identity: ServerIdentity,
        client_ca: String,
    },
    /// A worker (no CA key) that could not get its certificate from a
    /// control-plane node yet ([`crate::join`]): the maintenance
    /// certificate (clients pin it), client certificates from the cluster's
    /// CA, every call by role; it asks again after `join_retry`.
    Joining {
        identity: ServerIdentity,
        client_ca: String,
    },
}

impl Tls {
    fn identity(&self) -> &ServerIdentity {
        match self {
            Self::Maintenance(id)
            | Self::Mutual { identity: id, .. }
            | Self::Recovery { identity: id, .. }
            | Self::Joining { identity: id, .. } => id,
        }
    }

    fn client_ca(&self) -> Option<&str> {
        match self {
            Self::Maintenance(_) => None,
            Self::Mutual { client_ca, .. }
            | Self::Recovery { client_ca, .. }
            | Self::Joining { client_ca, .. } => Some(client_ca),
        }
    }

    fn mode(&self) -> Mode {
        match self {
            Self::Maintenance(_) => Mode::Maintenance,
            Self::Mutual { .. } | Self::Joining { .. } => Mode::Configured,
            Self::Recovery { .. } => Mode::Recovery,
        }
    }
}

fn subject_names() -> SubjectNames {
    SubjectNames {
        hostname: Uname::get().nodename,
        addresses: bramble_netlink::local_addresses(),
    }
}

/// How often a configured server checks whether its certificate still names
/// the node's current host name and addresses.
const NAMES_CHECK: Duration = Duration::from_secs(10);

/// Resolves once the node's names differ from `issued_for` in two checks in
/// a row, the same way both times: an address that goes and comes back (a
/// network daemon restarting, a DHCP renewal) does not restart the listener.
/// Never resolves in maintenance mode, whose certificate is kept for its
/// fingerprint.
async fn names_changed(mutual: bool, issued_for: SubjectNames) {
    if !mutual {
        return std::future::pending().await;
    }
    let mut candidate: Option<SubjectNames> = None;
    loop {
        tokio::time::sleep(NAMES_CHECK).await;
        let now = subject_names();
        if now == issued_for {
            candidate = None;
        } else if candidate.as_ref() == Some(&now) {
            return;
        } else {
            candidate = Some(now);
        }
    }
}

/// The TLS identity for the stored configuration (or its absence).
///
/// Without a stored configuration the node is in maintenance mode only if
/// it was never configured: a node whose boot partition records a cluster
/// CA ([`bramble_bootfs::CA_FILE`]) lost its `STATE` (unmountable, wiped
/// by hand, ...) and must not take the next anonymous configuration from
/// anyone on its network. It then requires client certificates from that
/// CA ([`Mode::Recovery`]). If the record cannot be read, the server does
/// not start, and says why (the supervisor starts it again).
async fn tls_for(config: &Config, stored: Option<&Stored>) -> Result<(Tls, Origin), Error> {
    let Some(stored) = stored else {
        let (identity, origin) =
            ServerIdentity::load_or_generate(&config.state_dir, &subject_names())?;
        // A stored document that no longer parses still names its CA; else
        // the boot partition's record says whether the node was configured.
        let damaged = ConfigStore::new(&config.config_dir).current_raw()?;
        let (recorded, why) = match damaged
            .as_deref()
            .and_then(bramble_config::MachineConfig::ca_certificate_of)
        {
            Some(ca) => (Ok(Some(ca)), "its stored configuration does not parse"),
            None => (
                match &config.boot_device_file {
                    Some(file) => crate::pi::configured_ca(file),
                    None => Ok(None),
                },
                "its STATE partition holds no usable configuration",
            ),
        };
        return Ok(match recorded {
            Ok(None) if damaged.is_some() => {
                return Err(Error::Pki(
                    "the stored configuration does not parse and names no cluster CA, and the \
                     boot partition records none: refusing to serve the open maintenance API"
                        .into(),
                ));
            }
            Ok(None) => (Tls::Maintenance(identity), origin),
            Ok(Some(client_ca)) => {
                let message = format!(
                    "this node was configured but {why}: the API admits only the cluster's \
                     admins, to apply a configuration again or reset the node (nodectl \
                     --cert-fingerprint {} with the cluster's client configuration)",
                    identity.fingerprint()
                );
                tracing::error!("{message}");
                crate::console::print(&format!("bramble: ERROR {message}\n"));
                (
                    Tls::Recovery {
                        identity,
                        client_ca,
                    },
                    origin,
                )
            }
            Err(e) => {
                return Err(Error::Pki(format!(
                    "no configuration in STATE, and the boot partition's record of whether \
                     this node was configured cannot be read ({e}): refusing to serve the \
                     open maintenance API"
                )));
            }
        });
    };
    let machine = &stored.config.machine;
    let names = subject_names();
    let hostname = machine
        .hostname
        .clone()
        .unwrap_or_else(|| names.hostname.clone());
    let Some(ca_key) = machine.ca.key.as_ref().map(|k| k.expose()) else {
        // A worker: its certificate comes from a control-plane node.
        let client_ca = machine.ca.crt.clone();
        let asked =
            match crate::join::control_plane_api(stored, config.control_plane_api.as_deref()) {
                Ok(api) => crate::join::request_identity(&api, stored, &hostname, &names.addresses)
                    .await
                    .map(|identity| (identity, api)),
                Err(e) => Err(e),
            };
        return match asked {
            Ok((identity, api)) => {
                tracing::info!(control_plane = %api, "API certificate issued by a control-plane node");
                Ok((
                    Tls::Mutual {
                        identity,
                        client_ca,
                    },
                    Origin::Generated,
                ))
            }
            Err(e) => {
                let (identity, origin) =
                    ServerIdentity::load_or_generate(&config.state_dir, &names)?;
                let message = format!(
                    "no API certificate from a control-plane node yet ({e}); serving with this \
                     node's own certificate ({}) to the cluster's clients, asking again in {}s",
                    identity.fingerprint(),
                    config.join_retry.as_secs_f64()
                );
                tracing::error!("{message}");
                crate::console::print(&format!("bramble: ERROR {message}\n"));
                Ok((
                    Tls::Joining {
                        identity,
                        client_ca,
                    },
                    origin,
                ))
            }
        };
    };
    let ca = bramble_pki::CertificateAuthority::from_pem(&machine.ca.crt, ca_key)
        .map_err(|e| Error::Pki(e.to_string()))?;
    let issued = ca
        .issue_server(
            &hostname,
            &names.addresses,
            &machine.cert_sans,
            bramble_pki::Validity::from_now(SERVER_CERT_LIFETIME),
        )
        .map_err(|e| Error::Pki(e.to_string()))?;
    let identity = ServerIdentity::from_pem(issued.cert_pem, issued.key_pem).map_err(Error::Pki)?;
    Ok((
        Tls::Mutual {
            identity,
            client_ca: machine.ca.crt.clone(),
        },
        Origin::Generated,
    ))
}

impl BoundServer {
    /// Loads (or generates) the server certificate, then binds the listener.
    /// Must run inside a tokio runtime.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        let store = ConfigStore::new(&config.config_dir);
        // Whether the configuration in force changes here, before any
        // service that started beside apid could be told.
        let mut changed = false;
        if store.end_unfinished_trial()? {
            tracing::warn!("a tried configuration was never confirmed: the previous one is back");
            changed = true;
        }
        if store.promote_staged()? {
            tracing::info!("the staged configuration is now in force");
            changed = true;
        }
        // A failure here must not keep the API down: the node then stays in
        // maintenance mode, reachable for an apply-config.
        match store.adopt_from_boot() {
            Ok(true) => {
                tracing::info!(
                    "the configuration placed on the boot partition at flash time is now in force"
                );
                changed = true;
            }
            Ok(false) => {}
            Err(e) => tracing::error!(
                "the configuration placed on the boot partition could not be adopted: {e}"
            ),
        }
        let stored = match store.load() {
            Ok(stored) => stored,
            // Not a crash loop: the server starts in recovery mode (tls_for).
            Err(e @ Error::StoredConfig { .. }) => {
                tracing::error!("{e}");
                crate::console::print(&format!("bramble: ERROR {e}\n"));
                None
            }
            Err(e) => return Err(e),
        };
        let (tls, origin) = tls_for(&config, stored.as_ref()).await?;
        let node = Node::new(
            config.info.clone(),
            store,
            config.control_socket.clone(),
            config.wipe_data_marker.clone(),
            config.boot_device_file.clone(),
            stored,
            &config.etcd_root,
        );
        // The configuration in force may have changed above (a promotion, a
        // reverted trial, the first boot's adoption) or been stored by an
        // apply whose write to the boot partition failed: bring the Pi
        // lines up to date, behind the API's start.
        {
            let node = Arc::clone(&node);
            tokio::spawn(async move { node.sync_pi_in_force().await });
        }
        // networkd, timed and the others start with apid and may have read
        // the configuration before it changed above: they read it again.
        if changed {
            let node = Arc::clone(&node);
            tokio::spawn(async move { node.reload_for_config_in_force().await });
        }
        let listener = listen(config.listen)?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        Ok(Self {
            config,
            node,
            tls,
            origin,
            listener,
            local_addr,
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Fingerprint of the server certificate clients will see.
    pub fn fingerprint(&self) -> &Fingerprint {
        self.tls.identity().fingerprint()
    }

    /// Whether the certificate was generated now or loaded.
    pub fn identity_origin(&self) -> Origin {
        self.origin
    }

    /// Whether the server runs in maintenance mode (no configuration yet).
    pub fn maintenance(&self) -> bool {
        matches!(self.tls, Tls::Maintenance(_))
    }

    /// What the server admits now.
    pub fn mode(&self) -> Mode {
        self.tls.mode()
    }

    /// What the console shows about the server now ([`crate::console`]).
    pub fn console_status(&self) -> crate::console::Status {
        let v = self.config.info.version();
        crate::console::Status {
            os: format!("{} {}", v.os_name, v.os_version),
            revision: v.git_revision,
            maintenance: self.maintenance(),
            listen: self.local_addr,
            addresses: bramble_netlink::local_addresses(),
            fingerprint: self.fingerprint().to_string(),
        }
    }

    /// The text [`BoundServer::serve`] prints on the console each time it
    /// starts listening: in maintenance mode a short block saying how to
    /// configure the node, else one line.
    pub fn banner(&self) -> String {
        crate::console::render(&self.console_status())
    }

    /// Serves until `shutdown` completes, then lets in-flight calls finish
    /// for up to the configured grace period.
    ///
    /// When a new configuration changes what the listener needs (the first
    /// one ends maintenance mode; a new CA or new names), the server lets
    /// in-flight calls finish, takes the new identity and listens again on
    /// the same address.
    pub async fn serve<F>(mut self, shutdown: F) -> Result<(), Error>
    where
        F: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let mut reloads = self.node.reload_requests();
        loop {
            let reload = self.serve_once(&mut shutdown, &mut reloads).await?;
            if !reload {
                return Ok(());
            }
            let current = self.node.current().await;
            let (tls, origin) = tls_for(&self.config, current.as_ref()).await?;
            self.tls = tls;
            self.origin = origin;
        }
    }

    fn duplicate_listener(&self) -> Result<TcpListener, Error> {
        let err = |source| Error::Bind {
            addr: self.local_addr,
            source,
        };
        let fd = socket2::SockRef::from(&self.listener)
            .try_clone()
            .map_err(err)?;
        let std: std::net::TcpListener = fd.into();
        std.set_nonblocking(true).map_err(err)?;
        TcpListener::from_std(std).map_err(err)
    }

    /// One listener lifetime; true when it ended for a reload.
    async fn serve_once<F>(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut F>,
        reloads: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<bool, Error>
    where
        F: Future<Output = ()>,
    {
        let identity = self.tls.identity().to_tonic();
        let mut tls = ServerTlsConfig::new()
            .identity(identity)
            .timeout(self.config.handshake_timeout);
        if let Some(client_ca) = self.tls.client_ca() {
            tls = tls.client_ca_root(Certificate::from_pem(client_ca));
        }
        // A configured node lets a connection without a client certificate
        // through the handshake, for the one call its join token
        // authenticates (`auth::JOIN`): every other call needs a role, and a
        // certificate that is presented must still chain to the CA.
        if self.mode() == Mode::Configured {
            tls = tls.client_auth_optional(true);
        }
        let server = Server::builder()
            .tls_config(tls)
            .map_err(Error::Tls)?
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(AuthLayer::new(self.mode()));
        let svc = MachineServiceServer::new(MachineApi::new(
            Arc::clone(&self.node),
            crate::runtime::RuntimeClient::new(&self.config.runtime_socket),
        ));
        let listener = self.duplicate_listener()?;
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));

        // The console text for this listener; in maintenance mode the block
        // is printed again when the node's addresses change (compared with
        // the ones just printed), for as long as this listener lives.
        let status = self.console_status();
        crate::console::print(&crate::console::render(&status));
        let console_watch = self
            .maintenance()
            .then(|| tokio::spawn(crate::console::watch_addresses(status)));
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let mut reload = false;
        let mutual = matches!(self.tls, Tls::Mutual { .. });
        let joining = matches!(self.tls, Tls::Joining { .. });
        let join_retry = self.config.join_retry;
        let issued_for = subject_names();
        let signal = async {
            tokio::select! {
                () = shutdown.as_mut() => tracing::info!("shutting down"),
                _ = reloads.changed() => {
                    tracing::info!("configuration changed: restarting the listener");
                    reload = true;
                }
                () = names_changed(mutual, issued_for) => {
                    tracing::info!("the node's names or addresses changed: issuing a new certificate");
                    reload = true;
                }
                () = async {
                    if joining {
                        tokio::time::sleep(join_retry).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                } => {
                    tracing::info!("asking a control-plane node for the API certificate again");
                    reload = true;
                }
            }
            let _ = stop_tx.send(true);
        };
        let serving = server.serve_with_incoming_shutdown(svc, incoming, signal);
        let grace = self.config.shutdown_grace;
        let deadline = async move {
            // Resolves only once shutdown was requested and the grace ran out.
            while !*stop_rx.borrow_and_update() {
                if stop_rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            tokio::time::sleep(grace).await;
        };
        let result = tokio::select! {
            result = serving => result.map_err(Error::Serve),
            () = deadline => {
                tracing::warn!(grace = ?grace, "connections still open after the grace period; closing them");
                Ok(())
            }
        };
        if let Some(watch) = console_watch {
            watch.abort();
        }
        result.map(|()| reload)
    }
}

/// Binds a listening TCP socket. `[::]` is made dual-stack explicitly (not
/// left to `net.ipv6.bindv6only`); if the kernel has no IPv6 at all, `[::]`
/// falls back to `0.0.0.0` with a warning.
fn listen(addr: SocketAddr) -> Result<TcpListener, Error> {
    match bind_socket(addr) {
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() && is_no_ipv6(&e) => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::warn!(error = %e, fallback = %v4, "IPv6 unavailable; listening on IPv4 only");
            bind_socket(v4).map_err(|source| Error::Bind { addr: v4, source })
        }
        other => other.map_err(|source| Error::Bind { addr, source }),
    }
}

fn is_no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == nix::errno::Errno::EAFNOSUPPORT as i32
            || code == nix::errno::Errno::EADDRNOTAVAIL as i32
    )
}

fn bind_socket(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // Restart right after a stop without waiting out TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dual_stack_listener_accepts_ipv4() {
        let Ok(listener) = bind_socket("[::]:0".parse().unwrap()) else {
            // No IPv6 on this machine: nothing to check.
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
        let (accepted, connected) = tokio::join!(listener.accept(), connect);
        accepted.unwrap();
        connected.unwrap();
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let first = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        // SO_REUSEADDR does not allow two listeners on one port.
        let e = listen(addr).unwrap_err().to_string();
        assert!(e.contains(&addr.to_string()), "{e}");
    }
}
