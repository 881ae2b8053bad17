//! The configured network applied by the real `bramble-networkd` in a network
//! namespace the test creates, checked against the kernel with `ip`.
//!
//! One veth pair lives in the namespace; the machine configuration names one
//! end with an MTU, IPv4 and IPv6 addresses and routes. The test
//! checks the kernel state, then changes one address and one route and
//! checks, with `ip monitor` running, that nothing else was touched; then
//! that a restarted daemon changes nothing, that an unreadable configuration
//! changes nothing, and that removing the configuration removes exactly what
//! the daemon had added (an address added by someone else stays).
//!
//! Needs root and `ip` (iproute2); without them the test prints why and
//! passes without doing anything, except under `CI=true`, where it fails
//! (`bramble_testkit::skip_unless!`).
//!
//! VLANs and bonds are not made here: the build host's kernel may have
//! neither 802.1Q nor bonding (the CI machines' has none), so they are
//! tested on Bramble's own kernel in QEMU (`tests/tests/network.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File};
use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bramble_testkit::{run, skip_reason, skip_unless, wait_for};

const LINK: &str = "nrc0";
const PEER: &str = "nrc1";

const CA: &str = "    crt: |\n      -----BEGIN CERTIFICATE-----\n      MIIBszCCAVmgAwIBAgIUQnJhbWJsZSBPUyBDQQ==\n      -----END CERTIFICATE-----\n";

fn config(network: &str) -> String {
    format!(
        "version: v1alpha1\nmachine:\n  type: worker\n  ca:\n{CA}{network}cluster:\n  name: lab\n  controlPlane:\n    endpoint: https://10.77.0.1:6443\n"
    )
}

const FIRST: &str = "  network:
    interfaces:
      - interface: nrc0
        mtu: 1400
        addresses: [10.77.0.2/24, fd77::2/64]
        routes:
          - network: 10.78.0.0/16
            gateway: 10.77.0.1
          - network: 10.90.0.0/16
            gateway: 10.77.0.1
            metric: 50
    nameservers: [10.77.0.53]
    extraHosts:
      - ip: 10.77.0.9
        aliases: [registry.lab]
";

/// FIRST with one address and one route changed.
const SECOND: &str = "  network:
    interfaces:
      - interface: nrc0
        mtu: 1400
        addresses: [10.77.0.3/24, fd77::2/64]
        routes:
          - network: 10.88.0.0/16
            gateway: 10.77.0.1
          - network: 10.90.0.0/16
            gateway: 10.77.0.1
            metric: 50
    nameservers: [10.77.0.53]
    extraHosts:
      - ip: 10.77.0.9
        aliases: [registry.lab]
";

/// Addresses put on `lo` while `ip monitor` runs, to know when it has
/// subscribed and when it has received everything before.
const START_FENCE: &str = "127.0.42.1";
const END_FENCE: &str = "127.0.42.2";

