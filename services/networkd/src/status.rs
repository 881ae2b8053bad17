//! The daemon's published status: `<run-dir>/network/state.json`, the
//! `<run-dir>/network/online` marker, `<run-dir>/resolv.conf`,
//! `<run-dir>/hostname` and the console lines on stdout.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::info;

use crate::desired::Desired;
use crate::dhcp::{Lease, LossReason, Phase};
use crate::error::Error;
use crate::links::Link;
use crate::resolv::{self, Resolvers};

/// What a link's DHCP driver reports to the daemon.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// Carrier came or went.
    Carrier {
        /// Interface index.
        index: u32,
        /// Carrier present.
        carrier: bool,
    },
    /// The DHCP client moved to another phase.
    Phase {
        /// Interface index.
        index: u32,
        /// The new phase.
        phase: Phase,
    },
    /// A lease was installed (new, renewed or replaced).
    Leased {
        /// Interface index.
        index: u32,
        /// The lease now in force.
        lease: Box<Lease>,
        /// Whether this extends an earlier lease.
        renewal: bool,
    },
    /// The lease was removed.
    Lost {
        /// Interface index.
        index: u32,
        /// Why.
        reason: LossReason,
    },
    /// The driver stopped (link gone, or shutdown).
    Stopped {
        /// Interface index.
        index: u32,
    },
}

#[derive(Debug, Clone)]
struct LinkStatus {
    name: String,
    mac: String,
    carrier: bool,
    phase: Phase,
    lease: Option<LeaseRecord>,
}

#[derive(Debug, Clone)]
struct LeaseRecord {
    lease: Lease,
    /// Wall-clock time the lease started, in Unix seconds.
    acquired_unix: u64,
}

/// The status document, serialised to `state.json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct StateDoc {
    /// Whether any link holds a lease.
    pub online: bool,
    /// Links running the DHCP client, by interface index.
    pub links: Vec<LinkDoc>,
    /// The last reconciliation of the configured network, if any ran.
    pub applied: Option<AppliedDoc>,
}

/// One reconciliation pass in `state.json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AppliedDoc {
    /// Counts passes since the daemon started (1: the one at start).
    pub generation: u64,
    /// Wall-clock time the pass ended, Unix milliseconds.
    pub at_unix_ms: u64,
    /// How long the pass took, in microseconds.
    pub duration_us: u64,
    /// Whether a configuration was found (otherwise: the defaults).
    pub configured: bool,
    /// The configuration could not be read; the previous network is kept.
    pub config_error: Option<String>,
    /// The changes made, one line each.
    pub changes: Vec<String>,
    /// Problems, one line each (a missing link, a refusal by the kernel).
    pub problems: Vec<String>,
}

/// One link in `state.json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct LinkDoc {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Hardware address.
    pub mac: String,
    /// Carrier present.
    pub carrier: bool,
    /// DHCP client phase (`selecting`, `bound`, ...).
    pub dhcp: &'static str,
    /// Addresses this daemon configured, as `a.b.c.d/len`.
    pub addresses: Vec<String>,
    /// The current lease, if any.
    pub lease: Option<LeaseDoc>,
}

/// A lease in `state.json`. Times are Unix seconds from the wall clock at
/// the time the lease was obtained (the clock may be corrected later).
#[derive(Debug, Serialize, PartialEq)]
pub struct LeaseDoc {
    /// Leased address.
    pub address: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Routers, first one used for the default route.
    pub routers: Vec<Ipv4Addr>,
    /// Name servers.
    pub dns: Vec<Ipv4Addr>,
    /// Domain name.
    pub domain: Option<String>,
    /// Search domains.
    pub search: Vec<String>,
    /// Host name offered by the server.
    pub hostname: Option<String>,
    /// The DHCP server.
    pub server: Ipv4Addr,
    /// Lease duration in seconds; `null` when infinite.
    pub lease_seconds: Option<u64>,
    /// T1 in seconds; `null` when infinite.
    pub renew_seconds: Option<u64>,
    /// T2 in seconds; `null` when infinite.
    pub rebind_seconds: Option<u64>,
    /// When the lease started.
    pub acquired_unix: u64,
    /// When renewal starts.
    pub renew_at_unix: Option<u64>,
    /// When rebinding starts.
    pub rebind_at_unix: Option<u64>,
    /// When the lease ends.
    pub expires_at_unix: Option<u64>,
}

