//! The Raspberry Pi boot path in QEMU `raspi3b` (the Pi 3's BCM2837), one
//! boot: the built image, copied and padded to a power-of-two size, is the
//! board's SD card; Debian's Pi U-Boot (`rpi_arm64/u-boot.bin`) is loaded
//! with the Pi 3B device tree (`bcm2837-rpi-3-b.dtb`) the way the Pi
//! firmware would load them (`-kernel`, `-dtb`; both from the pinned
//! packages, the bytes the image builder puts on the boot partition); U-Boot
//! runs our `boot.scr` from the SD card, which boots slot A with the device
//! tree at `${fdt_addr}`; PID 1 loads the Pi's SD host driver by modalias,
//! finds its root on the card's partitions (`/dev/mmcblk0p*`); the machine
//! API answers the real `nodectl version --insecure` through QEMU's
//! `usb-net` adapter on the emulated DWC2 USB host, whose link the network
//! daemon configures by DHCP. The console read is the Pi's GPIO-header
//! UART (the mini UART, Linux's `ttyS1`).
//!
//! What differs from a real Pi, and why:
//! - The Pi's own boot firmware (`bootcode.bin`, `start.elf`) and so
//!   `config.txt` do not run: QEMU has no VideoCore and loads U-Boot itself.
//! - The USB adapter is plugged in (QEMU monitor `device_add`) after the
//!   node reports ready instead of being there at power-on. QEMU 7.2's DWC2
//!   model signals a connection only when a device attaches and does not
//!   implement the core soft reset that would signal it again; U-Boot's
//!   `usb start` acknowledges it, after which Linux's dwc2 driver refuses
//!   every transfer to the device ("dwc2 3f980000.usb: Not connected") and
//!   it never enumerates (tried: the device present from power-on stays
//!   unusable). Plugged in later it enumerates like any hot-plugged USB
//!   device, which also exercises PID 1's uevent-driven module loading that
//!   a Pi 3's USB Ethernet (behind its USB hub, enumerated after coldplug)
//!   relies on.
//! - QEMU does not exit when the guest powers off on this board; the harness
//!   ends QEMU when the node is dropped.
//!
//! `BRAMBLE_TEST_CONSOLE=1` echoes the console. Slow under TCG: U-Boot alone
//! reads the 33 MB kernel from the emulated SD card at about 1 MB/s.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bramble_tests::{nodectl, paths, qemu};

/// U-Boot's SD reads (~40 s here) plus the kernel to "ready" under TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(480);
/// From plugging the adapter to the API answering through it.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn raspi3b_boots_from_sd_card_and_answers_version_over_usb_network() -> Result<()> {
    let dir = paths::test_dir("raspi3b")?;
    let sd = dir.path().join("sd.img");
    let card = qemu::prepare_sd_card(&paths::image()?, &sd)?;
    ensure!(
        card.is_power_of_two(),
        "SD card size {card} is not a power of two"
    );
    let firmware =
        qemu::RaspiFirmware::extract(&paths::packages_lock()?, &paths::deb_cache()?, dir.path())?;
    let mut opts = qemu::Options::raspi3b(sd, qemu::free_port()?, firmware);
    opts.console_log = Some(dir.path().join("console.log"));
    opts.monitor_socket = Some(dir.path().join("monitor.sock"));
    let mut node = qemu::Node::start(&opts)?;

    node.wait_ready(BOOT_TIMEOUT)?;
    let console = node.console();
    ensure!(
        console.contains("Bramble: booting slot A"),
        "U-Boot did not run boot.scr from the SD card:\n{}",
        node.console_tail(60)
    );
    // The root was found on the SD card through the Pi's own SD host driver,
    // loaded by PID 1 by modalias.
    let disk = console
        .lines()
        .find(|l| l.contains("boot disk "))
        .context("PID 1 did not report the boot disk")?;
    ensure!(
        disk.contains("/dev/mmcblk0"),
        "boot disk is not the SD card: {disk}"
    );
    let root = console
        .lines()
        .find(|l| l.contains("mount: / "))
        .context("PID 1 did not report the root mount")?;
    ensure!(
        root.contains("squashfs ro (/dev/mmcblk0p2)"),
        "root is not slot A's squashfs on the SD card: {root}"
    );
    let ready = console
        .lines()
        .find(|l| l.contains(qemu::READY_MARKER))
        .unwrap_or_default();
    eprintln!("raspi3b: {}", ready.trim());

    node.plug_usb_net()?;
    let deadline = Instant::now() + NETWORK_TIMEOUT;
    let version = loop {
        match nodectl::version_json(&node.api_addr()) {
            Ok(v) => break v,
            Err(err) => {
                ensure!(
                    Instant::now() < deadline,
                    "the API did not answer through usb-net within {NETWORK_TIMEOUT:?}: {err:#}\nconsole tail:\n{}",
                    node.console_tail(60)
                );
            }
        }
    };
    let first = version.get(0).unwrap_or(&version);
    assert_eq!(first["architecture"], "aarch64", "{version}");
    assert_eq!(first["boot_slot"], "A", "{version}");
    assert_eq!(first["maintenance"], true, "{version}");
    assert_eq!(first["os_name"], "Bramble", "{version}");
    assert!(
        first["kernel_version"]
            .as_str()
            .is_some_and(|k| k.starts_with("6.1.")),
        "{version}"
    );
    let console = node.console();
    ensure!(
        console.contains("hotplug: loaded"),
        "PID 1 loaded no module for the plugged adapter:\n{}",
        node.console_tail(40)
    );
    eprintln!(
        "raspi3b: nodectl version answered through usb-net {:.1} s after QEMU started",
        node.elapsed().as_secs_f64()
    );
    Ok(())
}
