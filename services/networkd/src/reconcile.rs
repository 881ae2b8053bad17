//! Makes the kernel's links, static addresses and static routes match
//! [`Desired`], touching only what differs.
//!
//! Ownership is recorded in the kernel itself, so it survives a restart of
//! this daemon: static addresses carry the address protocol
//! [`ADDRESS_PROTOCOL`] (`IFA_PROTO`), static routes the route protocol
//! `static` (in whichever table they were configured), and the links this daemon created the alias
//! [`OWNER_ALIAS`]. Whatever carries those marks and is no longer wanted is
//! removed; nothing else is (DHCP leases, kernel routes, IPv6 link-local
//! addresses, links made by other software).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use bramble_netlink::Address;
use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressProtocol};
use rtnetlink::packet_route::link::{BondMode, BridgeStpState, InfoBridge, LinkMessage};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol};
use rtnetlink::{LinkBond, LinkBridge, LinkUnspec, LinkVlan, RouteMessageBuilder};
use tracing::{debug, info, warn};

use crate::desired::{Aggregate, Desired, DesiredRoute, MAIN_TABLE};
use crate::error::Error;
use crate::links::{Link, Netlink, is_gone, nl as netlink_error};

/// `IFA_PROTO` value on the static addresses this daemon adds.
pub const ADDRESS_PROTOCOL: u8 = bramble_netlink::ADDRESS_PROTOCOL_STATIC;
/// `ifalias` of the links this daemon creates.
pub const OWNER_ALIAS: &str = "bramble-networkd";

/// One change made to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A VLAN, bond or bridge was created.
    LinkCreated(String),
    /// A link this daemon created is no longer configured and was deleted.
    LinkDeleted(String),
    /// A link was attached to a bond or bridge (member, controller).
    Attached(String, String),
    /// A link was detached from a bond or bridge it is no longer listed in.
    Detached(String),
    /// The MTU was set.
    Mtu(String, u32),
    /// The link was set up.
    Up(String),
    /// The link was set down, as configured.
    Down(String),
    /// A static address was added.
    AddressAdded(String, IpNet),
    /// A static address was removed.
    AddressRemoved(String, IpNet),
    /// A static route was added.
    RouteAdded(String, DesiredRoute),
    /// A static route was removed.
    RouteRemoved(String, DesiredRoute),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LinkCreated(l) => write!(f, "created link {l}"),
            Self::LinkDeleted(l) => write!(f, "deleted link {l}"),
            Self::Attached(m, c) => write!(f, "{m}: attached to {c}"),
            Self::Detached(m) => write!(f, "{m}: detached"),
            Self::Mtu(l, m) => write!(f, "{l}: MTU {m}"),
            Self::Up(l) => write!(f, "{l}: up"),
            Self::Down(l) => write!(f, "{l}: down"),
            Self::AddressAdded(l, a) => write!(f, "{l}: added address {a}"),
            Self::AddressRemoved(l, a) => write!(f, "{l}: removed address {a}"),
            Self::RouteAdded(l, r) => write!(f, "{l}: added route {}", RouteText(r)),
            Self::RouteRemoved(l, r) => write!(f, "{l}: removed route {}", RouteText(r)),
        }
    }
}

struct RouteText<'a>(&'a DesiredRoute);

impl fmt::Display for RouteText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        write!(f, "{}", r.destination)?;
        if let Some(gw) = r.gateway {
            write!(f, " via {gw}")?;
        }
        write!(f, " metric {}", r.metric)?;
        if r.table != MAIN_TABLE {
            write!(f, " table {}", r.table)?;
        }
        if r.on_link {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

/// What one pass did: the changes made and the problems met. A problem with
/// one link (missing, refused by the kernel) does not stop the others.
#[derive(Debug, Default)]
pub struct Report {
    /// Changes made, in order.
    pub changes: Vec<Change>,
    /// Problems, each naming its link.
    pub problems: Vec<String>,
}

/// A main-table route with protocol `static`, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelRoute {
    index: u32,
    route: DesiredRoute,
}

