//! Readiness notification to the supervisor (same protocol as networkd).

use std::fs::OpenOptions;
use std::io::Write;

use crate::error::Error;

/// The environment variable naming the readiness file descriptor.
pub const READY_FD_ENV: &str = "BRAMBLE_READY_FD";

/// Writes `READY=1\n` to the descriptor named by `value` (the content of
/// `BRAMBLE_READY_FD`), opened through `/proc/self/fd/<n>`. `None` means
/// the supervisor did not ask; nothing is done.
pub fn notify(value: Option<&str>) -> Result<bool, Error> {
    let Some(value) = value else {
        return Ok(false);
    };
    let fd: u32 = value.trim().parse().map_err(|_| Error::ReadyFd {
        value: value.to_owned(),
        reason: "not a file descriptor number".into(),
    })?;
    let path = format!("/proc/self/fd/{fd}");
    let mut f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| Error::ReadyFd {
            value: value.to_owned(),
            reason: format!("cannot open {path}: {e}"),
        })?;
    f.write_all(b"READY=1\n").map_err(|e| Error::ReadyFd {
        value: value.to_owned(),
        reason: format!("cannot write: {e}"),
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
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
