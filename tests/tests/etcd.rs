//! etcd on three control-plane nodes in QEMU, on a private LAN
//! (`bramble_tests::cluster`): copies of the same image, each configured
//! from its boot partition (`cp1`..`cp3`, 10.77.0.11..13, time from chronyd
//! on the host's side of the bridge).
//!
//! `nodectl bootstrap` on cp1 forms a one-member cluster; cp2 and cp3 join
//! by themselves (learners, promoted once caught up) until Debian's
//! `etcdctl`, run on the host inside the namespace with a client
//! certificate issued from the secrets bundle's etcd CA, lists three voting
//! members. A key written through cp1 is read through cp3. A second
//! bootstrap, on cp2, is refused and changes nothing. The leader's QEMU is
//! killed: a write through another node succeeds again within a bound (the
//! figure is printed) and `nodectl health` fails naming it; booted again, it
//! rejoins from its data, serves the key written while it was gone, and
//! health passes again. Then another member's disk is replaced by
//! a fresh copy of the image with its configuration: it replaces its stale
//! member (a new member ID, three voters) and serves every key.
//!
//! A second test recovers a one-node cluster from its `nodectl etcd
//! snapshot` with `nodectl bootstrap --recover-from` on a fresh disk.
//!
//! Needs root, `ip`, `chronyd`, `etcdctl` (package `etcd-client`) and
//! `/dev/net/tun`; without them the test says why and passes, except under
//! `CI=true` (`bramble_testkit::skip_unless!`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bramble_testkit::{skip_reason, skip_unless};
use bramble_tests::cluster::{self, Configs, Lan, Role};
use bramble_tests::{paths, qemu, wait};

/// All three nodes booting at once on two host cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(500);
/// From the boot to mutual TLS.
const MTLS_TIMEOUT: Duration = Duration::from_secs(120);
/// From `nodectl bootstrap` to three voting members: etcd starting under
/// emulation on each node, two learners catching up one after the other.
const FORM_TIMEOUT: Duration = Duration::from_secs(600);
/// From the leader's death to a write taken again: a few election timeouts
/// (5 s by default) under emulation.
const WRITE_AFTER_LOSS_TIMEOUT: Duration = Duration::from_secs(60);
/// From the old leader's boot to it serving the keys written meanwhile.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(300);

fn prerequisites() -> Option<String> {
    skip_reason(&[
        ("chronyd", "chrony"),
        ("etcdctl", "etcd-client"),
        ("qemu-system-aarch64", "qemu-system-arm"),
    ])
    .or_else(|| {
        (!Path::new("/dev/net/tun").exists()).then(|| "no /dev/net/tun (tap devices)".to_owned())
    })
}

/// Debian's etcdctl inside the namespace, with a client certificate from
/// the secrets bundle's etcd CA.
struct Etcdctl<'a> {
    lan: &'a Lan,
    dir: std::path::PathBuf,
}

