//! A DHCPv4 lease and the option parsing that produces it.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, OptionCode};

/// The most name servers a resolver reads (musl and glibc: `MAXNS` = 3).
pub const MAX_NAMESERVERS: usize = 3;
/// The most search domains kept from one lease.
pub const MAX_SEARCH_DOMAINS: usize = 6;
/// Lease time meaning "infinite" (RFC 2131, 3.3).
const INFINITE: u32 = u32::MAX;

/// Why a DHCPACK could not be turned into a lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// `yiaddr` is 0.0.0.0 (or otherwise unusable).
    #[error("DHCPACK carries no usable address (yiaddr {0})")]
    UnusableAddress(Ipv4Addr),
    /// Option 51 (lease time) is missing.
    #[error("DHCPACK for {0} carries no lease time (option 51)")]
    MissingLeaseTime(Ipv4Addr),
    /// No server identifier (option 54) and none known from the exchange.
    #[error("DHCPACK for {0} carries no server identifier (option 54)")]
    MissingServer(Ipv4Addr),
}

/// An address lease granted by a DHCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The leased address (`yiaddr`).
    pub address: Ipv4Addr,
    /// Prefix length from the subnet mask (option 1), or the classful default.
    pub prefix_len: u8,
    /// Routers (option 3), in the server's order of preference.
    pub routers: Vec<Ipv4Addr>,
    /// Name servers (option 6), at most [`MAX_NAMESERVERS`].
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15), if valid.
    pub domain: Option<String>,
    /// Domain search list (option 119), valid names only.
    pub search: Vec<String>,
    /// Host name (option 12), if valid.
    pub hostname: Option<String>,
    /// The server that granted the lease (option 54).
    pub server: Ipv4Addr,
    /// Lease duration; `None` for an infinite lease.
    pub lease_time: Option<Duration>,
    /// Renewal time T1, counted from `acquired`.
    pub t1: Duration,
    /// Rebinding time T2, counted from `acquired`.
    pub t2: Duration,
    /// When the request that obtained the lease was sent (lease timers start here).
    pub acquired: Instant,
}

impl Lease {
    /// Builds a lease from a DHCPACK. `acquired` is when the REQUEST was sent;
    /// `fallback_server` is used when the ACK has no server identifier.
    pub fn from_ack(
        ack: &Message,
        acquired: Instant,
        fallback_server: Option<Ipv4Addr>,
    ) -> Result<Self, LeaseError> {
        let address = ack.yiaddr();
        if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
            return Err(LeaseError::UnusableAddress(address));
        }
        let opts = ack.opts();
        let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(secs)) => *secs,
            _ => return Err(LeaseError::MissingLeaseTime(address)),
        };
        let server = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) if !ip.is_unspecified() => *ip,
            _ => fallback_server.ok_or(LeaseError::MissingServer(address))?,
        };
        let prefix_len = match opts.get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(mask)) => {
                prefix_from_mask(*mask).unwrap_or_else(|| classful_prefix(address))
            }
            _ => classful_prefix(address),
        };
        let t1_opt = match opts.get(OptionCode::Renewal) {
            Some(DhcpOption::Renewal(t)) => Some(*t),
            _ => None,
        };
        let t2_opt = match opts.get(OptionCode::Rebinding) {
            Some(DhcpOption::Rebinding(t)) => Some(*t),
            _ => None,
        };
        let (lease_time, t1, t2) = timers(lease_secs, t1_opt, t2_opt);
        Ok(Self {
            address,
            prefix_len,
            routers: routers(ack),
            dns: name_servers(ack),
            domain: domain_name(ack),
            search: search_domains(ack),
            hostname: host_name(ack),
            server,
            lease_time,
            t1,
            t2,
            acquired,
        })
    }

    /// The first router, used for the default route.
    pub fn router(&self) -> Option<Ipv4Addr> {
        self.routers.first().copied()
    }

    /// When to start renewing (T1); `None` for an infinite lease.
    pub fn renew_at(&self) -> Option<Instant> {
        self.lease_time.map(|_| self.acquired + self.t1)
    }

    /// When to start rebinding (T2); `None` for an infinite lease.
    pub fn rebind_at(&self) -> Option<Instant> {
        self.lease_time.map(|_| self.acquired + self.t2)
    }

    /// When the lease ends; `None` for an infinite lease.
    pub fn expires_at(&self) -> Option<Instant> {
        self.lease_time.map(|d| self.acquired + d)
    }

    /// Seconds left until expiry at `now` (saturating), `None` when infinite.
    pub fn remaining_secs(&self, now: Instant) -> Option<u32> {
        self.expires_at().map(|end| {
            u32::try_from(end.saturating_duration_since(now).as_secs()).unwrap_or(u32::MAX - 1)
        })
    }

    /// `address/prefix`, for logs and status.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix_len)
    }

    /// The network part of the leased address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) & mask_bits(self.prefix_len))
    }

    /// Whether `ip` is inside the leased subnet.
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix_len) == u32::from(self.network())
    }

    /// The console line announcing this lease, e.g.
    /// `eth0: 10.0.2.15/24 via 10.0.2.2 (lease 86400 s from 10.0.2.2)`.
    pub fn summary(&self, link: &str) -> String {
        let via = self
            .router()
            .map(|r| format!(" via {r}"))
            .unwrap_or_default();
        let time = match self.lease_time {
            Some(d) => format!("{} s", d.as_secs()),
            None => "infinite".to_owned(),
        };
        format!(
            "{link}: {}{via} (lease {time} from {})",
            self.cidr(),
            self.server
        )
    }
}

