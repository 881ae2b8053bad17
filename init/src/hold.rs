//! The last resort: keep PID 1 alive, reaping children, and say why.

use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, waitpid};

/// Never returns. Reaps any child and repeats `why` on the console every
/// minute so a person at the console sees it whenever they look.
pub fn forever(why: &str) -> ! {
    let mut ticks: u64 = 0;
    loop {
        if ticks.is_multiple_of(60) {
            tracing::error!("{why}");
        }
        // Reap whatever has exited; errors (no children) are expected.
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        ticks = ticks.wrapping_add(1);
    }
}
