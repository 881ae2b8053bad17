//! Typed snapshots of the kernel's network state over rtnetlink: links,
//! addresses and routes as plain values; and the few blocking requests and
//! network-namespace moves the container runtime needs ([`route_socket`],
//! [`set_link_up_blocking`], [`in_namespace`]).
//!
//! The network daemon reads the kernel through this crate before it changes
//! anything; the machine API server reads it to answer `get links`,
//! `get addresses` and `get routes`. Both see the same fields the same way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{
    LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkLayerType, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

pub use rtnetlink;

mod addrs;
pub use addrs::{is_link_local, local_addresses};

/// `IFA_PROTO` of the static addresses the network daemon adds from the
/// machine configuration. Values 0–3 are the kernel's.
pub const ADDRESS_PROTOCOL_STATIC: u8 = 0x62;
/// `IFA_PROTO` of the addresses the network daemon's DHCP client adds.
pub const ADDRESS_PROTOCOL_DHCP: u8 = 0x63;

/// Who added an address, from its `IFA_PROTO`: `static` (the machine
/// configuration), `dhcp`, `kernel` (loopback, router advertisement,
/// link-local) or `other`.
pub fn address_origin(protocol: u8) -> &'static str {
    match protocol {
        ADDRESS_PROTOCOL_STATIC => "static",
        ADDRESS_PROTOCOL_DHCP => "dhcp",
        1..=3 => "kernel",
        _ => "other",
    }
}

/// A dump the kernel refused or that failed.
#[derive(Debug, thiserror::Error)]
#[error("netlink dump of {what} failed: {source}")]
pub struct DumpError {
    /// What was being listed: `links`, `addresses` or `routes`.
    pub what: &'static str,
    /// The error from the kernel (or rtnetlink).
    #[source]
    pub source: rtnetlink::Error,
}

/// One link, from a link dump or notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address, if the link has one.
    pub mac: Option<Vec<u8>>,
    /// `ARPHRD_*` type.
    pub link_type: LinkLayerType,
    /// `IFF_*` flags.
    pub flags: LinkFlags,
    /// Carrier present (IFLA_CARRIER, or IFF_LOWER_UP).
    pub carrier: bool,
    /// Virtual link kind (`veth`, `bridge`, `vlan`, ...), when the kernel reports one.
    pub kind: Option<String>,
    /// MTU.
    pub mtu: Option<u32>,
    /// `ifalias`.
    pub alias: Option<String>,
    /// The bond or bridge this link is a member of (its index).
    pub controller: Option<u32>,
}

impl Link {
    /// Parses a link message; `None` if it has no name.
    pub fn from_message(msg: &LinkMessage) -> Option<Self> {
        let mut name = None;
        let mut mac = None;
        let mut carrier = None;
        let mut kind = None;
        let mut mtu = None;
        let mut alias = None;
        let mut controller = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::Controller(c) => controller = Some(*c),
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Mtu(m) => mtu = Some(*m),
                LinkAttribute::IfAlias(a) => alias = Some(a.clone()),
                LinkAttribute::Address(a) => mac = Some(a.clone()),
                LinkAttribute::Carrier(c) => carrier = Some(*c != 0),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let NlLinkInfo::Kind(k) = info {
                            kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        let flags = msg.header.flags;
        Some(Self {
            index: msg.header.index,
            name: name?,
            mac,
            link_type: msg.header.link_layer_type,
            flags,
            carrier: carrier.unwrap_or_else(|| flags.contains(LinkFlags::LowerUp)),
            kind,
            mtu,
            alias,
            controller,
        })
    }

    /// The 6-byte Ethernet address, if the link has one.
    pub fn ethernet_mac(&self) -> Option<[u8; 6]> {
        self.mac
            .as_deref()
            .and_then(|m| <[u8; 6]>::try_from(m).ok())
    }

    /// The hardware address as `aa:bb:cc:dd:ee:ff` (empty without one).
    pub fn mac_text(&self) -> String {
        self.mac
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Whether the link is administratively up.
    pub fn is_up(&self) -> bool {
        self.flags.contains(LinkFlags::Up)
    }
}

/// One address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Link index.
    pub index: u32,
    /// Address and prefix length.
    pub net: IpNet,
    /// `IFA_PROTO`: who added it (0 when the kernel does not say).
    pub protocol: u8,
    /// Scope: `global`, `link`, `host`, ...
    pub scope: &'static str,
}

impl Address {
    fn from_message(msg: &AddressMessage) -> Option<Self> {
        let mut local = None;
        let mut address = None;
        let mut protocol = 0;
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Protocol(p) => protocol = u8::from(*p),
                _ => {}
            }
        }
        // IPv4 lists the interface's own address as IFA_LOCAL (IFA_ADDRESS is
        // the peer on point-to-point links); IPv6 has only IFA_ADDRESS.
        let ip = local.or(address)?;
        Some(Self {
            index: msg.header.index,
            net: IpNet::new(ip, msg.header.prefix_len).ok()?,
            protocol,
            scope: match msg.header.scope {
                AddressScope::Universe => "global",
                AddressScope::Site => "site",
                AddressScope::Link => "link",
                AddressScope::Host => "host",
                AddressScope::Nowhere => "nowhere",
                _ => "other",
            },
        })
    }
}

/// One unicast route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Routing table.
    pub table: u32,
    /// Who installed it.
    pub protocol: RouteProtocol,
    /// Destination prefix (`0.0.0.0/0` or `::/0` for a default route).
    pub destination: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output link index.
    pub oif: Option<u32>,
    /// Priority; lower wins.
    pub metric: u32,
    /// Preferred source address.
    pub source: Option<IpAddr>,
    /// Scope: `global`, `link`, `host`, ...
    pub scope: &'static str,
    /// The gateway is used on the link without an address covering it.
    pub on_link: bool,
}

