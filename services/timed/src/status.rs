//! The daemon's published status: `<run-dir>/time/state.json` and the
//! `<run-dir>/time/synced` marker (created at the first sync, never removed
//! by the daemon: `/run` is a tmpfs, so it lasts for this boot).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Error;

/// Sub-directory of the run directory.
pub const DIR: &str = "time";
/// Status document name.
pub const STATE_FILE: &str = "state.json";
/// Marker name.
pub const SYNCED_MARKER: &str = "synced";

/// The status document, serialised to `state.json`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StateDoc {
    /// Whether a server gave a good sample since this process started.
    pub synced: bool,
    /// `machine.time.disabled`: no server is queried.
    pub disabled: bool,
    /// Whether the daemon sets the clock (false with `--no-set-clock`).
    pub sets_clock: bool,
    /// The servers in use, in order.
    pub servers: Vec<String>,
    /// Whether those are the built-in default.
    pub default_servers: bool,
    /// The server (as configured) of the last good sample.
    pub server: Option<String>,
    /// The address that answered.
    pub address: Option<String>,
    /// Its stratum.
    pub stratum: Option<u8>,
    /// Last measured offset, seconds (positive: the local clock was behind).
    pub offset_seconds: Option<f64>,
    /// Last round-trip delay, seconds.
    pub delay_seconds: Option<f64>,
    /// What was done about the last offset: `step`, `slew` or `none`
    /// (what would have been done, with `--no-set-clock`).
    pub last_correction: Option<&'static str>,
    /// Unix time of the last good sample.
    pub last_sync_unix: Option<f64>,
    /// Current poll interval, seconds (after a success) or retry delay.
    pub poll_interval_seconds: Option<u64>,
    /// Unix time of the next attempt (none while disabled or misconfigured).
    pub next_poll_unix: Option<f64>,
    /// Attempts in a row where no server gave a good sample.
    pub consecutive_failures: u32,
    /// Why the last failed attempt failed.
    pub last_error: Option<String>,
    /// Why the machine configuration could not be used, if it could not.
    pub config_error: Option<String>,
    /// Whether the clock was stepped forward to the saved time at start.
    pub restored_from_state: bool,
    /// The saved time found at start (Unix seconds), if any.
    pub saved_time_unix: Option<i64>,
    /// The image's build time (Unix seconds): no answer may set the clock
    /// before it.
    pub build_time_unix: i64,
    /// Whether the clock was stepped forward to the build time at start.
    pub raised_to_build_time: bool,
    /// The largest correction one answer makes on its own, seconds.
    pub max_step_seconds: u64,
    /// How the last large step was agreed (another address and its offset,
    /// or the consistent answers of the only address that answered).
    pub last_step_confirmed_by: Option<String>,
    /// Answers refused since start.
    pub refused_answers: u64,
    /// The last refused answer and why.
    pub last_refused: Option<Refused>,
    /// A large step one address asks for, waiting for confirmation.
    pub pending_step: Option<PendingStep>,
}

/// An answer that was not used.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Refused {
    /// The server as configured.
    pub server: String,
    /// The address that answered.
    pub address: String,
    /// The offset it measured, seconds.
    pub offset_seconds: f64,
    /// Why it was not used.
    pub reason: String,
    /// When (Unix seconds, by the local clock).
    pub at_unix: f64,
}

/// A large step waiting for consistent answers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PendingStep {
    /// The only address that answered.
    pub address: String,
    /// The offset of its first answer, seconds.
    pub offset_seconds: f64,
    /// Consistent answers so far.
    pub confirmations: u32,
    /// Answers needed.
    pub needed: u32,
}

/// The status directory under `run_dir`.
pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join(DIR)
}

/// Writes `state.json` atomically.
pub fn write_state(run_dir: &Path, doc: &StateDoc) -> Result<(), Error> {
    let mut json = serde_json::to_vec_pretty(doc).map_err(|source| Error::Json {
        what: "time state",
        source,
    })?;
    json.push(b'\n');
    Ok(bramble_atomic::write(
        &dir(run_dir).join(STATE_FILE),
        &json,
        0o644,
    )?)
}

/// Creates the `synced` marker (atomically) unless it exists; returns
/// whether it created it.
pub fn mark_synced(run_dir: &Path) -> Result<bool, Error> {
    let path = dir(run_dir).join(SYNCED_MARKER);
    if path.exists() {
        return Ok(false);
    }
    bramble_atomic::write(&path, b"", 0o644)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_state_and_marker() {
        let dir = tempfile::tempdir().unwrap();
        let doc = StateDoc {
            synced: true,
            server: Some("10.0.0.1".into()),
            stratum: Some(2),
            offset_seconds: Some(-0.25),
            ..StateDoc::default()
        };
        write_state(dir.path(), &doc).unwrap();
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("time/state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(v["synced"], true);
        assert_eq!(v["server"], "10.0.0.1");
        assert_eq!(v["stratum"], 2);
        assert_eq!(v["offset_seconds"], -0.25);
        assert_eq!(v["consecutive_failures"], 0);
        assert!(v["next_poll_unix"].is_null());

        assert!(mark_synced(dir.path()).unwrap());
        assert!(dir.path().join("time/synced").exists());
        assert!(!mark_synced(dir.path()).unwrap());
    }
}
