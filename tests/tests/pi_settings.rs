//! The Raspberry Pi firmware lines of `machine.pi.configTxt` reach the boot
//! partition, and the console tells a person what to do. One boot in QEMU
//! `virt` (the FAT partition and the write path are the same as a Pi's; only
//! the firmware that reads them is missing): the maintenance-mode console
//! block names the node's address and the `apply-config` command; a first
//! configuration without Pi lines, then one with `dtoverlay=disable-wifi`
//! staged for the next boot; the node is powered off and its disk's FAT is
//! read on the host: `bramble-extra.txt` holds the line and `config.txt`
//! includes it.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bramble_tests::nodectl::Client;
use bramble_tests::{paths, qemu};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
const PI_PATCH: &str = "machine: {pi: {configTxt: [dtoverlay=disable-wifi]}}";

#[test]
fn pi_config_txt_lines_are_written_to_the_boot_partition() -> Result<()> {
    let dir = paths::test_dir("pi-settings")?;
    let disk = dir.path().join("disk.img");
    qemu::prepare_disk(&paths::image()?, &disk, 0)?;
    let port = qemu::free_port()?;
    let mut opts = qemu::Options::new(disk.clone(), port);
    opts.console_log = Some(dir.path().join("console.log"));
    opts.monitor_socket = Some(dir.path().join("monitor.sock"));
    let mut node = qemu::Node::start(&opts)?;
    node.wait_ready(BOOT_TIMEOUT)?;
    let addr = node.api_addr();

    // The maintenance block, printed again once DHCP gave the node its
    // address (QEMU's user network leases 10.0.2.15).
    node.wait_for(
        "nodectl apply-config --insecure -n 10.0.2.15 -f controlplane.yaml",
        Duration::from_secs(60),
    )?;
    let console = node.console();
    ensure!(
        console.contains("maintenance mode, no configuration yet")
            && console.contains("--cert-fingerprint SHA256:"),
        "{}",
        node.console_tail(30)
    );

    let c = Client::generate(&dir.path().join("cluster"), &[])?;
    c.apply_first(&addr, ANSWER_TIMEOUT)?;
    node.wait_for(
        ": configured; API listening on [::]:50000 (mutual TLS)",
        Duration::from_secs(30),
    )?;

    // The Pi line needs a reboot: staged, it is written now, before the
    // reboot the firmware would read it at.
    let out = c.run(
        &addr,
        &[
            "apply-config",
            "--mode",
            "staged",
            "-f",
            c.controlplane_str()?,
            "-p",
            PI_PATCH,
        ],
    )?;
    ensure!(out.success, "staged apply: {}{}", out.stdout, out.stderr);
    ensure!(
        out.stdout.contains("the configuration was staged"),
        "{}",
        out.stdout
    );
    // The event is recorded just after the reply.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = c.ok(&addr, &["events"])?;
        if events.contains("1 machine.pi.configTxt line(s) written to bramble-extra.txt") {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no event about the Pi settings:\n{events}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    node.press_power_button()?;
    node.wait_exit(Duration::from_secs(90))
        .with_context(|| format!("the node did not go down:\n{}", node.console_tail(30)))?;

    let mut card = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)?;
    let boot = bramble_bootfs::BootFs::open(&mut card)?;
    let extra = String::from_utf8(
        boot.read(bramble_bootfs::EXTRA_FILE)?
            .context("no bramble-extra.txt on the boot partition")?,
    )?;
    ensure!(
        extra.starts_with(bramble_bootfs::EXTRA_HEADER)
            && extra.lines().any(|l| l == "dtoverlay=disable-wifi"),
        "bramble-extra.txt:\n{extra}"
    );
    let config_txt = String::from_utf8(boot.read("config.txt")?.context("no config.txt")?)?;
    ensure!(
        config_txt
            .lines()
            .any(|l| l.trim() == "include bramble-extra.txt"),
        "config.txt does not include bramble-extra.txt:\n{config_txt}"
    );
    Ok(())
}
