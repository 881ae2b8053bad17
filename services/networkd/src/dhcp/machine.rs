//! The DHCPv4 client state machine (RFC 2131, section 4.4), free of I/O.
//!
//! The machine never reads a clock, a socket or a random source by itself:
//! the driver hands it the current time with every call and executes the
//! [`Action`]s it returns. Timers are exposed through
//! [`Machine::next_timeout`]. This makes every transition testable with
//! crafted packets and a fake clock.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use tracing::{debug, warn};

use super::lease::Lease;

/// First retransmission delay (RFC 2131, 4.1).
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(4);
/// Longest retransmission delay (RFC 2131, 4.1).
pub const MAX_BACKOFF: Duration = Duration::from_secs(64);
/// Retransmission delays are randomised by up to this much either way.
pub const JITTER: Duration = Duration::from_secs(1);
/// REQUESTs sent in the REQUESTING state before discovery restarts.
pub const REQUEST_ATTEMPTS: u32 = 4;
/// Largest DHCP message we accept (our receive buffer).
pub const MAX_MESSAGE_SIZE: u16 = 1500;
/// BOOTP's minimum message size; shorter messages are padded.
const MIN_PACKET_SIZE: usize = 300;

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:67 on the link.
    Broadcast,
    /// A known server, port 67.
    Unicast(Ipv4Addr),
}

/// Why a lease was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// It ran out without being renewed.
    Expired,
    /// The server refused to extend it.
    Nak,
    /// We released it (shutdown).
    Released,
}

impl LossReason {
    /// Lower-case name for logs and the console.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Nak => "refused by server (DHCPNAK)",
            Self::Released => "released",
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `message` to `destination`.
    Send {
        /// The message.
        message: Box<Message>,
        /// Where it goes.
        destination: Destination,
    },
    /// Install (or update) the lease: address, route, resolvers. `previous`
    /// is the lease it replaces on renewal or rebinding; when its address
    /// differs from the new one, the old address must be removed.
    Configure {
        /// The new lease.
        lease: Box<Lease>,
        /// The lease being extended or replaced, if any.
        previous: Option<Box<Lease>>,
    },
    /// Remove the lease's address and routes.
    Deconfigure {
        /// The lease given up.
        lease: Box<Lease>,
        /// Why.
        reason: LossReason,
    },
}

/// The client's state, for status and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not started.
    Init,
    /// Sending DHCPDISCOVER, waiting for offers.
    Selecting,
    /// Sent DHCPREQUEST for an offer, waiting for DHCPACK.
    Requesting,
    /// Holding a lease.
    Bound,
    /// Past T1, renewing with the lease's server (unicast).
    Renewing,
    /// Past T2, asking any server (broadcast).
    Rebinding,
    /// Released or stopped; does nothing.
    Stopped,
}

impl Phase {
    /// Lower-case name, as in RFC 2131.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "init",
            Self::Selecting => "selecting",
            Self::Requesting => "requesting",
            Self::Bound => "bound",
            Self::Renewing => "renewing",
            Self::Rebinding => "rebinding",
            Self::Stopped => "stopped",
        }
    }
}

/// Fixed parameters of one client (one link).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The link's hardware address (`chaddr`).
    pub mac: [u8; 6],
    /// Host name sent in option 12 (the kernel's nodename), if any.
    pub hostname: Option<String>,
}

#[derive(Debug, Clone)]
struct Offer {
    address: Ipv4Addr,
    server: Ipv4Addr,
}

/// A request exchange in progress: the transaction, how many times its
/// message went out, when the next retransmission is due and when the
/// first one was sent (the lease clock starts there).
#[derive(Debug, Clone)]
struct Exchange {
    xid: u32,
    attempt: u32,
    next: Instant,
    first_sent: Instant,
}

#[derive(Debug, Clone)]
enum State {
    Init,
    Selecting(Exchange),
    Requesting(Exchange, Offer),
    Bound(Box<Lease>),
    Renewing(Exchange, Box<Lease>),
    Rebinding(Exchange, Box<Lease>),
    Stopped,
}

/// The DHCPv4 client state machine of one link.
#[derive(Debug)]
pub struct Machine {
    config: ClientConfig,
    client_id: Vec<u8>,
    state: State,
    rng: XorShift,
    /// Consecutive DHCPNAKs; each one delays the next discovery longer.
    naks: u32,
}

impl Machine {
    /// A new machine in the `Init` phase. `seed` drives transaction ids and
    /// retransmission jitter.
    pub fn new(config: ClientConfig, seed: u64) -> Self {
        let mut client_id = Vec::with_capacity(7);
        client_id.push(1); // hardware type: Ethernet (RFC 2132, 9.14)
        client_id.extend_from_slice(&config.mac);
        Self {
            config,
            client_id,
            state: State::Init,
            rng: XorShift::new(seed),
            naks: 0,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Init => Phase::Init,
            State::Selecting(_) => Phase::Selecting,
            State::Requesting(..) => Phase::Requesting,
            State::Bound(_) => Phase::Bound,
            State::Renewing(..) => Phase::Renewing,
            State::Rebinding(..) => Phase::Rebinding,
            State::Stopped => Phase::Stopped,
        }
    }

