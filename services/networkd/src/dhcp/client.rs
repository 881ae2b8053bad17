//! The per-link DHCP driver: owns the UDP socket and a [`Machine`], sends
//! what the machine asks for, feeds it received packets and timer ticks,
//! and applies its leases to the kernel through [`Netlink`].

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use dhcproto::v4::{CLIENT_PORT, MessageType, SERVER_PORT};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::Lease;
use super::machine::{self, Action, ClientConfig, Destination, LossReason, Machine, Phase};
use crate::error::Error;
use crate::links::{Link, Netlink};
use crate::status::LinkEvent;

/// After this many transmissions of one exchange, further attempts are
/// logged at most once per [`LOG_INTERVAL`].
const LOGGED_ATTEMPTS: u32 = 3;
/// Minimum interval between logged retransmissions after the first few.
const LOG_INTERVAL: Duration = Duration::from_secs(300);
/// How long the driver waits before retrying after a socket error.
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// `ENODEV`: the link went away.
const ENODEV: i32 = 19;

/// Settings shared by all links' drivers.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Host name to send in option 12.
    pub hostname: Option<String>,
    /// Base metric of default routes (the link index is added so links do
    /// not replace each other's route).
    pub route_metric: u32,
    /// How long to wait for carrier before starting DHCP anyway.
    pub carrier_timeout: Duration,
}

/// One link's DHCP client.
#[derive(Debug)]
pub struct Driver {
    link: Link,
    mac: [u8; 6],
    nl: Netlink,
    config: DriverConfig,
    events: mpsc::UnboundedSender<LinkEvent>,
    shutdown: watch::Receiver<bool>,
    log: AttemptLog,
}

impl Driver {
    /// A driver for `link`. Fails if the link has no Ethernet address.
    pub fn new(
        link: Link,
        nl: Netlink,
        config: DriverConfig,
        events: mpsc::UnboundedSender<LinkEvent>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, Error> {
        let mac = link
            .ethernet_mac()
            .ok_or_else(|| Error::NoHardwareAddress(link.name.clone()))?;
        Ok(Self {
            link,
            mac,
            nl,
            config,
            events,
            shutdown,
            log: AttemptLog::default(),
        })
    }

    fn metric(&self) -> u32 {
        self.config.route_metric.saturating_add(self.link.index)
    }

    fn emit(&self, event: LinkEvent) {
        // The receiver only goes away when the daemon is exiting.
        let _ = self.events.send(event);
    }

    /// Runs until shutdown (releasing the lease) or until the link vanishes.
    pub async fn run(mut self) {
        let index = self.link.index;
        if let Err(e) = self.run_inner().await {
            error!(link = %self.link.name, "DHCP client stopped: {e}");
        }
        self.emit(LinkEvent::Stopped { index });
    }

    async fn run_inner(&mut self) -> Result<(), Error> {
        let name = self.link.name.clone();
        // Bounded wait for carrier; DHCP starts regardless and keeps retrying.
        let carrier = tokio::select! {
            r = self.nl.wait_carrier(&self.link, self.config.carrier_timeout) => r?,
            _ = self.shutdown.changed() => return Ok(()),
        };
        if carrier {
            info!(link = %name, "carrier up");
        } else {
            warn!(link = %name, "no carrier after {:?}; trying DHCP anyway", self.config.carrier_timeout);
        }
        self.emit(LinkEvent::Carrier {
            index: self.link.index,
            carrier,
        });

        let socket = open_socket(&name)?;
        let seed = rand::random::<u64>() ^ u64::from(self.link.index);
        let mut machine = Machine::new(
            ClientConfig {
                mac: self.mac,
                hostname: self.config.hostname.clone(),
            },
            seed,
        );
        let mut buf = vec![0u8; usize::from(machine::MAX_MESSAGE_SIZE)];
        let mut phase = machine.phase();

        let actions = machine.start(Instant::now());
        self.perform(&socket, &machine, actions).await?;
        loop {
            if machine.phase() != phase {
                phase = machine.phase();
                self.emit(LinkEvent::Phase {
                    index: self.link.index,
                    phase,
                });
            }
            let deadline = machine.next_timeout();
            let actions = tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => match buf.get(..n).and_then(machine::decode) {
                        Some(msg) => {
                            debug!(link = %name, %from, kind = ?msg.opts().msg_type(), xid = msg.xid(), "received");
                            machine.handle_message(Instant::now(), &msg)
                        }
                        None => Vec::new(),
                    },
                    Err(e) if e.raw_os_error() == Some(ENODEV) => {
                        return Err(Error::LinkNotFound(name));
                    }
                    Err(e) => {
                        warn!(link = %name, "receive failed: {e}");
                        tokio::time::sleep(ERROR_PAUSE).await;
                        Vec::new()
                    }
                },
                () = sleep_until(deadline) => machine.handle_timeout(Instant::now()),
                _ = self.shutdown.changed() => break,
            };
            self.perform(&socket, &machine, actions).await?;
        }