impl<'a> Etcdctl<'a> {
    fn new(lan: &'a Lan, secrets: &Path, dir: &Path) -> Result<Self> {
        let bundle = bramble_pki::SecretsBundle::from_yaml(&std::fs::read_to_string(secrets)?)?;
        let client = bundle.etcd_ca.issue_etcd(
            bramble_pki::EtcdCert::Client,
            "etcd-test",
            &[],
            bramble_pki::Validity::from_now(Duration::from_secs(3600)),
        )?;
        let dir = dir.join("etcdctl");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("ca.crt"), bundle.etcd_ca.cert_pem())?;
        std::fs::write(dir.join("client.crt"), &client.cert_pem)?;
        std::fs::write(dir.join("client.key"), &client.key_pem)?;
        Ok(Self { lan, dir })
    }

    /// `etcdctl ARGS` against node `index`.
    fn run(&self, index: u32, args: &[&str]) -> Result<std::process::Output> {
        let file = |name: &str| self.dir.join(name).display().to_string();
        let output = self
            .lan
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints=https://{}:2379",
                cluster::node_addr(index)
            ))
            .arg(format!("--cacert={}", file("ca.crt")))
            .arg(format!("--cert={}", file("client.crt")))
            .arg(format!("--key={}", file("client.key")))
            .args(["--dial-timeout=5s", "--command-timeout=15s"])
            .args(args)
            .output()
            .context("running etcdctl")?;
        Ok(output)
    }

    /// The node index of the member that leads, as node `index` sees it.
    fn leader(&self, index: u32) -> Result<u32> {
        let status: serde_json::Value =
            serde_json::from_str(&self.ok(index, &["endpoint", "status", "-w", "json"])?)?;
        let leader = status[0]["Status"]["leader"]
            .as_u64()
            .context("no leader")?;
        let list: serde_json::Value =
            serde_json::from_str(&self.ok(index, &["member", "list", "-w", "json"])?)?;
        let name = list["members"]
            .as_array()
            .context("members")?
            .iter()
            .find(|m| m["ID"].as_u64() == Some(leader))
            .and_then(|m| m["name"].as_str())
            .context("the leader is not a member")?;
        name.strip_prefix("cp")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("leader {name} is not cp<i>"))
    }

    /// The member ID of `name`, as node `index` lists it.
    fn member_id(&self, index: u32, name: &str) -> Result<u64> {
        let list: serde_json::Value =
            serde_json::from_str(&self.ok(index, &["member", "list", "-w", "json"])?)?;
        list["members"]
            .as_array()
            .context("members")?
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["ID"].as_u64())
            .with_context(|| format!("no member {name}: {list}"))
    }

    fn ok(&self, index: u32, args: &[&str]) -> Result<String> {
        let out = self.run(index, args)?;
        ensure!(
            out.status.success(),
            "etcdctl {args:?} on node {index}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The names of the voting members, sorted; `None` while a member has
    /// not started or is a learner.
    fn voters(&self, index: u32) -> Result<Option<Vec<String>>> {
        let out = self.run(index, &["member", "list", "-w", "json"])?;
        if !out.status.success() {
            return Ok(None);
        }
        let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let members = list["members"].as_array().context("members")?;
        if members
            .iter()
            .any(|m| m["isLearner"] == true || m["name"].as_str().unwrap_or("").is_empty())
        {
            return Ok(None);
        }
        let mut names: Vec<String> = members
            .iter()
            .filter_map(|m| m["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(Some(names))
    }
}

#[test]
fn three_control_plane_nodes_form_an_etcd_cluster() -> Result<()> {
    skip_unless!(available: prerequisites());
    let started = Instant::now();
    let dir = paths::test_dir("etcd")?;
    let image = dir.path().join("image.img");
    qemu::prepare_disk(&paths::image()?, &image, 0)?;

    let mut lan = Lan::create()?;
    lan.start_ntp()?;
    let roles = [Role::ControlPlane; 3];
    let configs = Configs::generate(&dir.path().join("cluster"), &roles, &[])?;
    let nodes = lan.boot_nodes(&configs, &image, dir.path(), BOOT_TIMEOUT)?;
    let c = configs.client.in_netns(lan.name());
    for (index, node) in (1..).zip(&nodes) {
        c.wait_answer(&cluster::node_api(index), MTLS_TIMEOUT)
            .with_context(|| format!("node {index}:\n{}", node.console_tail(40)))?;
    }
    let etcdctl = Etcdctl::new(&lan, &configs.secrets, dir.path())?;
    let consoles = || {
        (1..)
            .zip(&nodes)
            .map(|(i, n): (u32, &qemu::Node)| format!("--- node {i}:\n{}", n.console_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Formation: one bootstrap; the others join by themselves.
    let bootstrapped = Instant::now();
    let out = c.ok(&cluster::node_api(1), &["bootstrap"])?;
    eprintln!("bootstrap: {out}");
    let took = wait::eventually(
        "three voting etcd members",
        FORM_TIMEOUT,
        Duration::from_secs(2),
        || {
            Ok(etcdctl
                .voters(1)?
                .is_some_and(|v| v == ["cp1", "cp2", "cp3"]))
        },
    )
    .with_context(|| {
        let logs = (1..=3)
            .map(|i| {
                let api = cluster::node_api(i);
                format!(
                    "--- {api} etcd:\n{}",
                    c.ok(&api, &["logs", "etcd"])
                        .unwrap_or_else(|e| e.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        format!("{logs}\n{}", consoles())
    })?;
    eprintln!(
        "figure: bootstrap to three voting members: {:.1?}",
        bootstrapped.elapsed()
    );
    let _ = took;
    eprintln!(
        "{}",
        etcdctl.ok(1, &["endpoint", "status", "--cluster", "-w", "table"])?
    );

    // Memory on a control-plane node: etcd, and every Bramble daemon.
    let processes: serde_json::Value =
        serde_json::from_str(&c.ok(&cluster::node_api(1), &["processes", "-o", "json"])?)?;
    let rss = |names: &[&str]| -> u64 {
        processes
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"].as_str().is_some_and(|n| names.contains(&n)))
            .filter_map(|p| p["rss_bytes"].as_u64())
            .sum()
    };
    let etcd_rss = rss(&["etcd"]);
    ensure!(etcd_rss > 0, "no etcd process on cp1: {processes}");
    eprintln!(
        "figure: cp1 memory (RSS): etcd {:.1} MiB; Bramble's daemons (init, apid, networkd, timed, runtimed, etcdd) {:.1} MiB",
        etcd_rss as f64 / 1048576.0,
        rss(&["init", "apid", "networkd", "timed", "runtimed", "etcdd"]) as f64 / 1048576.0
    );

    // Put throughput on the nodes' disks (etcdctl's own 60 s check, small
    // load): only when `make bench` asks for it (tests/etcd-figures.sh).
    if std::env::var_os("BRAMBLE_ETCD_PERF").is_some() {
        let out = etcdctl.run(1, &["check", "perf", "--load=s"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text
            .lines()
            .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
        {
            eprintln!("figure: etcdctl check perf (small load, three members in QEMU): {line}");
        }
        ensure!(
            text.contains("Throughput"),
            "etcdctl check perf said nothing of throughput: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A key written through one member is read through another.
    etcdctl.ok(1, &["put", "bramble/test", "written through cp1"])?;
    let got = etcdctl.ok(3, &["get", "bramble/test", "--print-value-only"])?;
    ensure!(got.trim() == "written through cp1", "{got}");

    // A second bootstrap anywhere is refused, and changes nothing.
    let again = c.run(&cluster::node_api(2), &["bootstrap"])?;
    ensure!(
        !again.success,
        "a second bootstrap was accepted: {}",
        again.stdout
    );
    ensure!(
        again.stderr.to_lowercase().contains("already"),
        "the refusal does not say why: {}",
        again.stderr
    );
    ensure!(
        etcdctl
            .voters(2)?
            .is_some_and(|v| v == ["cp1", "cp2", "cp3"])
    );

    // The leader's node dies: the other two elect a new leader and take
    // writes again within a few election timeouts.
    let leader = etcdctl.leader(1)?;
    let survivor = if leader == 1 { 2 } else { 1 };
    eprintln!("killing node {leader} (the etcd leader)");
    let mut nodes = nodes;
    nodes[leader as usize - 1].kill();
    let killed = Instant::now();
    wait::eventually(
        "a write after the leader died",
        WRITE_AFTER_LOSS_TIMEOUT,
        Duration::from_millis(200),
        || {
            Ok(etcdctl
                .run(
                    survivor,
                    // A short command timeout, so that one attempt
                    // waiting on the dead leader does not hide when the
                    // next one could succeed (the figure's resolution).
                    &[
                        "--command-timeout=1s",
                        "put",
                        "bramble/after-loss",
                        "written without the old leader",
                    ],
                )?
                .status
                .success())
        },
    )?;
    eprintln!(
        "figure: a write succeeds again {:.1?} after the leader's node died",
        killed.elapsed()
    );

    // `nodectl health` names the loss, and fails.
    let all = (1..=3).map(cluster::node_api).collect::<Vec<_>>().join(",");
    let health = c.run(&cluster::node_api(survivor), &["health", "-n", &all])?;
    let dead = cluster::node_hostname(leader, Role::ControlPlane);
    ensure!(
        !health.success,
        "health passed without {dead}: {}",
        health.stdout
    );
    let said = format!("{}{}", health.stdout, health.stderr);
    ensure!(
        said.lines()
            .any(|l| l.starts_with("unhealthy") && l.contains(&dead)),
        "health does not name {dead}:\n{said}"
    );

    // It comes back: from its own data, it rejoins and has every key.
    let disk = dir.path().join(format!("node{leader}.img"));
    nodes[leader as usize - 1] =
        qemu::Node::start(&lan.node_options(leader, &disk, dir.path(), 2))?;
    nodes[leader as usize - 1].wait_ready(BOOT_TIMEOUT)?;
    wait::eventually(
        "the old leader serving every key",
        REJOIN_TIMEOUT,
        Duration::from_secs(2),
        || {
            let out = etcdctl.run(leader, &["get", "bramble/after-loss", "--print-value-only"])?;
            Ok(out.status.success()
                && String::from_utf8_lossy(&out.stdout).trim() == "written without the old leader")
        },
    )
    .with_context(consoles_of(&nodes))?;
    ensure!(
        etcdctl
            .voters(survivor)?
            .is_some_and(|v| v == ["cp1", "cp2", "cp3"])
    );
    wait::eventually(
        "nodectl health passing again",
        REJOIN_TIMEOUT,
        Duration::from_secs(2),
        || {
            Ok(
                c.run(&cluster::node_api(survivor), &["health", "-n", &all])?
                    .success,
            )
        },
    )
    .with_context(|| {
        c.run(&cluster::node_api(survivor), &["health", "-n", &all])
            .map(|o| format!("{}{}", o.stdout, o.stderr))
            .unwrap_or_else(|e| e.to_string())
    })?;

    // A member's disk is wiped (a fresh card with its configuration): it
    // replaces its stale member and catches up.
    let wiped = if leader == 3 { 2 } else { 3 };
    let old_id = etcdctl.member_id(
        survivor_of(wiped),
        &cluster::node_hostname(wiped, Role::ControlPlane),
    )?;
    nodes[wiped as usize - 1].kill();
    let disk = dir.path().join(format!("node{wiped}.img"));
    qemu::prepare_disk(&image, &disk, cluster::NODE_DISK_GROWTH)?;
    cluster::place_config(&disk, configs.machine_config(wiped)?)?;
    nodes[wiped as usize - 1] = qemu::Node::start(&lan.node_options(wiped, &disk, dir.path(), 3))?;
    nodes[wiped as usize - 1].wait_ready(BOOT_TIMEOUT)?;
    wait::eventually(
        "the wiped member replaced",
        FORM_TIMEOUT,
        Duration::from_secs(2),
        || {
            let voters = etcdctl.voters(survivor_of(wiped))?;
            let id = etcdctl.member_id(
                survivor_of(wiped),
                &cluster::node_hostname(wiped, Role::ControlPlane),
            );
            Ok(voters.is_some_and(|v| v == ["cp1", "cp2", "cp3"])
                && id.is_ok_and(|id| id != old_id))
        },
    )
    .with_context(consoles_of(&nodes))?;
    let got = etcdctl.ok(wiped, &["get", "bramble/test", "--print-value-only"])?;
    ensure!(got.trim() == "written through cp1", "{got}");

    drop(nodes);
    drop(lan);
    eprintln!("etcd test: {:.1?} in all", started.elapsed());
    Ok(())
}

/// Another node than `index`, to ask about it.
fn survivor_of(index: u32) -> u32 {
    if index == 1 { 2 } else { 1 }
}

fn consoles_of(nodes: &[qemu::Node]) -> impl FnOnce() -> String + '_ {
    move || {
        (1..)
            .zip(nodes)
            .map(|(i, n): (u32, &qemu::Node)| format!("--- node {i}:\n{}", n.console_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `nodectl bootstrap --recover-from`: one control-plane node forms a
/// cluster and holds a key; `nodectl etcd snapshot` saves it; the node's
/// disk is replaced by a fresh copy of the image with its configuration;
/// recovering from the snapshot brings the cluster back with the key.
#[test]
fn a_cluster_is_recovered_from_a_snapshot() -> Result<()> {
    skip_unless!(available: prerequisites());
    let dir = paths::test_dir("etcd-recover")?;
    let image = dir.path().join("image.img");
    qemu::prepare_disk(&paths::image()?, &image, 0)?;
    let mut lan = Lan::create()?;
    lan.start_ntp()?;
    let configs = Configs::generate(&dir.path().join("cluster"), &[Role::ControlPlane], &[])?;
    let mut nodes = lan.boot_nodes(&configs, &image, dir.path(), BOOT_TIMEOUT)?;
    let c = configs.client.in_netns(lan.name());
    let api = cluster::node_api(1);
    c.wait_answer(&api, MTLS_TIMEOUT)
        .with_context(consoles_of(&nodes))?;
    let etcdctl = Etcdctl::new(&lan, &configs.secrets, dir.path())?;
    c.ok(&api, &["bootstrap"])?;
    wait::eventually("a member", FORM_TIMEOUT, Duration::from_secs(2), || {
        Ok(etcdctl.voters(1)?.is_some_and(|v| v == ["cp1"]))
    })
    .with_context(consoles_of(&nodes))?;
    etcdctl.ok(1, &["put", "bramble/recovered", "from the snapshot"])?;
    let snapshot = dir.path().join("etcd.db");
    c.ok(&api, &["etcd", "snapshot", &snapshot.display().to_string()])?;

    nodes[0].kill();
    let disk = dir.path().join("node1.img");
    qemu::prepare_disk(&image, &disk, cluster::NODE_DISK_GROWTH)?;
    cluster::place_config(&disk, configs.machine_config(1)?)?;
    nodes[0] = qemu::Node::start(&lan.node_options(1, &disk, dir.path(), 2))?;
    nodes[0].wait_ready(BOOT_TIMEOUT)?;
    c.wait_answer(&api, MTLS_TIMEOUT)
        .with_context(consoles_of(&nodes))?;
    let out = c.ok(
        &api,
        &[
            "bootstrap",
            "--recover-from",
            &snapshot.display().to_string(),
        ],
    )?;
    ensure!(out.contains("recovery requested"), "{out}");
    wait::eventually("the key back", FORM_TIMEOUT, Duration::from_secs(2), || {
        let out = etcdctl.run(1, &["get", "bramble/recovered", "--print-value-only"])?;
        Ok(out.status.success()
            && String::from_utf8_lossy(&out.stdout).trim() == "from the snapshot")
    })
    .with_context(|| {
        format!(
            "{}\n{}",
            c.ok(&api, &["logs", "etcd"])
                .unwrap_or_else(|e| e.to_string()),
            nodes[0].console_tail(40)
        )
    })?;
    ensure!(etcdctl.voters(1)?.is_some_and(|v| v == ["cp1"]));
    Ok(())
}
