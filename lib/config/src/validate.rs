//! Semantic checks of a typed configuration. Every problem is collected, each
//! with the path of the field it concerns.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::FieldError;
use crate::schema::{
    CertificateAuthority, Cluster, ExtraHost, Interface, Machine, MachineConfig, Registries, Route,
    Vlan, Workload, parse_cpu, parse_memory,
};

/// Smallest MTU Linux accepts for IPv4 (RFC 791).
pub(crate) const MIN_MTU: u16 = 68;

/// Collects problems with their paths.
#[derive(Debug, Default)]
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn check(&mut self, path: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(path, message);
        }
    }
}

/// Every problem in `config`, in schema order.
pub(crate) fn validate(config: &MachineConfig) -> Vec<FieldError> {
    let mut c = Checker::default();
    machine(&mut c, &config.machine);
    cluster(&mut c, &config.cluster);
    c.errors
}

fn machine(c: &mut Checker, m: &Machine) {
    if let Some(hostname) = &m.hostname {
        c.check("machine.hostname", check_hostname(hostname));
    }
    if let Some(token) = &m.token {
        c.check("machine.token", check_token(token.expose()));
    }
    certificate_authority(c, "machine.ca", &m.ca);
    for (i, san) in m.cert_sans.iter().enumerate() {
        if san.parse::<IpAddr>().is_err() && check_hostname(san).is_err() {
            c.error(
                format!("machine.certSANs[{i}]"),
                format!("{san:?} is neither an IP address nor a DNS name"),
            );
        }
    }

    let net = &m.network;
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, iface) in net.interfaces.iter().enumerate() {
        let path = format!("machine.network.interfaces[{i}]");
        interface(c, &path, iface);
        if let Some(first) = names.get(iface.interface.as_str()) {
            c.error(
                format!("{path}.interface"),
                format!(
                    "interface {:?} is already configured at interfaces[{first}]; \
                     merge the two entries",
                    iface.interface
                ),
            );
        } else {
            names.insert(&iface.interface, i);
        }
    }
    addressing(c, &net.interfaces);
    membership(c, &net.interfaces);
    for (i, ns) in net.nameservers.iter().enumerate() {
        c.check(&format!("machine.network.nameservers[{i}]"), check_ip(ns));
    }
    for (i, domain) in net.search_domains.iter().enumerate() {
        c.check(
            &format!("machine.network.searchDomains[{i}]"),
            check_hostname(domain),
        );
    }
    for (i, host) in net.extra_hosts.iter().enumerate() {
        extra_host(c, &format!("machine.network.extraHosts[{i}]"), host);
    }

    for (i, server) in m.time.servers.iter().enumerate() {
        if server.parse::<IpAddr>().is_err() && check_hostname(server).is_err() {
            c.error(
                format!("machine.time.servers[{i}]"),
                format!("{server:?} is neither an IP address nor a host name"),
            );
        }
    }
    if let Some(secs) = m.time.max_step_seconds
        && !(1..=MAX_STEP_SECONDS_LIMIT).contains(&secs)
    {
        c.error(
            "machine.time.maxStepSeconds",
            format!("{secs} is not between 1 and {MAX_STEP_SECONDS_LIMIT} seconds"),
        );
    }

    if let Some(image) = &m.kubelet.image {
        c.check("machine.kubelet.image", check_image(image));
    }
    for name in m.kubelet.extra_args.keys() {
        let path = format!("machine.kubelet.extraArgs.{name}");
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            c.error(path, format!("{name:?} is not a flag name"));
        } else if name.starts_with('-') {
            c.error(
                path,
                format!(
                    "write the flag name without leading dashes: {:?}",
                    name.trim_start_matches('-')
                ),
            );
        }
    }

    for (i, line) in m.pi.config_txt.iter().enumerate() {
        let path = format!("machine.pi.configTxt[{i}]");
        if line.contains(['\n', '\r']) {
            c.error(
                path,
                "must be a single line; put each line in its own list item",
            );
        } else if line.trim().is_empty() {
            c.error(path, "is empty; remove it");
        }
    }

    registries(c, &m.registries);
    let mut workload_names: HashMap<&str, usize> = HashMap::new();
    for (i, w) in m.workloads.iter().enumerate() {
        let path = format!("machine.workloads[{i}]");
        workload(c, &path, w);
        if let Some(first) = workload_names.get(w.name.as_str()) {
            c.error(
                format!("{path}.name"),
                format!(
                    "workload name {:?} is already used by workloads[{first}]",
                    w.name
                ),
            );
        } else {
            workload_names.insert(&w.name, i);
        }
    }
    host_ports(c, &m.workloads);
}

/// Bonding modes the kernel knows, by their `ip link` names.
pub(crate) const BOND_MODES: &[&str] = &[
    "balance-rr",
    "active-backup",
    "balance-xor",
    "broadcast",
    "802.3ad",
    "balance-tlb",
    "balance-alb",
];

