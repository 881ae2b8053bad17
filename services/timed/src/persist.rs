//! The last known time, kept across reboots in `<state-dir>/clock.json`.
//!
//! A Raspberry Pi has no real-time clock and boots at 1970. The time saved
//! here (after each sync, periodically and at shutdown) is a lower bound of
//! the real time at the next boot, so at start the clock is stepped forward
//! to it when it is behind. The file is written atomically.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// File name inside the state directory.
pub const FILE_NAME: &str = "clock.json";

/// The document stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// Unix seconds.
    pub unix_seconds: i64,
    /// Nanoseconds within the second (0..1e9).
    pub nanos: u32,
    /// Whether the time was taken right after a sync with a server.
    pub synced: bool,
}

impl Saved {
    /// The saved time of `unix_ns`.
    pub fn new(unix_ns: i128, synced: bool) -> Self {
        Self {
            unix_seconds: unix_ns
                .div_euclid(1_000_000_000)
                .clamp(i64::MIN.into(), i64::MAX.into()) as i64,
            nanos: unix_ns.rem_euclid(1_000_000_000) as u32,
            synced,
        }
    }

    /// Unix nanoseconds.
    pub fn unix_nanos(&self) -> i128 {
        i128::from(self.unix_seconds) * 1_000_000_000 + i128::from(self.nanos)
    }
}

/// The saved-time file in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the saved time; `None` when there is none yet.
pub fn load(state_dir: &Path) -> Result<Option<Saved>, Error> {
    let path = path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::File(bramble_atomic::FileError {
                what: "read",
                path,
                source,
            }));
        }
    };
    let saved: Saved = serde_json::from_str(&text).map_err(|e| Error::SavedTime {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if saved.nanos >= 1_000_000_000 {
        return Err(Error::SavedTime {
            path,
            message: format!("nanos {} is not below 1000000000", saved.nanos),
        });
    }
    Ok(Some(saved))
}

/// Saves `saved` atomically, creating the state directory if needed.
pub fn save(state_dir: &Path, saved: &Saved) -> Result<(), Error> {
    let mut json = serde_json::to_vec_pretty(saved).map_err(|source| Error::Json {
        what: "saved time",
        source,
    })?;
    json.push(b'\n');
    Ok(bramble_atomic::write(&path(state_dir), &json, 0o644)?)
}

/// Where the clock should be stepped to at start: the saved time when it is
/// later than `now` (both Unix nanoseconds), else nothing.
pub fn restore_target(saved: Option<&Saved>, now_ns: i128) -> Option<i128> {
    saved
        .map(Saved::unix_nanos)
        .filter(|&saved_ns| saved_ns > now_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("time");
        assert_eq!(load(&state).unwrap(), None);
        let t = 1_790_000_000_123_456_789i128;
        save(&state, &Saved::new(t, true)).unwrap();
        let back = load(&state).unwrap().unwrap();
        assert_eq!(back.unix_nanos(), t);
        assert!(back.synced);
        save(&state, &Saved::new(t + 5, false)).unwrap();
        let back = load(&state).unwrap().unwrap();
        assert_eq!(back.unix_nanos(), t + 5);
        assert!(!back.synced);
        // Only the file itself is in the directory (no temporary left).
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 1);
    }

    #[test]
    fn negative_times_round_trip() {
        let s = Saved::new(-1, false);
        assert_eq!(s.unix_seconds, -1);
        assert_eq!(s.nanos, 999_999_999);
        assert_eq!(s.unix_nanos(), -1);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "{\"unix_seconds\": \"soon\"}").unwrap();
        let msg = load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("clock.json"), "{msg}");
        std::fs::write(
            path(dir.path()),
            "{\"unix_seconds\": 5, \"nanos\": 1000000000, \"synced\": true}",
        )
        .unwrap();
        let msg = load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("nanos"), "{msg}");
    }

    #[test]
    fn restores_only_forward() {
        let saved = Saved::new(1_000, true);
        assert_eq!(restore_target(Some(&saved), 0), Some(1_000));
        assert_eq!(restore_target(Some(&saved), 999), Some(1_000));
        assert_eq!(restore_target(Some(&saved), 1_000), None);
        assert_eq!(restore_target(Some(&saved), 5_000), None);
        assert_eq!(restore_target(None, 0), None);
    }
}
