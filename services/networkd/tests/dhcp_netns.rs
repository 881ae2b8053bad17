//! End-to-end DHCP test in network namespaces the test creates itself.
//!
//! A veth pair joins a client namespace and a server namespace. Debian's
//! `dnsmasq` serves 10.123.0.0/24 in the server namespace; the real
//! `bramble-networkd` binary runs in the client namespace. The test checks
//! the lease (address, default route, resolv.conf, hostname, status files,
//! console line, readiness), renewal, that the lease is kept while the
//! server is gone (with renewal attempts logged), rebinding once a server is
//! back, the move to another address when the server changes its mind, and
//! the DHCPRELEASE on SIGTERM.
//!
//! Needs root, `ip` and `dnsmasq` (package `dnsmasq-base`); without them
//! the test prints why and passes without doing anything, except under
//! `CI=true`, where it fails (`bramble_testkit::skip_unless!`).

// Harness helpers outside `#[test]` functions panic on setup failures on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bramble_testkit::{read, run, skip_reason, skip_unless, wait_exit, wait_for};

const CLIENT_IF: &str = "ndc0";
const SERVER_IF: &str = "nds0";
const CLIENT_MAC: &str = "02:00:00:7b:00:32";
const SERVER_IP: &str = "10.123.0.1";
const LEASED_IP: &str = "10.123.0.50";
/// The address the server hands out after it is reconfigured.
const MOVED_IP: &str = "10.123.0.60";
const T1_SECS: u32 = 3;
const T2_SECS: u32 = 6;

/// Owns the namespaces and child processes; tears everything down on drop,
/// including when an assertion fails.
struct Lab {
    client_ns: String,
    server_ns: String,
    dir: tempfile::TempDir,
    dnsmasq: Option<Child>,
    networkd: Option<Child>,
    /// The address dnsmasq reserves for the client.
    fixed_ip: &'static str,
}

