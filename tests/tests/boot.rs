//! Boot tests: the real image, booted in QEMU `virt` through U-Boot, driven
//! through the real `nodectl` over a forwarded loopback port.
//!
//! Each test works on its own copy of the image; `dist/` is never touched.
//! Set `BRAMBLE_TEST_CONSOLE=1` to see the consoles as the nodes boot.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bramble_disk::mbr;
use bramble_tests::{nodectl, paths, qemu};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(90);

struct Booted {
    node: qemu::Node,
    _dir: tempfile::TempDir,
    disk: std::path::PathBuf,
}

/// Copies the image (grown by `grow_by` bytes) and boots it.
fn boot(name: &str, grow_by: u64) -> Result<Booted> {
    let dir = paths::test_dir(name)?;
    let disk = dir.path().join("disk.img");
    qemu::prepare_disk(&paths::image()?, &disk, grow_by)?;
    let node = start(dir.path(), &disk)?;
    Ok(Booted {
        node,
        _dir: dir,
        disk,
    })
}

fn start(dir: &Path, disk: &Path) -> Result<qemu::Node> {
    let mut opts = qemu::Options::new(disk.to_path_buf(), qemu::free_port()?);
    opts.console_log = Some(dir.join(format!("console-{}.log", opts.api_port)));
    opts.monitor_socket = Some(dir.join(format!("monitor-{}.sock", opts.api_port)));
    qemu::Node::start(&opts)
}

fn fingerprint(console: &str) -> Option<String> {
    let line = console
        .lines()
        .rev()
        .find(|l| l.contains("certificate fingerprint"))?;
    let at = line.find("SHA256:")?;
    Some(line[at..].split_whitespace().next()?.to_owned())
}

#[test]
fn boots_through_uboot_to_pid1_and_answers_version() -> Result<()> {
    let mut b = boot("version", 0)?;
    b.node.wait_ready(BOOT_TIMEOUT)?;
    let console = b.node.console();
    // The Pi boot chain: U-Boot ran our boot script, which chose slot A.
    ensure!(
        console.contains("U-Boot"),
        "no U-Boot banner on the console"
    );
    ensure!(
        console.contains("Bramble: booting slot A"),
        "boot.scr did not run:\n{}",
        b.node.console_tail(40)
    );
    ensure!(
        console.contains("initramfs: kernel"),
        "PID 1 stage 1 did not run"
    );
    // Stage 1 walks sysfs once: the virtio devices that appear once
    // virtio_pci is loaded come from uevents, and their drivers load too.
    let coldplug = console
        .lines()
        .find(|l| l.contains("coldplug:") && l.contains("loaded in"))
        .context("no coldplug line from stage 1")?;
    ensure!(coldplug.contains("(1 pass(es)"), "{coldplug}");
    ensure!(
        console.contains("boot disk /dev/vda"),
        "virtio_blk was not loaded:\n{}",
        b.node.console_tail(40)
    );
    // What a person at the console reads: the command that configures the
    // node, with the address QEMU's DHCP leased it.
    b.node.wait_for(
        "nodectl apply-config --insecure -n 10.0.2.15 -f controlplane.yaml",
        Duration::from_secs(60),
    )?;

    let version = nodectl::version_json(&b.node.api_addr())?;
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
    Ok(())
}

#[test]
fn root_is_read_only_squashfs_and_has_no_shell() -> Result<()> {
    // What runs: PID 1 reports how / is mounted.
    let mut b = boot("readonly", 0)?;
    b.node.wait_ready(BOOT_TIMEOUT)?;
    let console = b.node.console();
    let root = console
        .lines()
        .find(|l| l.contains("mount: / "))
        .context("PID 1 did not report the root mount")?;
    ensure!(
        root.contains("squashfs ro"),
        "root is not a read-only squashfs: {root}"
    );
    let var = console
        .lines()
        .find(|l| l.contains("mount: /var "))
        .context("no /var mount reported")?;
    ensure!(
        var.contains("ext4 rw"),
        "/var is not the writable ext4 data partition: {var}"
    );

    // What it is: the slot's squashfs, read straight from the disk image,
    // holds no shell or busybox anywhere.
    let mut disk = File::open(&b.disk)?;
    let parts = mbr::read_partitions(&mut disk)?;
    let slot_a = parts
        .iter()
        .find(|p| p.index == 2)
        .context("no partition 2")?;
    let names = squashfs_paths(&b.disk, slot_a.start_lba * 512)?;
    ensure!(
        names.iter().any(|n| n == "/sbin/init"),
        "no /sbin/init in the root: {names:?}"
    );
    for name in &names {
        let base = name.rsplit('/').next().unwrap_or(name);
        ensure!(
            !matches!(
                base,
                "sh" | "bash" | "ash" | "dash" | "zsh" | "busybox" | "toybox"
            ),
            "the root filesystem holds a shell: {name}"
        );
    }
    Ok(())
}