fn interface(c: &mut Checker, path: &str, iface: &Interface) {
    c.check(
        &format!("{path}.interface"),
        check_link_name(&iface.interface),
    );
    let kinds = [
        iface.device_selector.is_some(),
        iface.bond.is_some(),
        iface.bridge.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        c.error(
            path.to_owned(),
            "deviceSelector, bond and bridge exclude each other; keep one",
        );
    }
    if let Some(sel) = &iface.device_selector {
        let spath = format!("{path}.deviceSelector");
        if sel.hardware_addr.is_none() && sel.driver.is_none() {
            c.error(
                spath.clone(),
                "selects nothing; give hardwareAddr and/or driver",
            );
        }
        if let Some(mac) = &sel.hardware_addr {
            let ok = mac.split(':').count() == 6
                && mac.split(':').all(|b| {
                    b == "*" || (b.len() == 2 && b.chars().all(|ch| ch.is_ascii_hexdigit()))
                });
            if !ok {
                c.error(
                    format!("{spath}.hardwareAddr"),
                    format!(
                        "{mac:?} is not a hardware address (aa:bb:cc:dd:ee:ff, * for any byte)"
                    ),
                );
            }
        }
        if let Some(driver) = &sel.driver
            && (driver.is_empty() || driver.contains(['/', ' ']))
        {
            c.error(
                format!("{spath}.driver"),
                format!("{driver:?} is not a driver name"),
            );
        }
    }
    if let Some(bond) = &iface.bond {
        let bpath = format!("{path}.bond");
        if !BOND_MODES.contains(&bond.mode.as_str()) {
            c.error(
                format!("{bpath}.mode"),
                format!(
                    "{:?} is not a bonding mode; use one of {}",
                    bond.mode,
                    BOND_MODES.join(", ")
                ),
            );
        }
        members(c, &bpath, &iface.interface, &bond.interfaces);
    }
    if let Some(bridge) = &iface.bridge {
        members(
            c,
            &format!("{path}.bridge"),
            &iface.interface,
            &bridge.interfaces,
        );
    }
    if let Some(mtu) = iface.mtu {
        c.check(&format!("{path}.mtu"), check_mtu(mtu));
    }
    addresses(c, path, &iface.addresses);
    routes(c, path, &iface.routes);
    let mut ids: HashMap<u16, usize> = HashMap::new();
    for (i, v) in iface.vlans.iter().enumerate() {
        let vpath = format!("{path}.vlans[{i}]");
        vlan(c, &vpath, v);
        if let Some(first) = ids.get(&v.vlan_id) {
            c.error(
                format!("{vpath}.vlanId"),
                format!(
                    "VLAN {} is already configured at vlans[{first}]; merge the two entries",
                    v.vlan_id
                ),
            );
        } else {
            ids.insert(v.vlan_id, i);
        }
    }
}

fn members(c: &mut Checker, path: &str, own: &str, list: &[String]) {
    if list.is_empty() {
        c.error(
            format!("{path}.interfaces"),
            "is empty; list the member links",
        );
    }
    for (i, m) in list.iter().enumerate() {
        let mpath = format!("{path}.interfaces[{i}]");
        c.check(&mpath, check_link_name(m));
        if m == own {
            c.error(mpath, format!("{own:?} cannot be a member of itself"));
        } else if list[..i].contains(m) {
            c.error(mpath, format!("{m:?} is listed twice"));
        }
    }
}

/// A link in two bonds or bridges, or a member configured with its own
/// addresses or DHCP (they belong on the bond or bridge).
fn membership(c: &mut Checker, interfaces: &[Interface]) {
    let mut owner: HashMap<&str, (usize, &str)> = HashMap::new();
    for (i, iface) in interfaces.iter().enumerate() {
        let (kind, list) = match (&iface.bond, &iface.bridge) {
            (Some(b), _) => ("bond", &b.interfaces),
            (None, Some(b)) => ("bridge", &b.interfaces),
            (None, None) => continue,
        };
        for (j, m) in list.iter().enumerate() {
            let path = format!("machine.network.interfaces[{i}].{kind}.interfaces[{j}]");
            if let Some((k, other)) = owner.get(m.as_str()) {
                if *k != i {
                    c.error(path, format!("{m:?} is already a member of {other}"));
                }
            } else {
                owner.insert(m, (i, &iface.interface));
            }
        }
    }
    for (i, iface) in interfaces.iter().enumerate() {
        if let Some((_, of)) = owner.get(iface.interface.as_str())
            && (iface.dhcp || !iface.addresses.is_empty() || !iface.routes.is_empty())
        {
            c.error(
                format!("machine.network.interfaces[{i}]"),
                format!(
                    "{:?} is a member of {of}; put its addresses, routes and DHCP on {of}",
                    iface.interface
                ),
            );
        }
    }
}

fn vlan(c: &mut Checker, path: &str, v: &Vlan) {
    if !(1..=4094).contains(&v.vlan_id) {
        c.error(
            format!("{path}.vlanId"),
            format!("VLAN id {} is out of range; use 1 to 4094", v.vlan_id),
        );
    }
    if let Some(mtu) = v.mtu {
        c.check(&format!("{path}.mtu"), check_mtu(mtu));
    }
    addresses(c, path, &v.addresses);
    routes(c, path, &v.routes);
}

fn addresses(c: &mut Checker, path: &str, addresses: &[String]) {
    for (i, a) in addresses.iter().enumerate() {
        if a.parse::<IpNet>().is_err() {
            let hint = if a.parse::<IpAddr>().is_ok() {
                "; add the prefix length, e.g. \"10.0.0.10/24\""
            } else {
                ""
            };
            c.error(
                format!("{path}.addresses[{i}]"),
                format!("{a:?} is not an IP prefix{hint}"),
            );
        }
    }
}

