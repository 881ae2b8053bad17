//! Service states, exit statuses, status snapshots and events.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        matches!(self, Self::Code(0))
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(c) => write!(f, "code {c}"),
            Self::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// Where a service is in its life cycle.
///
/// Typical paths:
/// `waiting → starting → ready` (no readiness protocol: ready at spawn),
/// `waiting → starting → running → ready` (`notify_ready`: ready at `READY=1`),
/// `ready → failed → starting → …` (exit, restart after backoff),
/// `failed → crash_loop → starting → …` (too many restarts),
/// `ready → stopping → stopped` (stop request or shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// Not running; waiting for dependencies to be ready or condition paths to exist.
    Waiting,
    /// Being spawned (transient; a spawn error leads to `Failed`).
    Starting,
    /// Process alive, waiting for its `READY=1` notification.
    Running,
    /// Process alive and ready: dependents may start.
    Ready,
    /// SIGTERM (later SIGKILL) sent, waiting for the process to exit.
    Stopping,
    /// Exited and not restarted by policy (`never`, or `on-failure` after code 0).
    /// `Exited(Code(0))` also satisfies dependents (one-shot services).
    Exited(ExitStatus),
    /// Down unexpectedly (exit under `always`, failure under `on-failure`, or spawn
    /// error); a restart is scheduled after backoff (see [`ServiceStatus::next_restart_in`]).
    /// A spawn error under `never` also ends here, without a restart.
    Failed,
    /// Restarted more than `crash_loop_restarts` times within the window; it is
    /// retried every `restart_delay_max`, never given up.
    CrashLoop {
        /// When the next attempt is due.
        next_restart: Instant,
    },
    /// Stopped by request (control `stop`, or shutdown).
    Stopped,
}

impl ServiceState {
    /// Short snake_case name, as used by the control protocol.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Ready => "ready",
            Self::Stopping => "stopping",
            Self::Exited(_) => "exited",
            Self::Failed => "failed",
            Self::CrashLoop { .. } => "crash_loop",
            Self::Stopped => "stopped",
        }
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(s) => write!(f, "exited ({s})"),
            other => f.write_str(other.name()),
        }
    }
}

/// A snapshot of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Description from the definition.
    pub description: String,
    /// Current state.
    pub state: ServiceState,
    /// Pid of the running process.
    pub pid: Option<i32>,
    /// Automatic restarts so far.
    pub restarts: u32,
    /// State is `Ready`.
    pub ready: bool,
    /// How the last process ended.
    pub last_exit: Option<ExitStatus>,
    /// Last spawn or supervision error.
    pub last_error: Option<String>,
    /// Wall-clock time of the last state change (ms since the Unix epoch).
    pub since_unix_ms: u64,
    /// Wall-clock time the current/last process was spawned.
    pub started_unix_ms: Option<u64>,
    /// Time until the scheduled restart, if one is scheduled.
    pub next_restart_in: Option<Duration>,
}

/// One entry of the bounded event list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Strictly increasing, starting at 1.
    pub seq: u64,
    /// Monotonic time.
    pub at: Instant,
    /// Wall-clock time, ms since the Unix epoch.
    pub time_unix_ms: u64,
    /// Service concerned; `None` for the supervisor itself.
    pub service: Option<String>,
    /// Previous state (state changes only).
    pub from: Option<ServiceState>,
    /// New state (state changes only).
    pub to: Option<ServiceState>,
    /// Human-readable detail.
    pub message: String,
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}
