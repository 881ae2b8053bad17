//! The network the machine configuration asks for (`machine.network`,
//! `machine.hostname`), in the terms the kernel uses.
//!
//! The configuration has already been validated (prefixes parse, gateways
//! are reachable, no subnet on two links); entries that still do not parse
//! are skipped with a warning rather than stopping the daemon.

use std::io;
use std::net::IpAddr;
use std::path::Path;

use bramble_config::MachineConfig;
use bramble_config::{DeviceSelector, Network, Route};
use ipnet::IpNet;
use tracing::warn;

use crate::links::Link;

/// Metric of a static route that names none (the kernel's IPv6 default, and
/// below the DHCP default routes' `1024 + link index`).
pub const DEFAULT_STATIC_METRIC: u32 = 1024;

/// Everything this daemon makes true.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Links named by the configuration, parents before their VLANs.
    pub links: Vec<DesiredLink>,
    /// Name servers that replace those from DHCP leases, when not empty.
    pub nameservers: Vec<IpAddr>,
    /// Search domains that replace those from DHCP leases, when not empty.
    pub search: Vec<String>,
    /// Extra `/etc/hosts` entries.
    pub extra_hosts: Vec<(IpAddr, Vec<String>)>,
    /// The configured host name, which wins over one from DHCP.
    pub hostname: Option<String>,
}

/// A link this daemon creates from other links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aggregate {
    /// A bond.
    Bond {
        /// Bonding mode, as `ip link` names it.
        mode: String,
        /// Member links.
        members: Vec<String>,
        /// Link monitoring interval, milliseconds.
        miimon: u32,
    },
    /// A bridge.
    Bridge {
        /// Member links.
        members: Vec<String>,
        /// Run the spanning tree protocol.
        stp: bool,
    },
}

impl Aggregate {
    /// The member links.
    pub fn members(&self) -> &[String] {
        match self {
            Self::Bond { members, .. } | Self::Bridge { members, .. } => members,
        }
    }
}

/// Default bond link monitoring interval, milliseconds.
pub const DEFAULT_MIIMON: u32 = 100;

/// One configured link (an interface or a VLAN on one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredLink {
    /// Kernel name; a VLAN is `<parent>.<id>`. For an entry with a device
    /// selector, the configured name until [`Desired::resolve`] replaces it
    /// with the selected link's.
    pub name: String,
    /// Picks the link by its properties; cleared by [`Desired::resolve`].
    pub selector: Option<DeviceSelector>,
    /// A bond or bridge this daemon creates.
    pub aggregate: Option<Aggregate>,
    /// For a VLAN: the parent link's name and the VLAN id.
    pub vlan: Option<(String, u16)>,
    /// Keep it administratively down; nothing else is configured on it.
    pub down: bool,
    /// Run the DHCPv4 client on it.
    pub dhcp: bool,
    /// MTU to set, if configured.
    pub mtu: Option<u32>,
    /// Static addresses.
    pub addresses: Vec<IpNet>,
    /// Static routes through it.
    pub routes: Vec<DesiredRoute>,
}

/// A static route, as installed in the main table with protocol `static`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DesiredRoute {
    /// Destination prefix (host bits clear).
    pub destination: IpNet,
    /// Next hop; none for a route straight onto the link.
    pub gateway: Option<IpAddr>,
    /// Priority; lower wins.
    pub metric: u32,
    /// The gateway is reached directly even though no address covers it.
    pub on_link: bool,
    /// Routing table.
    pub table: u32,
}

/// The kernel's main routing table.
pub const MAIN_TABLE: u32 = 254;

impl Desired {
    /// What `config` asks for; the default (DHCP on every physical port)
    /// without one.
    pub fn from_config(config: Option<&MachineConfig>) -> Self {
        let Some(config) = config else {
            return Self::default();
        };
        let mut out = Self::from_network(&config.machine.network);
        out.hostname.clone_from(&config.machine.hostname);
        out
    }

