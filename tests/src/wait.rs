//! Bounded polling for boot tests.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Calls `f` every `every` until it returns `true`, for at most `timeout`;
/// how long that took. An error from `f` ends the wait with that error.
pub fn eventually(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if f()? {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(every);
    }
}
