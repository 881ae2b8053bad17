//! Readiness notification, the daemon's side of the supervisor's protocol.
//!
//! With `notify_ready = true` in its definition, a service is handed the
//! write end of a pipe whose number is in [`READY_FD_ENV`], and writes
//! [`READY_MESSAGE`] to it once it serves. The descriptor is reopened through
//! `/proc/self/fd/<n>` so that adopting a raw descriptor needs no `unsafe`;
//! the inherited descriptor itself stays open, so the supervisor reads the
//! line rather than waiting for end of file.

use std::fs::OpenOptions;
use std::io::Write;

/// The environment variable naming the readiness file descriptor; the
/// supervisor sets it (and refuses service definitions that do).
pub const READY_FD_ENV: &str = "BRAMBLE_READY_FD";

/// What a ready service writes.
pub const READY_MESSAGE: &[u8] = b"READY=1\n";

/// The readiness file descriptor is not usable.
#[derive(Debug, thiserror::Error)]
#[error("{READY_FD_ENV}={value:?}: {reason}")]
pub struct ReadyError {
    /// The raw value of the environment variable.
    pub value: String,
    /// Why it could not be used.
    pub reason: String,
}

/// Notifies readiness if [`READY_FD_ENV`] is set; returns whether it was.
pub fn notify_from_env() -> Result<bool, ReadyError> {
    notify(std::env::var(READY_FD_ENV).ok().as_deref())
}

/// Writes [`READY_MESSAGE`] to the descriptor named by `value` (the value of
/// [`READY_FD_ENV`]); `Ok(false)` when there is none (started by hand).
pub fn notify(value: Option<&str>) -> Result<bool, ReadyError> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
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
    if fd == 1 || fd == 2 {
        return Err(error("refusing to write to stdout or stderr".into()));
    }
    let path = format!("/proc/self/fd/{fd}");
    let mut f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| error(format!("cannot open {path}: {e}")))?;
    f.write_all(READY_MESSAGE)
        .map_err(|e| error(format!("cannot write: {e}")))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[test]
    fn writes_the_ready_line_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready");
        let keep = std::fs::File::create(&path).unwrap();
        let fd = keep.as_raw_fd().to_string();
        assert!(notify(Some(&fd)).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "READY=1\n");
    }

    #[test]
    fn writes_the_ready_line_to_a_pipe() {
        let (r, w) = std::io::pipe().unwrap();
        assert!(notify(Some(&w.as_raw_fd().to_string())).unwrap());
        drop(w);
        let mut got = String::new();
        std::fs::File::from(std::os::fd::OwnedFd::from(r))
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "READY=1\n");
    }

    #[test]
    fn no_descriptor_is_not_an_error() {
        assert!(!notify(None).unwrap());
        assert!(!notify(Some(" ")).unwrap());
    }

    #[test]
    fn a_bad_descriptor_is_a_clear_error() {
        let e = notify(Some("x")).unwrap_err().to_string();
        assert!(e.contains("file descriptor number"), "{e}");
        assert!(e.contains(READY_FD_ENV), "{e}");
        let e = notify(Some("1")).unwrap_err().to_string();
        assert!(e.contains("stdout"), "{e}");
        let e = notify(Some("987654")).unwrap_err().to_string();
        assert!(e.contains("cannot open /proc/self/fd/987654"), "{e}");
    }
}
