//! What every Bramble service daemon shares with the others: telling the
//! supervisor it is ready ([`ready`]) and publishing files atomically
//! ([`fs`]), so a reader never sees half a file and a power cut leaves the
//! old one or the new one, and the log format ([`logging`]).

pub mod fs;
pub mod logging;
pub mod ready;

pub use fs::FileError;
pub use ready::{READY_FD_ENV, ReadyError};