fn routes(c: &mut Checker, path: &str, routes: &[Route]) {
    for (i, r) in routes.iter().enumerate() {
        let rpath = format!("{path}.routes[{i}]");
        if let Some(table) = r.table
            && !(1..=252).contains(&table)
            && table != 254
        {
            c.error(
                format!("{rpath}.table"),
                format!("table {table} is reserved or out of range; use 1 to 252, or 254 (main)"),
            );
        }
        let network = match r.network.parse::<IpNet>() {
            Ok(net) if net.trunc() != net => {
                c.error(
                    format!("{rpath}.network"),
                    format!(
                        "{:?} has host bits set; did you mean \"{}\"?",
                        r.network,
                        net.trunc()
                    ),
                );
                Some(net)
            }
            Ok(net) => Some(net),
            Err(_) => {
                c.error(
                    format!("{rpath}.network"),
                    format!(
                        "{:?} is not an IP prefix (e.g. \"0.0.0.0/0\", \"10.1.0.0/16\")",
                        r.network
                    ),
                );
                None
            }
        };
        if let Some(gw) = &r.gateway {
            match gw.parse::<IpAddr>() {
                Err(_) => c.error(
                    format!("{rpath}.gateway"),
                    format!("{gw:?} is not an IP address"),
                ),
                Ok(gw_ip) => {
                    if let Some(net) = network
                        && gw_ip.is_ipv4() != net.addr().is_ipv4()
                    {
                        c.error(
                            format!("{rpath}.gateway"),
                            format!(
                                "gateway {gw} is {} but network {} is {}",
                                family(gw_ip),
                                r.network,
                                family(net.addr())
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// One link's addressing as written: where it is in the document, its static
/// prefixes (those that parse) and whether DHCP runs on it.
struct LinkAddressing<'a> {
    path: String,
    name: String,
    dhcp: bool,
    addresses: Vec<(usize, IpNet)>,
    routes: &'a [Route],
}

/// Checks that span links: a subnet configured on two links, the same
/// address twice on one link, and route gateways no address of their link
/// reaches.
fn addressing(c: &mut Checker, interfaces: &[Interface]) {
    let parsed = |list: &[String]| -> Vec<(usize, IpNet)> {
        list.iter()
            .enumerate()
            .filter_map(|(i, a)| a.parse::<IpNet>().ok().map(|n| (i, n)))
            .collect()
    };
    let mut links = Vec::new();
    for (i, iface) in interfaces.iter().enumerate() {
        let path = format!("machine.network.interfaces[{i}]");
        links.push(LinkAddressing {
            path: path.clone(),
            name: iface.interface.clone(),
            dhcp: iface.dhcp,
            addresses: parsed(&iface.addresses),
            routes: &iface.routes,
        });
        for (j, v) in iface.vlans.iter().enumerate() {
            links.push(LinkAddressing {
                path: format!("{path}.vlans[{j}]"),
                name: format!("{}.{}", iface.interface, v.vlan_id),
                dhcp: v.dhcp,
                addresses: parsed(&v.addresses),
                routes: &v.routes,
            });
        }
    }

    let mut seen: Vec<(&LinkAddressing<'_>, usize, IpNet)> = Vec::new();
    for link in &links {
        for &(i, net) in &link.addresses {
            let path = format!("{}.addresses[{i}]", link.path);
            let clash = seen.iter().find(|(other, _, o)| {
                if std::ptr::eq(*other, link) {
                    o.addr() == net.addr()
                } else {
                    o.contains(&net.network()) || net.contains(&o.network())
                }
            });
            match clash {
                Some((other, j, o)) if std::ptr::eq(*other, link) => c.error(
                    path,
                    format!("address {} is already listed at addresses[{j}] ({o})", net.addr()),
                ),
                Some((other, j, o)) => c.error(
                    path,
                    format!(
                        "{net} overlaps {o} on {} ({}.addresses[{j}]); a subnet belongs to one link",
                        other.name, other.path
                    ),
                ),
                None => {}
            }
            seen.push((link, i, net));
        }
    }

    for link in &links {
        for (i, r) in link.routes.iter().enumerate() {
            let Some(gw) = r.gateway.as_deref().and_then(|g| g.parse::<IpAddr>().ok()) else {
                continue;
            };
            let link_local = matches!(gw, IpAddr::V6(v6) if v6.is_unicast_link_local());
            let covered = link.addresses.iter().any(|(_, n)| n.contains(&gw));
            // A DHCP lease brings an IPv4 subnet nobody can check in advance.
            let by_dhcp = link.dhcp && gw.is_ipv4();
            if r.on_link || link_local || covered || by_dhcp {
                continue;
            }
            let have: Vec<String> = link
                .addresses
                .iter()
                .filter(|(_, n)| n.addr().is_ipv4() == gw.is_ipv4())
                .map(|(_, n)| n.to_string())
                .collect();
            let why = if have.is_empty() {
                format!("{} has no {} address", link.name, family(gw))
            } else {
                format!(
                    "none of {}'s addresses ({}) covers it",
                    link.name,
                    have.join(", ")
                )
            };
            c.error(
                format!("{}.routes[{i}].gateway", link.path),
                format!(
                    "gateway {gw} is unreachable: {why}; add an address in its subnet, \
                     or set onLink: true if the router is directly reachable"
                ),
            );
        }
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn extra_host(c: &mut Checker, path: &str, host: &ExtraHost) {
    c.check(&format!("{path}.ip"), check_ip(&host.ip));
    if host.aliases.is_empty() {
        c.error(format!("{path}.aliases"), "give at least one host name");
    }
    for (i, alias) in host.aliases.iter().enumerate() {
        c.check(&format!("{path}.aliases[{i}]"), check_hostname(alias));
    }
}

fn workload(c: &mut Checker, path: &str, w: &Workload) {
    c.check(&format!("{path}.name"), check_dns_label(&w.name));
    c.check(&format!("{path}.image"), check_image(&w.image));
    for key in w.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            c.error(
                format!("{path}.env.{key}"),
                format!("{key:?} is not a valid environment variable name"),
            );
        }
    }
    for (i, arg) in w.command.iter().chain(&w.args).enumerate() {
        if arg.contains('\0') {
            let field = if i < w.command.len() {
                format!("{path}.command[{i}]")
            } else {
                format!("{path}.args[{}]", i - w.command.len())
            };
            c.error(field, "contains a NUL byte");
        }
    }
    if let Some(dir) = &w.working_dir {
        c.check(&format!("{path}.workingDir"), check_absolute(dir));
    }
    if let Some(user) = &w.user {
        c.check(&format!("{path}.user"), check_user(user));
    }
    let mut destinations: HashMap<&str, usize> = HashMap::new();
    for (i, m) in w.mounts.iter().enumerate() {
        let mpath = format!("{path}.mounts[{i}]");
        c.check(&format!("{mpath}.source"), check_absolute(&m.source));
        c.check(
            &format!("{mpath}.destination"),
            check_absolute(&m.destination),
        );
        if m.destination.trim_end_matches('/').is_empty() {
            c.error(
                format!("{mpath}.destination"),
                "cannot be \"/\"; the image provides the root",
            );
        }
        if let Some(first) = destinations.insert(&m.destination, i) {
            c.error(
                format!("{mpath}.destination"),
                format!("{:?} is already mounted by mounts[{first}]", m.destination),
            );
        }
    }
    if let Some(memory) = &w.resources.memory {
        c.check(
            &format!("{path}.resources.memory"),
            parse_memory(memory).and_then(|bytes| {
                if bytes < MIN_WORKLOAD_MEMORY {
                    Err(format!(
                        "{memory:?} is below the smallest limit the kernel keeps a process alive in (4Mi)"
                    ))
                } else {
                    Ok(())
                }
            }),
        );
    }
    if let Some(cpu) = &w.resources.cpu {
        c.check(&format!("{path}.resources.cpu"), parse_cpu(cpu).map(|_| ()));
    }
    if w.resources.pids == Some(0) {
        c.error(
            format!("{path}.resources.pids"),
            "must be at least 1 (leave it out for no limit)",
        );
    }
    for (i, cap) in w.capabilities.iter().enumerate() {
        c.check(&format!("{path}.capabilities[{i}]"), check_capability(cap));
    }
    if w.stop_grace_period_seconds.is_some_and(|s| s > 3600) {
        c.error(
            format!("{path}.stopGracePeriodSeconds"),
            "must be at most 3600 (one hour)",
        );
    }
    if w.host_network && !w.ports.is_empty() {
        c.error(
            format!("{path}.ports"),
            "has nothing to publish with hostNetwork: the container already listens on the node's addresses; remove ports or hostNetwork",
        );
    }
    for (i, p) in w.ports.iter().enumerate() {
        let ppath = format!("{path}.ports[{i}]");
        if p.container_port == 0 {
            c.error(format!("{ppath}.containerPort"), "must be 1 to 65535");
        }
        if p.host_port == Some(0) {
            c.error(format!("{ppath}.hostPort"), "must be 1 to 65535");
        }
        if let Some((_, owner)) = RESERVED_HOST_PORTS.iter().find(|(n, _)| *n == p.host()) {
            c.error(
                format!("{ppath}.hostPort"),
                format!("{} is {owner}'s port on the node; choose another", p.host()),
            );
        }
    }
}

/// Ports of the node's own services, which no workload may publish on.
pub const RESERVED_HOST_PORTS: &[(u16, &str)] = &[(50000, "the machine API")];

/// Every published host port is used once across workloads.
fn host_ports(c: &mut Checker, workloads: &[Workload]) {
    let mut used: HashMap<u16, (usize, usize)> = HashMap::new();
    for (i, w) in workloads.iter().enumerate() {
        for (j, p) in w.ports.iter().enumerate() {
            let port = p.host();
            if port == 0 {
                continue;
            }
            if let Some((wi, pj)) = used.get(&port) {
                c.error(
                    format!("machine.workloads[{i}].ports[{j}].hostPort"),
                    format!("port {port} is already published by workloads[{wi}].ports[{pj}]"),
                );
            } else {
                used.insert(port, (i, j));
            }
        }
    }
}

/// The largest `machine.time.maxStepSeconds`: about 136 years, so any
/// clock can be corrected; the bound only has to be a sane number.
const MAX_STEP_SECONDS_LIMIT: u64 = u32::MAX as u64;

/// Below this a container's memory limit kills it before it starts.
const MIN_WORKLOAD_MEMORY: u64 = 4 << 20;

fn check_absolute(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        Err(format!("{path:?} is not an absolute path"))
    } else if path.split('/').any(|part| part == "..") {
        Err(format!("{path:?} contains \"..\""))
    } else if path.contains('\0') {
        Err(format!("{path:?} contains a NUL byte"))
    } else {
        Ok(())
    }
}

/// `uid[:gid]` numbers, or a user name (looked up in the image at start).
fn check_user(user: &str) -> Result<(), String> {
    let (name, group) = user.split_once(':').unwrap_or((user, ""));
    let ok = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    };
    if ok(name) && (group.is_empty() && !user.ends_with(':') || ok(group)) {
        Ok(())
    } else {
        Err(format!(
            "{user:?} is neither uid[:gid] nor a user[:group] name"
        ))
    }
}

/// Linux capability names, with or without `CAP_`.
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Whether `name` (`NET_ADMIN` or `CAP_NET_ADMIN`, any case) is a capability.
pub(crate) fn check_capability(name: &str) -> Result<(), String> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if CAPABILITIES.contains(&bare) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a Linux capability (e.g. NET_ADMIN)"
        ))
    }
}

fn registries(c: &mut Checker, r: &Registries) {
    for (host, mirrors) in &r.mirrors {
        let path = format!("machine.registries.mirrors.{host}");
        c.check(&path, check_registry_host(host));
        if mirrors.is_empty() {
            c.error(&path, "lists no mirror; give at least one URL or remove it");
        }
        for (i, url) in mirrors.iter().enumerate() {
            c.check(&format!("{path}[{i}]"), check_mirror_url(url));
        }
    }
    for (i, host) in r.insecure.iter().enumerate() {
        c.check(
            &format!("machine.registries.insecure[{i}]"),
            check_registry_host(host),
        );
    }
    for (i, pem) in r.ca.iter().enumerate() {
        let begins = pem.matches("-----BEGIN CERTIFICATE-----").count();
        let ends = pem.matches("-----END CERTIFICATE-----").count();
        if begins == 0 || begins != ends {
            c.error(
                format!("machine.registries.ca[{i}]"),
                "is not a PEM certificate (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----)",
            );
        }
    }
    for (host, auth) in &r.auth {
        let path = format!("machine.registries.auth.{host}");
        c.check(&path, check_registry_host(host));
        match (&auth.username, &auth.password, &auth.token) {
            (Some(_), Some(_), None) | (None, None, Some(_)) => {}
            (_, _, Some(_)) => c.error(
                &path,
                "give either username and password or a token, not both",
            ),
            (Some(_), None, None) => c.error(format!("{path}.password"), "missing for username"),
            (None, Some(_), None) => c.error(format!("{path}.username"), "missing for password"),
            (None, None, None) => c.error(&path, "give username and password, or a token"),
        }
    }
}

/// `host[:port]` as a registry is named in image references.
fn check_registry_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || name.starts_with('[') => (name, Some(port)),
        _ => (host, None),
    };
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("{host:?}: {port:?} is not a port"));
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() || check_hostname(bare).is_ok() {
        Ok(())
    } else {
        Err(format!("{host:?} is not a registry host[:port]"))
    }
}