    /// How many times the current phase's message has been sent (0 when no
    /// exchange is running).
    pub fn attempt(&self) -> u32 {
        match &self.state {
            State::Selecting(ex)
            | State::Requesting(ex, _)
            | State::Renewing(ex, _)
            | State::Rebinding(ex, _) => ex.attempt,
            _ => 0,
        }
    }

    /// The lease currently held, if any.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound(l) | State::Renewing(_, l) | State::Rebinding(_, l) => Some(l),
            _ => None,
        }
    }

    /// The transaction id in use, if an exchange is running.
    pub fn xid(&self) -> Option<u32> {
        match &self.state {
            State::Selecting(ex)
            | State::Requesting(ex, _)
            | State::Renewing(ex, _)
            | State::Rebinding(ex, _) => Some(ex.xid),
            _ => None,
        }
    }

    /// When [`Machine::handle_timeout`] must be called next; `None` when no
    /// timer is running (not started, stopped, or an infinite lease).
    pub fn next_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Init | State::Stopped => None,
            State::Selecting(ex) | State::Requesting(ex, _) => Some(ex.next),
            State::Bound(lease) => lease.renew_at(),
            State::Renewing(ex, lease) => Some(min_opt(ex.next, lease.rebind_at())),
            State::Rebinding(ex, lease) => Some(min_opt(ex.next, lease.expires_at())),
        }
    }

    /// Starts discovery (from `Init`); does nothing in other phases.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        match self.state {
            State::Init => self.start_discovery(now, Vec::new()),
            _ => Vec::new(),
        }
    }

    /// Gives the lease back (DHCPRELEASE, unicast to its server) and stops.
    pub fn release(&mut self, now: Instant) -> Vec<Action> {
        let state = std::mem::replace(&mut self.state, State::Stopped);
        match state {
            State::Bound(lease) | State::Renewing(_, lease) | State::Rebinding(_, lease) => {
                let xid = self.rng.next_u32();
                let mut msg = self.base_message(xid, MessageType::Release, now, now);
                msg.set_ciaddr(lease.address);
                msg.set_flags(Flags::default());
                msg.opts_mut()
                    .insert(DhcpOption::ServerIdentifier(lease.server));
                // A RELEASE carries neither a parameter list nor a host name.
                msg.opts_mut().remove(OptionCode::ParameterRequestList);
                msg.opts_mut().remove(OptionCode::MaxMessageSize);
                msg.opts_mut().remove(OptionCode::Hostname);
                let destination = Destination::Unicast(lease.server);
                vec![
                    Action::Send {
                        message: Box::new(msg),
                        destination,
                    },
                    Action::Deconfigure {
                        lease,
                        reason: LossReason::Released,
                    },
                ]
            }
            _ => Vec::new(),
        }
    }

    /// Runs the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let state = std::mem::replace(&mut self.state, State::Stopped);
        match state {
            State::Init | State::Stopped => {
                self.state = state;
                Vec::new()
            }
            State::Selecting(mut ex) => {
                if now < ex.next {
                    self.state = State::Selecting(ex);
                    return Vec::new();
                }
                ex.attempt += 1;
                if ex.attempt == 1 {
                    ex.first_sent = now;
                }
                let msg = self.discover(ex.xid, ex.first_sent, now);
                ex.next = now + self.backoff(ex.attempt);
                self.state = State::Selecting(ex);
                vec![send(msg, Destination::Broadcast)]
            }
            State::Requesting(mut ex, offer) => {
                if now < ex.next {
                    self.state = State::Requesting(ex, offer);
                    return Vec::new();
                }
                if ex.attempt >= REQUEST_ATTEMPTS {
                    debug!(address = %offer.address, "no DHCPACK for the offer; restarting discovery");
                    return self.start_discovery(now, Vec::new());
                }
                ex.attempt += 1;
                let msg = self.request_selecting(ex.xid, &offer, ex.first_sent, now);
                ex.next = now + self.backoff(ex.attempt);
                self.state = State::Requesting(ex, offer);
                vec![send(msg, Destination::Broadcast)]
            }
            State::Bound(lease) => self.lease_timers(now, None, lease, Phase::Bound),
            State::Renewing(ex, lease) => self.lease_timers(now, Some(ex), lease, Phase::Renewing),
            State::Rebinding(ex, lease) => {
                self.lease_timers(now, Some(ex), lease, Phase::Rebinding)
            }
        }
    }

    /// Handles a received message; anything not for the current exchange is
    /// ignored.
    pub fn handle_message(&mut self, now: Instant, msg: &Message) -> Vec<Action> {
        if msg.opcode() != Opcode::BootReply || Some(msg.xid()) != self.xid() {
            return Vec::new();
        }
        // `Message::chaddr` slices by the packet's `hlen`: check it first so a
        // malformed packet (hlen > 16) cannot panic.
        if msg.hlen() != 6 || msg.chaddr() != self.config.mac {
            return Vec::new();
        }
        let Some(kind) = msg.opts().msg_type() else {
            return Vec::new();
        };
        let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let state = std::mem::replace(&mut self.state, State::Stopped);
        match (state, kind) {
            (State::Selecting(ex), MessageType::Offer) => {
                let address = msg.yiaddr();
                let Some(server) = server_id.filter(|s| !s.is_unspecified()) else {
                    debug!("ignoring DHCPOFFER without a server identifier");
                    self.state = State::Selecting(ex);
                    return Vec::new();
                };
                if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
                    debug!(%address, "ignoring DHCPOFFER with an unusable address");
                    self.state = State::Selecting(ex);
                    return Vec::new();
                }
                // Take the first usable offer; keep the xid (RFC 2131, 4.4.1).
                let offer = Offer { address, server };
                let ex = Exchange {
                    xid: ex.xid,
                    attempt: 1,
                    next: now + self.backoff(1),
                    first_sent: now,
                };
                let msg = self.request_selecting(ex.xid, &offer, ex.first_sent, now);
                self.state = State::Requesting(ex, offer);
                vec![send(msg, Destination::Broadcast)]
            }
            (State::Requesting(ex, offer), MessageType::Ack) => {
                if server_id.is_some_and(|s| s != offer.server) {
                    self.state = State::Requesting(ex, offer);
                    return Vec::new();
                }
                match Lease::from_ack(msg, ex.first_sent, Some(offer.server)) {
                    Ok(lease) => {
                        self.naks = 0;
                        let lease = Box::new(lease);
                        self.state = State::Bound(lease.clone());
                        vec![Action::Configure {
                            lease,
                            previous: None,
                        }]
                    }
                    Err(e) => {
                        warn!("ignoring DHCPACK: {e}");
                        self.state = State::Requesting(ex, offer);
                        Vec::new()
                    }
                }
            }
            (State::Requesting(ex, offer), MessageType::Nak) => {
                if server_id.is_some_and(|s| s != offer.server) {
                    self.state = State::Requesting(ex, offer);
                    return Vec::new();
                }
                self.restart_after_nak(now, Vec::new())
            }
            (State::Renewing(ex, lease) | State::Rebinding(ex, lease), MessageType::Ack) => {
                match Lease::from_ack(msg, ex.first_sent, server_id.or(Some(lease.server))) {
                    Ok(new) => {
                        self.naks = 0;
                        let new = Box::new(new);
                        self.state = State::Bound(new.clone());
                        vec![Action::Configure {
                            lease: new,
                            previous: Some(lease),
                        }]
                    }
                    Err(e) => {
                        warn!("ignoring DHCPACK: {e}");
                        self.state = restore(self.phase_of_exchange(&lease, now), ex, lease);
                        Vec::new()
                    }
                }
            }
            (State::Renewing(_, lease) | State::Rebinding(_, lease), MessageType::Nak) => {
                let lost = vec![Action::Deconfigure {
                    lease,
                    reason: LossReason::Nak,
                }];
                self.restart_after_nak(now, lost)
            }
            (state, _) => {
                self.state = state;
                Vec::new()
            }
        }
    }

    /// Which of renewing/rebinding `lease` is in at `now`.
    fn phase_of_exchange(&self, lease: &Lease, now: Instant) -> Phase {
        match lease.rebind_at() {
            Some(t2) if now >= t2 => Phase::Rebinding,
            _ => Phase::Renewing,
        }
    }

    /// Bound/renewing/rebinding timers: expiry, T2, T1, retransmissions.
    fn lease_timers(
        &mut self,
        now: Instant,
        ex: Option<Exchange>,
        lease: Box<Lease>,
        phase: Phase,
    ) -> Vec<Action> {
        let expired = lease.expires_at().is_some_and(|t| now >= t);
        let past_t2 = lease.rebind_at().is_some_and(|t| now >= t);
        let past_t1 = lease.renew_at().is_some_and(|t| now >= t);
        if expired {
            let lost = vec![Action::Deconfigure {
                lease,
                reason: LossReason::Expired,
            }];
            return self.start_discovery(now, lost);
        }
        if past_t2 && phase != Phase::Rebinding {
            // Enter REBINDING: ask any server, broadcast.
            let ex = self.new_exchange(now);
            let msg = self.request_extend(ex.xid, &lease, ex.first_sent, now);
            self.state = State::Rebinding(ex, lease);
            return vec![send(msg, Destination::Broadcast)];
        }
        if past_t1 && phase == Phase::Bound {
            // Enter RENEWING: ask the lease's server, unicast.
            let ex = self.new_exchange(now);
            let msg = self.request_extend(ex.xid, &lease, ex.first_sent, now);
            let server = lease.server;
            self.state = State::Renewing(ex, lease);
            return vec![send(msg, Destination::Unicast(server))];
        }
        match ex {
            Some(mut ex) if now >= ex.next => {
                ex.attempt += 1;
                ex.next = now + self.backoff(ex.attempt);
                let msg = self.request_extend(ex.xid, &lease, ex.first_sent, now);
                let destination = match phase {
                    Phase::Renewing => Destination::Unicast(lease.server),
                    _ => Destination::Broadcast,
                };
                self.state = restore(phase, ex, lease);
                vec![send(msg, destination)]
            }
            Some(ex) => {
                self.state = restore(phase, ex, lease);
                Vec::new()
            }
            None => {
                self.state = State::Bound(lease);
                Vec::new()
            }
        }
    }

    /// A fresh exchange whose first message goes out now.
    fn new_exchange(&mut self, now: Instant) -> Exchange {
        Exchange {
            xid: self.rng.next_u32(),
            attempt: 1,
            next: now + self.backoff(1),
            first_sent: now,
        }
    }

    /// Enters SELECTING with a new xid and sends the first DISCOVER now.
    fn start_discovery(&mut self, now: Instant, mut actions: Vec<Action>) -> Vec<Action> {
        let ex = self.new_exchange(now);
        let msg = self.discover(ex.xid, ex.first_sent, now);
        self.state = State::Selecting(ex);
        actions.push(send(msg, Destination::Broadcast));
        actions
    }

    /// Restarts discovery after a DHCPNAK: at once the first time, then
    /// after a growing delay so a server that refuses everything is not
    /// hammered.
    fn restart_after_nak(&mut self, now: Instant, actions: Vec<Action>) -> Vec<Action> {
        self.naks = self.naks.saturating_add(1);
        if self.naks <= 1 {
            return self.start_discovery(now, actions);
        }
        let delay = self.backoff(self.naks - 1);
        self.state = State::Selecting(Exchange {
            xid: self.rng.next_u32(),
            attempt: 0,
            next: now + delay,
            first_sent: now,
        });
        actions
    }

    /// Retransmission delay after the `attempt`-th transmission: 4 s, 8 s,
    /// ... up to 64 s, each randomised by ±1 s.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let base = INITIAL_BACKOFF
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(5))
            .min(MAX_BACKOFF);
        let span = u64::try_from(JITTER.as_millis() * 2).unwrap_or(2000);
        let offset = self.rng.next_u64() % (span + 1);
        (base + Duration::from_millis(offset)).saturating_sub(JITTER)
    }

    fn base_message(&self, xid: u32, kind: MessageType, started: Instant, now: Instant) -> Message {
        let mut msg = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.config.mac,
        );
        msg.set_opcode(Opcode::BootRequest);
        // Ask for broadcast replies: we may not have an address yet.
        msg.set_flags(Flags::default().set_broadcast());
        let secs = now.saturating_duration_since(started).as_secs();
        msg.set_secs(u16::try_from(secs).unwrap_or(u16::MAX));
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ClientIdentifier(self.client_id.clone()));
        opts.insert(DhcpOption::MaxMessageSize(MAX_MESSAGE_SIZE));
        opts.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::Hostname,
            OptionCode::DomainName,
            OptionCode::DomainSearch,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ]));
        if let Some(name) = &self.config.hostname {
            opts.insert(DhcpOption::Hostname(name.clone()));
        }
        msg
    }

    fn discover(&self, xid: u32, started: Instant, now: Instant) -> Message {
        self.base_message(xid, MessageType::Discover, started, now)
    }

    /// DHCPREQUEST in SELECTING: broadcast, naming the offer and its server.
    fn request_selecting(
        &self,
        xid: u32,
        offer: &Offer,
        started: Instant,
        now: Instant,
    ) -> Message {
        let mut msg = self.base_message(xid, MessageType::Request, started, now);
        msg.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.address));
        msg.opts_mut()
            .insert(DhcpOption::ServerIdentifier(offer.server));
        msg
    }

    /// DHCPREQUEST in RENEWING/REBINDING: `ciaddr` set, no server id, no
    /// requested address (RFC 2131, 4.3.2); the reply comes unicast.
    fn request_extend(&self, xid: u32, lease: &Lease, started: Instant, now: Instant) -> Message {
        let mut msg = self.base_message(xid, MessageType::Request, started, now);
        msg.set_ciaddr(lease.address);
        msg.set_flags(Flags::default());
        msg
    }
}

