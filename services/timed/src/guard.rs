//! What one SNTP answer may do to the clock.
//!
//! SNTP answers are not authenticated: anything on the LAN that can see a
//! request can answer it first. Two rules keep such an answer from moving
//! the clock where certificates stop being valid:
//!
//! - **A floor.** No answer may set the clock before the image's build time
//!   ([`BUILD_TIME_UNIX`]: `SOURCE_DATE_EPOCH` of the build, which `make`
//!   exports from the last commit's time; every file of the image carries
//!   the same time). Such an answer is refused, however many servers give
//!   it, and at start the clock is stepped forward to the floor if it is
//!   behind it (a Pi without a real-time clock boots at 1970).
//! - **A bound.** An answer asking for a correction larger than the bound
//!   (`machine.time.maxStepSeconds`, default [`DEFAULT_MAX_STEP_SECONDS`],
//!   ntpd's panic threshold) is not applied on its own word. It is applied
//!   when a second server address, asked in the same attempt, measures an
//!   offset within [`AGREEMENT_NS`] of it. When no other address answers at
//!   all (one server configured, or the others silent), the same address
//!   must give [`CONFIRMATIONS`] answers in a row that agree with the first
//!   within [`AGREEMENT_NS`], all within [`CONFIRM_WINDOW`]; until then the
//!   status says how many it has given. An answer within the bound is
//!   used as always, and a large answer that another address contradicts
//!   is refused.
//!
//! The first sync after boot legitimately steps far (a fresh card starts at
//! the build time, a card that was powered off for months at its saved
//! time): with the default servers (`pool.ntp.org`, several addresses) two
//! of them agree at the first attempt; with one configured server the step
//! waits for its third consistent answer, a few seconds later.
//!
//! What this does not stop: an attacker who answers for every address the
//! node asks, consistently. Only authenticated time (NTS) would.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::ntp;

/// The default bound of one answer's correction, seconds.
pub const DEFAULT_MAX_STEP_SECONDS: u64 = 1000;
/// Two offsets agree when they differ by at most this (1 s: real servers
/// agree within milliseconds; the margin covers slow, asymmetric paths and
/// the local clock's drift between repeated answers).
pub const AGREEMENT_NS: i128 = 1_000_000_000;
/// Consistent answers one address must give for a large step when no
/// other address answers.
pub const CONFIRMATIONS: u32 = 3;
/// The time within which those answers must come (the daemon asks again
/// within `--min-poll` while a step waits for confirmation).
pub const CONFIRM_WINDOW: Duration = Duration::from_secs(900);

/// Used when the build gave no `SOURCE_DATE_EPOCH` (a plain `cargo build`):
/// 2026-12-01T00:00:00Z, before this code was written, so still a time no
/// correct clock is behind.
const FALLBACK_BUILD_TIME: i64 = 1_796_083_200;

/// The image's build time, Unix seconds: `SOURCE_DATE_EPOCH` at compile
/// time (the `Makefile` exports it), else [`FALLBACK_BUILD_TIME`].
pub const BUILD_TIME_UNIX: i64 = match option_env!("SOURCE_DATE_EPOCH") {
    Some(text) => match parse_decimal(text) {
        Some(secs) => secs,
        None => panic!("SOURCE_DATE_EPOCH is not a whole number of seconds"),
    },
    None => FALLBACK_BUILD_TIME,
};

/// Decimal digits to a number, at compile time (`str::parse` is not
/// `const`).
const fn parse_decimal(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() > 18 {
        return None;
    }
    let mut value: i64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + (b - b'0') as i64;
        i += 1;
    }
    Some(value)
}

/// The limits in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The largest correction one answer makes on its own, nanoseconds.
    pub max_step_ns: i128,
    /// No answer may set the clock before this (Unix nanoseconds).
    pub floor_ns: i128,
}

/// What an answer may do, on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// Within the bound: use it.
    Apply,
    /// Beyond the bound: only with agreement.
    Large,
    /// It would set the clock before the floor: never.
    BeforeFloor,
}

impl Policy {
    /// The policy for a bound of `max_step_seconds` and a floor at
    /// `floor_unix` (seconds).
    pub fn new(max_step_seconds: u64, floor_unix: i64) -> Self {
        Self {
            max_step_ns: i128::from(max_step_seconds) * 1_000_000_000,
            floor_ns: i128::from(floor_unix) * 1_000_000_000,
        }
    }

