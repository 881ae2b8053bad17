//! Apply planning: what an apply will do (its mode, the diff, the services
//! it restarts or reloads, whether it needs a reboot), decided from the
//! configurations alone before anything is written.

use std::time::Duration;

use bramble_api::machine::v1::{ApplyConfigurationRequest, ApplyMode};
use bramble_config::MachineConfig;
use tonic::Status;

use super::SELF_SERVICE;

/// Longest `try` window.
const MAX_TRY: Duration = Duration::from_secs(24 * 3600);
/// Services that run on defaults in maintenance mode and re-read the first
/// configuration when it arrives (etcd's daemon waits for it: a
/// control-plane node's starts etcd, a worker's exits).
const FIRST_CONFIG_RELOADS: &[bramble_config::Service] = &[
    bramble_config::Service::Networkd,
    bramble_config::Service::Timed,
    bramble_config::Service::Runtimed,
    bramble_config::Service::Etcd,
];

/// The names of [`FIRST_CONFIG_RELOADS`].
pub(super) fn first_config_reloads() -> Vec<String> {
    FIRST_CONFIG_RELOADS
        .iter()
        .map(|s| s.name().to_owned())
        .collect()
}

/// What an apply will do, decided before anything is written.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) mode: ApplyMode,
    pub(super) diff: String,
    pub(super) restarts: Vec<String>,
    /// Services that re-read the configuration while running.
    pub(super) reloads: Vec<String>,
    pub(super) reboot: bool,
    pub(super) reload_self: bool,
}

pub(super) fn plan(
    old: Option<&MachineConfig>,
    new: &MachineConfig,
    req: &ApplyConfigurationRequest,
) -> Result<Plan, Status> {
    let asked = ApplyMode::try_from(req.mode)
        .map_err(|_| Status::invalid_argument(format!("mode: unknown apply mode {}", req.mode)))?;
    let names = |set: &std::collections::BTreeSet<bramble_config::Service>| -> Vec<String> {
        set.iter().map(|s| s.name().to_owned()).collect()
    };
    let (diff, mut restarts, reloads, reboot) = match old {
        Some(old) => {
            let d = bramble_config::diff(old, new);
            (d.to_string(), names(&d.restart), names(&d.reload), d.reboot)
        }
        // Leaving maintenance mode: everything is new. The API server
        // takes it up itself; the services that ran on defaults re-read it.
        None => (
            new.redacted()
                .to_yaml()
                .lines()
                .map(|l| format!("+{l}\n"))
                .collect(),
            vec![SELF_SERVICE.to_owned()],
            first_config_reloads(),
            false,
        ),
    };
    let reload_self = restarts.iter().any(|s| s == SELF_SERVICE);
    restarts.retain(|s| s != SELF_SERVICE);
    let mode = match asked {
        ApplyMode::Auto if reboot => ApplyMode::Reboot,
        ApplyMode::Auto => ApplyMode::NoReboot,
        ApplyMode::NoReboot | ApplyMode::Try if reboot => {
            return Err(Status::failed_precondition(
                "this change needs a reboot to take effect: apply it with --mode reboot, staged or auto",
            ));
        }
        ApplyMode::Try if req.try_timeout_seconds == 0 => {
            return Err(Status::invalid_argument(
                "try_timeout_seconds: try mode needs a timeout (for example --timeout 1m)",
            ));
        }
        ApplyMode::Try if Duration::from_secs(req.try_timeout_seconds.into()) > MAX_TRY => {
            return Err(Status::invalid_argument(
                "try_timeout_seconds: at most 24 hours",
            ));
        }
        ApplyMode::Try if old.is_none() => {
            return Err(Status::failed_precondition(
                "try mode needs a configuration to return to; apply the first one with --mode auto",
            ));
        }
        other => other,
    };
    Ok(Plan {
        mode,
        diff,
        restarts,
        reloads,
        reboot,
        reload_self,
    })
}

/// `; restarting a, b; reloading c` for the event that records an apply.
pub(super) fn taking_up(restarts: &[String], reloads: &[String]) -> String {
    let mut s = String::new();
    if !restarts.is_empty() {
        s.push_str(&format!("; restarting {}", restarts.join(", ")));
    }
    if !reloads.is_empty() {
        s.push_str(&format!("; reloading {}", reloads.join(", ")));
    }
    s
}

pub(super) fn mode_name(mode: ApplyMode) -> &'static str {
    match mode {
        ApplyMode::Auto => "auto",
        ApplyMode::NoReboot => "no-reboot",
        ApplyMode::Reboot => "reboot",
        ApplyMode::Staged => "staged",
        ApplyMode::Try => "try",
    }
}

pub(super) fn summary(plan: &Plan, dry_run: bool, timeout: u32) -> String {
    let verb = if dry_run { "would be" } else { "was" };
    let what = match plan.mode {
        ApplyMode::Staged => "staged; it takes effect at the next boot".to_owned(),
        ApplyMode::Reboot => "stored; the node reboots into it".to_owned(),
        ApplyMode::Try => format!(
            "applied for {timeout} s; the previous configuration returns then unless another is applied"
        ),
        ApplyMode::NoReboot | ApplyMode::Auto => "applied without a reboot".to_owned(),
    };
    if plan.diff.is_empty() {
        return format!("the configuration is unchanged; it {verb} {what}");
    }
    format!("the configuration {verb} {what}")
}