        // Shutdown: give the lease back.
        let actions = machine.release(Instant::now());
        if !actions.is_empty() {
            self.perform(&socket, &machine, actions).await?;
        }
        Ok(())
    }

    async fn perform(
        &mut self,
        socket: &UdpSocket,
        machine: &Machine,
        actions: Vec<Action>,
    ) -> Result<(), Error> {
        for action in actions {
            match action {
                Action::Send {
                    message,
                    destination,
                } => {
                    self.log_send(machine, &message, destination);
                    let bytes = machine::encode(&message)?;
                    let ip = match destination {
                        Destination::Broadcast => Ipv4Addr::BROADCAST,
                        Destination::Unicast(ip) => ip,
                    };
                    let to = SocketAddr::V4(SocketAddrV4::new(ip, SERVER_PORT));
                    if let Err(e) = socket.send_to(&bytes, to).await {
                        if e.raw_os_error() == Some(ENODEV) {
                            return Err(Error::LinkNotFound(self.link.name.clone()));
                        }
                        warn!(link = %self.link.name, %to, "send failed: {e}");
                    }
                }
                Action::Configure { lease, previous } => {
                    self.configure(&lease, previous.as_deref()).await;
                    self.emit(LinkEvent::Leased {
                        index: self.link.index,
                        lease,
                        renewal: previous.is_some(),
                    });
                }
                Action::Deconfigure { lease, reason } => {
                    self.deconfigure(&lease, reason).await;
                    self.emit(LinkEvent::Lost {
                        index: self.link.index,
                        reason,
                    });
                }
            }
        }
        Ok(())
    }

    /// Installs a lease: replaces a changed address, refreshes the address
    /// lifetime and the default route.
    async fn configure(&self, lease: &Lease, previous: Option<&Lease>) {
        let index = self.link.index;
        let metric = self.metric();
        if let Some(prev) = previous {
            let moved = prev.address != lease.address || prev.prefix_len != lease.prefix_len;
            if let Some(router) = prev.router()
                && (moved || prev.router() != lease.router())
                && let Err(e) = self.nl.del_default_route(index, prev, router, metric).await
            {
                warn!(link = %self.link.name, "{e}");
            }
            if moved {
                info!(link = %self.link.name, old = %prev.cidr(), new = %lease.cidr(), "address changed on renewal");
                if let Err(e) = self
                    .nl
                    .del_address(index, prev.address, prev.prefix_len)
                    .await
                {
                    warn!(link = %self.link.name, "{e}");
                }
            }
        }
        let remaining = lease.remaining_secs(Instant::now());
        if let Err(e) = self.nl.add_lease_address(index, lease, remaining).await {
            error!(link = %self.link.name, "{e}");
            return;
        }
        if let Some(router) = lease.router()
            && let Err(e) = self
                .nl
                .add_default_route(index, lease, router, metric)
                .await
        {
            error!(link = %self.link.name, "{e}");
        }
        if previous.is_some() {
            info!(link = %self.link.name, address = %lease.cidr(), server = %lease.server,
                  lease_s = lease.lease_time.map(|d| d.as_secs()), "lease renewed");
        } else {
            info!(link = %self.link.name, address = %lease.cidr(), router = ?lease.router(), server = %lease.server,
                  lease_s = lease.lease_time.map(|d| d.as_secs()), dns = ?lease.dns, "lease acquired");
        }
    }

    /// Removes a lease's default route and address.
    async fn deconfigure(&self, lease: &Lease, reason: LossReason) {
        let index = self.link.index;
        info!(link = %self.link.name, address = %lease.cidr(), "lease {}; removing address", reason.as_str());
        if let Some(router) = lease.router()
            && let Err(e) = self
                .nl
                .del_default_route(index, lease, router, self.metric())
                .await
        {
            warn!(link = %self.link.name, "{e}");
        }
        if let Err(e) = self
            .nl
            .del_address(index, lease.address, lease.prefix_len)
            .await
        {
            warn!(link = %self.link.name, "{e}");
        }
    }

    /// Logs a transmission: the first few of each exchange, then at most
    /// once per [`LOG_INTERVAL`] with a count of the ones not logged.
    fn log_send(
        &mut self,
        machine: &Machine,
        message: &dhcproto::v4::Message,
        destination: Destination,
    ) {
        let kind = message.opts().msg_type().unwrap_or(MessageType::Unknown(0));
        let attempt = machine.attempt();
        let phase = machine.phase();
        let name = &self.link.name;
        let what = match (kind, phase) {
            (MessageType::Discover, _) => "DHCPDISCOVER (no lease yet)".to_owned(),
            (MessageType::Request, Phase::Requesting) => {
                "DHCPREQUEST for the offered address".to_owned()
            }
            (MessageType::Request, Phase::Renewing) => match machine.lease() {
                Some(l) => format!("DHCPREQUEST renewing {} with {}", l.cidr(), l.server),
                None => "DHCPREQUEST (renewing)".to_owned(),
            },
            (MessageType::Request, Phase::Rebinding) => match machine.lease() {
                Some(l) => format!("DHCPREQUEST rebinding {} (any server)", l.cidr()),
                None => "DHCPREQUEST (rebinding)".to_owned(),
            },
            (other, _) => format!("{other:?}"),
        };
        if kind == MessageType::Release {
            info!(link = %name, ?destination, "sending DHCPRELEASE for {}", message.ciaddr());
            return;
        }
        let now = Instant::now();
        if self.log.should_log(attempt, now) {
            let skipped = self.log.take_skipped();
            if skipped > 0 {
                info!(link = %name, ?destination, "sending {what}, attempt {attempt} ({skipped} earlier attempts not logged)");
            } else {
                info!(link = %name, ?destination, "sending {what}, attempt {attempt}");
            }
        } else {
            debug!(link = %name, ?destination, "sending {what}, attempt {attempt}");
        }
    }
}