fn squashfs_paths(disk: &Path, offset: u64) -> Result<Vec<String>> {
    let file = std::io::BufReader::new(File::open(disk)?);
    let fs = backhand::FilesystemReader::from_reader_with_offset(file, offset)
        .context("reading the root slot's squashfs")?;
    Ok(fs
        .files()
        .map(|node| node.fullpath.to_string_lossy().into_owned())
        .collect())
}

#[test]
fn persistent_state_survives_power_cut_and_reboot() -> Result<()> {
    let mut b = boot("persist", 0)?;
    b.node.wait_ready(BOOT_TIMEOUT)?;
    b.node
        .wait_for("certificate fingerprint", Duration::from_secs(30))?;
    let first =
        fingerprint(&b.node.console()).context("no certificate fingerprint on the console")?;
    // Pull the plug: what was persisted must have been persisted atomically.
    b.node.kill();

    let dir = b
        .disk
        .parent()
        .context("disk has no directory")?
        .to_path_buf();
    let mut node = start(&dir, &b.disk)?;
    node.wait_ready(BOOT_TIMEOUT)?;
    node.wait_for("certificate fingerprint", Duration::from_secs(30))?;
    let second = fingerprint(&node.console()).context("no fingerprint after the reboot")?;
    assert_eq!(
        first, second,
        "the API certificate kept in /system/state did not survive"
    );
    let version = nodectl::version_json(&node.api_addr())?;
    let version = version.get(0).unwrap_or(&version);
    assert_eq!(version["boot_slot"], "A");
    Ok(())
}

#[test]
fn data_partition_grows_to_fill_a_bigger_disk() -> Result<()> {
    let grow_by = 256 << 20;
    let mut b = boot("grow", grow_by)?;
    b.node.wait_ready(BOOT_TIMEOUT)?;
    ensure!(
        b.node.console().contains("data partition 6 grown"),
        "PID 1 did not grow the data partition:\n{}",
        b.node.console_tail(40)
    );
    // An orderly power-off, so the resized filesystem is cleanly on disk.
    b.node.press_power_button()?;
    b.node.wait_exit(SHUTDOWN_TIMEOUT)?;
    ensure!(
        b.node.console().contains("power-off"),
        "the node did not power off in order"
    );

    bramble_tests::disk::data_fills_disk(&b.disk)
}

#[test]
fn a_disk_without_its_partitions_gets_a_clear_message_not_a_panic() -> Result<()> {
    let dir = paths::test_dir("nopart")?;
    let disk = dir.path().join("disk.img");
    qemu::prepare_disk(&paths::image()?, &disk, 0)?;
    // Keep the boot partition (U-Boot and the kernel still load), drop the
    // other partition entries from the MBR.
    {
        let mut file = OpenOptions::new().write(true).open(&disk)?;
        file.seek(SeekFrom::Start(446 + 16))?;
        file.write_all(&[0u8; 48])?;
        file.sync_all()?;
    }
    let mut node = start(dir.path(), &disk)?;
    let problem = "has no partition 2 for root slot A";
    node.wait_for(problem, BOOT_TIMEOUT)?;
    // It keeps running and keeps saying so: stage 1 repeats the message
    // every 30 s while it keeps looking; the kernel did not panic.
    bramble_tests::wait::eventually(
        "stage 1 to repeat that the disk has no partition 2",
        Duration::from_secs(90),
        Duration::from_millis(250),
        || {
            if let Some(status) = node.exited()? {
                bail!(
                    "QEMU exited ({status}) instead of stage 1 repeating {problem:?}:\n{}",
                    node.console_tail(30)
                );
            }
            Ok(node.console().matches(problem).count() >= 2)
        },
    )?;
    let console = node.console();
    ensure!(
        !console.contains("Kernel panic"),
        "kernel panic:\n{}",
        node.console_tail(30)
    );
    ensure!(
        !console.contains("node ready:"),
        "a node without its root must not come up"
    );
    Ok(())
}
