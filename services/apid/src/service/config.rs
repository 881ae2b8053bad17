//! The configuration calls: ApplyConfiguration (carrying out the plan
//! `super::plan` made: storing, restarting and reloading services, a try
//! window's revert, a reboot), GetConfig and Reset.
//!
//! The first apply is atomic. An anonymous caller (maintenance mode: nobody
//! is authenticated) may only give a node that has no configuration its
//! first one, and only one such apply runs at a time ([`FirstApply`]): a
//! second anonymous apply while the first is being applied, or any
//! anonymous apply once a configuration is in force, is refused with
//! `FailedPrecondition` and changes nothing. (Once configured, the listener
//! restarts with mutual TLS, but a connection opened before that must not
//! slip an apply in.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bramble_api::machine::v1::{
    ApplyConfigurationRequest, ApplyConfigurationResponse, ApplyMode, GetConfigRequest,
    GetConfigResponse, ResetRequest, ResetResponse,
};
use bramble_config::MachineConfig;
use bramble_supervisor::Shutdown;
use tonic::{Request, Response, Status};

use super::plan::{mode_name, plan, summary, taking_up};
use super::{MachineApi, caller};
use crate::auth::Caller;
use crate::store::Stored;

/// Why an anonymous apply is refused on a configured node.
const CONFIGURED: &str = "this node is already configured: only the cluster's admins can apply \
     a configuration, over mutual TLS (nodectl with the cluster's client configuration, \
     not --insecure)";
/// Why an anonymous apply is refused while another one runs.
const IN_FLIGHT: &str = "another configuration is being applied to this node: a node in \
     maintenance mode takes its first configuration from one caller; once it is in force, \
     only the cluster's admins can apply one, over mutual TLS";

/// The claim of the one anonymous apply that may run: made before the
/// document is read, released when the apply ends (stored, refused, or its
/// caller gone), whatever the outcome.
struct FirstApply<'a>(&'a AtomicBool);

impl<'a> FirstApply<'a> {
    fn claim(flag: &'a AtomicBool) -> Result<Self, Status> {
        flag.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .map(|_| Self(flag))
            .map_err(|_| Status::failed_precondition(IN_FLIGHT))
    }
}

