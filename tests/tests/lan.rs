//! Two nodes on a private LAN (`bramble_tests::cluster`): a bridge in a
//! network namespace the test creates, QEMU inside it with each node's card
//! on a tap, Debian's `chronyd` serving time on the host's side. Each node
//! boots from its own copy of the image with its machine configuration
//! placed on the boot partition (a control plane `cp1` at 10.77.0.11, a
//! worker `worker2` at 10.77.0.12): no DHCP, no `apply-config --insecure`.
//! From inside the namespace the real `nodectl` reaches both over mutual
//! TLS at their own addresses, sees the static addresses, the host names and
//! the clocks synced from 10.77.0.1. Node to node: the worker's API
//! certificate is issued by `cp1`, which the worker asks over the LAN, so
//! its answering over mutual TLS needs a TCP session from node 2 to node 1;
//! the host's neighbour table holds both nodes' fixed hardware addresses.
//! The namespace is gone afterwards.
//!
//! Needs root, `ip`, `chronyd` (package `chrony`) and `/dev/net/tun`;
//! without them the test says why and passes, except under `CI=true`
//! (`bramble_testkit::skip_unless!`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bramble_testkit::{skip_reason, skip_unless};
use bramble_tests::cluster::{self, Configs, Lan, Role};
use bramble_tests::{paths, qemu, wait};

/// From the first QEMU's start to every console's ready line, all the
/// nodes booting at once on two host cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
/// From the ready line to an answer over mutual TLS (a worker asks the
/// control plane for its certificate every 15 s until it answers).
const MTLS_TIMEOUT: Duration = Duration::from_secs(120);
/// From the answer to the first sync with chronyd.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

fn prerequisites() -> Option<String> {
    skip_reason(&[
        ("chronyd", "chrony"),
        ("ss", "iproute2"),
        ("qemu-system-aarch64", "qemu-system-arm"),
    ])
    .or_else(|| {
        (!Path::new("/dev/net/tun").exists()).then(|| "no /dev/net/tun (tap devices)".to_owned())
    })
}

fn json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

/// Boots one node per role at once ([`Lan::boot_nodes`]), then waits for
/// each to answer over mutual TLS from inside the namespace. Prints and
/// returns each node's time from the start to that answer.
fn boot_all(
    lan: &Lan,
    configs: &Configs,
    roles: &[Role],
    image: &Path,
    dir: &Path,
) -> Result<(Vec<qemu::Node>, Vec<Duration>)> {
    let started = Instant::now();
    let nodes = lan.boot_nodes(configs, image, dir, BOOT_TIMEOUT)?;
    let booted = started.elapsed();
    let c = configs.client.in_netns(lan.name());
    let mut times = Vec::new();
    for (index, node) in (1..).zip(&nodes) {
        c.wait_answer(&cluster::node_api(index), MTLS_TIMEOUT)
            .with_context(|| format!("node {index}:\n{}", node.console_tail(40)))?;
        let answered = started.elapsed();
        eprintln!(
            "node {index} ({}): mutual TLS at {} {answered:.1?} after the start (every console ready after {booted:.1?})",
            cluster::node_hostname(index, roles[index as usize - 1]),
            cluster::node_api(index)
        );
        times.push(answered);
    }
    Ok((nodes, times))
}

