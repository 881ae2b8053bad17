//! What a panic in PID 1 does: the same as a fatal error, never an exit.
//!
//! The node's binaries are built with `panic = "abort"`, and PID 1 exiting
//! (or aborting) makes the kernel panic. A panic hook runs before the abort,
//! so PID 1's hook never returns: it writes the panic to the console and the
//! kernel log directly (not through `tracing`, whose locks the panicking code
//! may hold), flushes every filesystem's dirty data, and holds like a fatal
//! error does ([`crate::hold`]). The services keep running unsupervised; the
//! node needs a power cycle (or, once the hardware watchdog is fed by PID 1,
//! the watchdog reboots it).
//!
//! `bramble.test_fault=panic-after-ready` on the kernel command line makes
//! PID 1 panic once the API is ready ([`crate::test_fault`]): the boot tests
//! prove this path with it.

use std::fs::OpenOptions;
use std::io::Write;
use std::panic::PanicHookInfo;

/// Installs the hook. Only PID 1 calls it (as `modprobe` the binary may die).
pub fn install() {
    std::panic::set_hook(Box::new(hook));
}

fn hook(info: &PanicHookInfo<'_>) {
    let text = format!("PID 1 panicked: {info}");
    emergency(&text);
    nix::unistd::sync();
    emergency("filesystems synced; the node is held (power-cycle it)");
    crate::hold::forever_with(|| {
        emergency(&format!(
            "{text}; the node is held (power-cycle it once the cause is fixed)"
        ));
    })
}

/// Writes one line to `/dev/console` and `/dev/kmsg`, opening each afresh;
/// failures are ignored (there is nowhere else to report them).
fn emergency(line: &str) {
    let uptime = crate::logging::uptime_secs();
    if let Ok(mut console) = OpenOptions::new().write(true).open("/dev/console") {
        let _ = console.write_all(format!("[{uptime:>9.3}] bramble: ERROR {line}\n").as_bytes());
    }
    if let Ok(mut kmsg) = OpenOptions::new().write(true).open("/dev/kmsg") {
        // Level 2 (critical): kept in the ring buffer, shown by `dmesg`.
        let _ = kmsg.write_all(format!("<2>bramble: {line}\n").as_bytes());
    }
}
