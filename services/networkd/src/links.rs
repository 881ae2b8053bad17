//! The rtnetlink connection, link classification, and the changes the DHCP
//! client makes (lease addresses, default routes). Reading the kernel's state
//! is `bramble-netlink`'s; the configured network is `reconcile`'s.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressProtocol, CacheInfo};
use rtnetlink::packet_route::link::{LinkFlags, LinkLayerType};
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{AddressMessageBuilder, Handle, LinkUnspec, RouteMessageBuilder};
use tracing::debug;

use crate::dhcp::Lease;
use crate::error::Error;

/// errno values the kernel reports for "already gone"; identical on
/// x86_64 and aarch64.
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;
/// The kernel's "forever" address lifetime.
const INFINITY_LIFE_TIME: u32 = u32::MAX;

pub use bramble_netlink::Link;

/// Whether `link` is a physical wired Ethernet port: an `ARPHRD_ETHER`
/// link, not loopback, not a virtual kind, backed by a device in sysfs
/// (`<sysfs>/class/net/<name>/device`) and not wireless.
pub fn is_physical_ethernet(link: &Link, sysfs: &Path) -> bool {
    if link.link_type != LinkLayerType::Ether
        || link.flags.contains(LinkFlags::Loopback)
        || link.kind.is_some()
        || link.ethernet_mac().is_none()
        || link.name.contains('/')
        || link.name.starts_with('.')
    {
        return false;
    }
    let dir = sysfs.join("class/net").join(&link.name);
    dir.join("device").exists() && !dir.join("wireless").exists() && !dir.join("phy80211").exists()
}

/// A handle on the rtnetlink socket.
#[derive(Debug, Clone)]
pub struct Netlink {
    pub(crate) handle: Handle,
}

impl Netlink {
    /// Opens an rtnetlink connection; its driver task is spawned on the
    /// current runtime.
    pub fn connect() -> Result<Self, Error> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// All links.
    pub async fn links(&self) -> Result<Vec<Link>, Error> {
        bramble_netlink::links(&self.handle)
            .await
            .map_err(Error::Dump)
    }

    /// One link by index; `None` if it is gone.
    pub async fn link(&self, index: u32) -> Result<Option<Link>, Error> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Link::from_message(&msg)),
            Ok(None) => Ok(None),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(nl(&format!("get link {index}"), e)),
        }
    }

    /// One link by name.
    pub async fn link_by_name(&self, name: &str) -> Result<Link, Error> {
        let mut stream = self.handle.link().get().match_name(name).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => {
                Link::from_message(&msg).ok_or_else(|| Error::LinkNotFound(name.to_owned()))
            }
            Ok(None) => Err(Error::LinkNotFound(name.to_owned())),
            Err(e) if is_gone(&e) => Err(Error::LinkNotFound(name.to_owned())),
            Err(e) => Err(nl(&format!("get link {name}"), e)),
        }
    }

    /// Sets a link administratively up.
    pub async fn set_up(&self, link: &Link) -> Result<(), Error> {
        let msg = LinkUnspec::new_with_index(link.index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| nl(&format!("set link {} up", link.name), e))
    }

    /// Waits up to `timeout` for carrier on `link`; returns whether it came.
    pub async fn wait_carrier(&self, link: &Link, timeout: Duration) -> Result<bool, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.link(link.index).await? {
                Some(l) if l.carrier => return Ok(true),
                Some(_) => {}
                None => return Err(Error::LinkNotFound(link.name.clone())),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Adds (or refreshes) the lease's address on `index`, with the
    /// remaining lease time as the kernel lifetime so a stale address also
    /// goes away if this daemon dies.
    pub async fn add_lease_address(
        &self,
        index: u32,
        lease: &Lease,
        remaining: Option<u32>,
    ) -> Result<(), Error> {
        let mut req = self
            .handle
            .address()
            .add(index, IpAddr::V4(lease.address), lease.prefix_len)
            .replace();
        let life = remaining.map_or(INFINITY_LIFE_TIME, |s| s.clamp(1, INFINITY_LIFE_TIME - 1));
        let mut cache = CacheInfo::default();
        cache.ifa_preferred = life;
        cache.ifa_valid = life;
        req.message_mut()
            .attributes
            .push(AddressAttribute::CacheInfo(cache));
        req.message_mut()
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                bramble_netlink::ADDRESS_PROTOCOL_DHCP,
            )));
        req.execute()
            .await
            .map_err(|e| nl(&format!("add address {} on link {index}", lease.cidr()), e))
    }

    /// Removes an address; an address that is already gone is not an error.
    pub async fn del_address(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), Error> {
        let msg = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(address, prefix_len)
            .build();
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(nl(
                &format!("delete address {address}/{prefix_len} on link {index}"),
                e,
            )),
        }
    }

    /// Installs the default route via `router` on `index` with `metric`
    /// (replacing an existing one with the same metric). A router outside
    /// the leased subnet first gets a link-scope host route.
    pub async fn add_default_route(
        &self,
        index: u32,
        lease: &Lease,
        router: Ipv4Addr,
        metric: u32,
    ) -> Result<(), Error> {
        if !lease.on_link(router) {
            let host = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(router, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .protocol(RouteProtocol::Dhcp)
                .pref_source(lease.address)
                .priority(metric)
                .build();
            self.handle
                .route()
                .add(host)
                .replace()
                .execute()
                .await
                .map_err(|e| nl(&format!("add route {router}/32 dev {index}"), e))?;
        }
        let msg = default_route(index, router, metric, Some(lease.address));
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| nl(&format!("add default route via {router} dev {index}"), e))
    }

    /// Removes the default route (and the host route to an off-subnet
    /// router); routes that are already gone are not an error.
    pub async fn del_default_route(
        &self,
        index: u32,
        lease: &Lease,
        router: Ipv4Addr,
        metric: u32,
    ) -> Result<(), Error> {
        let msg = default_route(index, router, metric, None);
        match self.handle.route().del(msg).execute().await {
            Ok(()) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => {
                return Err(nl(
                    &format!("delete default route via {router} dev {index}"),
                    e,
                ));
            }
        }
        if !lease.on_link(router) {
            let host = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(router, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .protocol(RouteProtocol::Dhcp)
                .priority(metric)
                .build();
            match self.handle.route().del(host).execute().await {
                Ok(()) => {}
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(nl(&format!("delete route {router}/32 dev {index}"), e)),
            }
        }
        Ok(())
    }

    /// A second rtnetlink connection subscribed to link notifications, for
    /// links that appear after start (USB Ethernet on a Pi 3).
    pub fn link_notifications() -> Result<LinkNotifications, Error> {
        let (conn, _handle, rx) =
            rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
                .map_err(Error::NetlinkSocket)?;
        tokio::spawn(conn);
        debug!("subscribed to link notifications");
        Ok(LinkNotifications { rx: Box::pin(rx) })
    }
}