fn check_mirror_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    check_registry_host(host).map_err(|e| format!("{url:?}: {e}"))
}

fn cluster(c: &mut Checker, cl: &Cluster) {
    c.check("cluster.name", check_dns_label(&cl.name));
    c.check(
        "cluster.controlPlane.endpoint",
        check_endpoint(&cl.control_plane.endpoint),
    );
    if let Some(etcd) = &cl.etcd {
        certificate_authority(c, "cluster.etcd.ca", &etcd.ca);
        etcd_tuning(c, etcd);
    }
    if let Some(secret) = &cl.secretbox_encryption_secret {
        c.check(
            "cluster.secretboxEncryptionSecret",
            match base64_decode(secret.expose().trim()) {
                None => Err(
                    "is not base64; generate one with `head -c 32 /dev/urandom | base64`"
                        .to_owned(),
                ),
                Some(bytes) if bytes.len() != 32 => Err(format!(
                    "decodes to {} bytes but must be 32; generate one with \
                     `head -c 32 /dev/urandom | base64`",
                    bytes.len()
                )),
                Some(_) => Ok(()),
            },
        );
    }
}

/// etcd's own bounds: a heartbeat of at least 10 ms, an election timeout of
/// at most 50 s (etcd refuses more) and at least five heartbeats (etcd's
/// guidance; fewer lose leaders to one late heartbeat).
const ETCD_HEARTBEAT_MS: std::ops::RangeInclusive<u32> = 10..=10_000;
const ETCD_ELECTION_MAX_MS: u32 = 50_000;
const ETCD_SNAPSHOT_COUNT: std::ops::RangeInclusive<u64> = 100..=10_000_000;
/// 16 MiB to etcd's recommended maximum, 8 GiB.
const ETCD_QUOTA_BYTES: std::ops::RangeInclusive<u64> = (16 << 20)..=(8 << 30);

