//! Rows printed by the commands that read from nodes.

use bramble_api::machine::v1::{LogLine, Service};
use serde::Serialize;

use crate::output::Row;

/// One service of one node.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceRow {
    /// The node as named on the command line.
    pub node: String,
    /// Service name.
    pub service: String,
    /// Supervisor state.
    pub state: String,
    /// Process id (0: not running).
    pub pid: i32,
    /// Restarts so far.
    pub restarts: u32,
    /// Whether it reported ready.
    pub ready: bool,
    /// The last error seen.
    pub last_error: String,
}

impl ServiceRow {
    /// From the API's answer.
    pub fn new(node: &str, s: Service) -> Self {
        Self {
            node: node.to_owned(),
            service: s.name,
            state: s.state,
            pid: s.pid,
            restarts: s.restarts,
            ready: s.ready,
            last_error: s.last_error,
        }
    }
}

impl Row for ServiceRow {
    fn headers() -> &'static [&'static str] {
        &[
            "NODE",
            "SERVICE",
            "STATE",
            "PID",
            "RESTARTS",
            "READY",
            "LAST ERROR",
        ]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            self.service.clone(),
            self.state.clone(),
            if self.pid == 0 {
                "-".into()
            } else {
                self.pid.to_string()
            },
            self.restarts.to_string(),
            if self.ready { "yes" } else { "no" }.into(),
            if self.last_error.is_empty() {
                "-".into()
            } else {
                self.last_error.clone()
            },
        ]
    }
}

/// One log line of one node.
#[derive(Debug, Clone, Serialize)]
pub struct LogRow {
    /// The node as named on the command line.
    pub node: String,
    /// Milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// The service's line number (strictly increasing within a boot).
    pub seq: u64,
    /// The line.
    pub text: String,
}

impl LogRow {
    /// From the API's answer.
    pub fn new(node: &str, l: LogLine) -> Self {
        Self {
            node: node.to_owned(),
            time_unix_ms: l.time_unix_ms,
            seq: l.seq,
            text: l.text,
        }
    }
}

impl Row for LogRow {
    fn headers() -> &'static [&'static str] {
        &["NODE", "TIME", "LINE"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            crate::output::clock_time(self.time_unix_ms),
            self.text.clone(),
        ]
    }
}

/// One kernel log record of one node.
#[derive(Debug, Clone, Serialize)]
pub struct KernelRow {
    /// The node as named on the command line.
    pub node: String,
    /// Seconds since boot.
    pub time_seconds: f64,
    /// syslog priority.
    pub priority: u32,
    /// The message.
    pub text: String,
}

impl KernelRow {
    /// From the API's answer.
    pub fn new(node: &str, l: bramble_api::machine::v1::KernelLogLine) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let time_seconds = l.time_us as f64 / 1e6;
        Self {
            node: node.to_owned(),
            time_seconds,
            priority: l.priority,
            text: l.text,
        }
    }
}

impl Row for KernelRow {
    fn headers() -> &'static [&'static str] {
        &["NODE", "TIME", "MESSAGE"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            format!("[{:>12.6}]", self.time_seconds),
            self.text.clone(),
        ]
    }
}

/// One event of one node.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    /// The node as named on the command line.
    pub node: String,
    /// Sequence number.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// The service, if any.
    pub service: String,
    /// Old state.
    pub from: String,
    /// New state.
    pub to: String,
    /// What happened.
    pub message: String,
}

impl EventRow {
    /// From the API's answer.
    pub fn new(node: &str, e: bramble_api::machine::v1::Event) -> Self {
        Self {
            node: node.to_owned(),
            seq: e.seq,
            time_unix_ms: e.time_unix_ms,
            service: e.service,
            from: e.from,
            to: e.to,
            message: e.message,
        }
    }
}

impl Row for EventRow {
    fn headers() -> &'static [&'static str] {
        &["NODE", "SEQ", "SERVICE", "CHANGE", "MESSAGE"]
    }

    fn cells(&self) -> Vec<String> {
        let change = if self.from.is_empty() && self.to.is_empty() {
            "-".to_owned()
        } else {
            format!("{} -> {}", self.from, self.to)
        };
        vec![
            self.node.clone(),
            self.seq.to_string(),
            if self.service.is_empty() {
                "-".into()
            } else {
                self.service.clone()
            },
            change,
            self.message.clone(),
        ]
    }
}