impl Route {
    fn from_message(msg: &RouteMessage) -> Option<Self> {
        if msg.header.kind != RouteType::Unicast {
            return None;
        }
        let mut table = u32::from(msg.header.table);
        let mut destination = None;
        let mut gateway = None;
        let mut oif = None;
        let mut metric = 0;
        let mut source = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(a) => destination = route_ip(a),
                RouteAttribute::Gateway(a) => gateway = route_ip(a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Priority(p) => metric = *p,
                RouteAttribute::PrefSource(a) => source = route_ip(a),
                _ => {}
            }
        }
        let unspecified = if msg.header.address_family == AddressFamily::Inet6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let destination = IpNet::new(
            destination.unwrap_or(unspecified),
            msg.header.destination_prefix_length,
        )
        .ok()?;
        Some(Self {
            table,
            protocol: msg.header.protocol,
            destination,
            gateway,
            oif,
            metric,
            source,
            scope: match msg.header.scope {
                RouteScope::Universe => "global",
                RouteScope::Site => "site",
                RouteScope::Link => "link",
                RouteScope::Host => "host",
                RouteScope::NoWhere => "nowhere",
                _ => "other",
            },
            on_link: msg.header.flags.contains(RouteFlags::Onlink),
        })
    }
}

/// The usual name of a route protocol (`kernel`, `boot`, `static`, `dhcp`, ...).
pub fn protocol_name(p: RouteProtocol) -> String {
    match p {
        RouteProtocol::Kernel => "kernel".into(),
        RouteProtocol::Boot => "boot".into(),
        RouteProtocol::Static => "static".into(),
        RouteProtocol::Dhcp => "dhcp".into(),
        RouteProtocol::Ra => "ra".into(),
        other => u8::from(other).to_string(),
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Every link.
pub async fn links(handle: &Handle) -> Result<Vec<Link>, DumpError> {
    let err = |source| DumpError {
        what: "links",
        source,
    };
    let mut stream = handle.link().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = stream.try_next().await.map_err(err)? {
        out.extend(Link::from_message(&msg));
    }
    Ok(out)
}

/// Every address on every link.
pub async fn addresses(handle: &Handle) -> Result<Vec<Address>, DumpError> {
    let err = |source| DumpError {
        what: "addresses",
        source,
    };
    let mut stream = handle.address().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = stream.try_next().await.map_err(err)? {
        out.extend(Address::from_message(&msg));
    }
    Ok(out)
}

/// Every unicast route of both families, in every table.
pub async fn routes(handle: &Handle) -> Result<Vec<Route>, DumpError> {
    let err = |source| DumpError {
        what: "routes",
        source,
    };
    let mut out = Vec::new();
    let dumps = [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ];
    for dump in dumps {
        let mut stream = handle.route().get(dump).execute();
        while let Some(msg) = stream.try_next().await.map_err(err)? {
            out.extend(Route::from_message(&msg));
        }
    }
    Ok(out)
}

/// A failed request over a blocking rtnetlink socket ([`set_link_up_blocking`]).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The socket could not be made, written or read.
    #[error("rtnetlink: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused the request.
    #[error("rtnetlink: the kernel refused: {0}")]
    Refused(std::io::Error),
    /// The kernel's answer did not parse or was not an acknowledgement.
    #[error("rtnetlink: unexpected answer: {0}")]
    Answer(String),
}

/// A blocking rtnetlink socket. It acts in the network namespace of the
/// thread that made it, wherever it is used from afterwards: make it inside
/// another namespace (`setns`) to change that namespace's links.
pub fn route_socket() -> Result<rtnetlink::sys::Socket, RequestError> {
    let mut socket = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&rtnetlink::sys::SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Sets link `index` up (`ip link set ... up`) through `socket` (from
/// [`route_socket`]) and waits for the kernel's acknowledgement. For code
/// that cannot run an async runtime, such as a single-threaded process about
/// to start a container.
pub fn set_link_up_blocking(
    socket: &rtnetlink::sys::Socket,
    index: u32,
) -> Result<(), RequestError> {
    use rtnetlink::packet_core::{
        NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    };
    use rtnetlink::packet_route::RouteNetlinkMessage;

    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::SetLink(link)),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;

    let mut answer = Vec::with_capacity(8192);
    socket.recv(&mut answer, 0)?;
    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer)
        .map_err(|e| RequestError::Answer(e.to_string()))?;
    match message.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(()),
            Some(code) => Err(RequestError::Refused(std::io::Error::from_raw_os_error(
                -code.get(),
            ))),
        },
        other => Err(RequestError::Answer(format!(
            "message type {} instead of an acknowledgement",
            other.message_type()
        ))),
    }
}

/// Runs `f` on this thread inside the network namespace `ns` (an open
/// `/proc/<pid>/ns/net` or bind-mounted namespace file), then returns the
/// thread to the namespace it was in. Sockets made by `f` stay in `ns`
/// after it returns, which is what this is for: a socket made here talks to
/// the namespace's links and listeners from anywhere.
///
/// Only the calling thread moves. If it cannot move back, the error says so
/// and the thread must not be used for networking again (end it).
pub fn in_namespace<T>(
    ns: impl std::os::fd::AsFd,
    f: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    use nix::sched::{CloneFlags, setns};
    let own = std::fs::File::open("/proc/thread-self/ns/net")?;
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    let result = f();
    setns(&own, CloneFlags::CLONE_NEWNET).map_err(|e| {
        std::io::Error::other(format!(
            "cannot return to the thread's own network namespace: {e}"
        ))
    })?;
    result
}
