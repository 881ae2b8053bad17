//! The node's current addresses: the machine API's and etcd's certificate
//! subject names, the address etcd advertises.

use std::net::IpAddr;

/// Non-loopback addresses of the interfaces that are up, from getifaddrs(3)
/// (netlink underneath). Empty if they cannot be read: the certificate then
/// covers the host name and loopback only, which clients that pin the
/// fingerprint do not mind.
///
/// At first boot apid may start before DHCP finished. In maintenance mode the
/// certificate keeps whatever was known then (it is reused as-is on later
/// starts, so its fingerprint stays); a configured node issues a new one
/// whenever the list changes.
pub fn local_addresses() -> Vec<IpAddr> {
    use nix::net::if_::InterfaceFlags;
    let iter = match nix::ifaddrs::getifaddrs() {
        Ok(iter) => iter,
        // Nothing to name: callers cover the host name and loopback.
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    for ifa in iter {
        if !ifa.flags.contains(InterfaceFlags::IFF_UP)
            || ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if !ip.is_loopback() && !ip.is_unspecified() && !is_link_local(ip) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    // A stable order: the configured server compares lists to notice changes.
    out.sort();
    out
}

/// Link-local addresses (169.254/16, fe80::/10) name no node from elsewhere,
/// and come and go as links do: they stay out of the certificate.
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_loopback_or_link_local_addresses() {
        for ip in local_addresses() {
            assert!(!ip.is_loopback() && !is_link_local(ip), "{ip}");
        }
    }

    #[test]
    fn link_local_addresses_are_recognised() {
        for ip in ["169.254.1.2", "fe80::1", "febf::1"] {
            assert!(is_link_local(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.2.15", "fd00::1", "2001:db8::1", "fec0::1"] {
            assert!(!is_link_local(ip.parse().unwrap()), "{ip}");
        }
    }
}
