//! The end of every boot: stop what is left, unmount, sync, power off or
//! reboot. Services were already stopped in reverse dependency order by the
//! supervisor; this takes care of stragglers and the filesystems.

use std::time::{Duration, Instant};

use nix::sys::reboot::RebootMode;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    PowerOff,
    Reboot,
}

/// Reaps exited children until none is left or `deadline` passes. Returns
/// true when no child is left.
fn reap_until(deadline: Instant) -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Err(nix::Error::ECHILD) => return true,
            Ok(WaitStatus::StillAlive) | Err(_) => {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(_) => {}
        }
    }
}

pub fn finish(kind: Kind) -> ! {
    tracing::info!("{}: stopping remaining processes", describe(kind));
    // kill(-1) reaches every process but PID 1 itself.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    if !reap_until(Instant::now() + Duration::from_secs(3)) {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        reap_until(Instant::now() + Duration::from_secs(2));
    }
    nix::unistd::sync();
    let busy = crate::mounts::unmount_all();
    nix::unistd::sync();
    tracing::info!("{}: filesystems synced ({busy} left busy)", describe(kind));
    let mode = match kind {
        Kind::PowerOff => RebootMode::RB_POWER_OFF,
        Kind::Reboot => RebootMode::RB_AUTOBOOT,
    };
    let Err(errno) = nix::sys::reboot::reboot(mode);
    tracing::error!("reboot(2) failed: {errno}");
    crate::hold::forever("the node is shut down; it is safe to remove power")
}

pub fn describe(kind: Kind) -> &'static str {
    match kind {
        Kind::PowerOff => "power-off",
        Kind::Reboot => "reboot",
    }
}
