//! A panic in PID 1 holds the node like a fatal error instead of taking the
//! kernel down: booted with the test-only fault switch
//! `bramble.test_fault=panic-after-ready` on its kernel command line, PID 1
//! panics once the API is ready; the console shows the panic, the
//! filesystems are synced, the kernel does not panic and the API, whose
//! process PID 1 no longer supervises, still answers.

use std::fs::OpenOptions;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bramble_tests::{nodectl, paths, qemu};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const FAULT: &str = "bramble.test_fault=panic-after-ready";

/// Appends `arg` to the kernel command line U-Boot reads from `bramble.env`
/// on the disk's boot partition.
fn add_kernel_arg(disk: &std::path::Path, arg: &str) -> Result<()> {
    let mut file = OpenOptions::new().read(true).write(true).open(disk)?;
    let boot = bramble_bootfs::BootFs::open(&mut file)?;
    let env = boot.read("bramble.env")?.context("no bramble.env")?;
    let env = String::from_utf8(env)?;
    ensure!(env.contains("bramble_cmdline="), "{env}");
    let edited: String = env
        .lines()
        .map(|l| {
            if l.starts_with("bramble_cmdline=") {
                format!("{l} {arg}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    boot.replace("bramble.env", "bramble.new", edited.as_bytes())?;
    boot.finish()?;
    Ok(())
}

#[test]
fn a_panic_in_pid1_holds_the_node_and_the_kernel_stays_up() -> Result<()> {
    let dir = paths::test_dir("pid1-panic")?;
    let disk = dir.path().join("disk.img");
    qemu::prepare_disk(&paths::image()?, &disk, 0)?;
    add_kernel_arg(&disk, FAULT)?;

    let mut opts = qemu::Options::new(disk.clone(), qemu::free_port()?);
    opts.console_log = Some(dir.path().join("console.log"));
    let mut node = qemu::Node::start(&opts)?;
    node.wait_ready(BOOT_TIMEOUT)?;
    node.wait_for("PID 1 panicked", Duration::from_secs(60))?;
    node.wait_for(
        "filesystems synced; the node is held",
        Duration::from_secs(30),
    )?;
    let console = node.console();
    ensure!(
        console.contains(&format!("injected by {FAULT}")),
        "the panic's message is not on the console:\n{}",
        node.console_tail(30)
    );

    // The kernel is alive: the API the held PID 1 started still answers.
    let version = nodectl::version_json(&node.api_addr())?;
    let first = version.get(0).unwrap_or(&version);
    assert_eq!(first["os_name"], "Bramble", "{version}");
    let console = node.console();
    ensure!(
        !console.contains("Kernel panic") && !console.contains("Attempted to kill init"),
        "the kernel panicked:\n{}",
        node.console_tail(30)
    );
    node.kill();
    Ok(())
}
