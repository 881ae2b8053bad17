//! `/run/bramble/etcd/state.json`: what `etcdd` is doing, for `nodectl`
//! and for people reading the node.

use std::path::Path;

use serde::Serialize;

/// The phases `etcdd` goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The node has no configuration yet.
    WaitingForConfiguration,
    /// Looking for a cluster to join, or for `nodectl bootstrap`.
    WaitingForCluster,
    /// Added as a learner, etcd started, catching up.
    Joining,
    /// etcd is starting.
    Starting,
    /// etcd answers and this member votes.
    Running,
    /// etcd is being stopped.
    Stopping,
    /// etcd could not be started (a snapshot that does not restore); the
    /// detail says why.
    Failed,
}

#[derive(Debug, Serialize)]
struct Status<'a> {
    phase: Phase,
    detail: &'a str,
    /// Seconds since the epoch.
    updated: u64,
}

/// Writes the status atomically; a failure is logged, never fatal.
pub fn publish(path: &Path, phase: Phase, detail: &str) {
    tracing::info!(?phase, detail, "etcd");
    let updated = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let result = serde_json::to_vec_pretty(&Status {
        phase,
        detail,
        updated,
    })
    .map_err(|e| e.to_string())
    .and_then(|json| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        bramble_atomic::write(path, &json, 0o644).map_err(|e| e.to_string())
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, path = %path.display(), "status not written");
    }
}
