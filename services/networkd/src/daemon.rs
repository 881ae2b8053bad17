//! The daemon: makes the configured network true (links, static addresses
//! and routes, VLANs: `reconcile`), runs a DHCP driver per link that wants
//! one (every physical Ethernet port unless the configuration says
//! otherwise), publishes status, re-reads the configuration on SIGHUP,
//! signals readiness and releases leases on SIGTERM.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::desired::{self, Desired};
use crate::dhcp::client::{Driver, DriverConfig};
use crate::links::{Link, Netlink};
use crate::ready;
use crate::reconcile;
use crate::status::{AppliedDoc, LinkEvent, Status};

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
    /// Host name sent to DHCP servers when the configuration names none
    /// (the kernel's nodename at start).
    pub hostname: Option<String>,
    /// The machine configuration file (`machine.network`, `machine.hostname`).
    pub config: PathBuf,
    /// Set the kernel's host name to the one in force (configured, else
    /// from DHCP). Off in tests, which share the host's UTS namespace.
    pub set_hostname: bool,
}

/// A link with a running DHCP driver.
struct Managed {
    name: String,
    stop: watch::Sender<bool>,
}

struct Daemon {
    opts: Options,
    nl: Netlink,
    status: Status,
    events_tx: mpsc::UnboundedSender<LinkEvent>,
    /// Set once, at SIGTERM.
    shutting_down: bool,
    drivers: JoinSet<()>,
    /// Links with a DHCP driver, by index.
    managed: HashMap<u32, Managed>,
    /// The network the configuration asks for.
    desired: Desired,
    /// `desired` with device selectors resolved to the links present.
    effective: Desired,
    /// Reconciliation passes so far.
    generation: u64,
    /// Link indexes already seen, to tell a new link from a changed one.
    seen: HashSet<u32>,
    /// The host name last given to the kernel.
    kernel_hostname: Option<String>,
}