fn etcd_tuning(c: &mut Checker, etcd: &crate::Etcd) {
    let t = etcd.tuning();
    if etcd.heartbeat_interval_ms.is_some() && !ETCD_HEARTBEAT_MS.contains(&t.heartbeat_interval_ms)
    {
        c.error(
            "cluster.etcd.heartbeatIntervalMs",
            format!(
                "{} is not between {} and {} ms",
                t.heartbeat_interval_ms,
                ETCD_HEARTBEAT_MS.start(),
                ETCD_HEARTBEAT_MS.end()
            ),
        );
    }
    let min_election = t.heartbeat_interval_ms.saturating_mul(5);
    if (etcd.election_timeout_ms.is_some() || etcd.heartbeat_interval_ms.is_some())
        && !(min_election..=ETCD_ELECTION_MAX_MS).contains(&t.election_timeout_ms)
    {
        c.error(
            "cluster.etcd.electionTimeoutMs",
            format!(
                "{} ms must be at least five heartbeats ({min_election} ms with \
                 heartbeatIntervalMs {}) and at most {ETCD_ELECTION_MAX_MS} ms",
                t.election_timeout_ms, t.heartbeat_interval_ms
            ),
        );
    }
    if let Some(n) = etcd.snapshot_count
        && !ETCD_SNAPSHOT_COUNT.contains(&n)
    {
        c.error(
            "cluster.etcd.snapshotCount",
            format!(
                "{n} is not between {} and {}",
                ETCD_SNAPSHOT_COUNT.start(),
                ETCD_SNAPSHOT_COUNT.end()
            ),
        );
    }
    if let Some(n) = etcd.quota_backend_bytes
        && !ETCD_QUOTA_BYTES.contains(&n)
    {
        c.error(
            "cluster.etcd.quotaBackendBytes",
            format!(
                "{n} is not between {} (16 MiB) and {} (8 GiB)",
                ETCD_QUOTA_BYTES.start(),
                ETCD_QUOTA_BYTES.end()
            ),
        );
    }
    if let Some(r) = &etcd.auto_compaction_retention {
        c.check("cluster.etcd.autoCompactionRetention", check_retention(r));
    }
}

