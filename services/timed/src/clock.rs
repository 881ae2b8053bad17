//! Deciding how to correct the clock, and doing it.
//!
//! Which samples may be used at all is `guard`'s decision (build-time
//! floor, step bound, agreement). The first usable sample after start steps
//! the clock (`clock_settime`), whatever its size. Afterwards offsets above [`STEP_THRESHOLD_NS`]
//! (0.128 s, ntpd's step threshold) step it again; smaller ones are slewed
//! with the kernel's `adjtime` mode (`adjtimex` with
//! `ADJ_OFFSET_SINGLESHOT`), which runs the clock at most 500 ppm faster or
//! slower until the offset is absorbed (128 ms take about 256 s) and never
//! makes time go backwards. Each new slew replaces the remainder of the
//! previous one; the offset just measured already includes whatever was
//! absorbed so far.

use std::time::SystemTime;

use crate::error::Error;
use crate::ntp;

/// Offsets larger than this (in either direction) are stepped, not slewed.
pub const STEP_THRESHOLD_NS: i128 = 128_000_000;
/// Offsets below this are left alone (nothing to gain from a 1 µs slew).
pub const IGNORE_BELOW_NS: i128 = 1_000;

/// What to do about a measured offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Set the clock to now + offset.
    Step,
    /// Have the kernel absorb the offset gradually.
    Slew,
    /// Nothing: the offset is negligible.
    None,
}

impl Action {
    /// Lower-case name, for logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Step => "step",
            Self::Slew => "slew",
            Self::None => "none",
        }
    }
}

/// Chooses the correction for `offset_ns`. `first` is true for the first
/// good sample since start, which always steps (unless negligible).
pub fn decide(offset_ns: i128, first: bool) -> Action {
    let size = offset_ns.abs();
    if size < IGNORE_BELOW_NS {
        Action::None
    } else if first || size > STEP_THRESHOLD_NS {
        Action::Step
    } else {
        Action::Slew
    }
}

/// The clock the daemon reads and corrects: the system clock on the node,
/// a virtual one in tests (so they exercise every decision without
/// privilege and without touching the host's time).
pub trait Clock {
    /// The time now, Unix nanoseconds.
    fn now_ns(&self) -> i128;
    /// Sets the clock to `unix_ns`.
    fn set_unix_nanos(&self, unix_ns: i128) -> Result<(), Error>;
    /// Has the clock absorb `offset_ns` gradually.
    fn slew_by(&self, offset_ns: i128) -> Result<(), Error>;
    /// Steps the clock by `offset_ns` (read now, add, set).
    fn step_by(&self, offset_ns: i128) -> Result<(), Error> {
        self.set_unix_nanos(self.now_ns() + offset_ns)
    }
}

/// The system clock (`CLOCK_REALTIME`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i128 {
        ntp::unix_nanos(SystemTime::now())
    }

    fn set_unix_nanos(&self, unix_ns: i128) -> Result<(), Error> {
        set_unix_nanos(unix_ns)
    }

    fn slew_by(&self, offset_ns: i128) -> Result<(), Error> {
        slew_by(offset_ns)
    }
}

/// Sets the system clock (`CLOCK_REALTIME`) to `unix_ns`.
fn set_unix_nanos(unix_ns: i128) -> Result<(), Error> {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let nanos = unix_ns.rem_euclid(1_000_000_000);
    let ts = rustix::time::Timespec {
        tv_sec: i64::try_from(secs).map_err(|_| Error::ClockRange(unix_ns))?,
        tv_nsec: nanos as _,
    };
    rustix::time::clock_settime(rustix::time::ClockId::Realtime, ts).map_err(|e| Error::Clock {
        what: "clock_settime(CLOCK_REALTIME)",
        source: e.into(),
    })
}

/// Slews the clock by `offset_ns` (|offset| must be at most a few seconds:
/// callers only slew offsets below [`STEP_THRESHOLD_NS`]).
fn slew_by(offset_ns: i128) -> Result<(), Error> {
    let micros = offset_ns / 1_000;
    let micros = i64::try_from(micros).map_err(|_| Error::ClockRange(offset_ns))?;
    sys::adjtime_singleshot(micros).map_err(|source| Error::Clock {
        what: "adjtimex(ADJ_OFFSET_SINGLESHOT)",
        source,
    })
}

/// The only unsafe code of the daemon: one `adjtimex` call (rustix has no
/// safe wrapper for it).
#[allow(unsafe_code)]
mod sys {
    use std::io;

    /// Starts an `adjtime(3)`-style slew of `micros` microseconds,
    /// replacing any slew still in progress.
    pub fn adjtime_singleshot(micros: i64) -> io::Result<()> {
        // SAFETY: `timex` is a plain C struct of integers (and padding); the
        // all-zero bit pattern is a valid value of it.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        tx.modes = libc::ADJ_OFFSET_SINGLESHOT as _;
        tx.offset = micros as _;
        // SAFETY: `tx` is a valid, exclusively borrowed `timex` that lives
        // across the call; the kernel only reads and writes within it.
        let rc = unsafe { libc::adjtimex(&mut tx) };
        if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The slew still to be done, in microseconds (read only: changes
    /// nothing, needs no privilege).
    #[cfg(test)]
    pub fn adjtime_remaining() -> io::Result<libc::c_long> {
        // SAFETY: as above, all-zero is a valid `timex`.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        tx.modes = libc::ADJ_OFFSET_SS_READ as _;
        // SAFETY: as above; with ADJ_OFFSET_SS_READ the kernel only reports.
        let rc = unsafe { libc::adjtimex(&mut tx) };
        if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(tx.offset)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i128 = 1_000_000;

    #[test]
    fn first_sample_steps() {
        assert_eq!(decide(5 * MS, true), Action::Step);
        assert_eq!(decide(-5 * MS, true), Action::Step);
        assert_eq!(decide(56 * 365 * 86_400 * 1_000 * MS, true), Action::Step);
        assert_eq!(decide(999, true), Action::None);
    }

    #[test]
    fn later_samples_slew_small_step_large() {
        assert_eq!(decide(0, false), Action::None);
        assert_eq!(decide(-999, false), Action::None);
        assert_eq!(decide(1_000, false), Action::Slew);
        assert_eq!(decide(5 * MS, false), Action::Slew);
        assert_eq!(decide(-128 * MS, false), Action::Slew);
        assert_eq!(decide(128 * MS, false), Action::Slew);
        assert_eq!(decide(128 * MS + 1, false), Action::Step);
        assert_eq!(decide(-129 * MS, false), Action::Step);
        assert_eq!(decide(3_600 * 1_000 * MS, false), Action::Step);
        assert_eq!(Action::Step.as_str(), "step");
        assert_eq!(Action::Slew.as_str(), "slew");
        assert_eq!(Action::None.as_str(), "none");
    }

    /// The `adjtimex` plumbing works (read-only query: the host clock is
    /// not touched).
    #[test]
    fn adjtimex_read_only_query() {
        let remaining = sys::adjtime_remaining().unwrap();
        // Whatever a host daemon may be doing, a single-shot slew is bounded.
        assert!(remaining.abs() < 3_600_000_000, "{remaining}");
    }
}
