//! A panic in PID 1 holds the node like a fatal error instead of taking the
//! kernel down: booted with the test-only fault switch
//! `bramble.test_fault=panic-after-ready` on its kernel command line, PID 1
//! panics once the API is ready; the console shows the panic, the
//! filesystems are synced, the kernel does not panic and the API, whose
//! process PID 1 no longer supervises, still answers.

use std::time::Duration;

use anyhow::{Result, ensure};
use bramble_tests::{fault, nodectl, paths, qemu};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const FAULT: &str = "bramble.test_fault=panic-after-ready";

#[test]
fn a_panic_in_pid1_holds_the_node_and_the_kernel_stays_up() -> Result<()> {
    let dir = paths::test_dir("pid1-panic")?;
    let disk = dir.path().join("disk.img");
    qemu::prepare_disk(&paths::image()?, &disk, 0)?;
    bramble_tests::disk::add_kernel_arg(&disk, FAULT)?;
    fault::injected("PID 1 panics");

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
    fault::survived("PID 1 panics");
    node.kill();
    Ok(())
}