fn mib(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let v = bytes as f64 / f64::from(1u32 << 20);
    format!("{v:.1}")
}

/// Memory of one node, in bytes.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryRow {
    /// The node as named on the command line.
    pub node: String,
    #[allow(missing_docs)]
    pub total_bytes: u64,
    #[allow(missing_docs)]
    pub free_bytes: u64,
    #[allow(missing_docs)]
    pub available_bytes: u64,
    #[allow(missing_docs)]
    pub buffers_bytes: u64,
    #[allow(missing_docs)]
    pub cached_bytes: u64,
}

impl MemoryRow {
    /// From the API's answer.
    pub fn new(node: &str, m: bramble_api::machine::v1::MemoryResponse) -> Self {
        Self {
            node: node.to_owned(),
            total_bytes: m.total_bytes,
            free_bytes: m.free_bytes,
            available_bytes: m.available_bytes,
            buffers_bytes: m.buffers_bytes,
            cached_bytes: m.cached_bytes,
        }
    }
}

impl Row for MemoryRow {
    fn headers() -> &'static [&'static str] {
        &[
            "NODE",
            "TOTAL MiB",
            "FREE MiB",
            "AVAILABLE MiB",
            "BUFFERS MiB",
            "CACHED MiB",
        ]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            mib(self.total_bytes),
            mib(self.free_bytes),
            mib(self.available_bytes),
            mib(self.buffers_bytes),
            mib(self.cached_bytes),
        ]
    }
}

/// One process of one node.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessRow {
    /// The node as named on the command line.
    pub node: String,
    #[allow(missing_docs)]
    pub pid: i32,
    #[allow(missing_docs)]
    pub ppid: i32,
    #[allow(missing_docs)]
    pub state: String,
    #[allow(missing_docs)]
    pub name: String,
    #[allow(missing_docs)]
    pub rss_bytes: u64,
    #[allow(missing_docs)]
    pub cpu_seconds: f64,
    #[allow(missing_docs)]
    pub command_line: String,
}

impl ProcessRow {
    /// From the API's answer.
    pub fn new(node: &str, p: bramble_api::machine::v1::Process) -> Self {
        Self {
            node: node.to_owned(),
            pid: p.pid,
            ppid: p.ppid,
            state: p.state,
            name: p.name,
            rss_bytes: p.rss_bytes,
            cpu_seconds: p.cpu_seconds,
            command_line: p.command_line,
        }
    }
}

impl Row for ProcessRow {
    fn headers() -> &'static [&'static str] {
        &[
            "NODE", "PID", "PPID", "STATE", "RSS MiB", "CPU s", "COMMAND",
        ]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            self.pid.to_string(),
            self.ppid.to_string(),
            self.state.clone(),
            mib(self.rss_bytes),
            format!("{:.2}", self.cpu_seconds),
            if self.command_line.is_empty() {
                format!("[{}]", self.name)
            } else {
                self.command_line.clone()
            },
        ]
    }
}

/// One mount of one node.
#[derive(Debug, Clone, Serialize)]
pub struct MountRow {
    /// The node as named on the command line.
    pub node: String,
    #[allow(missing_docs)]
    pub source: String,
    #[allow(missing_docs)]
    pub target: String,
    #[allow(missing_docs)]
    pub filesystem: String,
    #[allow(missing_docs)]
    pub options: String,
    #[allow(missing_docs)]
    pub size_bytes: u64,
    #[allow(missing_docs)]
    pub available_bytes: u64,
}

impl MountRow {
    /// From the API's answer.
    pub fn new(node: &str, m: bramble_api::machine::v1::Mount) -> Self {
        Self {
            node: node.to_owned(),
            source: m.source,
            target: m.target,
            filesystem: m.filesystem,
            options: m.options,
            size_bytes: m.size_bytes,
            available_bytes: m.available_bytes,
        }
    }
}

impl Row for MountRow {
    fn headers() -> &'static [&'static str] {
        &[
            "NODE",
            "TARGET",
            "FILESYSTEM",
            "SOURCE",
            "SIZE MiB",
            "AVAILABLE MiB",
            "OPTIONS",
        ]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            self.target.clone(),
            self.filesystem.clone(),
            self.source.clone(),
            mib(self.size_bytes),
            mib(self.available_bytes),
            self.options.clone(),
        ]
    }
}