    fn from_network(net: &Network) -> Self {
        let mut links = Vec::new();
        for iface in &net.interfaces {
            let aggregate = match (&iface.bond, &iface.bridge) {
                (Some(b), _) => Some(Aggregate::Bond {
                    mode: b.mode.clone(),
                    members: b.interfaces.clone(),
                    miimon: b.miimon.unwrap_or(DEFAULT_MIIMON),
                }),
                (None, Some(b)) => Some(Aggregate::Bridge {
                    members: b.interfaces.clone(),
                    stp: b.stp,
                }),
                (None, None) => None,
            };
            links.push(DesiredLink {
                name: iface.interface.clone(),
                selector: iface.device_selector.clone(),
                aggregate,
                vlan: None,
                down: iface.down,
                dhcp: iface.dhcp && !iface.down,
                mtu: iface.mtu.map(u32::from),
                addresses: if iface.down {
                    Vec::new()
                } else {
                    prefixes(&iface.interface, &iface.addresses)
                },
                routes: if iface.down {
                    Vec::new()
                } else {
                    routes(&iface.interface, &iface.routes)
                },
            });
            for v in &iface.vlans {
                let name = vlan_name(&iface.interface, v.vlan_id);
                links.push(DesiredLink {
                    selector: None,
                    aggregate: None,
                    addresses: prefixes(&name, &v.addresses),
                    routes: routes(&name, &v.routes),
                    vlan: Some((iface.interface.clone(), v.vlan_id)),
                    down: false,
                    dhcp: v.dhcp,
                    mtu: v.mtu.map(u32::from),
                    name,
                });
            }
        }
        let nameservers = net
            .nameservers
            .iter()
            .filter_map(|s| parse_or_warn("nameserver", s))
            .collect();
        let extra_hosts = net
            .extra_hosts
            .iter()
            .filter_map(|h| parse_or_warn("extra host", &h.ip).map(|ip| (ip, h.aliases.clone())))
            .collect();
        Self {
            links,
            nameservers,
            search: net.search_domains.clone(),
            extra_hosts,
            hostname: None,
        }
    }

    /// The configured link called `name`.
    pub fn link(&self, name: &str) -> Option<&DesiredLink> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The bond or bridge `name` is a member of.
    pub fn controller_of(&self, name: &str) -> Option<&DesiredLink> {
        self.links.iter().find(|l| {
            l.aggregate
                .as_ref()
                .is_some_and(|a| a.members().iter().any(|m| m == name))
        })
    }

    /// Replaces each device selector with the name of the first link (by
    /// index) it matches, in the entry and in its VLANs' and aggregates'
    /// references. An entry nothing matches stays unresolved (it configures
    /// nothing) and is reported.
    pub fn resolve(&self, links: &[Link], sysfs: &Path) -> (Self, Vec<String>) {
        let mut out = self.clone();
        let mut problems = Vec::new();
        let mut sorted: Vec<&Link> = links.iter().collect();
        sorted.sort_by_key(|l| l.index);
        let mut renames = Vec::new();
        for want in &mut out.links {
            let Some(sel) = want.selector.take() else {
                continue;
            };
            match sorted.iter().find(|l| selects(&sel, l, sysfs)) {
                Some(link) => renames.push((want.name.clone(), link.name.clone())),
                None => {
                    problems.push(format!(
                        "{}: no link matches its device selector",
                        want.name
                    ));
                    renames.push((want.name.clone(), String::new()));
                }
            }
        }
        for (from, to) in &renames {
            for want in &mut out.links {
                if &want.name == from {
                    want.name.clone_from(to);
                }
                if let Some((parent, id)) = &mut want.vlan
                    && parent == from
                {
                    *parent = to.clone();
                    want.name = if to.is_empty() {
                        String::new()
                    } else {
                        vlan_name(to, *id)
                    };
                }
                if let Some(Aggregate::Bond { members, .. } | Aggregate::Bridge { members, .. }) =
                    &mut want.aggregate
                {
                    for m in members.iter_mut().filter(|m| *m == from) {
                        m.clone_from(to);
                    }
                }
            }
        }
        // Unmatched entries configure nothing.
        out.links.retain(|l| !l.name.is_empty());
        (out, problems)
    }
}