/// Tracks every managed link and publishes the status files on change.
#[derive(Debug)]
pub struct Status {
    run_dir: PathBuf,
    links: BTreeMap<u32, LinkStatus>,
    written_state: Option<String>,
    written_online: Option<bool>,
    written_resolv: Option<String>,
    written_hostname: Option<String>,
    written_hosts: Option<String>,
    desired: Desired,
    applied: Option<AppliedDoc>,
    /// A configured static address is in place.
    static_address: bool,
}

impl Status {
    /// Status publishing under `run_dir`.
    pub fn new(run_dir: &Path) -> Self {
        Self {
            run_dir: run_dir.to_owned(),
            links: BTreeMap::new(),
            written_state: None,
            written_online: None,
            written_resolv: None,
            written_hostname: None,
            written_hosts: None,
            desired: Desired::default(),
            applied: None,
            static_address: false,
        }
    }

    /// Takes the configured resolvers, host name and hosts entries into
    /// account from the next [`Status::flush`] on.
    pub fn set_desired(&mut self, desired: &Desired) {
        self.desired = desired.clone();
    }

    /// Records a reconciliation pass for `state.json`.
    pub fn set_applied(&mut self, applied: AppliedDoc) {
        self.applied = Some(applied);
    }

    /// The host name in force: the configured one, else one from a lease.
    pub fn hostname(&self) -> Option<String> {
        self.desired.hostname.clone().or_else(|| {
            self.links
                .values()
                .find_map(|l| l.lease.as_ref().and_then(|r| r.lease.hostname.clone()))
        })
    }

    /// `<run-dir>/network`.
    pub fn network_dir(&self) -> PathBuf {
        self.run_dir.join("network")
    }

    /// Starts tracking a link.
    pub fn add_link(&mut self, link: &Link) {
        let mac = link
            .mac
            .as_deref()
            .map(|m| {
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            })
            .unwrap_or_default();
        self.links.insert(
            link.index,
            LinkStatus {
                name: link.name.clone(),
                mac,
                carrier: link.carrier,
                phase: Phase::Init,
                lease: None,
            },
        );
    }

    /// Applies an event; prints the console line for a new lease or a lost one.
    pub fn apply(&mut self, event: &LinkEvent, now: Instant, wall: SystemTime) {
        match event {
            LinkEvent::Carrier { index, carrier } => {
                if let Some(l) = self.links.get_mut(index) {
                    l.carrier = *carrier;
                }
            }
            LinkEvent::Phase { index, phase } => {
                if let Some(l) = self.links.get_mut(index) {
                    l.phase = *phase;
                }
            }
            LinkEvent::Leased {
                index,
                lease,
                renewal,
            } => {
                if let Some(l) = self.links.get_mut(index) {
                    let changed = match &l.lease {
                        Some(old) => {
                            old.lease.address != lease.address
                                || old.lease.prefix_len != lease.prefix_len
                                || old.lease.router() != lease.router()
                                || old.lease.server != lease.server
                        }
                        None => true,
                    };
                    if !renewal || changed {
                        info!("{}", lease.summary(&l.name));
                    }
                    let age = now.saturating_duration_since(lease.acquired);
                    let acquired_unix = unix_secs(wall).saturating_sub(age.as_secs());
                    l.phase = Phase::Bound;
                    l.lease = Some(LeaseRecord {
                        lease: (**lease).clone(),
                        acquired_unix,
                    });
                }
            }
            LinkEvent::Lost { index, reason } => {
                if let Some(l) = self.links.get_mut(index)
                    && let Some(old) = l.lease.take()
                {
                    info!("{}: {} {}", l.name, old.lease.cidr(), reason.as_str());
                }
            }
            LinkEvent::Stopped { index } => {
                if let Some(l) = self.links.get_mut(index) {
                    l.lease = None;
                    l.phase = Phase::Stopped;
                }
            }
        }
    }

