//! A configured node whose `STATE` partition is lost does not fall back to
//! the open maintenance API: in QEMU, a node is configured, powered off, its
//! `STATE` file system destroyed, and booted again. It refuses anonymous
//! callers (an `apply-config --insecure` from anyone on its network would
//! otherwise take it over), answers the cluster's admin (pinning the
//! certificate its console shows) only to configure it again or reset it,
//! and is back to mutual TLS with its configuration applied again.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bramble_tests::nodectl::{self, Client};
use bramble_tests::{fault, paths, qemu};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn start(dir: &Path, disk: &Path, port: u16, n: u32) -> Result<qemu::Node> {
    qemu::Node::boot(&qemu::Options::logged(disk, port, dir, n), BOOT_TIMEOUT)
}

/// Zeroes the superblock of the `STATE` file system on the powered-off
/// node's disk, so that it cannot be mounted.
fn destroy_state(disk: &Path) -> Result<()> {
    let mut file = OpenOptions::new().read(true).write(true).open(disk)?;
    let parts = bramble_disk::mbr::read_partitions(&mut file)?;
    let state = parts
        .iter()
        .find(|p| p.index == bramble_disk::STATE_PARTITION)
        .context("no STATE partition")?;
    let sb = bramble_disk::ext4::read(&mut file, state.start_bytes())?;
    ensure!(sb.label == bramble_disk::STATE_LABEL, "{sb:?}");
    file.seek(SeekFrom::Start(
        state.start_bytes() + bramble_disk::ext4::SUPERBLOCK_OFFSET,
    ))?;
    file.write_all(&[0u8; 1024])?;
    file.sync_all()?;
    ensure!(bramble_disk::ext4::read(&mut file, state.start_bytes()).is_err());
    Ok(())
}

#[test]
fn a_node_that_lost_its_state_admits_only_its_admins() -> Result<()> {
    let dir = paths::test_dir("recovery")?;
    let disk = dir.path().join("disk.img");
    qemu::prepare_disk(&paths::image()?, &disk, 0)?;
    let port = qemu::free_port()?;
    let mut node = start(dir.path(), &disk, port, 1)?;
    let addr = node.api_addr();
    let c = Client::generate(&dir.path().join("cluster"), &[])?;
    c.apply_first(&addr, CALL_TIMEOUT)?;
    c.ok(&addr, &["shutdown"])?;
    node.wait_exit(Duration::from_secs(90))
        .with_context(|| format!("the node did not power off:\n{}", node.console_tail(30)))?;

    fault::injected("STATE unmountable");
    destroy_state(&disk)?;
    let mut node = start(dir.path(), &disk, port, 2)?;
    let said = "but its STATE partition holds no usable configuration";
    node.wait_for(said, BOOT_TIMEOUT)?;
    let console = node.console();
    let fingerprint = console
        .lines()
        .find(|l| l.contains(said))
        .and_then(|l| l.split("--cert-fingerprint ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("no fingerprint on the console:\n{}", node.console_tail(30)))?
        .to_owned();

    // Anonymous callers are refused: no maintenance mode.
    for args in [
        vec!["version", "--insecure", "-n", &addr],
        vec![
            "apply-config",
            "--insecure",
            "-n",
            &addr,
            "-f",
            c.controlplane_str()?,
        ],
    ] {
        let out = nodectl::run(&args, CALL_TIMEOUT)?;
        ensure!(
            !out.success,
            "{args:?} was answered anonymously: {}",
            out.stdout
        );
    }
    // The cluster's admin, pinning the console's certificate, is answered,
    // but only to recover the node.
    let pinned = |args: &[&str]| {
        let mut all = vec!["--cert-fingerprint", fingerprint.as_str()];
        all.extend_from_slice(args);
        c.run(&addr, &all)
    };
    let version = pinned(&["version", "-o", "json"])?;
    ensure!(version.success, "{}", version.stderr);
    let config = pinned(&["get", "config"])?;
    ensure!(
        !config.success && config.stderr.contains("no usable configuration"),
        "{}{}",
        config.stdout,
        config.stderr
    );
    let applied = pinned(&["apply-config", "-f", c.controlplane_str()?])?;
    ensure!(applied.success, "{}{}", applied.stdout, applied.stderr);
    // Configured again: mutual TLS with the certificate issued from the CA.
    c.wait_answer(&addr, CALL_TIMEOUT)?;
    let config = c.ok(&addr, &["get", "config"])?;
    ensure!(config.contains("machine:"), "{config}");
    fault::survived("STATE unmountable");
    node.kill();
    Ok(())
}
