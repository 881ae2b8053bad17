//! The control protocol: newline-delimited JSON over a Unix stream socket.
//!
//! Each request is one JSON object on one line; each gets exactly one JSON
//! response line. A connection may carry several requests, one after another.
//!
//! ```text
//! {"op":"list"}
//! {"op":"events","since":12}
//! {"op":"logs","service":"apid","tail":100}
//! {"op":"logs","service":"apid","after":1041,"tail":500}
//! {"op":"start","service":"apid"}   (also "stop", "restart")
//! {"op":"shutdown","kind":"poweroff"}   ("reboot")
//! {"op":"note","message":"configuration applied (no-reboot)"}
//! ```
//!
//! Responses always carry `ok`; on failure `error`, e.g.
//! `{"ok":false,"error":"unknown service \"x\""}`; on success the field that
//! belongs to the request: `services` (list), `events` + `last_seq` (events),
//! `lines` + `last_seq` (logs).
//!
//! Every captured line carries `seq`, its service's line number: 1 for the
//! first line the supervisor captured from that service, one more for each
//! line after it, across the service's restarts and its log file's
//! rotations. A supervisor that starts again (a new boot) numbers from 1
//! again. A follower asks for the lines `after` the last number it saw, so
//! it receives each line once, identical lines too; a first number above
//! `after + 1` means lines scrolled out of the ring before it asked, and a
//! `last_seq` below `after` means the numbering started again.

use serde::{Deserialize, Serialize};

pub use crate::state::ExitStatus;

/// Largest request line the server accepts (bytes, without the newline).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest response line the client accepts.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Default and maximum of `tail` in a logs request.
pub const DEFAULT_LOG_TAIL: usize = 100;
/// Maximum of `tail` in a logs request.
pub const MAX_LOG_TAIL: usize = 10_000;

/// What `run()` returns after all services have stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shutdown {
    /// Power off (SIGTERM, or `{"op":"shutdown","kind":"poweroff"}`).
    PowerOff,
    /// Reboot (SIGINT, or `{"op":"shutdown","kind":"reboot"}`).
    Reboot,
}

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// All services.
    List,
    /// Events with a sequence number greater than `since` (0: all kept).
    Events {
        /// Last sequence number the client has seen.
        #[serde(default)]
        since: u64,
    },
    /// The last `tail` captured lines of a service (default 100, at most
    /// 10000); with `after`, the first `tail` lines numbered above it.
    Logs {
        /// Service name.
        service: String,
        /// Number of lines.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail: Option<usize>,
        /// Only lines with a greater sequence number, oldest first (what a
        /// follower asks for with the last number it saw).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    /// Start a stopped/exited/failed service (and any stopped dependencies).
    Start {
        /// Service name.
        service: String,
    },
    /// Stop a service, after everything that depends on it.
    Stop {
        /// Service name.
        service: String,
    },
    /// Stop (only) this service and start it again right away.
    Restart {
        /// Service name.
        service: String,
    },
    /// Ask a running service to re-read its configuration (SIGHUP); start
    /// it if it is not running.
    Reload {
        /// Service name.
        service: String,
    },
    /// Stop everything and make `run()` return.
    Shutdown {
        /// poweroff or reboot.
        kind: Shutdown,
    },
    /// Record a node-wide event (not about one service), e.g. a
    /// configuration change, so that every event is in one place.
    Note {
        /// What happened; at most 1024 bytes are kept.
        message: String,
    },
}

/// A control response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `list`: every service, in dependency order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceInfo>>,
    /// `events`: events after `since`, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventInfo>>,
    /// `events`: the newest sequence number (pass it as the next `since`).
    /// `logs`: the service's newest line number (0 before its first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// `logs`: captured lines, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<LogLine>>,
}

impl Response {
    /// `{"ok":true}`.
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    /// `{"ok":false,"error":...}`.
    pub fn error(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            ..Self::default()
        }
    }
}

/// One service in a `list` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// State name: waiting, starting, running, ready, stopping, exited, failed,
    /// crash_loop, stopped.
    pub state: String,
    /// Pid of the running process.
    pub pid: Option<i32>,
    /// Automatic restarts so far.
    pub restarts: u32,
    /// State is ready.
    pub ready: bool,
    /// How the last process ended: `{"code":N}` or `{"signal":N}`.
    pub last_exit: Option<ExitStatus>,
    /// Last spawn/supervision error.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Last state change, ms since the Unix epoch.
    pub since: u64,
    /// Milliseconds until a scheduled restart.
    #[serde(default)]
    pub next_restart_in_ms: Option<u64>,
}

/// One event in an `events` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    /// Sequence number (strictly increasing).
    pub seq: u64,
    /// Wall-clock time, ms since the Unix epoch.
    pub time_unix_ms: u64,
    /// Service, or null for the supervisor itself.
    pub service: Option<String>,
    /// Previous state name.
    pub from: Option<String>,
    /// New state name.
    pub to: Option<String>,
    /// Detail.
    pub message: String,
}

/// One captured output line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The service's line number (see the module documentation): strictly
    /// increasing, one per line, for as long as the supervisor runs.
    #[serde(default)]
    pub seq: u64,
    /// When the supervisor read it, ms since the Unix epoch.
    pub time_unix_ms: u64,
    /// The line, without the newline; invalid UTF-8 replaced; at most
    /// `max_line_bytes` (longer lines are cut and end in `...[truncated]`).
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let r: Request = serde_json::from_str(r#"{"op":"list"}"#).unwrap();
        assert_eq!(r, Request::List);
        let r: Request = serde_json::from_str(r#"{"op":"events"}"#).unwrap();
        assert_eq!(r, Request::Events { since: 0 });
        let r: Request =
            serde_json::from_str(r#"{"op":"logs","service":"apid","tail":5}"#).unwrap();
        assert_eq!(
            r,
            Request::Logs {
                service: "apid".into(),
                tail: Some(5),
                after: None,
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"op":"logs","service":"apid","after":7}"#).unwrap();
        assert_eq!(
            r,
            Request::Logs {
                service: "apid".into(),
                tail: None,
                after: Some(7),
            }
        );
        let r: Request = serde_json::from_str(r#"{"op":"shutdown","kind":"poweroff"}"#).unwrap();
        assert_eq!(
            r,
            Request::Shutdown {
                kind: Shutdown::PowerOff
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Restart {
                service: "a".into()
            })
            .unwrap(),
            r#"{"op":"restart","service":"a"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"start"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"stop","service":"a","x":1}"#).is_err());
    }

    #[test]
    fn response_wire_format() {
        assert_eq!(
            serde_json::to_string(&Response::error("unknown service \"x\"")).unwrap(),
            r#"{"ok":false,"error":"unknown service \"x\""}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::ok()).unwrap(),
            r#"{"ok":true}"#
        );
        assert_eq!(
            serde_json::to_string(&ExitStatus::Code(3)).unwrap(),
            r#"{"code":3}"#
        );
    }
}