impl Daemon {
    /// Whether `link` should run the DHCP client: as configured when the
    /// configuration names it, else when it was asked for on the command
    /// line, else when it is a physical Ethernet port.
    fn wants_dhcp(&self, link: &Link) -> bool {
        if link.ethernet_mac().is_none() || self.effective.controller_of(&link.name).is_some() {
            return false;
        }
        if let Some(want) = self.effective.link(&link.name) {
            return want.dhcp;
        }
        if self.opts.links.is_empty() {
            crate::links::is_physical_ethernet(link, &self.opts.sysfs)
        } else {
            self.opts.links.contains(&link.name)
        }
    }

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
            hostname: self
                .desired
                .hostname
                .clone()
                .or_else(|| self.opts.hostname.clone()),
            route_metric: self.opts.route_metric,
            carrier_timeout: self.opts.carrier_timeout,
        };
        let (stop, stop_rx) = watch::channel(false);
        let driver = match Driver::new(
            link.clone(),
            self.nl.clone(),
            config,
            self.events_tx.clone(),
            stop_rx,
        ) {
            Ok(d) => d,
            Err(e) => {
                error!(link = %link.name, "{e}");
                return;
            }
        };
        self.managed.insert(
            link.index,
            Managed {
                name: link.name.clone(),
                stop,
            },
        );
        self.status.add_link(&link);
        self.flush();
        self.drivers.spawn(driver.run());
    }

    fn apply(&mut self, event: LinkEvent) {
        debug!(?event, "link event");
        if let LinkEvent::Stopped { index } = event {
            self.status.apply(&event, Instant::now(), SystemTime::now());
            if !self.shutting_down {
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
        if self.opts.set_hostname {
            let name = self.status.hostname();
            if let Some(name) = name
                && self.kernel_hostname.as_ref() != Some(&name)
            {
                match nix::unistd::sethostname(&name) {
                    Ok(()) => {
                        info!("hostname {name}");
                        self.kernel_hostname = Some(name);
                    }
                    Err(e) => error!("cannot set the hostname to {name}: {e}"),
                }
            }
        }
    }

    /// Re-reads the configuration and makes it true. A configuration that
    /// cannot be read leaves the network as it is.
    async fn reload(&mut self) {
        let started = Instant::now();
        let (config_error, configured) = match desired::load(&self.opts.config) {
            Ok(config) => {
                self.desired = Desired::from_config(config.as_ref());
                (None, config.is_some())
            }
            Err(e) => {
                error!("{e}; the network stays as it is");
                (Some(e), true)
            }
        };
        self.status.set_desired(&self.desired);
        self.converge(started, configured, config_error).await;
    }

    /// One reconciliation pass, then the DHCP drivers started or stopped to
    /// match, and the status published.
    async fn converge(&mut self, started: Instant, configured: bool, config_error: Option<String>) {
        let mut unresolved = Vec::new();
        match self.nl.links().await {
            Ok(links) => {
                let (effective, problems) = self.desired.resolve(&links, &self.opts.sysfs);
                self.effective = effective;
                unresolved = problems;
            }
            Err(e) => error!("{e}"),
        }
        let mut report = reconcile::reconcile(&self.nl, &self.effective).await;
        report.problems.splice(0..0, unresolved);
        // A static address in place makes the node as reachable as a lease.
        match bramble_netlink::addresses(&self.nl.handle).await {
            Ok(addresses) => self.status.set_static_address(addresses.iter().any(|a| {
                a.protocol == bramble_netlink::ADDRESS_PROTOCOL_STATIC && a.scope == "global"
            })),
            Err(e) => error!("{e}"),
        }
        for problem in &report.problems {
            warn!("{problem}");
        }
        match self.nl.links().await {
            Ok(links) => {
                for link in links {
                    self.seen.insert(link.index);
                    let wants = self.wants_dhcp(&link);
                    if let Some(m) = self.managed.get(&link.index) {
                        if !wants {
                            info!(link = %m.name, "DHCP no longer configured; releasing the lease");
                            let _ = m.stop.send(true);
                        }
                    } else if wants {
                        self.manage(link).await;
                    }
                }
            }
            Err(e) => error!("{e}"),
        }
        self.generation += 1;
        let duration = started.elapsed();
        info!(
            generation = self.generation,
            changes = report.changes.len(),
            problems = report.problems.len(),
            "network reconciled in {duration:?}"
        );
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.status.set_applied(AppliedDoc {
            generation: self.generation,
            at_unix_ms,
            duration_us: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
            configured,
            config_error,
            changes: report.changes.iter().map(ToString::to_string).collect(),
            problems: report.problems,
        });
        self.flush();
    }

    /// A link appeared or changed.
    async fn link_changed(&mut self, link: Link) {
        let new = self.seen.insert(link.index);
        if self.managed.contains_key(&link.index) {
            self.status.apply(
                &LinkEvent::Carrier {
                    index: link.index,
                    carrier: link.carrier,
                },
                Instant::now(),
                SystemTime::now(),
            );
            self.flush();
            return;
        }
        // A link the configuration may name (directly, as a VLAN's parent or
        // an aggregate's member, or through a device selector).
        let configured = self.desired.links.iter().any(|w| {
            w.name == link.name
                || w.selector.is_some()
                || w.vlan.as_ref().is_some_and(|(p, _)| *p == link.name)
                || w.aggregate
                    .as_ref()
                    .is_some_and(|a| a.members().contains(&link.name))
        });
        if new && configured {
            // A configured link (or a VLAN's parent) appeared: configure it.
            let error = self.status.document().applied.and_then(|a| a.config_error);
            self.converge(Instant::now(), true, error).await;
        } else if self.wants_dhcp(&link) {
            self.manage(link).await;
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

    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut daemon = Daemon {
        status: Status::new(&opts.run_dir),
        opts,
        nl: nl.clone(),
        events_tx,
        shutting_down: false,
        drivers: JoinSet::new(),
        managed: HashMap::new(),
        desired: Desired::default(),
        effective: Desired::default(),
        generation: 0,
        seen: HashSet::new(),
        kernel_hostname: None,
    };
    // A marker left by an earlier instance is stale until we hold a lease.
    bramble_atomic::remove_if_exists(&daemon.status.network_dir().join("online"))?;

    // The configured network first, then DHCP wherever it is wanted.
    daemon.reload().await;
    if daemon.managed.is_empty() && daemon.desired.links.is_empty() {
        warn!("no physical Ethernet link found; waiting for one to appear");
    }
    for name in &daemon.opts.links {
        if !daemon.managed.values().any(|m| &m.name == name) {
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
            _ = sighup.recv() => {
                info!("SIGHUP: reading the configuration again");
                daemon.reload().await;
            }
            Some(event) = events_rx.recv() => {
                daemon.apply(event);
                while let Ok(event) = events_rx.try_recv() {
                    daemon.apply(event);
                }
                daemon.flush();
            }
            link = next_link(&mut notifications) => match link {
                Some(link) => daemon.link_changed(link).await,
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
    // Static addresses and routes stay: the kernel keeps them across a
    // restart of this daemon, and the next one takes them over.
    daemon.shutting_down = true;
    for m in daemon.managed.values() {
        let _ = m.stop.send(true);
    }
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
