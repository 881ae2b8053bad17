//! A card written by `nodectl image flash --config` comes up configured: the
//! real `nodectl` flashes the built image onto a blank file standing in for
//! the SD card, with a generated control-plane configuration; the node boots
//! it in QEMU and answers over mutual TLS without any `apply-config`; the file
//! is gone from the boot partition afterwards.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bramble_tests::nodectl::{self, Client};
use bramble_tests::{paths, qemu};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn a_config_placed_by_flash_is_applied_on_first_boot() -> Result<()> {
    let image = paths::image()?;
    let xz = image.with_extension("img.xz");
    let source = if xz.is_file() { xz } else { image.clone() };
    let dir = paths::test_dir("flash")?;

    let client = Client::generate(&dir.path().join("cluster"), &[])?;
    let cp = client.controlplane.clone();

    // A blank "card" as big as the image.
    let disk = dir.path().join("card.img");
    let size = std::fs::metadata(&image)?.len();
    std::fs::File::create(&disk)?.set_len(size)?;
    let out = nodectl::run(
        &[
            "image",
            "flash",
            "--device",
            disk.to_str().context("path")?,
            "--image",
            source.to_str().context("path")?,
            "--config",
            cp.to_str().context("path")?,
            "--allow-file",
            "--yes",
        ],
        Duration::from_secs(600),
    )?;
    ensure!(out.success, "flash: {}{}", out.stdout, out.stderr);
    println!("{}", out.stdout);
    ensure!(
        out.stdout.contains("placed as machine-config.yaml"),
        "{}",
        out.stdout
    );

    let port = qemu::free_port()?;
    let mut opts = qemu::Options::new(disk.clone(), port);
    opts.console_log = Some(dir.path().join("console.log"));
    opts.monitor_socket = Some(dir.path().join("monitor.sock"));
    let mut node = qemu::Node::start(&opts)?;
    node.wait_ready(BOOT_TIMEOUT)?;
    let addr = node.api_addr();

    // Configured without any apply-config: mutual TLS with the generated
    // client configuration works, and the insecure maintenance-mode call does not.
    let version = client
        .wait_answer(&addr, Duration::from_secs(60))
        .with_context(|| node.console_tail(40))?;
    ensure!(version.contains("\"maintenance\": false"), "{version}");
    let insecure = nodectl::run(&["version", "--insecure", "-n", &addr], CALL_TIMEOUT)?;
    ensure!(
        !insecure.success,
        "an insecure call was answered: the node is still in maintenance mode"
    );
    let out = client.run(&addr, &["get", "config"])?;
    ensure!(out.success, "get config: {}", out.stderr);
    let placed = std::fs::read_to_string(&cp)?;
    ensure!(
        out.stdout.trim() == placed.trim(),
        "the node's configuration is not the flashed file:\n{}",
        out.stdout
    );
    let console = node.console();
    ensure!(
        console.contains("machine-config.yaml")
            && console.contains("taken from the boot partition"),
        "PID 1 did not report taking the file:\n{}",
        node.console_tail(60)
    );

    node.press_power_button()?;
    node.wait_exit(Duration::from_secs(90))
        .with_context(|| format!("the node did not go down:\n{}", node.console_tail(30)))?;

    // The file is gone from the boot partition: a Reset will not bring it back.
    let mut card = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)?;
    let left = bramble_flash::bootfs::read(&mut card).map_err(anyhow::Error::msg)?;
    ensure!(
        left.is_none(),
        "machine-config.yaml is still on the boot partition"
    );
    Ok(())
}