impl Drop for FirstApply<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl MachineApi {
    /// Applies `req` for `caller`: an admin (or the node itself, reverting
    /// an admin's trial), or an anonymous caller in maintenance mode.
    async fn apply(
        &self,
        req: ApplyConfigurationRequest,
        caller: Caller,
    ) -> Result<ApplyConfigurationResponse, Status> {
        // An anonymous real apply claims the one slot; a dry run stores
        // nothing, so it claims none, but like every anonymous call it is
        // refused once a configuration is in force (its diff would show it).
        let anonymous = caller == Caller::Anonymous;
        let _first = if anonymous && !req.dry_run {
            Some(FirstApply::claim(&self.node.first_apply)?)
        } else {
            None
        };
        if anonymous && self.node.current.lock().await.is_some() {
            return Err(Status::failed_precondition(CONFIGURED));
        }
        if req.data.len() > bramble_config::MAX_DOCUMENT_BYTES {
            return Err(Status::invalid_argument(format!(
                "data: the configuration is {} bytes; at most {} bytes (1 MiB) are accepted",
                req.data.len(),
                bramble_config::MAX_DOCUMENT_BYTES
            )));
        }
        let raw = String::from_utf8(req.data.clone())
            .map_err(|_| Status::invalid_argument("data: the configuration is not UTF-8 text"))?;
        // Parsed on tokio's blocking pool: the runtime's one thread keeps
        // serving other callers meanwhile.
        let parsing = raw.clone();
        let new = tokio::task::spawn_blocking(move || MachineConfig::parse(&parsing))
            .await
            .map_err(|e| Status::internal(format!("parsing the configuration failed: {e}")))?
            .map_err(|e| Status::invalid_argument(format!("the configuration is invalid:\n{e}")))?;
        // A node without the CA's key (a worker) gets its API certificate
        // from a control-plane node with the join token (`crate::join`).
        if new.machine.ca.key.is_none() && new.machine.token.is_none() {
            return Err(Status::invalid_argument(
                "the configuration is invalid:\nmachine.token: required without machine.ca.key: \
                 the node gets its API certificate from a control-plane node with the join token",
            ));
        }
        let unknown = crate::network::unknown_links(&new, &self.node.system.class_net);
        if !unknown.is_empty() {
            return Err(Status::invalid_argument(format!(
                "the configuration is invalid:\n{}",
                unknown.join("\n")
            )));
        }
        let node = &self.node;
        let mut current = node.current.lock().await;
        // Checked again under the lock that orders applies: the one that
        // decides.
        if anonymous && current.is_some() {
            return Err(Status::failed_precondition(CONFIGURED));
        }
        let old = current.as_ref().map(|s| &s.config);
        let plan = plan(old, &new, &req)?;
        let response = ApplyConfigurationResponse {
            mode: plan.mode as i32,
            diff: plan.diff.clone(),
            restarted: plan.restarts.clone(),
            reboot_required: plan.reboot,
            summary: summary(&plan, req.dry_run, req.try_timeout_seconds),
            reloaded: plan.reloads.clone(),
        };
        if req.dry_run {
            return Ok(response);
        }
        let persist = |r: Result<(), crate::Error>| {
            r.map_err(|e| Status::internal(format!("the configuration was not stored: {e}")))
        };
        if plan.mode == ApplyMode::Staged {
            persist(node.store.stage(&raw))?;
            node.note("configuration staged for the next boot".into());
            // Still holding `current`: applies and their writes stay in order.
            node.sync_pi(crate::pi::lines(Some(&new))).await;
            return Ok(response);
        }
        // What a revert returns to: on a trial on top of a trial, not the
        // first trial but the last confirmed configuration.
        let previous = if plan.mode == ApplyMode::Try && node.store.trial_in_progress() {
            node.store.previous().map_err(|e| {
                Status::internal(format!("cannot read the previous configuration: {e}"))
            })?
        } else {
            current.as_ref().map(|s| s.raw.clone())
        };
        persist(node.store.store(&raw, plan.mode == ApplyMode::Try))?;
        let pi_lines = crate::pi::lines(Some(&new));
        let ca = new.machine.ca.crt.clone();
        *current = Some(Stored { raw, config: new });
        // Before the reboot below is asked for, still holding `current`.
        node.sync_pi(pi_lines).await;
        node.sync_configured(Some(ca)).await;
        drop(current);
        let generation = node.generation.fetch_add(1, Ordering::SeqCst) + 1;
        node.note(format!(
            "configuration applied ({}){}",
            mode_name(plan.mode),
            taking_up(&plan.restarts, &plan.reloads)
        ));

        if plan.mode == ApplyMode::Reboot {
            node.schedule_shutdown(Shutdown::Reboot, "rebooting into the new configuration");
            return Ok(response);
        }
        // The reply goes out now; the services restart behind it (each
        // restart is reported in the node's events and logs).
        let api = self.clone();
        let (restarts, reloads, reload_self) = (
            plan.restarts.clone(),
            plan.reloads.clone(),
            plan.reload_self,
        );
        tokio::spawn(async move { api.take_up(restarts, reloads, reload_self).await });
        if plan.mode == ApplyMode::Try
            && let Some(previous) = previous
        {
            self.schedule_revert(
                generation,
                previous,
                Duration::from_secs(req.try_timeout_seconds.into()),
                caller,
            );
        }
        Ok(response)
    }

    /// Makes the running services take up a stored configuration.
    async fn take_up(&self, restarts: Vec<String>, reloads: Vec<String>, reload_self: bool) {
        self.node.reload_services(&reloads).await;
        for service in &restarts {
            let name = service.clone();
            match self
                .node
                .control("restart", move |c| c.restart(&name))
                .await
            {
                Ok(()) => tracing::info!(%service, "restarted for the new configuration"),
                // Not every service exists on every node (or yet).
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => tracing::warn!(%service, error = %e.message(), "not restarted"),
            }
        }
        if reload_self {
            self.node.request_reload();
        }
    }

