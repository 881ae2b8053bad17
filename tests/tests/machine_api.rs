//! The machine API on a real node in QEMU, driven by the real `nodectl`:
//! first configuration over `--insecure`, mutual TLS from then on, the
//! day-two commands, a trial that reverts by itself, a reboot that keeps the
//! configuration, and a reset back to maintenance mode.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bramble_tests::nodectl::{self, Client};
use bramble_tests::{paths, qemu};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const MTLS_TIMEOUT: Duration = Duration::from_secs(60);

fn start(dir: &Path, disk: &Path, port: u16, n: u32) -> Result<qemu::Node> {
    qemu::Node::boot(&qemu::Options::logged(disk, port, dir, n), BOOT_TIMEOUT)
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

    let c = Client::generate(&dir.path().join("cluster"), &[])?;
    let cp = c.controlplane_str()?;

    // Maintenance mode takes the first configuration over --insecure.
    nodectl::version_json(&addr)?;
    c.apply_first(&addr, MTLS_TIMEOUT)?;

    // Mutual TLS only from now on; the server certificate, issued on the node
    // from the configuration's CA, verifies through the forwarded loopback port.
    let version = c.wait_answer(&node.api_addr(), MTLS_TIMEOUT)?;
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
    let services = c.ok(&node.api_addr(), &["services"])?;
    ensure!(
        services.contains("apid") && services.contains("networkd"),
        "{services}"
    );
    let logs = c.ok(&node.api_addr(), &["logs", "apid"])?;
    ensure!(logs.contains("API listening"), "{logs}");
    let dmesg = c.ok(&node.api_addr(), &["dmesg", "--tail", "50"])?;
    ensure!(
        dmesg.contains("Linux") || dmesg.lines().count() >= 10,
        "{dmesg}"
    );
    let events = c.ok(&node.api_addr(), &["events"])?;
    ensure!(events.contains("apid"), "{events}");
    let mounts = c.ok(&node.api_addr(), &["mounts"])?;
    ensure!(mounts.contains("squashfs"), "{mounts}");

    // A bad configuration is refused with its field path; nothing changes.
    let before = c.ok(&node.api_addr(), &["get", "config"])?;
    let bad = c.run(
        &node.api_addr(),
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
    ensure!(c.ok(&node.api_addr(), &["get", "config"])? == before);

    // A trial reverts by itself when its time is up.
    c.ok(
        &node.api_addr(),
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
    ensure!(
        c.ok(&node.api_addr(), &["get", "config"])?
            .contains("trial-node")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .ok(&node.api_addr(), &["get", "config"])?
        .contains("trial-node")
    {
        ensure!(
            Instant::now() < deadline,
            "the trial did not revert:\n{}",
            node.console_tail(30)
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // Reboot: the configuration is still in force afterwards.
    c.ok(&node.api_addr(), &["reboot"])?;
    wait_exit(&mut node)?;
    let mut node = start(dir.path(), &disk, port, 2)?;
    let version = c.wait_answer(&node.api_addr(), MTLS_TIMEOUT)?;
    ensure!(version.contains("\"maintenance\": false"), "{version}");
    ensure!(c.ok(&node.api_addr(), &["get", "config"])? == before);

    // Reset: back to maintenance mode.
    c.ok(&node.api_addr(), &["reset", "--wipe-data"])?;
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
    let c = Client::generate(&dir.path().join("cluster"), &[])?;
    let cp = c.controlplane_str()?;
    c.apply_first(&addr, MTLS_TIMEOUT)?;

    // Cut the power at a few points of an apply: before it reaches the node,
    // while it is written, after it answered.
    for (round, delay_ms) in [30u64, 150, 400].into_iter().enumerate() {
        let old = c.ok(&node.api_addr(), &["get", "config"])?;
        let hostname = format!("cut-{round}");
        let patch = format!("machine: {{hostname: {hostname}}}");
        let mut apply = std::process::Command::new(paths::nodectl()?)
            .args([
                "--nodeconfig",
                c.nodeconfig.to_str().context("path")?,
                "-n",
                &addr,
            ])
            .args(["apply-config", "-f", cp, "--config-patch", &patch])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(delay_ms));
        node.kill();
        let _ = apply.kill();
        let _ = apply.wait();

        node = start(dir.path(), &disk, port, 2 + u32::try_from(round)?)?;
        c.wait_answer(&node.api_addr(), MTLS_TIMEOUT)?;
        let now = c.ok(&node.api_addr(), &["get", "config"])?;
        let new_one = now.contains(&format!("hostname: {hostname}"));
        ensure!(
            now == old || new_one,
            "after a power cut {delay_ms} ms into an apply the node runs neither the old nor the new configuration:\n{now}"
        );
    }
    Ok(())
}