    /// Judges an answer measuring `offset_ns` while the clock reads `now_ns`.
    pub fn judge(&self, now_ns: i128, offset_ns: i128) -> Judgement {
        if now_ns + offset_ns < self.floor_ns {
            Judgement::BeforeFloor
        } else if offset_ns.abs() > self.max_step_ns {
            Judgement::Large
        } else {
            Judgement::Apply
        }
    }

    /// The bound in whole seconds, for messages.
    pub fn max_step_seconds(&self) -> i128 {
        self.max_step_ns / 1_000_000_000
    }
}

/// Whether two measured offsets agree.
pub fn agree(a_ns: i128, b_ns: i128) -> bool {
    (a_ns - b_ns).abs() <= AGREEMENT_NS
}

/// A large step one address asks for, waiting for its confirmations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// The address.
    pub ip: IpAddr,
    /// The offset of its first answer.
    pub offset_ns: i128,
    /// When that answer came.
    pub since: Instant,
    /// Consistent answers so far.
    pub count: u32,
}

/// Counts a large answer (`offset_ns` from `ip` at `now`) towards `slot`:
/// one more when it agrees with the pending one from the same address
/// within the window, otherwise a new count of 1. Returns the count.
pub fn confirm(slot: &mut Option<Pending>, ip: IpAddr, offset_ns: i128, now: Instant) -> u32 {
    match slot {
        Some(p)
            if p.ip == ip
                && agree(p.offset_ns, offset_ns)
                && now.saturating_duration_since(p.since) <= CONFIRM_WINDOW =>
        {
            p.count += 1;
            p.count
        }
        _ => {
            *slot = Some(Pending {
                ip,
                offset_ns,
                since: now,
                count: 1,
            });
            1
        }
    }
}

/// `+86400.000 s`, for messages.
pub fn signed_secs(ns: i128) -> String {
    format!("{:+.3} s", ntp::secs_f64(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = 1_000_000_000;

    #[test]
    fn build_time_is_a_plausible_date() {
        // After 2023-11-14 (the Makefile's own fallback), before 2100.
        let build = std::hint::black_box(BUILD_TIME_UNIX);
        assert!((1_700_000_000..4_102_444_800).contains(&build), "{build}");
        assert_eq!(parse_decimal("1700000000"), Some(1_700_000_000));
        assert_eq!(parse_decimal(""), None);
        assert_eq!(parse_decimal("17e8"), None);
        assert_eq!(parse_decimal("-5"), None);
        assert_eq!(parse_decimal("1234567890123456789"), None);
    }

    #[test]
    fn judges_floor_then_bound() {
        let p = Policy::new(1000, 1_800_000_000);
        let now = 1_800_000_500 * S;
        assert_eq!(p.judge(now, 0), Judgement::Apply);
        assert_eq!(p.judge(now, 1000 * S), Judgement::Apply);
        assert_eq!(p.judge(now, -500 * S), Judgement::Apply);
        assert_eq!(p.judge(now, 1000 * S + 1), Judgement::Large);
        assert_eq!(p.judge(now, 86_400 * S), Judgement::Large);
        // Small, but before the floor.
        assert_eq!(p.judge(now, -500 * S - 1), Judgement::BeforeFloor);
        // Large and before the floor: the floor wins.
        assert_eq!(p.judge(now, -86_400 * S), Judgement::BeforeFloor);
        assert_eq!(p.max_step_seconds(), 1000);
    }

    #[test]
    fn confirmations_count_one_address_within_tolerance_and_window() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        let mut slot = None;
        assert_eq!(confirm(&mut slot, ip, 86_400 * S, t0), 1);
        assert_eq!(confirm(&mut slot, ip, 86_400 * S + S / 2, t0), 2);
        // Another address starts again.
        assert_eq!(confirm(&mut slot, other, 86_400 * S, t0), 1);
        assert_eq!(confirm(&mut slot, other, 86_400 * S, t0), 2);
        // A different offset starts again.
        assert_eq!(confirm(&mut slot, other, 86_402 * S, t0), 1);
        // Too late starts again.
        let late = t0 + CONFIRM_WINDOW + Duration::from_secs(1);
        assert_eq!(confirm(&mut slot, other, 86_402 * S, late), 1);
        assert_eq!(slot.unwrap().since, late);
        assert!(agree(5 * S, 6 * S));
        assert!(!agree(5 * S, 6 * S + 1));
        assert_eq!(signed_secs(-86_400 * S), "-86400.000 s");
    }
}