    /// Reverts to `previous` after `after` unless another apply came first;
    /// the revert is an apply on behalf of `caller`, who asked for the trial.
    fn schedule_revert(&self, generation: u64, previous: String, after: Duration, caller: Caller) {
        let api = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let node = &api.node;
            if node.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            node.note("try timeout passed: returning to the previous configuration".into());
            let req = ApplyConfigurationRequest {
                data: previous.into_bytes(),
                mode: ApplyMode::Auto as i32,
                dry_run: false,
                try_timeout_seconds: 0,
            };
            if let Err(e) = api.apply(req, caller).await {
                tracing::error!(error = %e.message(), "reverting the tried configuration failed");
            }
        });
    }
}

#[tracing::instrument(skip_all, fields(mode = request.get_ref().mode, dry_run = request.get_ref().dry_run, caller = ?caller(&request)))]
pub(super) async fn apply_configuration(
    api: &MachineApi,
    request: Request<ApplyConfigurationRequest>,
) -> Result<Response<ApplyConfigurationResponse>, Status> {
    let caller = caller(&request);
    let result = api.apply(request.into_inner(), caller).await;
    if let Err(status) = &result
        && status.code() == tonic::Code::FailedPrecondition
        && caller == Caller::Anonymous
    {
        tracing::warn!(reason = status.message(), "anonymous apply refused");
    }
    result.map(Response::new)
}

#[tracing::instrument(skip_all)]
pub(super) async fn get_config(
    api: &MachineApi,
    request: Request<GetConfigRequest>,
) -> Result<Response<GetConfigResponse>, Status> {
    let admin = caller(&request).is_admin();
    let current = api.node.current.lock().await;
    let stored = current
        .as_ref()
        .ok_or_else(|| Status::failed_precondition("the node has no configuration"))?;
    let data = if admin {
        stored.raw.clone()
    } else {
        stored.config.redacted().to_yaml()
    };
    Ok(Response::new(GetConfigResponse {
        data: data.into_bytes(),
        redacted: !admin,
    }))
}

#[tracing::instrument(skip_all, fields(wipe_data = request.get_ref().wipe_data, force = request.get_ref().force))]
pub(super) async fn reset(
    api: &MachineApi,
    request: Request<ResetRequest>,
) -> Result<Response<ResetResponse>, Status> {
    let req = request.into_inner();
    // Nothing is wiped unless the reboot that follows can be asked for.
    api.node.control("reset", |_| Ok(())).await?;
    // A control-plane node's etcd member leaves its cluster first (refused,
    // changing nothing, when that would cost the cluster its quorum, unless
    // forced).
    let etcd = super::etcd::leave_before_reset(api, req.force).await?;
    let mut current = api.node.current.lock().await;
    if req.wipe_data {
        bramble_atomic::write(&api.node.wipe_data_marker, b"", 0o600).map_err(|e| {
            Status::internal(format!(
                "cannot mark /var for wiping ({}): {e}",
                api.node.wipe_data_marker.display()
            ))
        })?;
    }
    api.node
        .store
        .wipe()
        .map_err(|e| Status::internal(format!("cannot wipe the configuration: {e}")))?;
    *current = None;
    api.node.sync_pi(Vec::new()).await;
    api.node.sync_configured(None).await;
    drop(current);
    api.node.note(format!(
        "reset: {}configuration wiped{}; rebooting into maintenance mode",
        etcd.as_ref().map(|e| format!("{e}; ")).unwrap_or_default(),
        if req.wipe_data {
            ", /var is emptied at the next boot"
        } else {
            ""
        }
    ));
    api.node
        .schedule_shutdown(Shutdown::Reboot, "rebooting after the reset");
    Ok(Response::new(ResetResponse {
        etcd: etcd.unwrap_or_default(),
    }))
}
