//! What the API server prints for a person at the node's console (HDMI or
//! serial; PID 1's supervisor echoes apid's stdout there, each line prefixed
//! `[apid]`).
//!
//! In maintenance mode: a short block with the version, the node's
//! addresses, the certificate fingerprint and the exact `nodectl` command
//! that configures the node, printed at start and again when the addresses
//! change ([`watch_addresses`]). Configured: one line.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The API's default port: the command leaves it out.
const DEFAULT_PORT: u16 = 50000;
/// How often the addresses are looked at in maintenance mode.
const CHECK: Duration = Duration::from_secs(5);
/// Fewest seconds between two re-printed blocks (the first addresses after
/// none are printed at once).
const MIN_REPRINT: Duration = Duration::from_secs(30);

/// The facts the console text is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `Bramble 0.1.0`.
    pub os: String,
    /// Git revision of the build.
    pub revision: String,
    /// No configuration yet.
    pub maintenance: bool,
    /// The address the API listens on (its port goes into the command).
    pub listen: SocketAddr,
    /// The node's addresses (no loopback or link-local).
    pub addresses: Vec<IpAddr>,
    /// `SHA256:...` of the server certificate.
    pub fingerprint: String,
}

/// `host` or `host:port` as `nodectl -n` takes it.
fn node_arg(addr: Option<IpAddr>, port: u16) -> String {
    let host = addr.map_or_else(|| "<node-address>".to_owned(), |a| a.to_string());
    match (addr, port) {
        (_, DEFAULT_PORT) => host,
        (Some(IpAddr::V6(_)), p) => format!("[{host}]:{p}"),
        (_, p) => format!("{host}:{p}"),
    }
}