/// One reconciliation pass.
pub async fn reconcile(nl: &Netlink, desired: &Desired) -> Report {
    let mut report = Report::default();
    let mut links = match nl.links().await {
        Ok(l) => l,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };

    // Links: bonds, bridges and VLANs created (parents come first in
    // `desired`), members attached, then MTU and up; links this daemon made
    // that are no longer configured are removed at the end.
    for want in &desired.links {
        if links.iter().any(|l| l.name == want.name) {
            continue;
        }
        let msg = if let Some(aggregate) = &want.aggregate {
            aggregate_message(&want.name, aggregate)
        } else if let Some((parent, id)) = &want.vlan {
            let Some(parent_index) = links.iter().find(|l| &l.name == parent).map(|l| l.index)
            else {
                report
                    .problems
                    .push(format!("{}: parent link {parent} not present", want.name));
                continue;
            };
            LinkVlan::new(&want.name, parent_index, *id).build()
        } else {
            report
                .problems
                .push(format!("{}: no such link (yet)", want.name));
            continue;
        };
        match nl.handle.link().add(msg).execute().await {
            Ok(()) => report.changes.push(Change::LinkCreated(want.name.clone())),
            // Loading `bonding` makes a `bond0` of its own: take it over.
            Err(e) if already_exists(&e) => {}
            Err(e) => {
                report
                    .problems
                    .push(netlink_error(&format!("create link {}", want.name), e).to_string());
                continue;
            }
        }
        // The kernel ignores an alias given at creation: mark it now, so a
        // later pass (or a restarted daemon) knows the link is ours.
        match nl.link_by_name(&want.name).await {
            Ok(mut link) => {
                let msg = LinkUnspec::new_with_index(link.index)
                    .alias(OWNER_ALIAS)
                    .build();
                match nl.handle.link().set(msg).execute().await {
                    Ok(()) => link.alias = Some(OWNER_ALIAS.to_owned()),
                    Err(e) => report
                        .problems
                        .push(netlink_error(&format!("mark link {}", want.name), e).to_string()),
                }
                links.push(link);
            }
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    membership(nl, desired, &mut links, &mut report).await;
    for link in &links {
        let want = desired.link(&link.name);
        if want.is_none() && desired.controller_of(&link.name).is_none() {
            continue;
        }
        if let Some(mtu) = want.and_then(|w| w.mtu)
            && link.mtu != Some(mtu)
        {
            let msg = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
            match nl.handle.link().set(msg).execute().await {
                Ok(()) => report.changes.push(Change::Mtu(link.name.clone(), mtu)),
                Err(e) => report
                    .problems
                    .push(netlink_error(&format!("set MTU {mtu} on {}", link.name), e).to_string()),
            }
        }
        if want.is_some_and(|w| w.down) {
            if link.is_up() {
                let msg = LinkUnspec::new_with_index(link.index).down().build();
                match nl.handle.link().set(msg).execute().await {
                    Ok(()) => report.changes.push(Change::Down(link.name.clone())),
                    Err(e) => report.problems.push(
                        netlink_error(&format!("set link {} down", link.name), e).to_string(),
                    ),
                }
            }
        } else if !link.is_up() {
            match nl.set_up(link).await {
                Ok(()) => report.changes.push(Change::Up(link.name.clone())),
                Err(e) => report.problems.push(e.to_string()),
            }
        }
    }
    for link in links.iter().filter(|l| desired.link(&l.name).is_some()) {
        promote_secondaries(&link.name);
    }
    let by_index: HashMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
    let name_of = |index: u32| {
        by_index
            .get(&index)
            .map_or_else(|| format!("link {index}"), |l| l.name.clone())
    };

    // Static routes no longer wanted go before the addresses they may rely on.
    let routes = match static_routes(nl).await {
        Ok(r) => r,
        Err(e) => {
            report.problems.push(e.to_string());
            Vec::new()
        }
    };
    let wanted_route = |r: &KernelRoute| {
        by_index
            .get(&r.index)
            .and_then(|l| desired.link(&l.name))
            .is_some_and(|w| w.routes.contains(&r.route))
    };
    for r in routes.iter().filter(|r| !wanted_route(r)) {
        match del_route(nl, r).await {
            Ok(()) => report
                .changes
                .push(Change::RouteRemoved(name_of(r.index), r.route)),
            Err(e) => report.problems.push(e.to_string()),
        }
    }

    // Addresses.
    let addresses = match bramble_netlink::addresses(&nl.handle).await {
        Ok(a) => a,
        Err(e) => {
            report.problems.push(e.to_string());
            Vec::new()
        }
    };
    for link in &links {
        let Some(want) = desired.link(&link.name) else {
            continue;
        };
        for net in &want.addresses {
            let present = addresses
                .iter()
                .any(|a| a.index == link.index && a.net == *net);
            if present {
                continue;
            }
            match add_address(nl, link.index, *net).await {
                Ok(()) => report
                    .changes
                    .push(Change::AddressAdded(link.name.clone(), *net)),
                Err(e) => report.problems.push(e.to_string()),
            }
        }
    }

    // Old addresses go after the new ones are in: a subnet never empties on
    // the way, so the kernel keeps the routes through it.
    for a in addresses.iter().filter(|a| ours(a)) {
        let wanted = by_index
            .get(&a.index)
            .and_then(|l| desired.link(&l.name))
            .is_some_and(|w| w.addresses.contains(&a.net));
        if !wanted {
            match del_address(nl, a.index, a.net).await {
                Ok(()) => report
                    .changes
                    .push(Change::AddressRemoved(name_of(a.index), a.net)),
                Err(e) => report.problems.push(e.to_string()),
            }
        }
    }
    // Routes to add.
    for link in &links {
        let Some(want) = desired.link(&link.name) else {
            continue;
        };
        for route in &want.routes {
            let present = routes
                .iter()
                .any(|r| r.index == link.index && r.route == *route);
            if present {
                continue;
            }
            match add_route(nl, link.index, route).await {
                Ok(()) => report
                    .changes
                    .push(Change::RouteAdded(link.name.clone(), *route)),
                Err(e) => report.problems.push(e.to_string()),
            }
        }
    }

    // Links this daemon made that are no longer configured.
    for link in &links {
        if link.alias.as_deref() == Some(OWNER_ALIAS) && desired.link(&link.name).is_none() {
            match nl.handle.link().del(link.index).execute().await {
                Ok(()) => report.changes.push(Change::LinkDeleted(link.name.clone())),
                Err(e) if is_gone(&e) => {}
                Err(e) => report
                    .problems
                    .push(netlink_error(&format!("delete link {}", link.name), e).to_string()),
            }
        }
    }

    for change in &report.changes {
        info!("{change}");
    }
    report
}

/// Whether the kernel answered "File exists".
fn already_exists(e: &rtnetlink::Error) -> bool {
    const EEXIST: i32 = 17;
    matches!(e, rtnetlink::Error::NetlinkError(msg) if msg.raw_code().abs() == EEXIST)
}

/// The message that creates a bond or bridge.
fn aggregate_message(name: &str, aggregate: &Aggregate) -> LinkMessage {
    match aggregate {
        Aggregate::Bond { mode, miimon, .. } => LinkBond::new(name)
            .mode(bond_mode(mode))
            .miimon(*miimon)
            .build(),
        Aggregate::Bridge { stp, .. } => LinkBridge::new(name)
            .append_info_data(InfoBridge::StpState(if *stp {
                BridgeStpState::KernelStp
            } else {
                BridgeStpState::Disabled
            }))
            .build(),
    }
}

/// The kernel's bonding mode for its `ip link` name (validated before).
fn bond_mode(name: &str) -> BondMode {
    match name {
        "active-backup" => BondMode::ActiveBackup,
        "balance-xor" => BondMode::BalanceXor,
        "broadcast" => BondMode::Broadcast,
        "802.3ad" => BondMode::Ieee8023Ad,
        "balance-tlb" => BondMode::BalanceTlb,
        "balance-alb" => BondMode::BalanceAlb,
        _ => BondMode::BalanceRr,
    }
}

/// Attaches each configured member to its bond or bridge (a bond member
/// goes down first, as the kernel requires), and detaches links from this
/// daemon's bonds and bridges that are no longer listed. `links` is updated.
async fn membership(nl: &Netlink, desired: &Desired, links: &mut [Link], report: &mut Report) {
    let index_of =
        |links: &[Link], name: &str| links.iter().find(|l| l.name == name).map(|l| l.index);
    for want in &desired.links {
        let Some(aggregate) = &want.aggregate else {
            continue;
        };
        let Some(controller) = index_of(links, &want.name) else {
            continue;
        };
        for member in aggregate.members() {
            let Some(link) = links.iter_mut().find(|l| &l.name == member) else {
                report
                    .problems
                    .push(format!("{}: member {member} not present (yet)", want.name));
                continue;
            };
            if link.controller == Some(controller) {
                continue;
            }
            let mut msg = LinkUnspec::new_with_index(link.index).controller(controller);
            if matches!(aggregate, Aggregate::Bond { .. }) {
                msg = msg.down();
            }
            match nl.handle.link().set(msg.build()).execute().await {
                Ok(()) => {
                    link.controller = Some(controller);
                    // Down for the bond: the up pass below brings it back.
                    link.flags
                        .remove(rtnetlink::packet_route::link::LinkFlags::Up);
                    report
                        .changes
                        .push(Change::Attached(member.clone(), want.name.clone()));
                }
                Err(e) => report.problems.push(
                    netlink_error(&format!("attach {member} to {}", want.name), e).to_string(),
                ),
            }
        }
    }
    // Members of this daemon's aggregates that are no longer listed.
    let ours: Vec<(u32, String)> = links
        .iter()
        .filter(|l| l.alias.as_deref() == Some(OWNER_ALIAS) && l.kind.as_deref() != Some("vlan"))
        .map(|l| (l.index, l.name.clone()))
        .collect();
    for link in links.iter_mut() {
        let Some((_, controller)) = ours.iter().find(|(i, _)| Some(*i) == link.controller) else {
            continue;
        };
        let listed = desired
            .link(controller)
            .and_then(|w| w.aggregate.as_ref())
            .is_some_and(|a| a.members().contains(&link.name));
        if listed {
            continue;
        }
        let msg = LinkUnspec::new_with_index(link.index)
            .nocontroller()
            .build();
        match nl.handle.link().set(msg).execute().await {
            Ok(()) => {
                link.controller = None;
                report.changes.push(Change::Detached(link.name.clone()));
            }
            Err(e) => report
                .problems
                .push(netlink_error(&format!("detach {}", link.name), e).to_string()),
        }
    }
}

/// Makes the kernel keep the other IPv4 addresses of a subnet when its
/// primary address is removed (by default it deletes them with it), so a
/// changed address does not take its neighbours along.
fn promote_secondaries(link: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{link}/promote_secondaries");
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => {
            if let Err(e) = std::fs::write(&path, "1\n") {
                warn!("{path}: {e}");
            }
        }
        // A link without IPv4 configuration (rare) has no such file.
        Err(e) => debug!("{path}: {e}"),
    }
}

/// The static addresses this daemon added (marked with [`ADDRESS_PROTOCOL`]).
fn ours(a: &Address) -> bool {
    a.protocol == ADDRESS_PROTOCOL
}

async fn add_address(nl: &Netlink, index: u32, net: IpNet) -> Result<(), Error> {
    let mut req = nl.handle.address().add(index, net.addr(), net.prefix_len());
    req.message_mut()
        .attributes
        .push(AddressAttribute::Protocol(AddressProtocol::from(
            ADDRESS_PROTOCOL,
        )));
    req.execute()
        .await
        .map_err(|e| netlink_error(&format!("add address {net} on link {index}"), e))
}

async fn del_address(nl: &Netlink, index: u32, net: IpNet) -> Result<(), Error> {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = net.prefix_len();
    msg.header.family = match net {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    msg.attributes.push(AddressAttribute::Local(net.addr()));
    if net.addr().is_ipv6() {
        msg.attributes.push(AddressAttribute::Address(net.addr()));
    }
    match nl.handle.address().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(netlink_error(
            &format!("delete address {net} on link {index}"),
            e,
        )),
    }
}

/// Routes with protocol `static`, both families, every table.
async fn static_routes(nl: &Netlink) -> Result<Vec<KernelRoute>, Error> {
    let routes = bramble_netlink::routes(&nl.handle).await?;
    Ok(routes
        .into_iter()
        .filter(|r| r.protocol == RouteProtocol::Static)
        .filter_map(|r| {
            Some(KernelRoute {
                index: r.oif?,
                route: DesiredRoute {
                    destination: r.destination,
                    gateway: r.gateway,
                    metric: r.metric,
                    on_link: r.on_link,
                    table: r.table,
                },
            })
        })
        .collect())
}

fn route_message(index: u32, r: &DesiredRoute) -> Result<RouteMessage, String> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.destination.addr(), r.destination.prefix_len())
        .map_err(|e| e.to_string())?
        .output_interface(index)
        .protocol(RouteProtocol::Static)
        .table_id(r.table)
        .priority(r.metric);
    if let Some(gw) = r.gateway {
        b = b.gateway(gw).map_err(|e| e.to_string())?;
    }
    if r.on_link {
        b = b.onlink();
    }
    Ok(b.build())
}

async fn add_route(nl: &Netlink, index: u32, r: &DesiredRoute) -> Result<(), Error> {
    let what = format!("add route {} on link {index}", RouteText(r));
    let msg = route_message(index, r).map_err(|reason| Error::BadRoute {
        what: what.clone(),
        reason,
    })?;
    nl.handle
        .route()
        .add(msg)
        .execute()
        .await
        .map_err(|e| netlink_error(&what, e))
}

async fn del_route(nl: &Netlink, r: &KernelRoute) -> Result<(), Error> {
    let what = format!("delete route {} on link {}", RouteText(&r.route), r.index);
    let msg = route_message(r.index, &r.route).map_err(|reason| Error::BadRoute {
        what: what.clone(),
        reason,
    })?;
    match nl.handle.route().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(netlink_error(&what, e)),
    }
}
