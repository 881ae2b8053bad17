//! The one unsafe call of the container module: restoring SIGPIPE's default
//! disposition in the container's init just before it executes the
//! workload's program.
//!
//! The Rust runtime sets SIGPIPE to "ignore" in every Rust program (so the
//! shim has it ignored), and an ignored signal stays ignored across
//! `execve`; without this, every container would start with SIGPIPE
//! ignored, unlike under any other runtime.

#![allow(unsafe_code)]

use nix::sys::signal::{SigHandler, Signal, signal};

/// Sets SIGPIPE back to its default action (terminate).
pub(super) fn default_sigpipe() -> nix::Result<()> {
    // SAFETY: SIG_DFL is not a handler function, so no code of ours can run
    // in signal context; this only changes how the kernel treats SIGPIPE in
    // this process, which is single-threaded (a clone made by libcontainer)
    // and about to call execve.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(drop)
}