fn addresses_text(addresses: &[IpAddr]) -> String {
    if addresses.is_empty() {
        "none yet (waiting for DHCP or a cable; this is printed again when one appears)".to_owned()
    } else {
        addresses
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The text for `status`, without a trailing newline.
pub fn render(status: &Status) -> String {
    let version = if status.revision.is_empty() || status.revision == "unknown" {
        status.os.clone()
    } else {
        format!("{} ({})", status.os, status.revision)
    };
    if !status.maintenance {
        return format!(
            "{version}: configured; API listening on {} (mutual TLS), addresses {}, certificate fingerprint {}",
            status.listen,
            addresses_text(&status.addresses),
            status.fingerprint
        );
    }
    // An IPv4 address first: the shortest to type.
    let first = status
        .addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(status.addresses.first())
        .copied();
    let node = node_arg(first, status.listen.port());
    [
        // The first line as it always was: scripts read the bound address
        // and the fingerprint from it.
        format!(
            "API listening on {} (maintenance mode), certificate fingerprint {}",
            status.listen, status.fingerprint
        ),
        format!("==== {version}: maintenance mode, no configuration yet ===="),
        format!("  addresses: {}", addresses_text(&status.addresses)),
        "  Configure this node from your computer (nodectl gen config writes controlplane.yaml):"
            .to_owned(),
        format!("    nodectl apply-config --insecure -n {node} -f controlplane.yaml"),
        "  or, checking that you talk to this node:".to_owned(),
        format!(
            "    nodectl apply-config --cert-fingerprint {} -n {node} -f controlplane.yaml",
            status.fingerprint
        ),
        "====".to_owned(),
    ]
    .join("\n")
}

/// Writes `text` and a newline to standard output (PID 1's supervisor
/// echoes it to the console). Unlike `println!` it never panics: a closed
/// or broken output loses the text, nothing else.
pub fn print(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        tracing::debug!(error = %e, "console text not written");
    }
}

/// Decides when the maintenance block is printed again: a new list of
/// addresses must be seen at two checks in a row (an address that flickers
/// prints nothing), and blocks are [`MIN_REPRINT`] apart unless the last one
/// had no address at all.
#[derive(Debug)]
pub struct Reprint {
    printed: Vec<IpAddr>,
    printed_at: Instant,
    candidate: Option<Vec<IpAddr>>,
}

impl Reprint {
    /// After printing `printed` at `now`.
    pub fn new(printed: Vec<IpAddr>, now: Instant) -> Self {
        Self {
            printed,
            printed_at: now,
            candidate: None,
        }
    }

    /// The addresses seen at `now`; true when the block should be printed
    /// for them (the caller prints it; this records it as printed).
    pub fn check(&mut self, seen: Vec<IpAddr>, now: Instant) -> bool {
        if seen == self.printed {
            self.candidate = None;
            return false;
        }
        if self.candidate.as_ref() != Some(&seen) {
            self.candidate = Some(seen);
            return false;
        }
        if !self.printed.is_empty() && now.duration_since(self.printed_at) < MIN_REPRINT {
            return false;
        }
        self.candidate = None;
        self.printed = seen;
        self.printed_at = now;
        true
    }
}

/// In maintenance mode, prints the block again whenever the addresses
/// change (as [`Reprint`] decides). Runs until dropped.
pub async fn watch_addresses(mut status: Status) {
    let mut reprint = Reprint::new(status.addresses.clone(), Instant::now());
    loop {
        tokio::time::sleep(CHECK).await;
        let seen = bramble_netlink::local_addresses();
        if reprint.check(seen.clone(), Instant::now()) {
            status.addresses = seen;
            print(&render(&status));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(maintenance: bool, addresses: &[&str]) -> Status {
        Status {
            os: "Bramble 0.1.0".into(),
            revision: "abc123".into(),
            maintenance,
            listen: "[::]:50000".parse().unwrap(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            fingerprint: "SHA256:00ff".into(),
        }
    }

    #[test]
    fn maintenance_block_says_what_to_run() {
        let text = render(&status(true, &["fd00::5", "10.0.2.15"]));
        assert!(
            text.contains("Bramble 0.1.0 (abc123): maintenance mode"),
            "{text}"
        );
        assert!(text.contains("addresses: fd00::5, 10.0.2.15"), "{text}");
        assert_eq!(
            text.lines().next(),
            Some(
                "API listening on [::]:50000 (maintenance mode), certificate fingerprint SHA256:00ff"
            )
        );
        assert!(
            text.contains("nodectl apply-config --insecure -n 10.0.2.15 -f controlplane.yaml"),
            "{text}"
        );
        assert!(
            text.contains(
                "nodectl apply-config --cert-fingerprint SHA256:00ff -n 10.0.2.15 -f controlplane.yaml"
            ),
            "{text}"
        );
        assert!(text.lines().count() <= 8, "short: {text}");
    }

    #[test]
    fn no_address_yet_and_other_ports() {
        let text = render(&status(true, &[]));
        assert!(text.contains("none yet"), "{text}");
        assert!(text.contains("-n <node-address> -f"), "{text}");
        let mut s = status(true, &["fd00::5"]);
        s.listen = "[::]:50001".parse().unwrap();
        assert!(render(&s).contains("-n [fd00::5]:50001 -f"));
        s.addresses = vec!["10.0.0.9".parse().unwrap()];
        assert!(render(&s).contains("-n 10.0.0.9:50001 -f"));
    }

    #[test]
    fn configured_is_one_line() {
        let text = render(&status(false, &["10.0.2.15"]));
        assert_eq!(
            text,
            "Bramble 0.1.0 (abc123): configured; API listening on [::]:50000 (mutual TLS), addresses 10.0.2.15, certificate fingerprint SHA256:00ff"
        );
    }

    #[test]
    fn reprints_only_settled_changes_and_not_too_often() {
        let ip = |s: &str| -> Vec<IpAddr> { vec![s.parse().unwrap()] };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Reprint::new(vec![], t0);
        // The first address after none: as soon as it is seen twice.
        assert!(!r.check(ip("10.0.2.15"), at(5)));
        assert!(r.check(ip("10.0.2.15"), at(10)));
        assert!(!r.check(ip("10.0.2.15"), at(15)));
        // A flicker prints nothing.
        assert!(!r.check(ip("10.0.2.16"), at(20)));
        assert!(!r.check(ip("10.0.2.15"), at(25)));
        // A real change, but too soon after the last block: it waits.
        assert!(!r.check(ip("10.0.2.16"), at(30)));
        assert!(!r.check(ip("10.0.2.16"), at(35)));
        assert!(r.check(ip("10.0.2.16"), at(45)));
        // Losing every address is a change too.
        assert!(!r.check(vec![], at(80)));
        assert!(r.check(vec![], at(85)));
    }
}
