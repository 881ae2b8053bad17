//! What every Bramble service daemon shares with the others: telling the
//! supervisor it is ready ([`ready`]) and the log setup ([`logging`]).
//! Files are published with `bramble-atomic`.

pub mod logging;
pub mod ready;

pub use ready::{READY_FD_ENV, ReadyError};
