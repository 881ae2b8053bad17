//! DHCP: one packet as it comes off the wire, made into a lease as from a
//! DHCPACK; then a whole conversation driving networkd's client state
//! machine. The conversation is a list of records `[step][len u16 LE][packet]`:
//! bit 7 of `step` lets the machine's next timer fire first, bit 6 gives the
//! packet the exchange's transaction id and the client's hardware address
//! (which a server answering it would), bits 0-5 advance the clock by that
//! many seconds. Every lease the machine installs is consistent and every
//! message it sends encodes.
#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bramble_networkd::dhcp::lease::{Lease, MAX_NAMESERVERS, MAX_SEARCH_DOMAINS};
use bramble_networkd::dhcp::machine::{self, Action, ClientConfig, Machine};
use libfuzzer_sys::fuzz_target;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn check_lease(lease: &Lease, now: Instant) {
    assert!(lease.prefix_len <= 32);
    assert!(lease.t1 <= lease.t2);
    if let Some(time) = lease.lease_time {
        assert!(lease.t2 <= time);
    }
    assert!(lease.dns.len() <= MAX_NAMESERVERS);
    assert!(lease.search.len() <= MAX_SEARCH_DOMAINS);
    assert!(lease.on_link(lease.address));
    let _ = (
        lease.summary("eth0"),
        lease.remaining_secs(now),
        lease.renew_at(),
    );
    let _ = (lease.rebind_at(), lease.expires_at(), lease.router());
}

fn check_actions(actions: &[Action], now: Instant) {
    for action in actions {
        match action {
            Action::Send { message, .. } => {
                machine::encode(message).expect("a message the client sends encodes");
            }
            Action::Configure { lease, previous } => {
                check_lease(lease, now);
                if let Some(previous) = previous {
                    check_lease(previous, now);
                }
            }
            Action::Deconfigure { lease, .. } => check_lease(lease, now),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    if let Some(message) = machine::decode(data)
        && let Ok(lease) = Lease::from_ack(&message, start, Some(Ipv4Addr::new(10, 0, 2, 2)))
    {
        check_lease(&lease, start);
    }

    let config = ClientConfig {
        mac: MAC,
        hostname: Some("node-1".to_owned()),
    };
    let mut client = Machine::new(config, 0x5eed);
    let mut now = start;
    check_actions(&client.start(now), now);
    let mut rest = data;
    while let [step, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        rest = tail;
        now += Duration::from_secs(u64::from(step & 0x3f));
        if step & 0x80 != 0
            && let Some(due) = client.next_timeout()
        {
            now = now.max(due);
            check_actions(&client.handle_timeout(now), now);
        }
        if let Some(mut message) = machine::decode(packet) {
            if step & 0x40 != 0 {
                if let Some(xid) = client.xid() {
                    message.set_xid(xid);
                }
                message.set_chaddr(&MAC);
            }
            check_actions(&client.handle_message(now, &message), now);
        }
        let _ = (client.phase(), client.lease(), client.attempt());
    }
    check_actions(&client.release(now), now);
});
