//! Validity periods of issued certificates.

use std::time::Duration;

use time::OffsetDateTime;

use crate::error::Error;

/// How far in the past a certificate's validity starts, so that a node whose
/// clock is somewhat behind the issuer's (a Raspberry Pi has no real-time
/// clock) still accepts a certificate issued a moment ago.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);

/// Lifetime of a certificate authority made by `nodectl gen secrets`: ten years.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Lifetime of a client or server certificate: one year.
pub const CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The period in which a certificate is valid (`notBefore` to `notAfter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First moment the certificate is valid.
    pub not_before: OffsetDateTime,
    /// Last moment the certificate is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from [`CLOCK_SKEW_ALLOWANCE`] ago until `lifetime` from now.
    /// A lifetime beyond what the date type holds ends at its latest date.
    pub fn from_now(lifetime: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        let not_before = now
            .checked_sub(skew())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let not_after = time::Duration::try_from(lifetime)
            .ok()
            .and_then(|d| now.checked_add(d))
            .unwrap_or_else(latest);
        Self {
            not_before,
            not_after,
        }
    }

    /// An explicit period, for example one that ended in the past.
    pub fn new(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        Self {
            not_before,
            not_after,
        }
    }

    /// Whether `at` falls within the period.
    pub fn contains(&self, at: OffsetDateTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// Refuses a period that does not start before it ends.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.not_before < self.not_after {
            Ok(())
        } else {
            Err(Error::Validity {
                not_before: self.not_before,
                not_after: self.not_after,
            })
        }
    }
}

fn skew() -> time::Duration {
    time::Duration::try_from(CLOCK_SKEW_ALLOWANCE).unwrap_or(time::Duration::HOUR)
}

/// The latest time an X.509 GeneralizedTime holds: 9999-12-31T23:59:59Z.
fn latest() -> OffsetDateTime {
    // 253402300799 is 9999-12-31T23:59:59Z; always within `time`'s range.
    OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_now_starts_in_the_past() {
        let now = OffsetDateTime::now_utc();
        let v = Validity::from_now(Duration::from_secs(3600));
        assert!(v.not_before < now);
        assert!(v.not_before >= now - skew() - time::Duration::seconds(5));
        assert!(v.not_after > now);
        assert!(v.contains(now));
        assert!(v.check().is_ok());
    }

    #[test]
    fn huge_lifetime_saturates() {
        let v = Validity::from_now(Duration::from_secs(u64::MAX));
        assert_eq!(v.not_after.year(), 9999);
        assert!(v.check().is_ok());
    }

    #[test]
    fn reversed_period_is_refused() {
        let now = OffsetDateTime::now_utc();
        assert!(Validity::new(now, now).check().is_err());
        assert!(
            Validity::new(now, now - time::Duration::DAY)
                .check()
                .is_err()
        );
    }
}