/// The netmask with the top `prefix_len` bits set.
fn mask_bits(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

/// Prefix length of a contiguous subnet mask; `None` if the mask has holes.
pub fn prefix_from_mask(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    if bits.checked_shl(ones).unwrap_or(0) != 0 {
        return None;
    }
    u8::try_from(ones).ok()
}

/// The classful prefix RFC 2131 clients fall back to without option 1.
pub fn classful_prefix(addr: Ipv4Addr) -> u8 {
    match addr.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// Lease duration, T1 and T2 from options 51, 58 and 59. Missing or
/// inconsistent T1/T2 fall back to 0.5 and 0.875 of the lease (RFC 2131, 4.4.5).
pub fn timers(
    lease_secs: u32,
    t1: Option<u32>,
    t2: Option<u32>,
) -> (Option<Duration>, Duration, Duration) {
    if lease_secs == INFINITE {
        return (None, Duration::MAX, Duration::MAX);
    }
    let lease = Duration::from_secs(u64::from(lease_secs));
    let default_t1 = lease / 2;
    let default_t2 = lease * 7 / 8;
    let t2 = match t2.map(|s| Duration::from_secs(u64::from(s))) {
        Some(t2) if t2 <= lease => t2,
        _ => default_t2,
    };
    let t1 = match t1.map(|s| Duration::from_secs(u64::from(s))) {
        Some(t1) if t1 <= t2 => t1,
        _ => default_t1.min(t2),
    };
    (Some(lease), t1, t2)
}

/// Routers (option 3), skipping unusable addresses.
pub fn routers(msg: &Message) -> Vec<Ipv4Addr> {
    match msg.opts().get(OptionCode::Router) {
        Some(DhcpOption::Router(list)) => list
            .iter()
            .copied()
            .filter(|ip| usable_unicast(*ip))
            .collect(),
        _ => Vec::new(),
    }
}

/// Name servers (option 6), deduplicated, at most [`MAX_NAMESERVERS`].
pub fn name_servers(msg: &Message) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    if let Some(DhcpOption::DomainNameServer(list)) = msg.opts().get(OptionCode::DomainNameServer) {
        for ip in list {
            if usable_unicast(*ip) && !out.contains(ip) && out.len() < MAX_NAMESERVERS {
                out.push(*ip);
            }
        }
    }
    out
}

/// Domain name (option 15), if it is a valid DNS name.
pub fn domain_name(msg: &Message) -> Option<String> {
    match msg.opts().get(OptionCode::DomainName) {
        Some(DhcpOption::DomainName(name)) => valid_dns_name(name),
        _ => None,
    }
}

/// Domain search list (option 119), valid names only.
pub fn search_domains(msg: &Message) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(DhcpOption::DomainSearch(names)) = msg.opts().get(OptionCode::DomainSearch) {
        for name in names {
            if let Some(n) = valid_dns_name(&name.to_ascii())
                && !out.contains(&n)
                && out.len() < MAX_SEARCH_DOMAINS
            {
                out.push(n);
            }
        }
    }
    out
}