impl Lab {
    fn new() -> Self {
        let id = std::process::id();
        let lab = Self {
            client_ns: format!("bramble-ndc-{id}"),
            server_ns: format!("bramble-nds-{id}"),
            dir: tempfile::tempdir().unwrap(),
            dnsmasq: None,
            networkd: None,
            fixed_ip: LEASED_IP,
        };
        run(&["ip", "netns", "add", &lab.client_ns]);
        run(&["ip", "netns", "add", &lab.server_ns]);
        // The pair is created inside the client namespace with its peer in
        // the server namespace: nothing touches the host's own namespace.
        run(&[
            "ip",
            "-n",
            &lab.client_ns,
            "link",
            "add",
            CLIENT_IF,
            "address",
            CLIENT_MAC,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_IF,
            "netns",
            &lab.server_ns,
        ]);
        run(&[
            "ip",
            "-n",
            &lab.server_ns,
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            SERVER_IF,
        ]);
        run(&["ip", "-n", &lab.server_ns, "link", "set", SERVER_IF, "up"]);
        run(&["ip", "-n", &lab.server_ns, "link", "set", "lo", "up"]);
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_dnsmasq(&mut self) {
        let log = self.path("dnsmasq.log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.server_ns,
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
            ])
            .arg("--port=0")
            .arg(format!("--interface={SERVER_IF}"))
            .arg("--bind-interfaces")
            .arg("--dhcp-range=10.123.0.10,10.123.0.200,255.255.255.0,2m")
            .arg(format!("--dhcp-option=option:router,{SERVER_IP}"))
            .arg("--dhcp-option=option:dns-server,10.123.0.53,10.123.0.54")
            .arg(format!("--dhcp-option=option:T1,{T1_SECS}"))
            .arg(format!("--dhcp-option=option:T2,{T2_SECS}"))
            .arg("--domain=bramble.test")
            .arg(format!(
                "--dhcp-host={CLIENT_MAC},{},testnode",
                self.fixed_ip
            ))
            .arg(format!(
                "--dhcp-leasefile={}",
                self.path("leases").display()
            ))
            .arg(format!("--pid-file={}", self.path("dnsmasq.pid").display()))
            .arg(format!("--log-facility={}", log.display()))
            .arg("--log-dhcp")
            .arg("--user=root")
            .arg("--group=root")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(self.path("dnsmasq.stderr")).unwrap())
            .spawn()
            .unwrap();
        self.dnsmasq = Some(child);
        wait_for("dnsmasq to start", Duration::from_secs(5), || {
            read(&log).contains("DHCP, sockets bound").then_some(())
        });
    }

    fn stop_dnsmasq(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = wait_exit(&mut c, Duration::from_secs(5));
        }
    }

    fn start_networkd(&mut self) {
        let run_dir = self.path("run");
        // Readiness goes to a file handed over as fd 0.
        let ready = File::create(self.path("ready")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client_ns,
                env!("CARGO_BIN_EXE_bramble-networkd"),
            ])
            .arg("--run-dir")
            .arg(&run_dir)
            .arg("--config")
            .arg(self.path("no-config.yaml"))
            .args(["--link", CLIENT_IF, "--carrier-timeout", "5"])
            .env("BRAMBLE_READY_FD", "0")
            .stdin(ready)
            .stdout(File::create(self.path("networkd.stdout")).unwrap())
            .stderr(File::create(self.path("networkd.stderr")).unwrap())
            .spawn()
            .unwrap();
        self.networkd = Some(child);
    }

    fn client(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.client_ns];
        full.extend_from_slice(args);
        run(&full)
    }

    fn has_address(&self) -> bool {
        self.has(LEASED_IP)
    }

    fn has(&self, ip: &str) -> bool {
        self.client(&["-4", "addr", "show", "dev", CLIENT_IF])
            .contains(&format!("inet {ip}/24"))
    }

    fn networkd_log(&self) -> String {
        read(&self.path("networkd.stderr"))
    }

    fn dnsmasq_log(&self) -> String {
        read(&self.path("dnsmasq.log"))
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- networkd stderr\n{}\n--- networkd stdout\n{}\n--- dnsmasq log\n{}",
            self.networkd_log(),
            read(&self.path("networkd.stdout")),
            self.dnsmasq_log()
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        if let Some(mut c) = self.networkd.take() {
            let _ = c.kill();
            let _ = wait_exit(&mut c, Duration::from_secs(5));
        }
        self.stop_dnsmasq();
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn dhcp_lease_renew_keep_rebind_release() {
    skip_unless!(available: skip_reason(&[("dnsmasq", "dnsmasq-base")]));
    let mut lab = Lab::new();
    lab.start_dnsmasq();
    lab.start_networkd();

    // Lease: address, default route, resolvers, host name, status, console.
    wait_for("the leased address", Duration::from_secs(10), || {
        lab.has_address().then_some(())
    });
    let route = lab.client(&["-4", "route", "show", "default"]);
    assert!(
        route.contains(&format!("default via {SERVER_IP} dev {CLIENT_IF}")),
        "route: {route}"
    );
    assert!(route.contains("proto dhcp"), "route: {route}");
    assert!(
        lab.client(&["link", "show", "lo"]).contains(",UP"),
        "lo is not up"
    );

    let run_dir = lab.path("run");
    let resolv = wait_for("resolv.conf", Duration::from_secs(5), || {
        let s = read(&run_dir.join("resolv.conf"));
        s.contains("nameserver").then_some(s)
    });
    assert!(
        resolv.contains("nameserver 10.123.0.53\nnameserver 10.123.0.54\n"),
        "{resolv}"
    );
    assert!(resolv.contains("search bramble.test\n"), "{resolv}");
    wait_for("online marker", Duration::from_secs(5), || {
        run_dir.join("network/online").exists().then_some(())
    });
    assert_eq!(read(&run_dir.join("hostname")), "testnode\n");
    let state: serde_json::Value =
        serde_json::from_str(&read(&run_dir.join("network/state.json"))).unwrap();
    assert_eq!(state["online"], true, "{state}");
    let link = &state["links"][0];
    assert_eq!(link["name"], CLIENT_IF);
    assert_eq!(link["mac"], CLIENT_MAC);
    assert_eq!(link["addresses"][0], format!("{LEASED_IP}/24"));
    assert_eq!(link["lease"]["lease_seconds"], 120);
    assert_eq!(link["lease"]["renew_seconds"], T1_SECS);
    assert_eq!(link["lease"]["server"], SERVER_IP);
    // The lease is logged (and so shown on the console) as one line, and
    // nothing goes to stdout: daemons only log.
    let bound =
        format!("{CLIENT_IF}: {LEASED_IP}/24 via {SERVER_IP} (lease 120 s from {SERVER_IP})");
    let logged = wait_for("the lease's log line", Duration::from_secs(5), || {
        read(&lab.path("networkd.stderr"))
            .lines()
            .find(|l| l.ends_with(&format!(" INFO {bound}")))
            .map(str::to_owned)
    });
    assert!(logged.ends_with(&bound), "{logged}");
    assert_eq!(read(&lab.path("networkd.stdout")), "");
    assert_eq!(read(&lab.path("ready")), "READY=1\n");
    // The kernel nodename went out as option 12.
    assert!(
        lab.dnsmasq_log().contains("client provides name:"),
        "no hostname option sent"
    );

    // Renewal at T1 (unicast to the server).
    wait_for("a renewal", Duration::from_secs(T1_SECS as u64 + 5), || {
        lab.networkd_log().contains("lease renewed").then_some(())
    });

    // Server gone: the lease is kept, renewal/rebinding attempts are logged.
    lab.stop_dnsmasq();
    let before = lab.networkd_log().len();
    let attempts = |lab: &Lab| {
        let log = lab.networkd_log();
        log.get(before..)
            .unwrap_or("")
            .lines()
            .filter(|l| {
                l.contains("sending DHCPREQUEST renewing")
                    || l.contains("sending DHCPREQUEST rebinding")
            })
            .count()
    };
    wait_for(
        "two renewal attempts without a server",
        Duration::from_secs(T2_SECS as u64 + 4),
        || (attempts(&lab) >= 2).then_some(()),
    );
    assert!(
        lab.has_address(),
        "address dropped while the lease is still valid"
    );
    assert!(run_dir.join("network/online").exists());

    // A server is back: rebinding (broadcast) gets the lease extended.
    let renewed_before = lab.networkd_log().matches("lease renewed").count();
    lab.start_dnsmasq();
    wait_for(
        "rebinding with the restarted server",
        Duration::from_secs(12),
        || (lab.networkd_log().matches("lease renewed").count() > renewed_before).then_some(()),
    );

    // The server now reserves another address: it refuses the old lease at
    // the next renewal, and the client starts over and moves to the new one.
    lab.stop_dnsmasq();
    lab.fixed_ip = MOVED_IP;
    lab.start_dnsmasq();
    wait_for(
        "the move to the new address",
        Duration::from_secs(T2_SECS as u64 + 10),
        || (lab.has(MOVED_IP) && !lab.has(LEASED_IP)).then_some(()),
    );
    let route = lab.client(&["-4", "route", "show", "default"]);
    assert!(
        route.contains(&format!("default via {SERVER_IP}")),
        "route: {route}"
    );

    // SIGTERM: DHCPRELEASE, address removed, exit 0.
    let pid = lab.networkd.as_ref().unwrap().id().to_string();
    run(&["kill", "-TERM", &pid]);
    let status = wait_exit(lab.networkd.as_mut().unwrap(), Duration::from_secs(5))
        .expect("networkd did not exit after SIGTERM");
    lab.networkd = None;
    assert!(status.success(), "exit status {status:?}");
    wait_for("DHCPRELEASE at the server", Duration::from_secs(5), || {
        lab.dnsmasq_log()
            .contains(&format!("DHCPRELEASE({SERVER_IF}) {MOVED_IP}"))
            .then_some(())
    });
    assert!(!lab.has(MOVED_IP), "address kept after release");
    assert!(
        !run_dir.join("network/online").exists(),
        "online marker kept after release"
    );
    assert!(
        read(&lab.path("networkd.stderr"))
            .contains(&format!(" INFO {CLIENT_IF}: {MOVED_IP}/24 released"))
    );
}

/// Deletes a namespace (and kills a child) on drop.
struct NsGuard {
    name: String,
    child: Option<Child>,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = wait_exit(&mut c, Duration::from_secs(5));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Without `--link`, only physical Ethernet ports are managed: a veth pair
/// is left alone even when sysfs claims it has a device. `lo` still comes
/// up, readiness is signalled, and SIGTERM exits 0.
#[test]
fn auto_detection_skips_virtual_links() {
    skip_unless!(available: skip_reason(&[("dnsmasq", "dnsmasq-base")]));
    let dir = tempfile::tempdir().unwrap();
    let mut ns = NsGuard {
        name: format!("bramble-nda-{}", std::process::id()),
        child: None,
    };
    run(&["ip", "netns", "add", &ns.name]);
    run(&[
        "ip", "-n", &ns.name, "link", "add", "va0", "type", "veth", "peer", "name", "vb0",
    ]);
    let sysfs = dir.path().join("sys");
    fs::create_dir_all(sysfs.join("class/net/va0/device")).unwrap();
    let ready = dir.path().join("ready");
    let stderr = dir.path().join("stderr");
    let run_dir = dir.path().join("run");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            env!("CARGO_BIN_EXE_bramble-networkd"),
        ])
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("--config")
        .arg(dir.path().join("no-config.yaml"))
        .arg("--sysfs")
        .arg(&sysfs)
        .env("BRAMBLE_READY_FD", "0")
        .stdin(File::create(&ready).unwrap())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    ns.child = Some(child);

    wait_for("readiness", Duration::from_secs(5), || {
        (read(&ready) == "READY=1\n").then_some(())
    });
    assert!(
        read(&stderr).contains("no physical Ethernet link found"),
        "{}",
        read(&stderr)
    );
    let lo = run(&["ip", "-n", &ns.name, "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    let va0 = run(&["ip", "-n", &ns.name, "link", "show", "va0"]);
    assert!(!va0.contains(",UP"), "a veth was brought up: {va0}");
    let state: serde_json::Value =
        serde_json::from_str(&read(&run_dir.join("network/state.json"))).unwrap();
    assert_eq!(state["online"], false);
    assert_eq!(state["links"].as_array().map(Vec::len), Some(0));

    let pid = ns.child.as_ref().unwrap().id().to_string();
    run(&["kill", "-TERM", &pid]);
    let status = wait_exit(ns.child.as_mut().unwrap(), Duration::from_secs(5))
        .expect("no exit after SIGTERM");
    ns.child = None;
    assert!(status.success(), "exit status {status:?}");
}