/// Rate limit for retransmission logs.
#[derive(Debug, Default)]
struct AttemptLog {
    last: Option<Instant>,
    skipped: u32,
}

impl AttemptLog {
    fn should_log(&mut self, attempt: u32, now: Instant) -> bool {
        let due = attempt <= LOGGED_ATTEMPTS
            || self
                .last
                .is_none_or(|t| now.saturating_duration_since(t) >= LOG_INTERVAL);
        if attempt <= 1 {
            self.skipped = 0;
        }
        if due {
            self.last = Some(now);
        } else {
            self.skipped = self.skipped.saturating_add(1);
        }
        due
    }

    fn take_skipped(&mut self) -> u32 {
        std::mem::take(&mut self.skipped)
    }
}

/// A UDP socket on 0.0.0.0:68 bound to the link, allowed to broadcast.
fn open_socket(link: &str) -> Result<UdpSocket, Error> {
    let err = |what: &'static str| {
        move |source: io::Error| Error::Socket {
            link: link.to_owned(),
            what,
            source,
        }
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err("socket"))?;
    s.set_reuse_address(true).map_err(err("SO_REUSEADDR"))?;
    s.set_broadcast(true).map_err(err("SO_BROADCAST"))?;
    s.bind_device(Some(link.as_bytes()))
        .map_err(err("SO_BINDTODEVICE"))?;
    s.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT));
    s.bind(&addr.into()).map_err(err("bind 0.0.0.0:68"))?;
    UdpSocket::from_std(s.into()).map_err(err("register with the runtime"))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_log_throttles() {
        let mut log = AttemptLog::default();
        let t0 = Instant::now();
        assert!(log.should_log(1, t0));
        assert!(log.should_log(2, t0 + Duration::from_secs(4)));
        assert!(log.should_log(3, t0 + Duration::from_secs(12)));
        assert!(!log.should_log(4, t0 + Duration::from_secs(28)));
        assert!(!log.should_log(5, t0 + Duration::from_secs(60)));
        assert!(log.should_log(9, t0 + Duration::from_secs(12 + 300)));
        assert_eq!(log.take_skipped(), 2);
        // A new exchange logs its first attempts again.
        assert!(log.should_log(1, t0 + Duration::from_secs(320)));
    }
}