/// Encodes a message for the wire, padded to BOOTP's 300-byte minimum.
pub fn encode(msg: &Message) -> Result<Vec<u8>, dhcproto::error::EncodeError> {
    use dhcproto::Encodable;
    let mut buf = msg.to_vec()?;
    if buf.len() < MIN_PACKET_SIZE {
        buf.resize(MIN_PACKET_SIZE, 0);
    }
    Ok(buf)
}

/// Decodes a received message; `None` if it is not a DHCP message.
pub fn decode(buf: &[u8]) -> Option<Message> {
    use dhcproto::Decodable;
    // The magic cookie sits at offset 236; dhcproto does not check it.
    if buf.get(236..240) != Some(&dhcproto::v4::MAGIC[..]) {
        return None;
    }
    Message::from_bytes(buf).ok()
}

fn send(message: Message, destination: Destination) -> Action {
    Action::Send {
        message: Box::new(message),
        destination,
    }
}

fn restore(phase: Phase, ex: Exchange, lease: Box<Lease>) -> State {
    match phase {
        Phase::Rebinding => State::Rebinding(ex, lease),
        _ => State::Renewing(ex, lease),
    }
}

fn min_opt(a: Instant, b: Option<Instant>) -> Instant {
    b.map_or(a, |b| a.min(b))
}