/// `0`, or a whole number of minutes or hours (`30m`, `1h`) up to a year.
fn check_retention(r: &str) -> Result<(), String> {
    if r == "0" {
        return Ok(());
    }
    let bad =
        || format!("{r:?} is not a retention: give `0` (off) or minutes or hours, `30m`, `1h`");
    let (digits, unit) = r.split_at(r.len().saturating_sub(1));
    let minutes_per = match unit {
        "m" => 1,
        "h" => 60,
        _ => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 6 {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match n * minutes_per {
        0 => Err(format!(
            "{r:?} is zero: write `0` to turn auto-compaction off"
        )),
        m if m > 366 * 24 * 60 => Err(format!("{r:?} is more than a year")),
        _ => Ok(()),
    }
}

fn certificate_authority(c: &mut Checker, path: &str, ca: &CertificateAuthority) {
    c.check(
        &format!("{path}.crt"),
        check_pem(&ca.crt, PemKind::Certificate),
    );
    if let Some(key) = &ca.key {
        c.check(
            &format!("{path}.key"),
            check_pem(key.expose(), PemKind::PrivateKey),
        );
    }
}

fn check_mtu(mtu: u16) -> Result<(), String> {
    if mtu < MIN_MTU {
        Err(format!("MTU {mtu} is too small; use {MIN_MTU} to 65535"))
    } else {
        Ok(())
    }
}

fn check_ip(s: &str) -> Result<(), String> {
    s.parse::<IpAddr>()
        .map(|_| ())
        .map_err(|_| format!("{s:?} is not an IP address"))
}

fn check_link_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("is empty; name the link, e.g. \"eth0\"".to_owned())
    } else if name.len() > 15 {
        Err(format!(
            "{name:?} is longer than 15 bytes, the kernel's limit for link names"
        ))
    } else if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        Err(format!("{name:?} is not a valid link name"))
    } else {
        Ok(())
    }
}

fn check_image(image: &str) -> Result<(), String> {
    if image.trim().is_empty() {
        return Err("is empty; give an image reference, e.g. \"ghcr.io/org/app:v1\"".to_owned());
    }
    if image.contains(char::is_whitespace) {
        return Err(format!(
            "{image:?} contains whitespace; it is not an image reference"
        ));
    }
    match bramble_reference::ImageReference::parse(image) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "{image:?} is not an image reference ({e}); write registry/repository:tag, \
             e.g. \"ghcr.io/org/app:v1\""
        )),
    }
}

/// A bootstrap token: `[a-z0-9]{6}.[a-z0-9]{16}`.
pub(crate) fn check_token(token: &str) -> Result<(), String> {
    let ok = token.split_once('.').is_some_and(|(id, secret)| {
        let part = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        part(id, 6) && part(secret, 16)
    });
    if ok {
        Ok(())
    } else {
        // The value is secret: describe it, never echo it.
        Err(
            "is not a bootstrap token: expected 6 and 16 characters of [a-z0-9] \
             joined by a dot, like \"abcdef.0123456789abcdef\""
                .to_owned(),
        )
    }
}

/// One DNS label, lower case (RFC 1123): cluster and workload names.
pub(crate) fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".to_owned());
    }
    if s.len() > 63 {
        return Err(format!(
            "{s:?} is {} characters long; the limit is 63",
            s.len()
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "{s:?} is not a DNS label: use lower-case letters, digits and '-'"
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(format!("{s:?} must start and end with a letter or digit"));
    }
    Ok(())
}

/// A host name: dot-separated RFC 1123 labels, each at most 63 characters,
/// at most 253 in all.
pub(crate) fn check_hostname(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".to_owned());
    }
    if s.len() > 253 {
        return Err(format!(
            "{s:?} is {} characters long; the limit is 253",
            s.len()
        ));
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err(format!(
                "{s:?} has an empty label (two dots, or a dot at an end)"
            ));
        }
        if label.len() > 63 {
            return Err(format!(
                "{s:?}: label {label:?} is {} characters long; the limit is 63",
                label.len()
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "{s:?} is not a valid host name: use letters, digits, '-' and '.'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{s:?}: label {label:?} must start and end with a letter or digit"
            ));
        }
    }
    Ok(())
}

