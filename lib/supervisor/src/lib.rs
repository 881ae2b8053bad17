//! Single-threaded service supervisor used by PID 1.
//!
//! * Services are declared in TOML ([`def`]), loaded with [`load_dir`].
//! * [`Supervisor`] starts them in dependency order once their `after`
//!   dependencies are ready and their condition paths exist, restarts them with
//!   exponential backoff (crash-loop detection, never giving up), captures their
//!   output into a bounded ring and optional rotated files, and stops them in
//!   reverse dependency order.
//! * Everything runs in one `poll(2)` loop: pidfds (process exits), log and
//!   readiness pipes, the control socket ([`protocol`], [`control::Client`]) and
//!   an optional signalfd ([`signals`]). No threads, no async runtime, no
//!   SIGCHLD dependence for supervised children; every buffer, loop and wait is
//!   bounded.
//!
//! PID 1 wiring:
//!
//! ```no_run
//! use bramble_supervisor::{LogOptions, Options, Shutdown, Supervisor, load_dir, signals};
//! # fn main() -> Result<(), bramble_supervisor::Error> {
//! // Before anything else that could spawn threads: block SIGCHLD/TERM/INT/HUP
//! // and get a signalfd for them.
//! let signal_fd = signals::block_and_open()?;
//! let defs = load_dir(std::path::Path::new("/etc/bramble/services"))?;
//! let console = std::fs::OpenOptions::new().write(true).open("/dev/console").ok();
//! let mut sup = Supervisor::new(
//!     defs,
//!     Options {
//!         signal_fd: Some(signal_fd),
//!         reap_orphans: true,
//!         control_socket: Some("/run/bramble/init.sock".into()),
//!         log: LogOptions {
//!             dir: Some("/var/log/bramble".into()),
//!             ..LogOptions::default()
//!         },
//!         console: console.map(|f| Box::new(f) as Box<dyn std::io::Write + Send>),
//!         ..Options::default()
//!     },
//! )?;
//! match sup.run() {
//!     Shutdown::PowerOff => { /* unmount, sync, reboot(POWER_OFF) */ }
//!     Shutdown::Reboot => { /* unmount, sync, reboot(RESTART) */ }
//! }
//! # Ok(())
//! # }
//! ```

pub mod control;
pub mod def;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod logs;
pub mod protocol;
pub mod signals;
mod state;
mod supervisor;

pub use def::{RestartPolicy, ServiceDef, load_dir, validate_set};
pub use error::Error;
pub use logs::LogOptions;
pub use protocol::{LogLine, Request, Response, Shutdown};
pub use state::{Event, ExitStatus, ServiceState, ServiceStatus};
pub use supervisor::{Options, Supervisor};
