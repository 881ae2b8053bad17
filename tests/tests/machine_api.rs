//! The machine API on a real node in QEMU, driven by the real `nodectl`:
//! first configuration over `--insecure`, mutual TLS from then on, the
//! day-two commands, a trial that reverts by itself, a reboot that keeps the
//! configuration, and a reset back to maintenance mode.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bramble_tests::{nodectl, paths, qemu};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn start(dir: &Path, disk: &Path, port: u16, n: u32) -> Result<qemu::Node> {
    let mut opts = qemu::Options::new(disk.to_path_buf(), port);
    opts.console_log = Some(dir.join(format!("console-{n}.log")));
    let mut node = qemu::Node::start(&opts)?;
    node.wait_ready(BOOT_TIMEOUT)?;
    Ok(node)
}

/// `nodectl ARGS` with the generated client configuration.
fn mtls(cfg: &Path, node: &qemu::Node, args: &[&str]) -> Result<nodectl::Output> {
    let addr = node.api_addr();
    let mut all = vec![
        "--nodeconfig",
        cfg.to_str().context("path")?,
        "-n",
        addr.as_str(),
        "--timeout",
        "20s",
    ];
    all.extend_from_slice(args);
    nodectl::run(&all, CALL_TIMEOUT)
}

fn mtls_ok(cfg: &Path, node: &qemu::Node, args: &[&str]) -> Result<String> {
    let out = mtls(cfg, node, args)?;
    ensure!(
        out.success,
        "nodectl {args:?} failed: {}{}",
        out.stdout,
        out.stderr
    );
    Ok(out.stdout)
}

