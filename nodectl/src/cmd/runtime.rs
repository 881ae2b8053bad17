//! Rows and helpers of the container runtime's commands: `images`, `image
//! pull|import|rm`, `containers`, `logs -k`, `stats`, `container restart`.

use std::path::Path;
use std::time::Duration;

use bramble_api::runtime::v1::{
    Container, ContainerLogLine, ContainerStats, Image, ImageImportChunk,
};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::output::{Row, human_duration};

/// How long a pull or an import may take (they move whole images).
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Size of one import chunk.
const CHUNK: usize = 1 << 20;

fn short_digest(d: &str) -> String {
    d.strip_prefix("sha256:")
        .map_or_else(|| d.to_owned(), |hex| hex.chars().take(12).collect())
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// `1.5 MiB`, `12 KiB`, `300 B`.
pub(crate) fn bytes(n: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let f = n as f64;
    if n >= 1 << 30 {
        format!("{:.1} GiB", f / f64::from(1u32 << 30))
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", f / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// One image of one node.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRow {
    /// The node as named on the command line.
    pub node: String,
    /// Normalised reference.
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
    /// `os/arch`.
    pub platform: String,
    /// Compressed size of its layers.
    pub size_bytes: u64,
}

impl ImageRow {
    /// From the API's answer.
    pub fn new(node: &str, i: Image) -> Self {
        Self {
            node: node.to_owned(),
            reference: i.reference,
            digest: i.digest,
            platform: i.platform,
            size_bytes: i.size_bytes,
        }
    }
}

impl Row for ImageRow {
    fn headers() -> &'static [&'static str] {
        &["NODE", "IMAGE", "DIGEST", "PLATFORM", "SIZE"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            dash(&self.reference),
            short_digest(&self.digest),
            self.platform.clone(),
            bytes(self.size_bytes),
        ]
    }
}

/// One container of one node.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerRow {
    /// The node as named on the command line.
    pub node: String,
    /// Workload name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// running, exited, backoff, pulling, failed, created.
    pub state: String,
    /// Container init's pid (0: not running).
    pub pid: u32,
    /// Restarts so far.
    pub restarts: u32,
    /// Last exit code (-1: killed or never exited).
    pub exit_code: i32,
    /// Whether the OOM killer ended the last run.
    pub oom_killed: bool,
    /// Why it is in its state.
    pub reason: String,
    /// Seconds since the epoch of the last start.
    pub started_unix: u64,
    /// How long the last run took, shim start to deletion (ms).
    pub last_run_ms: u64,
}

impl ContainerRow {
    /// From the API's answer.
    pub fn new(node: &str, c: Container) -> Self {
        Self {
            node: node.to_owned(),
            name: c.name,
            image: c.image,
            state: c.state,
            pid: c.pid,
            restarts: c.restarts,
            exit_code: c.exit_code,
            oom_killed: c.oom_killed,
            reason: c.reason,
            started_unix: c.started_unix,
            last_run_ms: c.last_run_ms,
        }
    }
}

impl Row for ContainerRow {
    fn headers() -> &'static [&'static str] {
        &[
            "NODE",
            "CONTAINER",
            "IMAGE",
            "STATE",
            "PID",
            "RESTARTS",
            "UP",
            "REASON",
        ]
    }
    fn cells(&self) -> Vec<String> {
        let up = if self.state == "running" && self.started_unix > 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            #[allow(clippy::cast_precision_loss)]
            human_duration(now.saturating_sub(self.started_unix) as f64)
        } else {
            "-".into()
        };
        vec![
            self.node.clone(),
            self.name.clone(),
            self.image.clone(),
            self.state.clone(),
            if self.pid == 0 {
                "-".into()
            } else {
                self.pid.to_string()
            },
            self.restarts.to_string(),
            up,
            dash(&self.reason),
        ]
    }
}

/// Resource use of one running container.
#[derive(Debug, Clone, Serialize)]
pub struct StatsRow {
    /// The node as named on the command line.
    pub node: String,
    /// Workload name.
    pub name: String,
    /// Memory in use.
    pub memory_bytes: u64,
    /// Memory limit (0: none).
    pub memory_limit_bytes: u64,
    /// CPU time used, microseconds.
    pub cpu_usage_usec: u64,
    /// Processes and threads.
    pub pids: u64,
}

impl StatsRow {
    /// From the API's answer.
    pub fn new(node: &str, s: ContainerStats) -> Self {
        Self {
            node: node.to_owned(),
            name: s.name,
            memory_bytes: s.memory_bytes,
            memory_limit_bytes: s.memory_limit_bytes,
            cpu_usage_usec: s.cpu_usage_usec,
            pids: s.pids,
        }
    }
}

impl Row for StatsRow {
    fn headers() -> &'static [&'static str] {
        &["NODE", "CONTAINER", "MEMORY", "LIMIT", "CPU", "PIDS"]
    }
    fn cells(&self) -> Vec<String> {
        #[allow(clippy::cast_precision_loss)]
        let cpu = format!("{:.2}s", self.cpu_usage_usec as f64 / 1e6);
        vec![
            self.node.clone(),
            self.name.clone(),
            bytes(self.memory_bytes),
            if self.memory_limit_bytes == 0 {
                "-".into()
            } else {
                bytes(self.memory_limit_bytes)
            },
            cpu,
            self.pids.to_string(),
        ]
    }
}

/// One line a container wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerLogRow {
    /// The node as named on the command line.
    pub node: String,
    /// Milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line.
    pub text: String,
}

impl ContainerLogRow {
    /// From the API's answer.
    pub fn new(node: &str, l: ContainerLogLine) -> Self {
        Self {
            node: node.to_owned(),
            time_unix_ms: l.time_unix_ms,
            stream: l.stream,
            text: l.text,
        }
    }
}

impl Row for ContainerLogRow {
    fn headers() -> &'static [&'static str] {
        &["NODE", "TIME", "STREAM", "LINE"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            crate::output::clock_time(self.time_unix_ms),
            self.stream.clone(),
            self.text.clone(),
        ]
    }
}

/// The chunks of `file` for `ImageImport`, read as they are sent; the first
/// names `reference` and carries `force`.
pub async fn import_chunks(
    file: &Path,
    reference: Option<String>,
    force: bool,
) -> std::io::Result<ReceiverStream<ImageImportChunk>> {
    let mut f = tokio::fs::File::open(file).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut first = reference.unwrap_or_default();
        let mut force = force;
        loop {
            let mut data = vec![0u8; CHUNK];
            let n = match f.read(&mut data).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            data.truncate(n);
            let chunk = ImageImportChunk {
                reference: std::mem::take(&mut first),
                data,
                force: std::mem::take(&mut force),
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
