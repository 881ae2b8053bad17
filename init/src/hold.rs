//! The last resort: keep PID 1 alive, reaping children, and say why.
//!
//! Both ends that PID 1 cannot recover from come here: an error a stage
//! returns ([`forever`]) and a panic ([`crate::panic`], through
//! [`forever_with`]). The kernel panics when PID 1 exits, taking the node's
//! filesystems and its API with it; held, the node keeps its services running
//! (the API still answers) and tells a person at the console what happened.

use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

/// How often the reason is repeated on the console.
const REPEAT_EVERY_SECS: u64 = 60;

/// Never returns. Reaps any child and logs `why` every minute so a person at
/// the console sees it whenever they look.
pub fn forever(why: &str) -> ! {
    forever_with(|| tracing::error!("{why}"))
}

/// Never returns. Reaps any child and calls `say` every minute. The panic
/// path passes a `say` that bypasses the log subscriber, whose locks the
/// panicking code may hold.
pub fn forever_with(say: impl Fn()) -> ! {
    let mut ticks: u64 = 0;
    loop {
        if ticks.is_multiple_of(REPEAT_EVERY_SECS) {
            say();
        }
        // Reap whatever has exited; errors (no children) are expected.
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        ticks = ticks.wrapping_add(1);
    }
}