/// Retries until the node answers over mutual TLS (its listener restarts
/// after the first configuration; after a boot the port forward may lag).
fn wait_mtls(cfg: &Path, node: &qemu::Node) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = mtls(cfg, node, &["version", "-o", "json"])?;
        if out.success {
            return Ok(out.stdout);
        }
        if Instant::now() > deadline {
            bail!("mutual TLS never worked: {}", out.stderr);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_exit(node: &mut qemu::Node) -> Result<()> {
    node.wait_exit(Duration::from_secs(90))
        .map(drop)
        .with_context(|| format!("the node did not go down:\n{}", node.console_tail(30)))
}

#[test]
fn configure_operate_reboot_and_reset_a_node() -> Result<()> {
    let dir = paths::test_dir("machine-api")?;
    let disk = dir.path().join("disk.img");
    qemu::prepare_disk(&paths::image()?, &disk, 0)?;
    let port = qemu::free_port()?;
    let mut node = start(dir.path(), &disk, port, 1)?;
    let addr = node.api_addr();

    let gen_dir = dir.path().join("cluster");
    let gen_dir_str = gen_dir.to_str().context("path")?;
    let out = nodectl::run(
        &[
            "gen",
            "config",
            "qemu",
            "https://127.0.0.1:6443",
            "--output-dir",
            gen_dir_str,
        ],
        CALL_TIMEOUT,
    )?;
    ensure!(out.success, "gen config: {}", out.stderr);
    let cp = gen_dir.join("controlplane.yaml");
    let cp = cp.to_str().context("path")?;
    let cfg = gen_dir.join("nodeconfig");

    // Maintenance mode takes the first configuration over --insecure.
    nodectl::version_json(&addr)?;
    let out = nodectl::run(
        &["apply-config", "--insecure", "-n", &addr, "-f", cp],
        CALL_TIMEOUT,
    )?;
    ensure!(
        out.success,
        "first apply-config: {}{}",
        out.stdout,
        out.stderr
    );

    // Mutual TLS only from now on; the server certificate, issued on the node
    // from the configuration's CA, verifies through the forwarded loopback port.
    let version = wait_mtls(&cfg, &node)?;
    ensure!(version.contains("\"maintenance\": false"), "{version}");
    ensure!(
        version.contains("\"architecture\": \"aarch64\""),
        "{version}"
    );
    let insecure = nodectl::run(&["version", "--insecure", "-n", &addr], CALL_TIMEOUT)?;
    ensure!(
        !insecure.success,
        "an insecure call was answered after configuration"
    );

    // Day two.
    let services = mtls_ok(&cfg, &node, &["services"])?;
    ensure!(
        services.contains("apid") && services.contains("networkd"),
        "{services}"
    );
    let logs = mtls_ok(&cfg, &node, &["logs", "apid"])?;
    ensure!(logs.contains("API listening"), "{logs}");
    let dmesg = mtls_ok(&cfg, &node, &["dmesg", "--tail", "50"])?;
    ensure!(
        dmesg.contains("Linux") || dmesg.lines().count() >= 10,
        "{dmesg}"
    );
    let events = mtls_ok(&cfg, &node, &["events"])?;
    ensure!(events.contains("apid"), "{events}");
    let mounts = mtls_ok(&cfg, &node, &["mounts"])?;
    ensure!(mounts.contains("squashfs"), "{mounts}");

    // A bad configuration is refused with its field path; nothing changes.
    let before = mtls_ok(&cfg, &node, &["get", "config"])?;
    let bad = mtls(
        &cfg,
        &node,
        &[
            "apply-config",
            "-f",
            cp,
            "--config-patch",
            "machine: {network: {interfaces: [{interface: eth0, addresses: [10.0.0.300/24]}]}}",
        ],
    )?;
    ensure!(!bad.success, "a bad configuration was accepted");
    ensure!(
        bad.stderr
            .contains("machine.network.interfaces[0].addresses[0]"),
        "{}",
        bad.stderr
    );
    ensure!(mtls_ok(&cfg, &node, &["get", "config"])? == before);

    // A trial reverts by itself when its time is up.
    mtls_ok(
        &cfg,
        &node,
        &[
            "apply-config",
            "-f",
            cp,
            "--mode",
            "try",
            "--try-timeout",
            "30s",
            "--config-patch",
            "machine: {hostname: trial-node}",
        ],
    )?;
    ensure!(mtls_ok(&cfg, &node, &["get", "config"])?.contains("trial-node"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while mtls_ok(&cfg, &node, &["get", "config"])?.contains("trial-node") {
        ensure!(
            Instant::now() < deadline,
            "the trial did not revert:\n{}",
            node.console_tail(30)
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // Reboot: the configuration is still in force afterwards.
    mtls_ok(&cfg, &node, &["reboot"])?;
    wait_exit(&mut node)?;
    let mut node = start(dir.path(), &disk, port, 2)?;
    let version = wait_mtls(&cfg, &node)?;
    ensure!(version.contains("\"maintenance\": false"), "{version}");
    ensure!(mtls_ok(&cfg, &node, &["get", "config"])? == before);

    // Reset: back to maintenance mode.
    mtls_ok(&cfg, &node, &["reset", "--wipe-data"])?;
    wait_exit(&mut node)?;
    let node = start(dir.path(), &disk, port, 3)?;
    let version = nodectl::version_json(&node.api_addr())?;
    let first = version.get(0).unwrap_or(&version);
    ensure!(first["maintenance"] == true, "{version}");
    ensure!(
        node.console().contains("emptying the data partition"),
        "the data partition was not wiped:\n{}",
        node.console_tail(40)
    );
    Ok(())
}

#[test]
fn a_power_cut_during_apply_leaves_the_old_or_the_new_configuration() -> Result<()> {
    let dir = paths::test_dir("apply-power-cut")?;
    let disk = dir.path().join("disk.img");
    qemu::prepare_disk(&paths::image()?, &disk, 0)?;
    let port = qemu::free_port()?;
    let mut node = start(dir.path(), &disk, port, 1)?;
    let addr = node.api_addr();
    let gen_dir = dir.path().join("cluster");
    let out = nodectl::run(
        &[
            "gen",
            "config",
            "cut",
            "https://127.0.0.1:6443",
            "--output-dir",
            gen_dir.to_str().context("path")?,
        ],
        CALL_TIMEOUT,
    )?;
    ensure!(out.success, "gen config: {}", out.stderr);
    let cp = gen_dir.join("controlplane.yaml");
    let cp = cp.to_str().context("path")?;
    let cfg = gen_dir.join("nodeconfig");
    let out = nodectl::run(
        &["apply-config", "--insecure", "-n", &addr, "-f", cp],
        CALL_TIMEOUT,
    )?;
    ensure!(out.success, "first apply-config: {}", out.stderr);
    wait_mtls(&cfg, &node)?;

    // Cut the power at a few points of an apply: before it reaches the node,
    // while it is written, after it answered.
    for (round, delay_ms) in [30u64, 150, 400].into_iter().enumerate() {
        let old = mtls_ok(&cfg, &node, &["get", "config"])?;
        let hostname = format!("cut-{round}");
        let patch = format!("machine: {{hostname: {hostname}}}");
        let mut apply = std::process::Command::new(paths::nodectl()?)
            .args(["--nodeconfig", cfg.to_str().context("path")?, "-n", &addr])
            .args(["apply-config", "-f", cp, "--config-patch", &patch])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(delay_ms));
        node.kill();
        let _ = apply.kill();
        let _ = apply.wait();

        node = start(dir.path(), &disk, port, 2 + u32::try_from(round)?)?;
        wait_mtls(&cfg, &node)?;
        let now = mtls_ok(&cfg, &node, &["get", "config"])?;
        let new_one = now.contains(&format!("hostname: {hostname}"));
        ensure!(
            now == old || new_one,
            "after a power cut {delay_ms} ms into an apply the node runs neither the old nor the new configuration:\n{now}"
        );
    }
    Ok(())
}