/// `https://HOST:PORT`, HOST an IP (IPv6 in brackets) or a host name, an
/// optional `/` after the port.
pub(crate) fn check_endpoint(s: &str) -> Result<(), String> {
    let example = "e.g. \"https://10.0.0.10:6443\"";
    let Some(rest) = s.strip_prefix("https://") else {
        return Err(if s.contains("://") {
            format!("{s:?} must use https; {example}")
        } else {
            format!("{s:?} is not an https URL; {example}")
        });
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !(path.is_empty() || path == "/") || authority.contains(['?', '#', '@']) {
        return Err(format!(
            "{s:?} must be only a scheme, host and port; {example}"
        ));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(format!("{s:?} has an unclosed '[' around an IPv6 address"));
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} in {s:?} is not an IPv6 address"));
        }
        return match after.strip_prefix(':') {
            Some(port) => check_port(s, port),
            None => Err(format!("{s:?} has no port; add one, {example}")),
        };
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{s:?} has no host; {example}"));
    }
    if host.contains(':') {
        return Err(format!(
            "{s:?}: put an IPv6 address in brackets, e.g. \"https://[fd00::10]:6443\""
        ));
    }
    if host.parse::<IpAddr>().is_err() && check_hostname(host).is_err() {
        return Err(format!(
            "{host:?} in {s:?} is neither an IP address nor a host name"
        ));
    }
    let Some(port) = port else {
        return Err(format!("{s:?} has no port; add one, {example}"));
    };
    check_port(s, port)
}

fn check_port(url: &str, port: &str) -> Result<(), String> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 && !port.starts_with('+') => Ok(()),
        _ => Err(format!(
            "{port:?} in {url:?} is not a port number (1 to 65535)"
        )),
    }
}

/// Which PEM blocks a field must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PemKind {
    /// One or more `CERTIFICATE` blocks.
    Certificate,
    /// Exactly one unencrypted private key block.
    PrivateKey,
}

