//! Readiness notification to the supervisor: with `notify_ready = true` in
//! its definition, a service is handed a file descriptor named by
//! `BRAMBLE_READY_FD` and writes `READY=1` to it once it serves.

use std::fs::OpenOptions;
use std::io::Write;

/// The environment variable naming the readiness file descriptor.
pub const READY_FD_ENV: &str = "BRAMBLE_READY_FD";

/// The readiness file descriptor is not usable.
#[derive(Debug, thiserror::Error)]
#[error("{READY_FD_ENV}={value:?}: {reason}")]
pub struct ReadyError {
    /// The raw value of the environment variable.
    pub value: String,
    /// Why it could not be used.
    pub reason: String,
}

/// Writes `READY=1` to the descriptor named by `value` (the value of
/// [`READY_FD_ENV`]); `Ok(false)` when there is none (started by hand).
pub fn notify(value: Option<&str>) -> Result<bool, ReadyError> {
    let Some(value) = value else {
        return Ok(false);
    };
    let error = |reason: String| ReadyError {
        value: value.to_owned(),
        reason,
    };
    let fd: u32 = value
        .trim()
        .parse()
        .map_err(|_| error("not a file descriptor number".into()))?;
    // Opening /proc/self/fd/N reaches the descriptor without unsafe code.
    let path = format!("/proc/self/fd/{fd}");
    let mut f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| error(format!("cannot open {path}: {e}")))?;
    f.write_all(b"READY=1\n")
        .map_err(|e| error(format!("cannot write: {e}")))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn writes_ready_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready");
        let keep = std::fs::File::create(&path).unwrap();
        let fd = keep.as_raw_fd().to_string();
        assert!(notify(Some(&fd)).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "READY=1\n");
        assert!(!notify(None).unwrap());
        assert!(notify(Some("nope")).is_err());
        assert!(notify(Some("99999")).is_err());
    }
}
