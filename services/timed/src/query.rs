//! One SNTP exchange with one server address, and name resolution.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::clock::Clock;
use crate::error::QueryError;
use crate::ntp::{self, NtpTimestamp, Reply, Sample};

/// At most this many addresses of one name are tried per attempt.
pub const MAX_ADDRS_PER_NAME: usize = 4;

/// A good measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// The address that answered.
    pub addr: SocketAddr,
    /// Offset and delay.
    pub sample: Sample,
    /// The accepted reply.
    pub reply: Reply,
}

/// Resolves a server name (or IP address) to its NTP socket addresses.
/// Names go through the system resolver (`/etc/resolv.conf`, read at each
/// call) on a blocking thread, bounded by `timeout`.
pub async fn resolve(
    name: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, QueryError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let owned = name.to_owned();
    let task = tokio::task::spawn_blocking(move || {
        (owned.as_str(), port)
            .to_socket_addrs()
            .map(|it| it.collect::<Vec<_>>())
    });
    let err = |reason: String| QueryError::Resolve {
        name: name.to_owned(),
        reason,
    };
    match tokio::time::timeout(timeout, task).await {
        Err(_) => Err(err(format!("no answer within {} ms", timeout.as_millis()))),
        Ok(Err(join)) => Err(err(format!("resolver task failed: {join}"))),
        Ok(Ok(Err(e))) => Err(err(e.to_string())),
        Ok(Ok(Ok(addrs))) if addrs.is_empty() => Err(err("no addresses".into())),
        Ok(Ok(Ok(addrs))) => Ok(addrs),
    }
}

/// Sends one client request to `addr` and waits up to `timeout` for a valid
/// reply. Replies that do not echo our transmit timestamp (stale or forged)
/// are dropped and waiting goes on; any other invalid reply ends the
/// exchange with its reason. The offset is measured against `clock`.
pub async fn query(
    addr: SocketAddr,
    timeout: Duration,
    clock: &dyn Clock,
) -> Result<Measurement, QueryError> {
    let io = |what: &'static str| move |source| QueryError::Io { addr, what, source };
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(io("bind"))?;
    // Connected: the kernel drops datagrams from any other address and
    // reports ICMP errors (port unreachable) to us.
    socket.connect(addr).await.map_err(io("connect"))?;

    // T1 from the wall clock; T4 = T1 + monotonic elapsed time, so a clock
    // change during the exchange cannot distort the delay.
    let t1 = clock.now_ns();
    let started = Instant::now();
    let sent = NtpTimestamp::from_unix_nanos(t1);
    socket
        .send(&ntp::encode_request(sent))
        .await
        .map_err(io("send"))?;

    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 1024];
    loop {
        let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Err(_) => {
                return Err(QueryError::Timeout {
                    addr,
                    timeout_ms: timeout.as_millis(),
                });
            }
            Ok(r) => r.map_err(io("receive"))?,
        };
        let t4 = t1 + started.elapsed().as_nanos() as i128;
        match ntp::decode_reply(&buf[..n.min(buf.len())], sent) {
            Ok(reply) => {
                let sample = ntp::sample(
                    t1,
                    reply.receive.to_unix_nanos(),
                    reply.transmit.to_unix_nanos(),
                    t4,
                );
                return Ok(Measurement {
                    addr,
                    sample,
                    reply,
                });
            }
            Err(ntp::ReplyError::Origin) | Err(ntp::ReplyError::TooShort(_)) => continue,
            Err(source) => return Err(QueryError::Reply { addr, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::clock::SystemClock;

    /// A fake server on loopback answering one request with `build(request)`.
    async fn serve_once(build: impl FnOnce(&[u8]) -> Vec<u8> + Send + 'static) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 128];
            let (n, peer) = sock.recv_from(&mut buf).await.unwrap();
            let reply = build(&buf[..n]);
            sock.send_to(&reply, peer).await.unwrap();
        });
        addr
    }

    fn server_reply(req: &[u8], stratum: u8, server_ahead_ns: i128) -> Vec<u8> {
        assert_eq!(req.len(), 48);
        assert_eq!(req[0] & 7, 3);
        let now = ntp::unix_nanos(SystemTime::now()) + server_ahead_ns;
        let ts = NtpTimestamp::from_unix_nanos(now).0.to_be_bytes();
        let mut b = vec![0u8; 48];
        b[0] = (4 << 3) | 4;
        b[1] = stratum;
        b[24..32].copy_from_slice(&req[40..48]);
        b[32..40].copy_from_slice(&ts);
        b[40..48].copy_from_slice(&ts);
        b
    }

    #[tokio::test(flavor = "current_thread")]
    async fn measures_offset_against_a_loopback_server() {
        let ahead = 3_600 * 1_000_000_000i128;
        let addr = serve_once(move |req| server_reply(req, 3, ahead)).await;
        let m = query(addr, Duration::from_secs(2), &SystemClock)
            .await
            .unwrap();
        assert_eq!(m.addr, addr);
        assert_eq!(m.reply.stratum, 3);
        assert!(
            (m.sample.offset_ns - ahead).abs() < 100_000_000,
            "{:?}",
            m.sample
        );
        assert!(m.sample.delay_ns < 100_000_000, "{:?}", m.sample);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reports_kiss_of_death_and_timeouts() {
        let addr = serve_once(|req| {
            let mut b = server_reply(req, 0, 0);
            b[12..16].copy_from_slice(b"DENY");
            b
        })
        .await;
        let err = query(addr, Duration::from_secs(2), &SystemClock)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, QueryError::Reply { source, .. } if source.is_access_denied()),
            "{err}"
        );

        // A reply with the wrong origin is ignored: the query times out.
        let addr = serve_once(|req| {
            let mut b = server_reply(req, 2, 0);
            b[31] ^= 1;
            b
        })
        .await;
        let err = query(addr, Duration::from_millis(300), &SystemClock)
            .await
            .unwrap_err();
        assert!(matches!(err, QueryError::Timeout { .. }), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn resolves_ip_literals_without_the_resolver() {
        let addrs = resolve("192.0.2.7", 123, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(addrs, vec!["192.0.2.7:123".parse().unwrap()]);
        let addrs = resolve("2001:db8::1", 123, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(addrs, vec!["[2001:db8::1]:123".parse().unwrap()]);
        let addrs = resolve("localhost", 123, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