/// Host name (option 12), if it is a valid host name.
pub fn host_name(msg: &Message) -> Option<String> {
    match msg.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(name)) => valid_dns_name(name),
        _ => None,
    }
}

fn usable_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast())
}

/// Returns the name without a trailing dot if it is a valid DNS name: labels
/// of 1..=63 letters, digits, `-` or `_`, not starting or ending with `-`,
/// at most 253 characters. Anything else (spaces, newlines) is refused so a
/// server cannot inject lines into `resolv.conf`.
pub fn valid_dns_name(raw: &str) -> Option<String> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    ok.then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::Name;
    use dhcproto::v4::{MessageType, Opcode};

    fn ack_with(opts: Vec<DhcpOption>) -> Message {
        let mut m = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 1],
        );
        m.set_opcode(Opcode::BootReply);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        for o in opts {
            m.opts_mut().insert(o);
        }
        m
    }

    #[test]
    fn mask_to_prefix() {
        assert_eq!(prefix_from_mask(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_from_mask(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(
            prefix_from_mask(Ipv4Addr::new(255, 255, 255, 255)),
            Some(32)
        );
        assert_eq!(prefix_from_mask(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(prefix_from_mask(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(prefix_from_mask(Ipv4Addr::new(0, 255, 255, 255)), None);
    }

    #[test]
    fn classful_fallback() {
        assert_eq!(classful_prefix(Ipv4Addr::new(10, 1, 2, 3)), 8);
        assert_eq!(classful_prefix(Ipv4Addr::new(172, 16, 0, 1)), 16);
        assert_eq!(classful_prefix(Ipv4Addr::new(192, 168, 1, 1)), 24);
        let now = Instant::now();
        let ack = ack_with(vec![
            DhcpOption::AddressLeaseTime(60),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)),
        ]);
        assert_eq!(Lease::from_ack(&ack, now, None).unwrap().prefix_len, 8);
        let ack = ack_with(vec![
            DhcpOption::AddressLeaseTime(60),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)),
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)),
        ]);
        assert_eq!(
            Lease::from_ack(&ack, now, None).unwrap().prefix_len,
            8,
            "a mask with holes is ignored"
        );
    }

    #[test]
    fn timer_defaults_and_validation() {
        let (l, t1, t2) = timers(86400, None, None);
        assert_eq!(l, Some(Duration::from_secs(86400)));
        assert_eq!(t1, Duration::from_secs(43200));
        assert_eq!(t2, Duration::from_secs(75600));
        let (_, t1, t2) = timers(100, Some(10), Some(20));
        assert_eq!((t1.as_secs(), t2.as_secs()), (10, 20));
        // T2 beyond the lease and T1 beyond T2 fall back to the defaults.
        let (_, t1, t2) = timers(100, Some(95), Some(200));
        assert_eq!((t1.as_secs(), t2.as_secs()), (50, 87));
        let (_, t1, t2) = timers(100, Some(60), Some(40));
        assert_eq!((t1.as_secs(), t2.as_secs()), (40, 40));
        let (l, _, _) = timers(u32::MAX, Some(1), Some(2));
        assert_eq!(l, None);
    }

    #[test]
    fn parses_all_options() {
        let now = Instant::now();
        let ack = ack_with(vec![
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 3)]),
            DhcpOption::DomainNameServer(vec![
                Ipv4Addr::new(10, 0, 2, 3),
                Ipv4Addr::new(10, 0, 2, 3),
                Ipv4Addr::new(0, 0, 0, 0),
                Ipv4Addr::new(1, 1, 1, 1),
                Ipv4Addr::new(8, 8, 8, 8),
                Ipv4Addr::new(9, 9, 9, 9),
            ]),
            DhcpOption::DomainName("Lab.Example.".into()),
            DhcpOption::DomainSearch(vec![
                Name::from_ascii("a.example.").unwrap(),
                Name::from_ascii("b.example").unwrap(),
            ]),
            DhcpOption::Hostname("pi-01".into()),
            DhcpOption::AddressLeaseTime(3600),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)),
        ]);
        let lease = Lease::from_ack(&ack, now, None).unwrap();
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.router(), Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.routers.len(), 2);
        assert_eq!(
            lease.dns,
            vec![
                Ipv4Addr::new(10, 0, 2, 3),
                Ipv4Addr::new(1, 1, 1, 1),
                Ipv4Addr::new(8, 8, 8, 8)
            ]
        );
        assert_eq!(lease.domain.as_deref(), Some("lab.example"));
        assert_eq!(
            lease.search,
            vec!["a.example".to_owned(), "b.example".to_owned()]
        );
        assert_eq!(lease.hostname.as_deref(), Some("pi-01"));
        assert_eq!(lease.server, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(lease.t1, Duration::from_secs(1800));
        assert_eq!(lease.t2, Duration::from_secs(3150));
        assert_eq!(lease.renew_at(), Some(now + Duration::from_secs(1800)));
        assert_eq!(lease.expires_at(), Some(now + Duration::from_secs(3600)));
        assert_eq!(lease.network(), Ipv4Addr::new(10, 0, 2, 0));
        assert!(lease.on_link(Ipv4Addr::new(10, 0, 2, 2)));
        assert!(!lease.on_link(Ipv4Addr::new(10, 0, 3, 2)));
        assert_eq!(
            lease.summary("eth0"),
            "eth0: 10.0.2.15/24 via 10.0.2.2 (lease 3600 s from 10.0.2.2)"
        );
    }

    #[test]
    fn rejects_injection_in_names() {
        assert_eq!(valid_dns_name("evil\nnameserver 1.2.3.4"), None);
        assert_eq!(valid_dns_name("a b"), None);
        assert_eq!(valid_dns_name("-bad.example"), None);
        assert_eq!(valid_dns_name(""), None);
        assert_eq!(valid_dns_name("."), None);
        assert_eq!(
            valid_dns_name("ok_name.Example"),
            Some("ok_name.example".into())
        );
        let ack = ack_with(vec![
            DhcpOption::AddressLeaseTime(60),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)),
            DhcpOption::DomainName("x\nnameserver 6.6.6.6".into()),
        ]);
        assert_eq!(
            Lease::from_ack(&ack, Instant::now(), None).unwrap().domain,
            None
        );
    }

    #[test]
    fn ack_errors() {
        let now = Instant::now();
        let ack = ack_with(vec![DhcpOption::ServerIdentifier(Ipv4Addr::new(
            10, 0, 2, 2,
        ))]);
        assert!(matches!(
            Lease::from_ack(&ack, now, None),
            Err(LeaseError::MissingLeaseTime(_))
        ));
        let ack = ack_with(vec![DhcpOption::AddressLeaseTime(60)]);
        assert!(matches!(
            Lease::from_ack(&ack, now, None),
            Err(LeaseError::MissingServer(_))
        ));
        let fallback = Ipv4Addr::new(10, 0, 2, 9);
        assert_eq!(
            Lease::from_ack(&ack, now, Some(fallback)).unwrap().server,
            fallback
        );
        let mut ack = ack_with(vec![DhcpOption::AddressLeaseTime(60)]);
        ack.set_yiaddr(Ipv4Addr::UNSPECIFIED);
        assert!(matches!(
            Lease::from_ack(&ack, now, Some(fallback)),
            Err(LeaseError::UnusableAddress(_))
        ));
    }

    #[test]
    fn infinite_lease_has_no_timers() {
        let ack = ack_with(vec![
            DhcpOption::AddressLeaseTime(u32::MAX),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)),
        ]);
        let lease = Lease::from_ack(&ack, Instant::now(), None).unwrap();
        assert_eq!(lease.renew_at(), None);
        assert_eq!(lease.expires_at(), None);
        assert!(
            lease
                .summary("eth0")
                .ends_with("(lease infinite from 10.0.2.2)")
        );
    }
}