const KEY_LABELS: &[&str] = &["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];

/// `text` without its whitespace.
fn squeezed(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Checks that `text` is made of PEM blocks of the right kind with base64
/// bodies (parsed by the `pem` crate), and nothing else. The DER inside is
/// not parsed.
pub(crate) fn check_pem(text: &str, kind: PemKind) -> Result<(), String> {
    let what = match kind {
        PemKind::Certificate => "a PEM certificate (-----BEGIN CERTIFICATE-----)",
        PemKind::PrivateKey => "a PEM private key (-----BEGIN PRIVATE KEY-----)",
    };
    if text.trim().is_empty() {
        return Err(format!("is empty; it must be {what}"));
    }
    let blocks = pem::parse_many(text).map_err(|e| match e {
        pem::PemError::MismatchedTags(begin, end) => {
            format!("PEM block \"BEGIN {begin}\" ends with \"END {end}\"")
        }
        pem::PemError::InvalidData(e) => format!("a PEM block does not hold valid base64 ({e})"),
        pem::PemError::InvalidHeader(_) => {
            "a PEM block has malformed headers (or a blank line in its base64)".to_owned()
        }
        other => format!("is not {what}: {other}"),
    })?;
    for b in &blocks {
        let label = b.tag();
        if b.headers().iter().next().is_some() {
            return Err(format!(
                "PEM block {label} has headers (an encrypted key?); \
                 Bramble needs an unencrypted key"
            ));
        }
        if b.contents().is_empty() {
            return Err(format!("PEM block {label} does not hold valid base64"));
        }
    }
    // `parse_many` skips whatever lies between blocks and stops at a block
    // without an END line: all the text must be the blocks it took. Its
    // base64 is canonical (padded, no stray bits), so the blocks encoded
    // again are the text, but for whitespace.
    let taken: String = blocks.iter().map(|b| squeezed(&pem::encode(b))).collect();
    if squeezed(text) != taken {
        let begins: Vec<&str> = text.split("-----BEGIN ").skip(1).collect();
        if let Some(open) = begins.get(blocks.len())
            && let Some((label, _)) = open.split_once("-----")
            && !open.contains("-----END ")
        {
            return Err(format!("PEM block \"BEGIN {label}\" has no END line"));
        }
        return Err(if blocks.is_empty() {
            format!("is not {what}")
        } else {
            format!("has text outside its PEM blocks; it must be only {what}")
        });
    }
    let labels: Vec<&str> = blocks.iter().map(pem::Pem::tag).collect();
    match kind {
        PemKind::Certificate => {
            if let Some(other) = labels.iter().find(|l| **l != "CERTIFICATE") {
                return Err(format!(
                    "holds a {other} block where only CERTIFICATE blocks belong"
                ));
            }
        }
        PemKind::PrivateKey => {
            if labels.len() > 1 {
                return Err(format!(
                    "holds {} PEM blocks; it must be exactly one private key",
                    labels.len()
                ));
            }
            let label = labels[0];
            if label == "ENCRYPTED PRIVATE KEY" {
                return Err(
                    "is an encrypted private key; Bramble needs an unencrypted key".to_owned(),
                );
            }
            if !KEY_LABELS.contains(&label) {
                return Err(format!("holds a {label} block, not a private key"));
            }
        }
    }
    Ok(())
}

/// Decodes standard base64 with padding (canonical: no stray bits in the
/// last character); `None` if it is not valid base64.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_values() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64_decode("aGV5").as_deref(), Some(&b"hey"[..]));
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert!(base64_decode("aGk").is_none());
        assert!(base64_decode("a=k=").is_none());
        assert!(base64_decode("aG!=").is_none());
        assert!(base64_decode("a===").is_none());
        // Canonical only: stray bits in the last character are refused.
        assert!(base64_decode("aGl=").is_none());
        assert!(base64_decode("aGk=\n").is_none());
    }

    #[test]
    fn hostnames() {
        assert!(check_hostname("node-1").is_ok());
        assert!(check_hostname("Node-1.lan").is_ok());
        assert!(check_hostname("-node").is_err());
        assert!(check_hostname("node_1").is_err());
        assert!(check_hostname("a..b").is_err());
        assert!(check_hostname(&"a".repeat(64)).is_err());
        assert!(check_hostname(&vec!["a".repeat(63); 4].join(".")).is_err());
        assert!(
            check_hostname(
                &[
                    "a".repeat(63),
                    "b".repeat(63),
                    "c".repeat(63),
                    "d".repeat(61)
                ]
                .join(".")
            )
            .is_ok()
        );
    }

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("my-cluster").is_ok());
        assert!(check_dns_label("My-cluster").is_err());
        assert!(check_dns_label("a.b").is_err());
        assert!(check_dns_label("cluster-").is_err());
        assert!(check_dns_label("").is_err());
    }

    #[test]
    fn tokens() {
        assert!(check_token("abcdef.0123456789abcdef").is_ok());
        assert!(check_token("abcdef0123456789abcdef").is_err());
        assert!(check_token("ABCDEF.0123456789abcdef").is_err());
        assert!(check_token("abcde.0123456789abcdefg").is_err());
        assert!(check_token("abcdef.0123456789abcde").is_err());
    }

    #[test]
    fn endpoints() {
        for ok in [
            "https://10.0.0.10:6443",
            "https://cp.lan:6443/",
            "https://[fd00::10]:6443",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for (bad, fragment) in [
            ("http://10.0.0.10:6443", "must use https"),
            ("10.0.0.10:6443", "not an https URL"),
            ("https://10.0.0.10", "has no port"),
            ("https://:6443", "has no host"),
            ("https://10.0.0.10:0", "not a port number"),
            ("https://10.0.0.10:99999", "not a port number"),
            ("https://10.0.0.10:6443/api", "only a scheme, host and port"),
            ("https://fd00::10:6443", "in brackets"),
            (
                "https://bad_host:6443",
                "neither an IP address nor a host name",
            ),
            ("https://[fd00::10:6443", "unclosed"),
        ] {
            let err = check_endpoint(bad).unwrap_err();
            assert!(err.contains(fragment), "{bad}: {err}");
        }
    }

    #[test]
    fn pem_framing() {
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let err = |text: &str| check_pem(text, PemKind::Certificate).unwrap_err();
        // Indentation, blank lines between blocks and CRLF are whitespace.
        assert!(
            check_pem(
                "  -----BEGIN CERTIFICATE-----\r\n  MI\r\n  IB\r\n  -----END CERTIFICATE-----\r\n\r\n",
                PemKind::Certificate
            )
            .is_ok()
        );
        assert!(check_pem(&format!("{cert}\n\n{cert}"), PemKind::Certificate).is_ok());
        for text in [
            format!("subject=CN = ca\n{cert}"),
            format!("{cert}trailing words\n"),
            format!("{cert}# second\n{cert}"),
            format!("{cert}-----END CERTIFICATE-----\n"),
        ] {
            assert!(err(&text).contains("text outside its PEM blocks"), "{text}");
        }
        assert_eq!(
            err("-----BEGIN CERTIFICATE-----\nMIIB\n-----END PRIVATE KEY-----"),
            "PEM block \"BEGIN CERTIFICATE\" ends with \"END PRIVATE KEY\""
        );
        assert_eq!(
            err(&format!("{cert}-----BEGIN CERTIFICATE-----\nMIIB\n")),
            "PEM block \"BEGIN CERTIFICATE\" has no END line"
        );
        assert!(err("MIIB").contains("is not a PEM certificate"));
        assert!(err(" \n\t").contains("is empty"));
        for body in ["", "MIIB=", "MII", "MIJ=", "M-IB"] {
            let text = format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----");
            assert!(
                err(&text).contains("does not hold valid base64"),
                "{body:?}"
            );
        }
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                      DEK-Info: AES-128-CBC,0123456789ABCDEF0123456789ABCDEF\n\nMIIB\n\
                      -----END RSA PRIVATE KEY-----\n";
        let e = check_pem(legacy, PemKind::PrivateKey).unwrap_err();
        assert!(e.contains("has headers (an encrypted key?)"), "{e}");
    }

    #[test]
    fn pem_kinds() {
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";
        let ec = "-----BEGIN EC PRIVATE KEY-----\nMIIB\n-----END EC PRIVATE KEY-----";
        assert!(check_pem(cert, PemKind::Certificate).is_ok());
        assert!(check_pem(&format!("{cert}{cert}"), PemKind::Certificate).is_ok());
        assert!(check_pem(key, PemKind::PrivateKey).is_ok());
        assert!(check_pem(ec, PemKind::PrivateKey).is_ok());
        assert!(
            check_pem(key, PemKind::Certificate)
                .unwrap_err()
                .contains("PRIVATE KEY block")
        );
        assert!(
            check_pem(cert, PemKind::PrivateKey)
                .unwrap_err()
                .contains("not a private key")
        );
        assert!(
            check_pem("hello", PemKind::Certificate)
                .unwrap_err()
                .contains("is not a PEM")
        );
        assert!(
            check_pem("", PemKind::Certificate)
                .unwrap_err()
                .contains("is empty")
        );
        assert!(
            check_pem("-----BEGIN CERTIFICATE-----\nMIIB\n", PemKind::Certificate)
                .unwrap_err()
                .contains("no END")
        );
        assert!(
            check_pem(
                "-----BEGIN CERTIFICATE-----\nM!IB\n-----END CERTIFICATE-----",
                PemKind::Certificate
            )
            .unwrap_err()
            .contains("base64")
        );
        assert!(
            check_pem(&format!("{key}{key}"), PemKind::PrivateKey)
                .unwrap_err()
                .contains("exactly one")
        );
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----";
        assert!(
            check_pem(enc, PemKind::PrivateKey)
                .unwrap_err()
                .contains("encrypted")
        );
    }
}