/// Tests run in parallel, each in its own namespace.
static NEXT_LAB: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Lab {
    ns: String,
    dir: tempfile::TempDir,
    networkd: Option<Child>,
    monitor: Option<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in [self.networkd.take(), self.monitor.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

impl Lab {
    fn new() -> Self {
        let lab = Self {
            ns: format!(
                "bramble-nrc-{}-{}",
                std::process::id(),
                NEXT_LAB.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            dir: tempfile::tempdir().unwrap(),
            networkd: None,
            monitor: None,
        };
        run(&["ip", "netns", "add", &lab.ns]);
        run(&[
            "ip", "-n", &lab.ns, "link", "add", LINK, "type", "veth", "peer", "name", PEER,
        ]);
        run(&["ip", "-n", &lab.ns, "link", "set", PEER, "up"]);
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_config(&self, text: &str) {
        let tmp = self.path("config.yaml.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.path("config.yaml")).unwrap();
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.ns];
        all.extend_from_slice(args);
        run(&all)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ip(&all)).unwrap()
    }

    /// `a.b.c.d/len` (or IPv6) of every global address on `link`.
    fn addresses(&self, link: &str) -> Vec<String> {
        let v = self.json(&["addr", "show", "dev", link, "scope", "global"]);
        let mut out = Vec::new();
        // `ip -j` lists filtered-out addresses as empty objects.
        for a in v[0]["addr_info"].as_array().cloned().unwrap_or_default() {
            if let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                out.push(format!("{local}/{len}"));
            }
        }
        out.sort();
        out
    }

    /// `dst via gw metric N` of every static route.
    fn static_routes(&self) -> Vec<String> {
        let v = self.json(&["route", "show", "proto", "static"]);
        let mut out: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} via {} dev {} metric {}",
                    r["dst"].as_str().unwrap(),
                    r["gateway"].as_str().unwrap_or("-"),
                    r["dev"].as_str().unwrap(),
                    r["metric"].as_u64().unwrap_or(0)
                )
            })
            .collect();
        out.sort();
        out
    }

    fn state(&self) -> serde_json::Value {
        fs::read_to_string(self.path("run/network/state.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits for reconciliation pass `generation` and returns its record.
    fn applied(&self, generation: u64) -> serde_json::Value {
        wait_for(
            &format!("reconciliation pass {generation}"),
            Duration::from_secs(10),
            || {
                let s = self.state();
                (s["applied"]["generation"].as_u64() == Some(generation))
                    .then(|| s["applied"].clone())
            },
        )
    }

    fn start_networkd(&mut self) {
        let ready = File::create(self.path("ready")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                env!("CARGO_BIN_EXE_bramble-networkd"),
            ])
            .arg("--run-dir")
            .arg(self.path("run"))
            .arg("--config")
            .arg(self.path("config.yaml"))
            .env("BRAMBLE_READY_FD", "0")
            .stdin(ready)
            .stdout(Stdio::null())
            .stderr(
                File::options()
                    .create(true)
                    .append(true)
                    .open(self.path("networkd.stderr"))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.networkd = Some(child);
    }

    fn signal(&self, sig: &str) {
        let pid = self.networkd.as_ref().unwrap().id().to_string();
        run(&["kill", sig, &pid]);
    }

    fn stop_networkd(&mut self) {
        self.signal("-TERM");
        let mut child = self.networkd.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "networkd exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "networkd did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_monitor(&mut self) {
        let out = File::create(self.path("monitor.log")).unwrap();
        let child = Command::new("ip")
            .args(["-n", &self.ns, "monitor", "link", "address", "route"])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.monitor = Some(child);
        // `ip monitor` prints nothing until it has subscribed: it has once it
        // reports a change made after it started.
        self.monitor_fence(START_FENCE);
    }

    fn stop_monitor(&mut self) -> String {
        // The kernel queues notifications to a socket in order: once one for
        // a change made now has arrived, every earlier one has too.
        self.monitor_fence(END_FENCE);
        let mut child = self.monitor.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        self.monitor_log()
    }

    fn monitor_log(&self) -> String {
        let mut text = String::new();
        File::open(self.path("monitor.log"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    /// Puts `fence` on `lo` until `ip monitor` reports it, then removes it.
    /// A fence added before `ip monitor` subscribed is never reported, so it
    /// is removed and added again at each poll until one is. networkd leaves
    /// addresses it did not add alone and does not reconcile on address
    /// changes, and none of the fence's lines (address and local route)
    /// names what the test checks is untouched.
    fn monitor_fence(&self, fence: &str) {
        let address = format!("{fence}/32");
        let toggle = |verb: &str| {
            Command::new("ip")
                .args(["-n", &self.ns, "addr", verb, &address, "dev", "lo"])
                .stderr(Stdio::null())
                .status()
                .unwrap()
        };
        let mut attempts = 0;
        wait_for(
            &format!("`ip monitor` to report the address {fence}"),
            Duration::from_secs(10),
            || {
                if self.monitor_log().contains(fence) {
                    return Some(());
                }
                attempts += 1;
                assert!(
                    attempts <= 200,
                    "{fence} added {attempts} times, never reported"
                );
                toggle("del");
                assert!(toggle("add").success(), "cannot add {address} to lo");
                None
            },
        );
        assert!(toggle("del").success(), "cannot remove {address} from lo");
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.path("networkd.stderr")).unwrap_or_default()
    }
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn configured_network_is_applied_and_only_differences_change() {
    skip_unless!(available: skip_reason(&[]));
    let mut lab = Lab::new();
    lab.write_config(&config(FIRST));
    lab.start_networkd();

    // 1. Everything the configuration names.
    let first = lab.applied(1);
    assert_eq!(first["configured"], true, "{first}");
    assert_eq!(
        strings(&first["problems"]),
        Vec::<String>::new(),
        "{}",
        lab.stderr()
    );
    let link = lab.json(&["link", "show", "dev", LINK]);
    assert_eq!(link[0]["mtu"], 1400);
    assert!(
        link[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "UP"),
        "{link}"
    );
    assert_eq!(lab.addresses(LINK), vec!["10.77.0.2/24", "fd77::2/64"]);
    assert_eq!(
        lab.static_routes(),
        vec![
            "10.78.0.0/16 via 10.77.0.1 dev nrc0 metric 1024",
            "10.90.0.0/16 via 10.77.0.1 dev nrc0 metric 50",
        ]
    );
    let resolv = fs::read_to_string(lab.path("run/resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 10.77.0.53\n"), "{resolv}");
    let hosts = fs::read_to_string(lab.path("run/hosts")).unwrap();
    assert!(hosts.contains("10.77.0.9\tregistry.lab\n"), "{hosts}");
    // The veth end is not a physical port and is configured without DHCP.
    assert_eq!(lab.state()["links"], serde_json::json!([]));
    // Its static address makes the node reachable: online without a lease
    // (etcd's service waits for this marker).
    assert_eq!(lab.state()["online"], true, "{}", lab.state());
    assert!(lab.path("run/network/online").exists());

    // 2. One address and one route change; nothing else is touched.
    lab.start_monitor();
    lab.write_config(&config(SECOND));
    lab.signal("-HUP");
    let second = lab.applied(2);
    let monitor = lab.stop_monitor();
    // Nothing that was already right was sent to the kernel again (it would
    // answer "File exists").
    assert_eq!(
        strings(&second["problems"]),
        Vec::<String>::new(),
        "{}",
        lab.stderr()
    );
    assert_eq!(
        strings(&second["changes"]),
        vec![
            "nrc0: removed route 10.78.0.0/16 via 10.77.0.1 metric 1024",
            "nrc0: added address 10.77.0.3/24",
            "nrc0: removed address 10.77.0.2/24",
            "nrc0: added route 10.88.0.0/16 via 10.77.0.1 metric 1024",
        ],
        "{}",
        lab.stderr()
    );
    assert_eq!(lab.addresses(LINK), vec!["10.77.0.3/24", "fd77::2/64"]);
    assert_eq!(
        lab.static_routes(),
        vec![
            "10.88.0.0/16 via 10.77.0.1 dev nrc0 metric 1024",
            "10.90.0.0/16 via 10.77.0.1 dev nrc0 metric 50",
        ]
    );
    // The kernel reported changes only for what changed (and the prefix
    // route that follows the changed address).
    assert!(monitor.contains("10.77.0.3/24"), "{monitor}");
    assert!(monitor.contains("10.88.0.0/16"), "{monitor}");
    for untouched in ["fd77::2", "10.79.0.2", "10.90.0.0/16", "mtu", "nrc0.42:"] {
        assert!(
            !monitor.contains(untouched),
            "{untouched} was touched:\n{monitor}"
        );
    }

    // 3. A restarted daemon finds everything in place and changes nothing.
    lab.stop_networkd();
    assert_eq!(lab.addresses(LINK), vec!["10.77.0.3/24", "fd77::2/64"]);
    lab.start_networkd();
    let restarted = lab.applied(1);
    assert_eq!(strings(&restarted["changes"]), Vec::<String>::new());
    assert_eq!(strings(&restarted["problems"]), Vec::<String>::new());

    // 4. An unreadable configuration changes nothing and says why.
    lab.write_config("version: v1alpha1\nmachine: [\n");
    lab.signal("-HUP");
    let bad = lab.applied(2);
    assert!(
        bad["config_error"]
            .as_str()
            .unwrap()
            .contains("config.yaml"),
        "{bad}"
    );
    assert_eq!(strings(&bad["changes"]), Vec::<String>::new());
    assert_eq!(lab.addresses(LINK), vec!["10.77.0.3/24", "fd77::2/64"]);

    // 5. Without the network section, what the daemon added goes away and
    // an address added by someone else stays.
    lab.ip(&["addr", "add", "10.77.5.5/24", "dev", LINK]);
    lab.write_config(&config(""));
    lab.signal("-HUP");
    let cleared = lab.applied(3);
    let mut changes = strings(&cleared["changes"]);
    changes.sort();
    let expected = vec![
        "nrc0: removed address 10.77.0.3/24",
        "nrc0: removed address fd77::2/64",
        "nrc0: removed route 10.88.0.0/16 via 10.77.0.1 metric 1024",
        "nrc0: removed route 10.90.0.0/16 via 10.77.0.1 metric 50",
    ];
    assert_eq!(changes, expected, "{}", lab.stderr());
    assert_eq!(lab.addresses(LINK), vec!["10.77.5.5/24"]);
    assert_eq!(lab.static_routes(), Vec::<String>::new());
    lab.stop_networkd();
}

/// Whether the kernel can make links of `kind`.
fn kind_supported(lab: &Lab, kind: &str) -> bool {
    let ok = Command::new("ip")
        .args(["-n", &lab.ns, "link", "add", "probe0", "type", kind])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        lab.ip(&["link", "del", "probe0"]);
    }
    ok
}

const AGGREGATES: &str = "  network:
    interfaces:
      - interface: br0
        bridge:
          interfaces: [nrc0]
        addresses: [10.81.0.2/24]
        routes:
          - network: 10.91.0.0/16
            gateway: 10.81.0.1
            table: 100
      - interface: nrc6
        down: true
      - interface: uplink
        deviceSelector:
          hardwareAddr: 02:00:00:bb:*:*
        addresses: [10.82.0.2/24]
      - interface: lost
        deviceSelector:
          hardwareAddr: 02:00:00:cc:00:01
        addresses: [10.83.0.2/24]
";

#[test]
fn bridges_and_device_selectors() {
    skip_unless!(available: skip_reason(&[]));
    let mut lab = Lab::new();
    for (a, b, mac) in [
        ("nrc2", "nrc3", "02:00:00:bb:00:02"),
        ("nrc6", "nrc7", "02:00:00:ee:00:06"),
    ] {
        lab.ip(&[
            "link", "add", a, "address", mac, "type", "veth", "peer", "name", b,
        ]);
        lab.ip(&["link", "set", b, "up"]);
    }
    skip_unless!(
        kind_supported(&lab, "bridge"),
        "this kernel cannot make bridges"
    );
    lab.ip(&["link", "set", "nrc6", "up"]);
    lab.write_config(&config(AGGREGATES));
    lab.start_networkd();

    let first = lab.applied(1);
    // The selector that matches nothing is reported and configures nothing.
    assert_eq!(
        strings(&first["problems"]),
        vec!["lost: no link matches its device selector"],
        "{}",
        lab.stderr()
    );
    let br0 = lab.json(&["-d", "link", "show", "dev", "br0"]);
    assert_eq!(br0[0]["linkinfo"]["info_kind"], "bridge", "{br0}");
    let member = lab.json(&["link", "show", "dev", LINK]);
    assert_eq!(member[0]["master"], "br0", "{member}");
    assert!(
        member[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "UP"),
        "{member}"
    );
    assert_eq!(lab.addresses("br0"), vec!["10.81.0.2/24"]);
    let routes = lab.ip(&["route", "show", "table", "100", "proto", "static"]);
    assert!(
        routes.contains("10.91.0.0/16 via 10.81.0.1 dev br0"),
        "{routes}"
    );
    let down = lab.json(&["link", "show", "dev", "nrc6"]);
    assert!(
        !down[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "UP"),
        "{down}"
    );
    assert!(strings(&first["changes"]).contains(&"nrc6: down".to_owned()));
    // Selected by hardware address: the link keeps its kernel name.
    assert_eq!(lab.addresses("nrc2"), vec!["10.82.0.2/24"]);

    // Without them, the bridge goes and its member is free.
    lab.write_config(&config(""));
    lab.signal("-HUP");
    let cleared = lab.applied(2);
    let changes = strings(&cleared["changes"]);
    assert!(
        changes.contains(&"deleted link br0".to_owned()),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"nrc2: removed address 10.82.0.2/24".to_owned()),
        "{changes:?}"
    );
    assert!(!lab.ip(&["link", "show"]).contains("br0"));
    assert_eq!(lab.ip(&["route", "show", "table", "100"]), "");
    let member = lab.json(&["link", "show", "dev", LINK]);
    assert!(member[0].get("master").is_none(), "{member}");
    lab.stop_networkd();
}
