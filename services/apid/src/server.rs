//! Binding the listener and serving the machine API over TLS.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bramble_api::machine::v1::machine_service_server::MachineServiceServer;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};

use crate::addrs;
use crate::error::Error;
use crate::identity::{Fingerprint, Origin, ServerIdentity, SubjectNames};
use crate::info::{NodeInfoSource, Uname};
use crate::service::MachineApi;

/// Default listen address: every IPv6 and (dual-stack) IPv4 address.
pub const DEFAULT_LISTEN: &str = "[::]:50000";
/// Default state directory on the node.
pub const DEFAULT_STATE_DIR: &str = "/system/state/apid";

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; `[::]:PORT` also accepts IPv4 (dual-stack).
    pub listen: SocketAddr,
    /// Where the server certificate and key are kept.
    pub state_dir: PathBuf,
    /// Where `Version` reads its facts.
    pub info: NodeInfoSource,
    /// How long a client gets to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long in-flight calls get after a shutdown request.
    pub shutdown_grace: Duration,
}

impl Config {
    /// Defaults for everything but the two command-line settings.
    pub fn new(listen: SocketAddr, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            state_dir: state_dir.into(),
            info: NodeInfoSource::system(),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// A server whose identity is loaded and whose listener is bound: clients can
/// connect from now on (their connections wait in the backlog until
/// [`BoundServer::serve`] runs).
#[derive(Debug)]
pub struct BoundServer {
    config: Config,
    identity: ServerIdentity,
    origin: Origin,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl BoundServer {
    /// Loads (or generates) the server certificate, then binds the listener.
    /// Must run inside a tokio runtime.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        let uts = Uname::get();
        let names = SubjectNames {
            hostname: uts.nodename,
            addresses: addrs::local_addresses(),
        };
        let (identity, origin) = ServerIdentity::load_or_generate(&config.state_dir, &names)?;
        let listener = listen(config.listen)?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        Ok(Self {
            config,
            identity,
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
        self.identity.fingerprint()
    }

    /// Whether the certificate was generated now or loaded.
    pub fn identity_origin(&self) -> Origin {
        self.origin
    }

    /// Whether the server runs in maintenance mode (no configuration yet).
    pub fn maintenance(&self) -> bool {
        self.config.info.maintenance
    }

    /// The line announced on the console once the server is bound.
    pub fn banner(&self) -> String {
        format!(
            "API listening on {}{}, certificate fingerprint {}",
            self.local_addr,
            if self.maintenance() {
                " (maintenance mode)"
            } else {
                ""
            },
            self.fingerprint()
        )
    }

    /// Serves until `shutdown` completes, then lets in-flight calls finish
    /// for up to the configured grace period.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), Error>
    where
        F: Future<Output = ()>,
    {
        let tls = ServerTlsConfig::new()
            .identity(self.identity.to_tonic())
            .timeout(self.config.handshake_timeout);
        let server = Server::builder()
            .tls_config(tls)
            .map_err(Error::Tls)?
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        let svc = MachineServiceServer::new(MachineApi::new(self.config.info.clone()));
        let incoming = TcpIncoming::from(self.listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));

        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down");
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
        tokio::select! {
            result = serving => result.map_err(Error::Serve),
            () = deadline => {
                tracing::warn!(grace = ?grace, "connections still open after the grace period; closing them");
                Ok(())
            }
        }
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