    /// Forgets a link (it disappeared).
    pub fn remove_link(&mut self, index: u32) {
        self.links.remove(&index);
    }

    /// Records whether a configured static address (global scope) is in
    /// place, as the last reconciliation found it.
    pub fn set_static_address(&mut self, present: bool) {
        self.static_address = present;
    }

    /// Whether the node has an address others can reach it at: a lease on
    /// some link, or a configured static address.
    pub fn online(&self) -> bool {
        self.static_address || self.links.values().any(|l| l.lease.is_some())
    }

    /// The document written to `state.json`.
    pub fn document(&self) -> StateDoc {
        StateDoc {
            online: self.online(),
            links: self
                .links
                .iter()
                .map(|(index, l)| LinkDoc {
                    name: l.name.clone(),
                    index: *index,
                    mac: l.mac.clone(),
                    carrier: l.carrier,
                    dhcp: l.phase.as_str(),
                    addresses: l.lease.iter().map(|r| r.lease.cidr()).collect(),
                    lease: l.lease.as_ref().map(lease_doc),
                })
                .collect(),
            applied: self.applied.clone(),
        }
    }

    /// Writes whatever changed since the last call: `state.json`, the
    /// `online` marker, `resolv.conf` and `hostname`.
    pub fn flush(&mut self) -> Result<(), Error> {
        let json = serde_json::to_string_pretty(&self.document())? + "\n";
        if self.written_state.as_deref() != Some(json.as_str()) {
            bramble_atomic::write(
                &self.network_dir().join("state.json"),
                json.as_bytes(),
                0o644,
            )?;
            self.written_state = Some(json);
        }

        let online = self.online();
        if self.written_online != Some(online) {
            let marker = self.network_dir().join("online");
            if online {
                bramble_atomic::write(&marker, b"", 0o644)?;
                match uptime_secs() {
                    Some(t) => info!("network online: {t:.3} s after kernel start"),
                    None => info!("network online"),
                }
            } else {
                bramble_atomic::remove_if_exists(&marker)?;
                if self.written_online == Some(true) {
                    info!("network offline: no link holds a lease");
                }
            }
            self.written_online = Some(online);
        }

        let leases = self
            .links
            .values()
            .filter_map(|l| l.lease.as_ref().map(|r| &r.lease));
        let mut resolvers = Resolvers::from_leases(leases);
        resolvers.override_with(&self.desired.nameservers, &self.desired.search);
        let text = resolvers.render();
        // Only write resolv.conf once there is something to say, or to clear it.
        let configured = !self.desired.nameservers.is_empty();
        if self.written_resolv.as_deref() != Some(text.as_str())
            && (online || configured || self.written_resolv.is_some())
        {
            resolv::write_resolv_conf(&self.run_dir, &resolvers)?;
            self.written_resolv = Some(text);
        }

        let hostname = self.hostname();
        if let Some(name) = &hostname
            && self.written_hostname.as_ref() != Some(name)
        {
            resolv::write_hostname(&self.run_dir, name)?;
            self.written_hostname = Some(name.clone());
        }

        let hosts = resolv::render_hosts(hostname.as_deref(), &self.desired.extra_hosts);
        if self.written_hosts.as_ref() != Some(&hosts) {
            resolv::write_hosts(&self.run_dir, &hosts)?;
            self.written_hosts = Some(hosts);
        }
        Ok(())
    }
}

fn lease_doc(r: &LeaseRecord) -> LeaseDoc {
    let l = &r.lease;
    let secs = |d: Duration| d.as_secs();
    let finite = l.lease_time.is_some();
    let at = |d: Duration| finite.then(|| r.acquired_unix.saturating_add(d.as_secs()));
    LeaseDoc {
        address: l.address,
        prefix_len: l.prefix_len,
        routers: l.routers.clone(),
        dns: l.dns.clone(),
        domain: l.domain.clone(),
        search: l.search.clone(),
        hostname: l.hostname.clone(),
        server: l.server,
        lease_seconds: l.lease_time.map(secs),
        renew_seconds: finite.then(|| secs(l.t1)),
        rebind_seconds: finite.then(|| secs(l.t2)),
        acquired_unix: r.acquired_unix,
        renew_at_unix: at(l.t1),
        rebind_at_unix: at(l.t2),
        expires_at_unix: l.lease_time.and_then(at),
    }
}