/// A stream of link notifications.
pub struct LinkNotifications {
    rx: NotificationStream,
}

impl std::fmt::Debug for LinkNotifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkNotifications").finish_non_exhaustive()
    }
}

type NotificationStream = futures_util::stream::BoxStream<
    'static,
    (
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    ),
>;

impl LinkNotifications {
    /// The next new-link notification (creation or change); `None` when the
    /// connection closed.
    pub async fn next(&mut self) -> Option<Link> {
        use futures_util::StreamExt;
        use rtnetlink::packet_core::NetlinkPayload;
        use rtnetlink::packet_route::RouteNetlinkMessage;
        loop {
            let (msg, _) = self.rx.next().await?;
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = msg.payload
                && let Some(link) = Link::from_message(&link)
            {
                return Some(link);
            }
        }
    }
}

fn default_route(
    index: u32,
    router: Ipv4Addr,
    metric: u32,
    source: Option<Ipv4Addr>,
) -> rtnetlink::packet_route::route::RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(index)
        .gateway(router)
        .protocol(RouteProtocol::Dhcp)
        .priority(metric);
    if let Some(src) = source {
        b = b.pref_source(src);
    }
    let mut msg = b.build();
    msg.header.address_family = AddressFamily::Inet;
    msg
}

pub(crate) fn nl(what: &str, source: rtnetlink::Error) -> Error {
    Error::Netlink {
        what: what.to_owned(),
        source,
    }
}

/// Whether a netlink error means "no such object" (already removed).
pub(crate) fn is_gone(e: &rtnetlink::Error) -> bool {
    match e {
        rtnetlink::Error::NetlinkError(msg) => {
            matches!(
                msg.raw_code().abs(),
                ENOENT | ESRCH | ENODEV | EADDRNOTAVAIL
            )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, link_type: LinkLayerType, flags: LinkFlags, kind: Option<&str>) -> Link {
        Link {
            index: 2,
            name: name.into(),
            mac: Some(vec![2, 0, 0, 0, 0, 1]),
            link_type,
            flags,
            carrier: false,
            kind: kind.map(str::to_owned),
            mtu: Some(1500),
            alias: None,
            controller: None,
        }
    }

    #[test]
    fn physical_ethernet_detection() {
        let sys = tempfile::tempdir().unwrap();
        let net = sys.path().join("class/net");
        std::fs::create_dir_all(net.join("eth0/device")).unwrap();
        std::fs::create_dir_all(net.join("wlan0/device")).unwrap();
        std::fs::create_dir_all(net.join("wlan0/wireless")).unwrap();
        std::fs::create_dir_all(net.join("veth0")).unwrap();
        std::fs::create_dir_all(net.join("lo")).unwrap();

        let eth = LinkLayerType::Ether;
        assert!(is_physical_ethernet(
            &link("eth0", eth, LinkFlags::empty(), None),
            sys.path()
        ));
        assert!(!is_physical_ethernet(
            &link("wlan0", eth, LinkFlags::empty(), None),
            sys.path()
        ));
        assert!(!is_physical_ethernet(
            &link("veth0", eth, LinkFlags::empty(), Some("veth")),
            sys.path()
        ));
        assert!(
            !is_physical_ethernet(&link("veth0", eth, LinkFlags::empty(), None), sys.path()),
            "no device in sysfs"
        );
        assert!(!is_physical_ethernet(
            &link("lo", LinkLayerType::Loopback, LinkFlags::Loopback, None),
            sys.path()
        ));
        // A device-backed link of another kind (e.g. an eth0 with a bridge kind) is not physical.
        assert!(!is_physical_ethernet(
            &link("eth0", eth, LinkFlags::empty(), Some("bridge")),
            sys.path()
        ));
        let mut no_mac = link("eth0", eth, LinkFlags::empty(), None);
        no_mac.mac = None;
        assert!(!is_physical_ethernet(&no_mac, sys.path()));
    }
}