/// xorshift64*: a tiny PRNG for transaction ids and jitter. Not for secrets.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn next_u32(&mut self) -> u32 {
        // The high half has the best bits.
        u32::try_from(self.next_u64() >> 32).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    fn machine() -> Machine {
        Machine::new(
            ClientConfig {
                mac: MAC,
                hostname: Some("node-1".into()),
            },
            42,
        )
    }

    fn sent(actions: &[Action]) -> Vec<(&Message, Destination)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send {
                    message,
                    destination,
                } => Some((&**message, *destination)),
                _ => None,
            })
            .collect()
    }

    fn only_send(actions: &[Action]) -> (Message, Destination) {
        let s = sent(actions);
        assert_eq!(s.len(), 1, "expected exactly one message, got {actions:?}");
        assert_eq!(actions.len(), 1, "expected only a send, got {actions:?}");
        (s[0].0.clone(), s[0].1)
    }

    fn reply(
        xid: u32,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        server: Ipv4Addr,
        extra: Vec<DhcpOption>,
    ) -> Message {
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        m.set_opcode(Opcode::BootReply);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        for o in extra {
            m.opts_mut().insert(o);
        }
        m
    }

    fn lease_opts(secs: u32) -> Vec<DhcpOption> {
        vec![
            DhcpOption::AddressLeaseTime(secs),
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![SERVER]),
            DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]),
        ]
    }

    fn msg_type(m: &Message) -> MessageType {
        m.opts().msg_type().unwrap()
    }

    fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
        m.opts().get(code)
    }

    /// Drives a fresh machine to BOUND with a lease of `secs` (T1/T2 from
    /// `extra`, defaults otherwise). Returns the machine and the time the
    /// lease clock started.
    fn bound(secs: u32, extra: Vec<DhcpOption>) -> (Machine, Instant) {
        let mut m = machine();
        let t0 = Instant::now();
        let (discover, _) = only_send(&m.start(t0));
        let offer = reply(discover.xid(), MessageType::Offer, ADDR, SERVER, vec![]);
        let t_req = t0 + Duration::from_millis(100);
        only_send(&m.handle_message(t_req, &offer));
        let mut opts = lease_opts(secs);
        opts.extend(extra);
        let ack = reply(discover.xid(), MessageType::Ack, ADDR, SERVER, opts);
        let actions = m.handle_message(t_req + Duration::from_millis(5), &ack);
        assert!(matches!(
            actions.as_slice(),
            [Action::Configure { previous: None, .. }]
        ));
        assert_eq!(m.phase(), Phase::Bound);
        (m, t_req)
    }

    #[test]
    fn discover_contents() {
        let mut m = machine();
        assert_eq!(m.phase(), Phase::Init);
        assert_eq!(m.next_timeout(), None);
        let t0 = Instant::now();
        let (d, dest) = only_send(&m.start(t0));
        assert_eq!(dest, Destination::Broadcast);
        assert_eq!(msg_type(&d), MessageType::Discover);
        assert_eq!(d.opcode(), Opcode::BootRequest);
        assert_eq!(d.chaddr(), MAC);
        assert!(d.flags().broadcast());
        assert_eq!(d.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            opt(&d, OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(vec![
                1, 0x02, 0x42, 0xac, 0x11, 0x00, 0x02
            ]))
        );
        assert_eq!(
            opt(&d, OptionCode::Hostname),
            Some(&DhcpOption::Hostname("node-1".into()))
        );
        match opt(&d, OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(list)) => {
                for c in [
                    OptionCode::SubnetMask,
                    OptionCode::Router,
                    OptionCode::DomainNameServer,
                    OptionCode::DomainName,
                ] {
                    assert!(list.contains(&c), "{c:?} not requested");
                }
            }
            other => panic!("no parameter request list: {other:?}"),
        }
        assert_eq!(m.phase(), Phase::Selecting);
        // Encoded, padded to 300 bytes and decodable.
        let wire = encode(&d).unwrap();
        assert!(wire.len() >= 300);
        assert_eq!(decode(&wire).unwrap(), d);
        assert!(decode(&wire[..200]).is_none());
    }

    #[test]
    fn discover_backoff_is_bounded_exponential_with_jitter() {
        let mut m = machine();
        let mut now = Instant::now();
        let first = only_send(&m.start(now)).0.xid();
        let mut gaps = Vec::new();
        for _ in 0..10 {
            let next = m.next_timeout().unwrap();
            gaps.push(next - now);
            // Nothing happens before the timer is due.
            assert!(m.handle_timeout(next - Duration::from_millis(1)).is_empty());
            now = next;
            let (d, _) = only_send(&m.handle_timeout(now));
            assert_eq!(msg_type(&d), MessageType::Discover);
            assert_eq!(d.xid(), first, "retransmissions keep the xid");
        }
        let expect = [4u64, 8, 16, 32, 64, 64, 64, 64, 64, 64];
        for (gap, base) in gaps.iter().zip(expect) {
            let lo = Duration::from_secs(base - 1);
            let hi = Duration::from_secs(base + 1);
            assert!(
                *gap >= lo && *gap <= hi,
                "gap {gap:?} not within {base} s ± 1 s"
            );
        }
        assert_eq!(m.attempt(), 11);
        assert_eq!(m.phase(), Phase::Selecting);
    }

    #[test]
    fn offer_selection_by_xid_and_chaddr() {
        let mut m = machine();
        let t0 = Instant::now();
        let (d, _) = only_send(&m.start(t0));
        let xid = d.xid();
        // Wrong xid.
        let wrong_xid = reply(
            xid.wrapping_add(1),
            MessageType::Offer,
            ADDR,
            SERVER,
            vec![],
        );
        assert!(m.handle_message(t0, &wrong_xid).is_empty());
        // Wrong chaddr.
        let mut wrong_mac = reply(xid, MessageType::Offer, ADDR, SERVER, vec![]);
        wrong_mac.set_chaddr(&[0x02, 0, 0, 0, 0, 9]);
        assert!(m.handle_message(t0, &wrong_mac).is_empty());
        // Malformed hlen must not panic.
        let mut bad_hlen = reply(xid, MessageType::Offer, ADDR, SERVER, vec![]);
        bad_hlen.set_chaddr(&[0u8; 16]);
        assert!(m.handle_message(t0, &bad_hlen).is_empty());
        // A request (BootRequest opcode) echoed back is ignored.
        let mut echo = reply(xid, MessageType::Offer, ADDR, SERVER, vec![]);
        echo.set_opcode(Opcode::BootRequest);
        assert!(m.handle_message(t0, &echo).is_empty());
        // An ACK while selecting is ignored.
        let ack = reply(xid, MessageType::Ack, ADDR, SERVER, lease_opts(60));
        assert!(m.handle_message(t0, &ack).is_empty());
        // No server identifier.
        let mut no_sid = reply(xid, MessageType::Offer, ADDR, SERVER, vec![]);
        no_sid.opts_mut().remove(OptionCode::ServerIdentifier);
        assert!(m.handle_message(t0, &no_sid).is_empty());
        assert_eq!(m.phase(), Phase::Selecting);
        // The right one.
        let good = reply(xid, MessageType::Offer, ADDR, SERVER, vec![]);
        let (r, dest) = only_send(&m.handle_message(t0, &good));
        assert_eq!(m.phase(), Phase::Requesting);
        assert_eq!(dest, Destination::Broadcast);
        assert_eq!(msg_type(&r), MessageType::Request);
        assert_eq!(r.xid(), xid);
        // A second offer is ignored once requesting.
        let other = reply(
            xid,
            MessageType::Offer,
            Ipv4Addr::new(10, 0, 2, 99),
            Ipv4Addr::new(10, 0, 2, 4),
            vec![],
        );
        assert!(m.handle_message(t0, &other).is_empty());
    }

    #[test]
    fn request_contents() {
        let mut m = machine();
        let t0 = Instant::now();
        let (d, _) = only_send(&m.start(t0));
        let offer = reply(d.xid(), MessageType::Offer, ADDR, SERVER, vec![]);
        let (r, _) = only_send(&m.handle_message(t0 + Duration::from_secs(2), &offer));
        assert_eq!(
            opt(&r, OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ADDR))
        );
        assert_eq!(
            opt(&r, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(
            opt(&r, OptionCode::Hostname),
            Some(&DhcpOption::Hostname("node-1".into()))
        );
        assert!(opt(&r, OptionCode::ClientIdentifier).is_some());
        assert_eq!(r.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(r.flags().broadcast());
        assert_eq!(r.chaddr(), MAC);
    }

    #[test]
    fn request_retransmits_then_restarts_discovery() {
        let mut m = machine();
        let t0 = Instant::now();
        let (d, _) = only_send(&m.start(t0));
        let offer = reply(d.xid(), MessageType::Offer, ADDR, SERVER, vec![]);
        only_send(&m.handle_message(t0, &offer));
        for _ in 1..REQUEST_ATTEMPTS {
            let now = m.next_timeout().unwrap();
            let (r, _) = only_send(&m.handle_timeout(now));
            assert_eq!(msg_type(&r), MessageType::Request);
        }
        let now = m.next_timeout().unwrap();
        let (again, _) = only_send(&m.handle_timeout(now));
        assert_eq!(msg_type(&again), MessageType::Discover);
        assert_ne!(again.xid(), d.xid());
        assert_eq!(m.phase(), Phase::Selecting);
    }

    #[test]
    fn ack_gives_lease_with_default_timers() {
        let (m, t_req) = bound(3600, vec![]);
        let lease = m.lease().unwrap();
        assert_eq!(lease.address, ADDR);
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.router(), Some(SERVER));
        assert_eq!(lease.server, SERVER);
        assert_eq!(
            lease.acquired, t_req,
            "lease clock starts when the REQUEST was sent"
        );
        assert_eq!(lease.t1, Duration::from_secs(1800));
        assert_eq!(lease.t2, Duration::from_secs(3150));
        assert_eq!(m.next_timeout(), Some(t_req + Duration::from_secs(1800)));
    }

    #[test]
    fn ack_with_explicit_timers() {
        let (m, t_req) = bound(
            600,
            vec![DhcpOption::Renewal(100), DhcpOption::Rebinding(200)],
        );
        assert_eq!(m.next_timeout(), Some(t_req + Duration::from_secs(100)));
        assert_eq!(m.lease().unwrap().t2, Duration::from_secs(200));
    }

    #[test]
    fn ack_from_other_server_is_ignored() {
        let mut m = machine();
        let t0 = Instant::now();
        let (d, _) = only_send(&m.start(t0));
        only_send(&m.handle_message(
            t0,
            &reply(d.xid(), MessageType::Offer, ADDR, SERVER, vec![]),
        ));
        let ack = reply(
            d.xid(),
            MessageType::Ack,
            ADDR,
            Ipv4Addr::new(10, 0, 2, 77),
            lease_opts(60),
        );
        assert!(m.handle_message(t0, &ack).is_empty());
        assert_eq!(m.phase(), Phase::Requesting);
    }

    #[test]
    fn nak_while_requesting_restarts_discovery() {
        let mut m = machine();
        let t0 = Instant::now();
        let (d, _) = only_send(&m.start(t0));
        only_send(&m.handle_message(
            t0,
            &reply(d.xid(), MessageType::Offer, ADDR, SERVER, vec![]),
        ));
        let nak = reply(
            d.xid(),
            MessageType::Nak,
            Ipv4Addr::UNSPECIFIED,
            SERVER,
            vec![],
        );
        let (again, _) = only_send(&m.handle_message(t0, &nak));
        assert_eq!(msg_type(&again), MessageType::Discover);
        assert_ne!(again.xid(), d.xid());
        assert_eq!(m.phase(), Phase::Selecting);
        assert!(m.lease().is_none());

        // A second NAK in a row delays the next discovery.
        let t1 = t0 + Duration::from_secs(1);
        only_send(&m.handle_message(
            t1,
            &reply(again.xid(), MessageType::Offer, ADDR, SERVER, vec![]),
        ));
        let nak = reply(
            again.xid(),
            MessageType::Nak,
            Ipv4Addr::UNSPECIFIED,
            SERVER,
            vec![],
        );
        assert!(m.handle_message(t1, &nak).is_empty());
        assert_eq!(m.phase(), Phase::Selecting);
        let due = m.next_timeout().unwrap();
        assert!(due >= t1 + Duration::from_secs(3));
        let (d3, _) = only_send(&m.handle_timeout(due));
        assert_eq!(msg_type(&d3), MessageType::Discover);
    }

    #[test]
    fn renew_at_t1_unicast_then_ack_extends() {
        let (mut m, t_req) = bound(3600, vec![]);
        let t1 = t_req + Duration::from_secs(1800);
        assert!(m.handle_timeout(t1 - Duration::from_millis(1)).is_empty());
        let (r, dest) = only_send(&m.handle_timeout(t1));
        assert_eq!(m.phase(), Phase::Renewing);
        assert_eq!(dest, Destination::Unicast(SERVER));
        assert_eq!(msg_type(&r), MessageType::Request);
        assert_eq!(r.ciaddr(), ADDR);
        assert!(opt(&r, OptionCode::ServerIdentifier).is_none());
        assert!(opt(&r, OptionCode::RequestedIpAddress).is_none());
        assert!(!r.flags().broadcast());
        // Retransmission while renewing stays unicast.
        let next = m.next_timeout().unwrap();
        assert!(next > t1 && next <= t1 + Duration::from_secs(5));
        let (r2, dest) = only_send(&m.handle_timeout(next));
        assert_eq!(dest, Destination::Unicast(SERVER));
        assert_eq!(r2.xid(), r.xid());
        // ACK: bound again with a lease counted from the first renewal REQUEST.
        let ack = reply(r.xid(), MessageType::Ack, ADDR, SERVER, lease_opts(3600));
        let actions = m.handle_message(next, &ack);
        match actions.as_slice() {
            [
                Action::Configure {
                    lease,
                    previous: Some(prev),
                },
            ] => {
                assert_eq!(lease.address, ADDR);
                assert_eq!(prev.address, ADDR);
                assert_eq!(lease.acquired, t1);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(m.phase(), Phase::Bound);
        assert_eq!(m.next_timeout(), Some(t1 + Duration::from_secs(1800)));
    }

    #[test]
    fn renewal_with_new_address_replaces_it() {
        let (mut m, t_req) = bound(100, vec![]);
        let (r, _) = only_send(&m.handle_timeout(t_req + Duration::from_secs(50)));
        let new_addr = Ipv4Addr::new(10, 0, 2, 16);
        let ack = reply(r.xid(), MessageType::Ack, new_addr, SERVER, lease_opts(100));
        match m
            .handle_message(t_req + Duration::from_secs(51), &ack)
            .as_slice()
        {
            [
                Action::Configure {
                    lease,
                    previous: Some(prev),
                },
            ] => {
                assert_eq!(lease.address, new_addr);
                assert_eq!(prev.address, ADDR);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rebind_at_t2_then_expiry_restarts_discovery() {
        let (mut m, t_req) = bound(100, vec![]);
        let t1 = t_req + Duration::from_secs(50);
        let t2 = t_req + Duration::from_micros(87_500_000);
        let end = t_req + Duration::from_secs(100);
        let (renew, _) = only_send(&m.handle_timeout(t1));
        // Retransmissions while renewing never overshoot T2.
        let mut now;
        loop {
            let next = m.next_timeout().unwrap();
            assert!(next <= t2);
            now = next;
            let actions = m.handle_timeout(now);
            if m.phase() == Phase::Rebinding {
                let (rb, dest) = only_send(&actions);
                assert_eq!(dest, Destination::Broadcast);
                assert_eq!(rb.ciaddr(), ADDR);
                assert!(opt(&rb, OptionCode::ServerIdentifier).is_none());
                assert_ne!(rb.xid(), renew.xid());
                break;
            }
            let (again, dest) = only_send(&actions);
            assert_eq!(dest, Destination::Unicast(SERVER));
            assert_eq!(again.xid(), renew.xid());
        }
        assert_eq!(now, t2);
        // The lease is kept until it expires.
        loop {
            let next = m.next_timeout().unwrap();
            assert!(next <= end);
            let actions = m.handle_timeout(next);
            if next == end {
                assert_eq!(actions.len(), 2, "{actions:?}");
                assert!(
                    matches!(&actions[0], Action::Deconfigure { reason: LossReason::Expired, lease } if lease.address == ADDR)
                );
                let (d, dest) = (sent(&actions)[0].0, sent(&actions)[0].1);
                assert_eq!(msg_type(d), MessageType::Discover);
                assert_eq!(dest, Destination::Broadcast);
                break;
            }
            assert!(m.lease().is_some());
            let (rb, dest) = only_send(&actions);
            assert_eq!(dest, Destination::Broadcast);
            assert_eq!(msg_type(&rb), MessageType::Request);
        }
        assert_eq!(m.phase(), Phase::Selecting);
        assert!(m.lease().is_none());
    }

    #[test]
    fn late_timer_jumps_straight_to_expiry() {
        // A suspended process (or a stalled clock) waking after expiry.
        let (mut m, t_req) = bound(100, vec![]);
        let actions = m.handle_timeout(t_req + Duration::from_secs(500));
        assert!(matches!(
            &actions[0],
            Action::Deconfigure {
                reason: LossReason::Expired,
                ..
            }
        ));
        assert_eq!(m.phase(), Phase::Selecting);
    }

    #[test]
    fn rebinding_ack_from_other_server() {
        let (mut m, t_req) = bound(100, vec![]);
        only_send(&m.handle_timeout(t_req + Duration::from_secs(50)));
        let t2 = t_req + Duration::from_micros(87_500_000);
        let (rb, _) = only_send(&m.handle_timeout(t2));
        assert_eq!(m.phase(), Phase::Rebinding);
        let other = Ipv4Addr::new(10, 0, 2, 4);
        let ack = reply(rb.xid(), MessageType::Ack, ADDR, other, lease_opts(100));
        match m.handle_message(t2, &ack).as_slice() {
            [Action::Configure { lease, .. }] => assert_eq!(lease.server, other),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn nak_while_renewing_drops_lease() {
        let (mut m, t_req) = bound(100, vec![]);
        let (r, _) = only_send(&m.handle_timeout(t_req + Duration::from_secs(50)));
        let nak = reply(
            r.xid(),
            MessageType::Nak,
            Ipv4Addr::UNSPECIFIED,
            SERVER,
            vec![],
        );
        let actions = m.handle_message(t_req + Duration::from_secs(51), &nak);
        assert_eq!(actions.len(), 2);
        assert!(matches!(
            &actions[0],
            Action::Deconfigure {
                reason: LossReason::Nak,
                ..
            }
        ));
        assert_eq!(msg_type(sent(&actions)[0].0), MessageType::Discover);
        assert_eq!(m.phase(), Phase::Selecting);
    }

    #[test]
    fn release_sends_unicast_and_deconfigures() {
        let (mut m, t_req) = bound(100, vec![]);
        let actions = m.release(t_req + Duration::from_secs(10));
        assert_eq!(actions.len(), 2);
        let (rel, dest) = (sent(&actions)[0].0, sent(&actions)[0].1);
        assert_eq!(msg_type(rel), MessageType::Release);
        assert_eq!(dest, Destination::Unicast(SERVER));
        assert_eq!(rel.ciaddr(), ADDR);
        assert_eq!(
            opt(rel, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert!(matches!(
            &actions[1],
            Action::Deconfigure {
                reason: LossReason::Released,
                ..
            }
        ));
        assert_eq!(m.phase(), Phase::Stopped);
        assert_eq!(m.next_timeout(), None);
        // Without a lease there is nothing to release.
        let mut fresh = machine();
        fresh.start(Instant::now());
        assert!(fresh.release(Instant::now()).is_empty());
        assert_eq!(fresh.phase(), Phase::Stopped);
    }

    #[test]
    fn infinite_lease_never_renews() {
        let (m, _) = bound(u32::MAX, vec![]);
        assert_eq!(m.next_timeout(), None);
    }

    #[test]
    fn no_hostname_option_when_unknown() {
        let mut m = Machine::new(
            ClientConfig {
                mac: MAC,
                hostname: None,
            },
            1,
        );
        let (d, _) = only_send(&m.start(Instant::now()));
        assert!(opt(&d, OptionCode::Hostname).is_none());
    }
}