/// Seconds since the kernel started (`/proc/uptime`), for the console line
/// that `make bench` reads.
fn uptime_secs() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::{LinkFlags, LinkLayerType};

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            mac: Some(vec![2, 0, 0, 0, 0, index as u8]),
            link_type: LinkLayerType::Ether,
            flags: LinkFlags::Up,
            carrier: true,
            kind: None,
            mtu: Some(1500),
            alias: None,
            controller: None,
        }
    }

    fn lease(addr: [u8; 4], acquired: Instant) -> Lease {
        Lease {
            address: Ipv4Addr::from(addr),
            prefix_len: 24,
            routers: vec![Ipv4Addr::new(10, 0, 2, 2)],
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            domain: Some("lab".into()),
            search: vec![],
            hostname: Some("pi-01".into()),
            server: Ipv4Addr::new(10, 0, 2, 2),
            lease_time: Some(Duration::from_secs(100)),
            t1: Duration::from_secs(50),
            t2: Duration::from_secs(87),
            acquired,
        }
    }

    #[test]
    fn publishes_online_state_resolv_and_hostname() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Status::new(dir.path());
        st.add_link(&link(2, "eth0"));
        st.add_link(&link(3, "eth1"));
        st.flush().unwrap();
        let net = dir.path().join("network");
        assert!(!net.join("online").exists());
        assert!(!dir.path().join("resolv.conf").exists());
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(net.join("state.json")).unwrap())
                .unwrap();
        assert_eq!(doc["online"], false);
        assert_eq!(doc["links"][0]["name"], "eth0");
        assert_eq!(doc["links"][0]["mac"], "02:00:00:00:00:02");
        assert_eq!(doc["links"][0]["dhcp"], "init");

        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ev = LinkEvent::Leased {
            index: 2,
            lease: Box::new(lease([10, 0, 2, 15], now - Duration::from_secs(10))),
            renewal: false,
        };
        st.apply(&ev, now, wall);
        st.flush().unwrap();
        assert!(net.join("online").exists());
        assert_eq!(std::fs::read(net.join("online")).unwrap(), b"");
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(net.join("state.json")).unwrap())
                .unwrap();
        assert_eq!(doc["online"], true);
        let l = &doc["links"][0];
        assert_eq!(l["dhcp"], "bound");
        assert_eq!(l["addresses"][0], "10.0.2.15/24");
        assert_eq!(l["lease"]["acquired_unix"], 999_990);
        assert_eq!(l["lease"]["expires_at_unix"], 1_000_090);
        assert_eq!(l["lease"]["renew_at_unix"], 1_000_040);
        assert_eq!(l["lease"]["lease_seconds"], 100);
        assert_eq!(doc["links"][1]["lease"], serde_json::Value::Null);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap(),
            "# Generated by bramble-networkd. Do not edit.\nnameserver 10.0.2.3\nsearch lab\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hostname")).unwrap(),
            "pi-01\n"
        );

        st.apply(
            &LinkEvent::Lost {
                index: 2,
                reason: LossReason::Expired,
            },
            now,
            wall,
        );
        st.flush().unwrap();
        assert!(!net.join("online").exists());
        assert!(
            !std::fs::read_to_string(dir.path().join("resolv.conf"))
                .unwrap()
                .contains("nameserver")
        );
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(net.join("state.json")).unwrap())
                .unwrap();
        assert_eq!(doc["online"], false);
        assert_eq!(doc["links"][0]["addresses"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn unchanged_state_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Status::new(dir.path());
        st.add_link(&link(2, "eth0"));
        st.flush().unwrap();
        let path = dir.path().join("network/state.json");
        std::fs::remove_file(&path).unwrap();
        st.flush().unwrap();
        assert!(!path.exists(), "state.json rewritten without a change");
        st.apply(
            &LinkEvent::Phase {
                index: 2,
                phase: Phase::Selecting,
            },
            Instant::now(),
            SystemTime::now(),
        );
        st.flush().unwrap();
        assert!(path.exists());
    }
}
