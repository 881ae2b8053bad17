//! Readiness notification to the supervisor.
//!
//! The supervisor passes the write end of a pipe (or a FIFO) and names its
//! number in `BRAMBLE_READY_FD`. Once the listener is bound, apid writes
//! `READY=1\n` to it. The fd is reopened through `/proc/self/fd/<n>` so that no
//! `unsafe` is needed to adopt a raw fd; the reopened copy is closed after the
//! write. The inherited descriptor itself stays open (closing a raw fd number
//! takes `unsafe`), so the supervisor must read the line, not wait for EOF.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use crate::error::Error;

/// Environment variable holding the readiness fd number.
pub const READY_FD_ENV: &str = "BRAMBLE_READY_FD";

/// The message written.
pub const READY_MESSAGE: &[u8] = b"READY=1\n";

/// Notifies readiness if `BRAMBLE_READY_FD` is set. Returns whether it was.
pub fn notify_from_env() -> Result<bool, Error> {
    match std::env::var(READY_FD_ENV) {
        Ok(fd) if !fd.trim().is_empty() => notify(fd.trim()).map(|()| true),
        _ => Ok(false),
    }
}

/// Writes `READY=1\n` to the descriptor numbered `fd` (a decimal string).
pub fn notify(fd: &str) -> Result<(), Error> {
    let err = |reason: String| Error::Readiness {
        fd: fd.to_owned(),
        reason,
    };
    let n: u32 = fd
        .parse()
        .map_err(|_| err(format!("{READY_FD_ENV} must be a file descriptor number")))?;
    if n <= 2 {
        return Err(err("refusing to write to stdin, stdout or stderr".into()));
    }
    let path = PathBuf::from(format!("/proc/self/fd/{n}"));
    let mut file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
    file.write_all(READY_MESSAGE)
        .map_err(|e| err(format!("write failed: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[test]
    fn writes_ready_to_a_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        notify(&w.as_raw_fd().to_string()).unwrap();
        drop(w);
        let mut got = String::new();
        std::fs::File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "READY=1\n");
    }

    #[test]
    fn bad_fd_is_a_clear_error() {
        let e = notify("x").unwrap_err().to_string();
        assert!(e.contains("file descriptor number"), "{e}");
        let e = notify("1").unwrap_err().to_string();
        assert!(e.contains("stdout"), "{e}");
        let e = notify("987654").unwrap_err().to_string();
        assert!(e.contains("cannot open /proc/self/fd/987654"), "{e}");
    }
}
