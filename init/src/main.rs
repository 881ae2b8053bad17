//! Bramble's PID 1.
//!
//! The same binary runs twice. The kernel starts it as `/init` from the
//! initramfs (stage 1): it mounts the kernel filesystems, loads the drivers the
//! hardware asks for, finds the boot disk, grows the data partition on first
//! boot, mounts the active slot's read-only root with the persistent
//! partitions beneath it, and switches into it. There it is executed again as
//! `/sbin/init` (stage 2): it finishes the mounts, seeds the RNG and runs the
//! service supervisor until a shutdown is asked for, then stops everything in
//! order and powers off or reboots.
//!
//! PID 1 must never exit: every failure is reported on the console and either
//! retried or held, and so is a panic (`panic.rs`). Called as `modprobe` (the kernel's
//! module-request helper, `/sbin/modprobe` links to it), it loads a module
//! and exits.

mod disk;
mod error;
mod hold;
mod hotplug;
mod logging;
mod modprobe;
mod modules;
mod mounts;
mod panic;
mod rng;
mod shutdown;
mod stage1;
mod stage2;
mod supervise;
mod sys;
mod test_fault;

use std::path::Path;

/// Present only inside the initramfs.
const INITRD_MARKER: &str = "/etc/initrd-release";

fn main() {
    // Called as /sbin/modprobe by the kernel: load a module and exit.
    let args: Vec<String> = std::env::args().collect();
    if args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "modprobe")
    {
        std::process::exit(modprobe::run(&args[1..]));
    }

    logging::init();
    if std::process::id() != 1 {
        eprintln!("bramble-init: must run as PID 1 (it mounts, switches root and powers off)");
        std::process::exit(2);
    }
    // From here on a panic holds the node like a fatal error (`panic.rs`).
    panic::install();

    let outcome = if Path::new(INITRD_MARKER).exists() {
        stage1::run()
    } else {
        stage2::run()
    };
    // Both stages only return on an error they cannot retry.
    let Err(err) = outcome;
    tracing::error!("{err}");
    hold::forever("boot cannot continue; the node is held (power-cycle it once the cause is fixed)")
}