/// Whether `link` has every property `sel` names.
fn selects(sel: &DeviceSelector, link: &Link, sysfs: &Path) -> bool {
    if let Some(pattern) = &sel.hardware_addr {
        let mac = link.mac_text();
        let matches = mac.split(':').count() == 6
            && pattern
                .split(':')
                .zip(mac.split(':'))
                .all(|(p, b)| p == "*" || p.eq_ignore_ascii_case(b));
        if !matches {
            return false;
        }
    }
    if let Some(driver) = &sel.driver {
        let path = sysfs
            .join("class/net")
            .join(&link.name)
            .join("device/driver");
        let actual = std::fs::read_link(path)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        if actual.as_deref() != Some(driver.as_str()) {
            return false;
        }
    }
    true
}

/// The kernel name of VLAN `id` on `parent`. Linux names are at most 15
/// bytes; a longer one is shortened the way `ip link` users do by hand.
pub fn vlan_name(parent: &str, id: u16) -> String {
    let suffix = format!(".{id}");
    let keep = 15usize.saturating_sub(suffix.len());
    let mut base: String = parent.chars().take(keep).collect();
    while base.len() > keep {
        base.pop();
    }
    base + &suffix
}

/// Reads the machine configuration; `None` when there is none yet.
pub fn load(path: &Path) -> Result<Option<MachineConfig>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    MachineConfig::parse(&text)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_or_warn<T: std::str::FromStr>(what: &str, s: &str) -> Option<T> {
    let parsed = s.parse().ok();
    if parsed.is_none() {
        warn!("ignoring {what} {s:?}: not an IP address");
    }
    parsed
}

fn prefixes(link: &str, list: &[String]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for s in list {
        match s.parse::<IpNet>() {
            Ok(net) if !out.contains(&net) => out.push(net),
            Ok(_) => {}
            Err(_) => warn!(link, "ignoring address {s:?}: not an IP prefix"),
        }
    }
    out
}