#[test]
fn two_nodes_reach_each_other_on_a_private_lan() -> Result<()> {
    skip_unless!(available: prerequisites());
    let started = Instant::now();
    let dir = paths::test_dir("lan")?;
    // One private copy of the image, which both nodes' disks come from.
    let image = dir.path().join("image.img");
    qemu::prepare_disk(&paths::image()?, &image, 0)?;

    let mut lan = Lan::create()?;
    let netns = lan.name().to_owned();
    lan.start_ntp()?;
    let roles = [Role::ControlPlane, Role::Worker];
    let configs = Configs::generate(&dir.path().join("cluster"), &roles, &[])?;
    let (nodes, _) = boot_all(&lan, &configs, &roles, &image, dir.path())?;
    let c = configs.client.in_netns(&netns);
    let (api1, api2) = (cluster::node_api(1), cluster::node_api(2));
    // Configured from the boot partition: no maintenance mode, and each
    // node's own static address (no DHCP: there is no server on the bridge).
    for (index, api) in [(1, &api1), (2, &api2)] {
        let version = json(&c.ok(api, &["version", "-o", "json"])?)?;
        ensure!(version[0]["maintenance"] == false, "{version}");
        let hostname = c.ok(api, &["get", "hostname"])?;
        let want = cluster::node_hostname(index, roles[index as usize - 1]);
        ensure!(hostname.contains(&want), "node {index}: {hostname}");
        let addresses = json(&c.ok(api, &["get", "addresses", "-o", "json"])?)?;
        let rows = addresses.as_array().context("a list")?;
        let own = format!("{}/{}", cluster::node_addr(index), cluster::PREFIX_LEN);
        ensure!(
            rows.iter().any(|r| r["link"] == "eth0"
                && r["address"] == own.as_str()
                && r["origin"] == "static"),
            "node {index} lacks {own} on eth0: {addresses}"
        );
        ensure!(
            !rows.iter().any(|r| r["origin"] == "dhcp"),
            "node {index} has a DHCP lease: {addresses}"
        );
    }

    // The clocks: synced from chronyd on the host's side of the bridge.
    let host = cluster::host_addr().to_string();
    for api in [&api1, &api2] {
        let took = wait::eventually(
            &format!("{api} synced from {host}"),
            SYNC_TIMEOUT,
            Duration::from_secs(1),
            || {
                let time = json(&c.ok(api, &["get", "time", "-o", "json"])?)?;
                Ok(time[0]["synced"] == true && time[0]["server"] == host.as_str())
            },
        )
        .with_context(|| format!("chronyd:\n{}", lan.chronyd_log()))?;
        eprintln!("{api}: synced from {host} {took:.1?} after answering");
        eprintln!("{}", c.ok(api, &["get", "time"])?);
    }

    // Node to node: the worker answered over mutual TLS with a certificate
    // from cp1's CA, which only cp1 (holding the key) issues, when the worker
    // asks it at 10.77.0.11:50000 over the LAN.
    let logs = c.ok(&api2, &["logs", "apid"])?;
    let control_plane = format!("control_plane={api1}");
    ensure!(
        logs.lines().any(
            |l| l.contains("API certificate issued by a control-plane node")
                && l.contains(&control_plane)
        ),
        "the worker's apid did not get its certificate from {api1}:\n{logs}"
    );
    // Both fixed hardware addresses answered ARP on the bridge.
    let neighbours = lan.neighbours()?;
    for index in [1, 2] {
        let entry = format!(
            "{} lladdr {}",
            cluster::node_addr(index),
            cluster::node_mac(index)
        );
        ensure!(neighbours.contains(&entry), "no {entry}:\n{neighbours}");
    }
    eprintln!(
        "the host's neighbours on {}:\n{neighbours}",
        cluster::BRIDGE
    );

    for api in [&api1, &api2] {
        eprintln!("{}", c.ok(api, &["memory"])?);
    }

    // Everything goes with the namespace.
    drop(nodes);
    drop(lan);
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let left = String::from_utf8_lossy(&left.stdout);
    ensure!(
        !left
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&netns)),
        "{netns} is still there:\n{left}"
    );
    eprintln!("lan test: {:.1?} in all", started.elapsed());
    Ok(())
}

/// A measurement rather than a check: `BRAMBLE_LAN_NODES` (default 3)
/// control-plane nodes booted at once on one LAN, with
/// `BRAMBLE_LAN_CPUS` vCPUs and `BRAMBLE_LAN_MEMORY_MIB` each (defaults:
/// the harness's), until each answers over mutual TLS.
#[test]
#[ignore = "a measurement: run with --ignored"]
fn boot_time_of_nodes_at_once() -> Result<()> {
    skip_unless!(available: prerequisites());
    let count: usize = std::env::var("BRAMBLE_LAN_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let dir = paths::test_dir("lan-boot-time")?;
    let image = dir.path().join("image.img");
    qemu::prepare_disk(&paths::image()?, &image, 0)?;
    let mut lan = Lan::create()?;
    lan.start_ntp()?;
    let roles = vec![Role::ControlPlane; count];
    let configs = Configs::generate(&dir.path().join("cluster"), &roles, &[])?;
    let (_nodes, times) = boot_all(&lan, &configs, &roles, &image, dir.path())?;
    let slowest = times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{count} nodes at once, {} vCPU(s) and {} MiB each: all answering over mutual TLS after {slowest:.1?} ({times:.1?})",
        cluster::node_cpus(),
        cluster::node_memory_mib(),
    );
    Ok(())
}
