//! Calendar arithmetic for SOURCE_DATE_EPOCH (UTC, proleptic Gregorian), by
//! the `time` crate.

use time::OffsetDateTime;

/// Splits Unix seconds into `(year, month, day, hour, minute, second)` in UTC.
/// Times past the year 9999 are clamped to its last second.
pub fn utc(unix: u64) -> (i64, u32, u32, u32, u32, u32) {
    let max = OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT);
    let t = i64::try_from(unix)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .unwrap_or(max + time::Duration::seconds(86_399));
    (
        i64::from(t.year()),
        u32::from(u8::from(t.month())),
        u32::from(t.day()),
        u32::from(t.hour()),
        u32::from(t.minute()),
        u32::from(t.second()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(utc(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(utc(4_102_444_799), (2099, 12, 31, 23, 59, 59));
        assert_eq!(utc(u64::MAX), (9999, 12, 31, 23, 59, 59));
    }
}