fn routes(link: &str, list: &[Route]) -> Vec<DesiredRoute> {
    let mut out = Vec::new();
    for r in list {
        let Ok(destination) = r.network.parse::<IpNet>() else {
            warn!(link, "ignoring route to {:?}: not an IP prefix", r.network);
            continue;
        };
        let gateway = match r.gateway.as_deref().map(str::parse::<IpAddr>) {
            None => None,
            Some(Ok(gw)) if gw.is_ipv4() == destination.addr().is_ipv4() => Some(gw),
            Some(_) => {
                warn!(link, "ignoring route to {destination}: bad gateway");
                continue;
            }
        };
        let route = DesiredRoute {
            destination: destination.trunc(),
            gateway,
            metric: r.metric.unwrap_or(DEFAULT_STATIC_METRIC),
            on_link: r.on_link,
            table: r.table.unwrap_or(MAIN_TABLE),
        };
        if !out.contains(&route) {
            out.push(route);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CONFIG: &str = r"
version: v1alpha1
machine:
  type: worker
  hostname: node-7
  ca:
    crt: |
      -----BEGIN CERTIFICATE-----
      MIIBszCCAVmgAwIBAgIUQnJhbWJsZSBPUyBDQQ==
      -----END CERTIFICATE-----
  network:
    interfaces:
      - interface: eth0
        mtu: 1400
        addresses: [10.0.0.10/24, fd00::10/64]
        routes:
          - network: 10.20.0.0/16
            gateway: 10.0.0.1
          - network: 0.0.0.0/0
            gateway: 10.0.0.254
            metric: 10
        vlans:
          - vlanId: 30
            dhcp: true
    nameservers: [10.0.0.53]
    searchDomains: [lan]
    extraHosts:
      - ip: 10.0.0.2
        aliases: [node-2]
cluster:
  name: c
  controlPlane:
    endpoint: https://10.0.0.1:6443
";

    #[test]
    fn configuration_becomes_kernel_terms() {
        let config = MachineConfig::parse(CONFIG).unwrap();
        let d = Desired::from_config(Some(&config));
        assert_eq!(d.hostname.as_deref(), Some("node-7"));
        assert_eq!(d.links.len(), 2);
        let eth0 = d.link("eth0").unwrap();
        assert_eq!(eth0.mtu, Some(1400));
        assert!(!eth0.dhcp);
        assert_eq!(
            eth0.addresses,
            vec![
                "10.0.0.10/24".parse::<IpNet>().unwrap(),
                "fd00::10/64".parse().unwrap()
            ]
        );
        assert_eq!(eth0.routes[0].metric, DEFAULT_STATIC_METRIC);
        assert_eq!(eth0.routes[1].metric, 10);
        let vlan = d.link("eth0.30").unwrap();
        assert_eq!(vlan.vlan, Some(("eth0".to_owned(), 30)));
        assert!(vlan.dhcp);
        assert_eq!(d.nameservers, vec!["10.0.0.53".parse::<IpAddr>().unwrap()]);
        assert_eq!(d.search, vec!["lan".to_owned()]);
        assert_eq!(d.extra_hosts.len(), 1);
    }

    fn link(index: u32, name: &str, mac: [u8; 6]) -> Link {
        Link {
            index,
            name: name.into(),
            mac: Some(mac.to_vec()),
            link_type: rtnetlink::packet_route::link::LinkLayerType::Ether,
            flags: rtnetlink::packet_route::link::LinkFlags::empty(),
            carrier: true,
            kind: None,
            mtu: Some(1500),
            alias: None,
            controller: None,
        }
    }

    #[test]
    fn selectors_resolve_to_kernel_names_in_entries_vlans_and_members() {
        let sysfs = tempfile::tempdir().unwrap();
        let dev = sysfs.path().join("class/net/enp1s0/device");
        std::fs::create_dir_all(&dev).unwrap();
        std::os::unix::fs::symlink("../../../bus/pci/drivers/virtio_net", dev.join("driver"))
            .unwrap();
        let yaml = CONFIG.replace(
            "      - interface: eth0\n",
            "      - interface: lan\n        deviceSelector: {driver: virtio_net}\n        addresses: [10.1.0.2/24]\n        vlans:\n          - vlanId: 7\n      - interface: br0\n        bridge: {interfaces: [wan]}\n      - interface: wan\n        deviceSelector: {hardwareAddr: \"02:00:00:00:*:09\"}\n      - interface: eth0\n",
        );
        let d = Desired::from_config(Some(&MachineConfig::parse(&yaml).unwrap()));
        let links = [
            link(2, "enp1s0", [2, 0, 0, 0, 1, 1]),
            link(3, "enp2s0", [2, 0, 0, 0, 5, 9]),
        ];
        let (r, problems) = d.resolve(&links, sysfs.path());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(r.link("enp1s0").unwrap().addresses.len(), 1);
        let vlan = r.link("enp1s0.7").unwrap();
        assert_eq!(vlan.vlan, Some(("enp1s0".to_owned(), 7)));
        assert!(r.link("enp2s0").is_some());
        assert_eq!(r.controller_of("enp2s0").unwrap().name, "br0");
        assert!(r.link("lan").is_none() && r.link("wan").is_none());

        // Nothing matches: reported, and the entry configures nothing.
        let (r, problems) = d.resolve(&links[..1], sysfs.path());
        assert_eq!(problems, ["wan: no link matches its device selector"]);
        assert!(r.link("wan").is_none());
    }

    #[test]
    fn no_configuration_means_defaults() {
        assert_eq!(Desired::from_config(None), Desired::default());
    }

    #[test]
    fn vlan_names_fit_the_kernel_limit() {
        assert_eq!(vlan_name("eth0", 30), "eth0.30");
        assert_eq!(vlan_name("enx0123456789ab", 4094), "enx0123456.4094");
        assert!(vlan_name("enx0123456789ab", 4094).len() <= 15);
    }

    #[test]
    fn load_tells_missing_from_bad() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(&dir.path().join("config.yaml")).unwrap(), None);
        std::fs::write(dir.path().join("config.yaml"), "version: v9\n").unwrap();
        let err = load(&dir.path().join("config.yaml")).unwrap_err();
        assert!(err.contains("config.yaml"), "{err}");
    }
}
