//! The daemon: brings links up, runs a DHCP driver per physical Ethernet
//! link, publishes status, signals readiness and releases leases on SIGTERM.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::dhcp::client::{Driver, DriverConfig};
use crate::links::{Link, Netlink};
use crate::ready;
use crate::status::{LinkEvent, Status};

/// How long shutdown waits for the drivers to release their leases.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Daemon settings (from the command line).
#[derive(Debug, Clone)]
pub struct Options {
    /// Where status files go (`/run/bramble`).
    pub run_dir: PathBuf,
    /// Where sysfs is mounted (`/sys`).
    pub sysfs: PathBuf,
    /// Links to manage by name; empty means every physical Ethernet port.
    pub links: Vec<String>,
    /// Bounded wait for carrier before DHCP starts anyway.
    pub carrier_timeout: Duration,
    /// Base metric of DHCP default routes.
    pub route_metric: u32,
    /// The value of `BRAMBLE_READY_FD`, if set.
    pub ready_fd: Option<String>,
    /// Host name sent to DHCP servers (the kernel's nodename).
    pub hostname: Option<String>,
}

impl Options {
    /// Whether `link` is one this daemon should run DHCP on.
    fn wants(&self, link: &Link) -> bool {
        if self.links.is_empty() {
            link.is_physical_ethernet(&self.sysfs)
        } else {
            self.links.contains(&link.name) && link.ethernet_mac().is_some()
        }
    }
}

struct Daemon {
    opts: Options,
    nl: Netlink,
    status: Status,
    events_tx: mpsc::UnboundedSender<LinkEvent>,
    shutdown_tx: watch::Sender<bool>,
    drivers: JoinSet<()>,
    /// Managed links by index.
    managed: HashMap<u32, String>,
}

impl Daemon {
    /// Brings `link` up and starts its DHCP driver (once per index).
    async fn manage(&mut self, link: Link) {
        if self.managed.contains_key(&link.index) {
            return;
        }
        if !link.is_up()
            && let Err(e) = self.nl.set_up(&link).await
        {
            error!(link = %link.name, "{e}");
            return;
        }
        info!(link = %link.name, index = link.index, "managing link (DHCPv4)");
        let config = DriverConfig {
            hostname: self.opts.hostname.clone(),
            route_metric: self.opts.route_metric,
            carrier_timeout: self.opts.carrier_timeout,
        };
        let driver = match Driver::new(
            link.clone(),
            self.nl.clone(),
            config,
            self.events_tx.clone(),
            self.shutdown_tx.subscribe(),
        ) {
            Ok(d) => d,
            Err(e) => {
                error!(link = %link.name, "{e}");
                return;
            }
        };
        self.managed.insert(link.index, link.name.clone());
        self.status.add_link(&link);
        self.flush();
        self.drivers.spawn(driver.run());
    }

    fn apply(&mut self, event: LinkEvent) {
        debug!(?event, "link event");
        if let LinkEvent::Stopped { index } = event {
            self.status.apply(&event, Instant::now(), SystemTime::now());
            if !*self.shutdown_tx.borrow() {
                // The link vanished; forget it so it is picked up again if it returns.
                self.managed.remove(&index);
                self.status.remove_link(index);
            }
        } else {
            self.status.apply(&event, Instant::now(), SystemTime::now());
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.status.flush() {
            error!("cannot publish network status: {e}");
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let nl = Netlink::connect()?;
    // Subscribe before the first dump so no link that appears in between is missed.
    let mut notifications = match Netlink::link_notifications() {
        Ok(n) => Some(n),
        Err(e) => {
            warn!("no link notifications, links that appear later are not managed: {e}");
            None
        }
    };

    let lo = nl.link_by_name("lo").await?;
    nl.set_up(&lo).await?;
    info!("lo up");

    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (shutdown_tx, _) = watch::channel(false);
    let mut daemon = Daemon {
        status: Status::new(&opts.run_dir),
        opts,
        nl: nl.clone(),
        events_tx,
        shutdown_tx,
        drivers: JoinSet::new(),
        managed: HashMap::new(),
    };
    // A marker left by an earlier instance is stale until we hold a lease.
    crate::fsutil::remove_if_exists(&daemon.status.network_dir().join("online"))?;
    daemon.flush();

    let candidates: Vec<Link> = nl
        .links()
        .await?
        .into_iter()
        .filter(|l| daemon.opts.wants(l))
        .collect();
    if candidates.is_empty() {
        warn!("no physical Ethernet link found; waiting for one to appear");
    }
    for link in candidates {
        daemon.manage(link).await;
    }
    for name in &daemon.opts.links {
        if !daemon.managed.values().any(|n| n == name) {
            warn!(link = %name, "requested link not present (or has no Ethernet address); waiting for it");
        }
    }

    // A broken readiness channel must not keep the node off the network.
    match ready::notify(daemon.opts.ready_fd.as_deref()) {
        Ok(true) => info!("ready: lo and {} link(s) up", daemon.managed.len()),
        Ok(false) => {}
        Err(e) => error!("cannot signal readiness: {e}"),
    }

    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: releasing leases"); break; }
            _ = sigint.recv() => { info!("SIGINT: releasing leases"); break; }
            Some(event) = events_rx.recv() => {
                daemon.apply(event);
                while let Ok(event) = events_rx.try_recv() {
                    daemon.apply(event);
                }
                daemon.flush();
            }
            link = next_link(&mut notifications) => match link {
                Some(link) => {
                    if daemon.managed.contains_key(&link.index) {
                        daemon.status.apply(&LinkEvent::Carrier { index: link.index, carrier: link.carrier }, Instant::now(), SystemTime::now());
                        daemon.flush();
                    } else if daemon.opts.wants(&link) {
                        daemon.manage(link).await;
                    }
                }
                None => {
                    warn!("link notifications stopped");
                    notifications = None;
                }
            },
            Some(joined) = daemon.drivers.join_next() => {
                if let Err(e) = joined {
                    error!("DHCP driver task failed: {e}");
                }
            }
        }
    }

    // Shutdown: every driver releases its lease; wait for them, bounded.
    let _ = daemon.shutdown_tx.send(true);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while !daemon.drivers.is_empty() {
        tokio::select! {
            joined = daemon.drivers.join_next() => {
                if let Some(Err(e)) = joined {
                    error!("DHCP driver task failed: {e}");
                }
            }
            Some(event) = events_rx.recv() => daemon.apply(event),
            () = tokio::time::sleep_until(deadline) => {
                warn!("drivers did not stop within {SHUTDOWN_GRACE:?}");
                daemon.drivers.abort_all();
                break;
            }
        }
    }
    while let Ok(event) = events_rx.try_recv() {
        daemon.apply(event);
    }
    daemon.flush();
    info!("stopped");
    Ok(())
}

async fn next_link(n: &mut Option<crate::links::LinkNotifications>) -> Option<Link> {
    match n {
        Some(n) => n.next().await,
        None => std::future::pending().await,
    }
}

/// The kernel's nodename, if it is a usable host name.
pub fn kernel_hostname() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = raw.trim();
    if name == "(none)" {
        return None;
    }
    crate::dhcp::lease::valid_dns_name(name)
}
