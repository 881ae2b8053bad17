//! The signal hook for PID 1.
//!
//! PID 1 blocks SIGCHLD, SIGTERM, SIGINT and SIGHUP and hands the supervisor a
//! signalfd for them ([`Options::signal_fd`](crate::Options::signal_fd)):
//!
//! * SIGTERM → shutdown with [`Shutdown::PowerOff`](crate::Shutdown::PowerOff);
//! * SIGINT (Ctrl-Alt-Del with `reboot(CAD_OFF)`) → [`Shutdown::Reboot`](crate::Shutdown::Reboot);
//! * SIGCHLD → with `reap_orphans`, `waitpid(-1, WNOHANG)` until nothing is left:
//!   statuses of supervised pids go to their services, orphans' are discarded;
//! * SIGHUP → logged and ignored (no reload).
//!
//! The supervisor reads the fd as a stream of 128-byte `signalfd_siginfo`
//! records and only looks at `ssi_signo` (the first `u32`), so any fd producing
//! such records works (tests use a pipe). Children do not inherit the blocked
//! mask: `std::process::Command` resets the signal mask in the child.

use std::os::fd::OwnedFd;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::error::Error;

/// Size of one `signalfd_siginfo` record.
pub const RECORD_BYTES: usize = 128;

/// The signals PID 1 should route to the supervisor.
pub const SIGNALS: [i32; 4] = [
    Signal::SIGCHLD as i32,
    Signal::SIGTERM as i32,
    Signal::SIGINT as i32,
    Signal::SIGHUP as i32,
];

/// Blocks [`SIGNALS`] in the calling thread and returns a non-blocking,
/// close-on-exec signalfd for them.
///
/// Signals are only routed to a signalfd if they are blocked in every thread:
/// call this while the calling thread is the only one (PID 1 has no others).
pub fn block_and_open() -> Result<OwnedFd, Error> {
    let mut mask = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(sig);
    }
    mask.thread_block()
        .map_err(|e| Error::Signal(std::io::Error::from(e)))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Error::Signal(std::io::Error::from(e)))?;
    // `SignalFd` does not give its fd away; keep a duplicate and drop it.
    rustix::io::fcntl_dupfd_cloexec(&sfd, 0).map_err(|e| Error::Signal(e.into()))
}

/// A `signalfd_siginfo` record carrying only `ssi_signo` (for tests, or to
/// forward signals through a pipe).
pub fn encode_record(signo: i32) -> [u8; RECORD_BYTES] {
    let mut rec = [0u8; RECORD_BYTES];
    rec[..4].copy_from_slice(&signo.to_ne_bytes());
    rec
}

/// `ssi_signo` of each complete record in `buf`.
pub(crate) fn decode_records(buf: &[u8]) -> impl Iterator<Item = i32> + '_ {
    buf.chunks_exact(RECORD_BYTES)
        .map(|r| i32::from_ne_bytes([r[0], r[1], r[2], r[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&encode_record(15));
        buf.extend_from_slice(&encode_record(17));
        buf.extend_from_slice(&[1, 2, 3]); // partial record ignored
        assert_eq!(decode_records(&buf).collect::<Vec<_>>(), vec![15, 17]);
    }
}
