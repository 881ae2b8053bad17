//! Published ports: how a workload in a network namespace of its own is
//! reached from outside.
//!
//! For each `ports[]` entry runtimed listens on the node's `hostPort` and
//! joins every accepted connection to one it makes inside the container's
//! namespace, to `127.0.0.1:<containerPort>` (a socket made by a thread that
//! entered the namespace for that moment: [`bramble_netlink::in_namespace`]).
//! No address, route or packet filter of the node changes, and the container
//! gets no way out: what it can answer is what reaches these ports. The
//! container sees its clients as `127.0.0.1`, as behind Docker's userland
//! proxy.
//!
//! Listening starts before the container does (a port already taken fails
//! the start with a clear reason); connections wait in the listen backlog
//! until the container's namespace is known ([`Published::serve`]).

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream as StdTcpStream};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use bramble_config::WorkloadPort;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::RuntimeError;

/// Connections one published port carries at once; more wait in the
/// backlog, so a flood of clients cannot exhaust runtimed's threads or
/// file descriptors.
pub const MAX_CONNECTIONS_PER_PORT: usize = 256;

/// How long reaching the container's port may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// The listeners of one container's published ports. Dropping it closes
/// them and ends every connection they carry.
#[derive(Debug)]
pub struct Published {
    listeners: Vec<(WorkloadPort, TcpListener)>,
    tasks: JoinSet<()>,
}

impl Published {
    /// Listens on every port of `ports` on the node (`address`: every
    /// address, [`Ipv6Addr::UNSPECIFIED`] with IPv4 mapped, in the node's
    /// runtime; loopback in tests).
    pub async fn bind(ports: &[WorkloadPort], address: IpAddr) -> Result<Self, RuntimeError> {
        let mut listeners = Vec::with_capacity(ports.len());
        for port in ports {
            let listener = listen(address, port.host()).await.map_err(|e| {
                RuntimeError::Port(format!(
                    "cannot publish port {} (container port {}): {e}",
                    port.host(),
                    port.container_port
                ))
            })?;
            listeners.push((*port, listener));
        }
        Ok(Self {
            listeners,
            tasks: JoinSet::new(),
        })
    }

    /// The node's side of each port as bound (useful when a test asked for
    /// port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(_, l)| l.local_addr().ok())
            .collect()
    }

    /// Starts forwarding into the network namespace `netns` (the
    /// container's `/proc/<pid>/ns/net`). Refuses a namespace that is
    /// runtimed's own: forwarding there would publish the node's loopback.
    pub fn serve(&mut self, netns: File) -> Result<(), RuntimeError> {
        let own = std::fs::metadata("/proc/thread-self/ns/net")
            .map_err(|e| RuntimeError::Port(format!("cannot read runtimed's namespace: {e}")))?;
        let theirs = netns.metadata().map_err(|e| {
            RuntimeError::Port(format!("cannot read the container's namespace: {e}"))
        })?;
        if (own.dev(), own.ino()) == (theirs.dev(), theirs.ino()) {
            return Err(RuntimeError::Port(
                "the container shares the node's network namespace; nothing to publish".into(),
            ));
        }
        let netns = Arc::new(netns);
        for (port, listener) in self.listeners.drain(..) {
            let netns = Arc::clone(&netns);
            self.tasks.spawn(accept_loop(listener, port, netns));
        }
        Ok(())
    }
}

async fn listen(address: IpAddr, port: u16) -> io::Result<TcpListener> {
    match TcpListener::bind((address, port)).await {
        // A kernel without IPv6 still gets the IPv4 side.
        Err(e) if address == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && is_no_ipv6(&e) => {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await
        }
        other => other,
    }
}

fn is_no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
    )
}

#[tracing::instrument(name = "port", skip_all, fields(host = port.host(), container = port.container_port))]
async fn accept_loop(listener: TcpListener, port: WorkloadPort, netns: Arc<File>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_PORT));
    let mut connections = JoinSet::new();
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (inbound, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: the next accept may work.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let netns = Arc::clone(&netns);
        let container_port = port.container_port;
        connections.spawn(async move {
            let _permit = permit;
            if let Err(e) = forward(inbound, &netns, container_port).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
        // Reap what has ended, so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
}

async fn forward(mut inbound: TcpStream, netns: &Arc<File>, port: u16) -> io::Result<()> {
    let mut outbound = connect_in(Arc::clone(netns), port).await?;
    tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await?;
    Ok(())
}

/// A connection to `127.0.0.1:port` inside `netns`, made by a thread of its
/// own (it moves into the namespace and ends after, so no pooled thread is
/// ever left elsewhere).
async fn connect_in(netns: Arc<File>, port: u16) -> io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("port-connect".into())
        .spawn(move || {
            let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let stream = bramble_netlink::in_namespace(&*netns, || {
                StdTcpStream::connect_timeout(&target, CONNECT_LIMIT)
            });
            let _ = tx.send(stream);
        })?;
    let stream = rx
        .await
        .map_err(|_| io::Error::other("the connecting thread ended without an answer"))??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}
