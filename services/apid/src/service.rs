//! The `bramble.machine.v1.MachineService` implementation.
//!
//! Who may call what is decided before a call gets here (`auth.rs`); the
//! handlers only read the [`Caller`] where the answer depends on it
//! (secrets in `GetConfig`). Service control, logs, reboot and shutdown go to
//! PID 1's supervisor through its control socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bramble_api::machine::v1::machine_service_server::MachineService;
use bramble_api::machine::v1::{
    AddressesRequest, AddressesResponse, ApplyConfigurationRequest, ApplyConfigurationResponse,
    ApplyMode, DmesgRequest, Event, EventsRequest, GetConfigRequest, GetConfigResponse,
    HostnameRequest, HostnameResponse, KernelLogLine, LinksRequest, LinksResponse, LoadAvgRequest,
    LoadAvgResponse, LogLine, LogsRequest, MemoryRequest, MemoryResponse, MountsRequest,
    MountsResponse, ProcessesRequest, ProcessesResponse, RebootRequest, RebootResponse,
    ResetRequest, ResetResponse, ResolversRequest, ResolversResponse, RoutesRequest,
    RoutesResponse, Service, ServiceListRequest, ServiceListResponse, ServiceRequest,
    ServiceResponse, ShutdownRequest, ShutdownResponse, TimeRequest, TimeResponse, VersionRequest,
    VersionResponse,
};
use bramble_config::MachineConfig;
use bramble_supervisor::Shutdown;
use bramble_supervisor::control::Client;
use std::pin::Pin;
use tokio::sync::{Mutex, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::info::{NodeInfoSource, Uname};
use crate::runtime::RuntimeClient;
use crate::store::{ConfigStore, Stored};
use crate::system::SystemSource;
use bramble_api::runtime::v1 as rt;

/// How often a followed stream looks for news.
const FOLLOW_POLL: Duration = Duration::from_millis(300);
/// Items buffered per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 256;

/// A server stream of `T`.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// How long a control-socket request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reply gets to reach the client before a reboot or power-off
/// is asked for.
const REPLY_HEAD_START: Duration = Duration::from_millis(300);
/// Longest `try` window.
const MAX_TRY: Duration = Duration::from_secs(24 * 3600);
/// The API server's own service name: its changes are applied by the server
/// itself (it restarts its listener), not by the supervisor.
const SELF_SERVICE: &str = "apid";
/// Services that run on defaults in maintenance mode and re-read the first
/// configuration when it arrives.
const FIRST_CONFIG_RELOADS: &[bramble_config::Service] = &[
    bramble_config::Service::Networkd,
    bramble_config::Service::Timed,
    bramble_config::Service::Runtimed,
];

/// State shared by every call and by the server loop.
#[derive(Debug)]
pub struct Node {
    info: NodeInfoSource,
    system: SystemSource,
    /// Written by Reset with `wipe_data`: PID 1 empties /var at the next boot.
    wipe_data_marker: PathBuf,
    store: ConfigStore,
    control_socket: PathBuf,
    /// The configuration in force; the lock also serialises applies.
    current: Mutex<Option<Stored>>,
    /// Bumped when the listener must be rebuilt (a new CA, new names, or
    /// the first configuration ending maintenance mode).
    reload: watch::Sender<u64>,
    /// Bumped by every apply; a pending `try` revert checks it is still the
    /// latest before it reverts.
    generation: std::sync::atomic::AtomicU64,
    /// Names the boot disk whose FAT gets `machine.pi.configTxt`
    /// (`crate::pi`); `None` off a node.
    boot_device_file: Option<PathBuf>,
    /// One writer of the boot partition at a time; holds the lines the card
    /// is known to have (none until the first write or check).
    pi_lock: Mutex<Option<Vec<String>>>,
}

impl Node {
    /// Shared state over `store`, with `current` as the configuration in force.
    pub fn new(
        info: NodeInfoSource,
        store: ConfigStore,
        control_socket: PathBuf,
        wipe_data_marker: PathBuf,
        boot_device_file: Option<PathBuf>,
        current: Option<Stored>,
    ) -> Arc<Self> {
        Arc::new(Self {
            info,
            system: SystemSource::default(),
            wipe_data_marker,
            store,
            control_socket,
            current: Mutex::new(current),
            reload: watch::channel(0).0,
            generation: std::sync::atomic::AtomicU64::new(0),
            boot_device_file,
            pi_lock: Mutex::new(None),
        })
    }

    /// [`Node::sync_pi`] for the configuration in force now (at start).
    pub async fn sync_pi_in_force(self: &Arc<Self>) {
        let current = self.current.lock().await;
        let lines = crate::pi::lines(current.as_ref().map(|s| &s.config));
        self.sync_pi(lines).await;
        drop(current);
    }

    /// Writes the Raspberry Pi firmware lines the next boot needs into
    /// `bramble-extra.txt` on the boot partition (only if they changed):
    /// those of the staged configuration if there is one, else `in_force`'s.
    /// Called after every change to the stored configuration, before a
    /// reboot is asked for. A failure is reported on the console and in the
    /// node's events; it never fails the apply.
    pub async fn sync_pi(self: &Arc<Self>, in_force: Vec<String>) {
        let Some(file) = self.boot_device_file.clone() else {
            return;
        };
        // One writer at a time; it remembers what the card already holds, so
        // an apply that leaves the Pi lines alone does not touch the disk.
        let mut on_card = self.pi_lock.lock().await;
        let lines = match self.store.staged() {
            Ok(Some(staged)) => crate::pi::lines(Some(&staged)),
            Ok(None) => in_force,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the staged configuration");
                in_force
            }
        };
        if on_card.as_ref() == Some(&lines) {
            return;
        }
        let count = lines.len();
        let written = lines.clone();
        let result = tokio::task::spawn_blocking(move || crate::pi::sync(&file, &written))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if matches!(
            result,
            Ok(crate::pi::Outcome::Written | crate::pi::Outcome::Unchanged)
        ) {
            *on_card = Some(lines);
        }
        match result {
            Ok(crate::pi::Outcome::Written) => self.note(format!(
                "Raspberry Pi settings: {count} machine.pi.configTxt line(s) written to {} on the boot partition; the firmware reads them at the next boot",
                bramble_bootfs::EXTRA_FILE
            )),
            Ok(crate::pi::Outcome::Unchanged | crate::pi::Outcome::NoBootDisk) => {}
            Err(e) => {
                let message = format!(
                    "Raspberry Pi settings (machine.pi.configTxt) could not be written to {} on the boot partition: {e}; the configuration is stored, the firmware keeps its previous settings",
                    bramble_bootfs::EXTRA_FILE
                );
                tracing::error!("{message}");
                self.note(message);
            }
        }
    }

    /// Changes whenever the listener must be rebuilt.
    pub fn reload_requests(&self) -> watch::Receiver<u64> {
        self.reload.subscribe()
    }

    /// The configuration in force.
    pub async fn current(&self) -> Option<Stored> {
        self.current.lock().await.clone()
    }

    /// Asks PID 1 to reboot or power off once the current answer is on its
    /// way: the supervisor stops this server among the rest, so the request
    /// goes out a moment after the reply. (Callers check first that the
    /// supervisor can be reached, so the client hears about that failure.)
    fn schedule_shutdown(self: &Arc<Self>, kind: Shutdown, what: &'static str) {
        let node = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(REPLY_HEAD_START).await;
            tracing::warn!("{what}");
            if let Err(e) = node.control(what, move |c| c.shutdown(kind)).await {
                tracing::error!(error = %e.message(), "{what} failed");
            }
        });
    }

    /// Records a node-wide event with PID 1's supervisor, where every event
    /// is kept (best effort: a node without a supervisor logs it only).
    fn note(self: &Arc<Self>, message: String) {
        tracing::info!("{message}");
        let node = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = node.control("event", move |c| c.note(&message)).await {
                tracing::debug!(error = %e.message(), "event not recorded");
            }
        });
    }

    fn request_reload(&self) {
        self.reload.send_modify(|n| *n += 1);
    }

    async fn control<T, F>(&self, what: &'static str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&mut Client) -> Result<T, bramble_supervisor::Error> + Send + 'static,
    {
        let path = self.control_socket.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut client = Client::connect(&path, CONTROL_TIMEOUT)?;
            f(&mut client)
        })
        .await
        .map_err(|e| Status::internal(format!("{what}: {e}")))?;
        result.map_err(|e| control_status(what, e))
    }
}

fn control_status(what: &str, e: bramble_supervisor::Error) -> Status {
    use bramble_supervisor::Error as E;
    match e {
        E::UnknownService(name) => Status::not_found(format!("no service named \"{name}\"")),
        E::Remote(msg) if msg.starts_with("unknown service") => Status::not_found(msg),
        E::Remote(msg) => Status::failed_precondition(format!("{what}: {msg}")),
        E::ShuttingDown => Status::unavailable("the node is shutting down"),
        E::Control { .. } => {
            Status::unavailable(format!("{what}: the supervisor cannot be reached ({e})"))
        }
        other => Status::internal(format!("{what}: {other}")),
    }
}

/// Answers the machine API.
#[derive(Debug, Clone)]
pub struct MachineApi {
    node: Arc<Node>,
    runtime: RuntimeClient,
}

impl MachineApi {
    /// Serves from `node`; container calls go to `runtime`.
    pub fn new(node: Arc<Node>, runtime: RuntimeClient) -> Self {
        Self { node, runtime }
    }
}

fn caller<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .copied()
        .unwrap_or(Caller::Anonymous)
}

/// What an apply will do, decided before anything is written.
#[derive(Debug)]
struct Plan {
    mode: ApplyMode,
    diff: String,
    restarts: Vec<String>,
    /// Services that re-read the configuration while running.
    reloads: Vec<String>,
    reboot: bool,
    reload_self: bool,
}

fn plan(
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
            FIRST_CONFIG_RELOADS
                .iter()
                .map(|s| s.name().to_owned())
                .collect(),
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
fn taking_up(restarts: &[String], reloads: &[String]) -> String {
    let mut s = String::new();
    if !restarts.is_empty() {
        s.push_str(&format!("; restarting {}", restarts.join(", ")));
    }
    if !reloads.is_empty() {
        s.push_str(&format!("; reloading {}", reloads.join(", ")));
    }
    s
}

fn mode_name(mode: ApplyMode) -> &'static str {
    match mode {
        ApplyMode::Auto => "auto",
        ApplyMode::NoReboot => "no-reboot",
        ApplyMode::Reboot => "reboot",
        ApplyMode::Staged => "staged",
        ApplyMode::Try => "try",
    }
}

fn summary(plan: &Plan, dry_run: bool, timeout: u32) -> String {
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

impl MachineApi {
    async fn apply(
        &self,
        req: ApplyConfigurationRequest,
    ) -> Result<ApplyConfigurationResponse, Status> {
        let raw = String::from_utf8(req.data.clone())
            .map_err(|_| Status::invalid_argument("data: the configuration is not UTF-8 text"))?;
        let new = MachineConfig::parse(&raw)
            .map_err(|e| Status::invalid_argument(format!("the configuration is invalid:\n{e}")))?;
        let unknown = crate::network::unknown_links(&new, &self.node.system.class_net);
        if !unknown.is_empty() {
            return Err(Status::invalid_argument(format!(
                "the configuration is invalid:\n{}",
                unknown.join("\n")
            )));
        }
        let node = &self.node;
        let mut current = node.current.lock().await;
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
        let previous = current.as_ref().map(|s| s.raw.clone());
        persist(node.store.store(&raw, plan.mode == ApplyMode::Try))?;
        let pi_lines = crate::pi::lines(Some(&new));
        *current = Some(Stored { raw, config: new });
        // Before the reboot below is asked for, still holding `current`.
        node.sync_pi(pi_lines).await;
        drop(current);
        let generation = node
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
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
            );
        }
        Ok(response)
    }

    /// Makes the running services take up a stored configuration.
    async fn take_up(&self, restarts: Vec<String>, reloads: Vec<String>, reload_self: bool) {
        for service in &reloads {
            let name = service.clone();
            match self.node.control("reload", move |c| c.reload(&name)).await {
                Ok(()) => tracing::info!(%service, "asked to re-read the configuration"),
                // Not every service exists on every node (or yet).
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => tracing::warn!(%service, error = %e.message(), "not reloaded"),
            }
        }
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

    fn schedule_revert(&self, generation: u64, previous: String, after: Duration) {
        let api = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let node = &api.node;
            if node.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
                return;
            }
            node.note("try timeout passed: returning to the previous configuration".into());
            let req = ApplyConfigurationRequest {
                data: previous.into_bytes(),
                mode: ApplyMode::Auto as i32,
                dry_run: false,
                try_timeout_seconds: 0,
            };
            if let Err(e) = api.apply(req).await {
                tracing::error!(error = %e.message(), "reverting the tried configuration failed");
            }
        });
    }
}

#[tonic::async_trait]
impl MachineService for MachineApi {
    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        tracing::debug!(peer = ?request.remote_addr(), "Version");
        let mut v = self.node.info.version();
        v.maintenance = self.node.current.lock().await.is_none();
        Ok(Response::new(v))
    }

    async fn apply_configuration(
        &self,
        request: Request<ApplyConfigurationRequest>,
    ) -> Result<Response<ApplyConfigurationResponse>, Status> {
        self.apply(request.into_inner()).await.map(Response::new)
    }

    async fn get_config(
        &self,
        request: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        let admin = caller(&request).is_admin();
        let current = self.node.current.lock().await;
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

    async fn service_list(
        &self,
        _request: Request<ServiceListRequest>,
    ) -> Result<Response<ServiceListResponse>, Status> {
        let list = self.node.control("list services", |c| c.list()).await?;
        let services = list
            .into_iter()
            .map(|s| Service {
                name: s.name,
                description: s.description,
                state: s.state,
                pid: s.pid.unwrap_or(0),
                restarts: s.restarts,
                ready: s.ready,
                last_error: s.last_error.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(ServiceListResponse { services }))
    }

    async fn service_start(
        &self,
        request: Request<ServiceRequest>,
    ) -> Result<Response<ServiceResponse>, Status> {
        let name = service_name(request)?;
        self.node.control("start", move |c| c.start(&name)).await?;
        Ok(Response::new(ServiceResponse {}))
    }

    async fn service_stop(
        &self,
        request: Request<ServiceRequest>,
    ) -> Result<Response<ServiceResponse>, Status> {
        let name = service_name(request)?;
        if name == SELF_SERVICE {
            return Err(Status::failed_precondition(
                "stopping apid would cut off the API; restart it instead",
            ));
        }
        self.node.control("stop", move |c| c.stop(&name)).await?;
        Ok(Response::new(ServiceResponse {}))
    }

    async fn service_restart(
        &self,
        request: Request<ServiceRequest>,
    ) -> Result<Response<ServiceResponse>, Status> {
        let name = service_name(request)?;
        self.node
            .control("restart", move |c| c.restart(&name))
            .await?;
        Ok(Response::new(ServiceResponse {}))
    }

    type LogsStream = ResponseStream<LogLine>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = request.into_inner();
        if req.service.is_empty() {
            return Err(Status::invalid_argument("service: name a service"));
        }
        let tail = match req.tail {
            0 => bramble_supervisor::protocol::DEFAULT_LOG_TAIL,
            n => (n as usize).min(bramble_supervisor::protocol::MAX_LOG_TAIL),
        };
        let service = req.service;
        let first = {
            let service = service.clone();
            self.node
                .control("logs", move |c| c.logs(&service, tail))
                .await?
        };
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let node = Arc::clone(&self.node);
        tokio::spawn(async move {
            let mut last = first.last().map(|l| (l.time_unix_ms, l.text.clone()));
            for l in first {
                if tx.send(Ok(log_line(l))).await.is_err() {
                    return;
                }
            }
            while req.follow && !tx.is_closed() {
                tokio::time::sleep(FOLLOW_POLL).await;
                let name = service.clone();
                let lines = match node
                    .control("logs", move |c| c.logs(&name, FOLLOW_WINDOW))
                    .await
                {
                    Ok(lines) => lines,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                // Lines after the last one sent (all of them if it scrolled
                // out of the window).
                let start = last
                    .as_ref()
                    .and_then(|(t, text)| {
                        lines
                            .iter()
                            .rposition(|l| l.time_unix_ms == *t && &l.text == text)
                    })
                    .map_or(0, |i| i + 1);
                for l in lines.into_iter().skip(start) {
                    last = Some((l.time_unix_ms, l.text.clone()));
                    if tx.send(Ok(log_line(l))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type DmesgStream = ResponseStream<KernelLogLine>;

    async fn dmesg(
        &self,
        request: Request<DmesgRequest>,
    ) -> Result<Response<Self::DmesgStream>, Status> {
        let req = request.into_inner();
        let (first, mut reader) = self
            .node
            .system
            .dmesg(req.tail as usize)
            .map_err(|e| Status::unavailable(format!("cannot read the kernel log: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            for l in first {
                if tx.send(Ok(l)).await.is_err() {
                    return;
                }
            }
            while req.follow && !tx.is_closed() {
                tokio::time::sleep(FOLLOW_POLL).await;
                let lines = match reader.read_available() {
                    Ok(lines) => lines,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::unavailable(format!("kernel log: {e}"))))
                            .await;
                        return;
                    }
                };
                for l in lines {
                    if tx.send(Ok(l)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type EventsStream = ResponseStream<Event>;

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let req = request.into_inner();
        let since = req.since;
        let (first, mut seq) = self
            .node
            .control("events", move |c| c.events(since))
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let node = Arc::clone(&self.node);
        tokio::spawn(async move {
            let mut batch = first;
            loop {
                for e in batch {
                    let event = Event {
                        seq: e.seq,
                        time_unix_ms: e.time_unix_ms,
                        service: e.service.unwrap_or_default(),
                        from: e.from.unwrap_or_default(),
                        to: e.to.unwrap_or_default(),
                        message: e.message,
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if !req.follow || tx.is_closed() {
                    return;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
                let after = seq;
                match node.control("events", move |c| c.events(after)).await {
                    Ok((events, last)) => {
                        batch = events;
                        seq = last;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn reset(
        &self,
        request: Request<ResetRequest>,
    ) -> Result<Response<ResetResponse>, Status> {
        let req = request.into_inner();
        // Nothing is wiped unless the reboot that follows can be asked for.
        self.node.control("reset", |_| Ok(())).await?;
        let mut current = self.node.current.lock().await;
        if req.wipe_data {
            bramble_atomic::write(&self.node.wipe_data_marker, b"", 0o600).map_err(|e| {
                Status::internal(format!(
                    "cannot mark /var for wiping ({}): {e}",
                    self.node.wipe_data_marker.display()
                ))
            })?;
        }
        self.node
            .store
            .wipe()
            .map_err(|e| Status::internal(format!("cannot wipe the configuration: {e}")))?;
        *current = None;
        self.node.sync_pi(Vec::new()).await;
        drop(current);
        self.node.note(format!(
            "reset: configuration wiped{}; rebooting into maintenance mode",
            if req.wipe_data {
                ", /var is emptied at the next boot"
            } else {
                ""
            }
        ));
        self.node
            .schedule_shutdown(Shutdown::Reboot, "rebooting after the reset");
        Ok(Response::new(ResetResponse {}))
    }

    async fn memory(
        &self,
        _request: Request<MemoryRequest>,
    ) -> Result<Response<MemoryResponse>, Status> {
        self.node
            .system
            .memory()
            .map(Response::new)
            .map_err(|e| Status::unavailable(format!("/proc/meminfo: {e}")))
    }

    async fn load_avg(
        &self,
        _request: Request<LoadAvgRequest>,
    ) -> Result<Response<LoadAvgResponse>, Status> {
        self.node
            .system
            .load_avg()
            .map(Response::new)
            .map_err(|e| Status::unavailable(format!("/proc/loadavg: {e}")))
    }

    async fn processes(
        &self,
        _request: Request<ProcessesRequest>,
    ) -> Result<Response<ProcessesResponse>, Status> {
        let processes = self
            .node
            .system
            .processes()
            .map_err(|e| Status::unavailable(format!("/proc: {e}")))?;
        Ok(Response::new(ProcessesResponse { processes }))
    }

    async fn mounts(
        &self,
        _request: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let mounts = self
            .node
            .system
            .mounts()
            .map_err(|e| Status::unavailable(format!("/proc/self/mountinfo: {e}")))?;
        Ok(Response::new(MountsResponse { mounts }))
    }

    async fn hostname(
        &self,
        _request: Request<HostnameRequest>,
    ) -> Result<Response<HostnameResponse>, Status> {
        Ok(Response::new(HostnameResponse {
            hostname: Uname::get().nodename,
        }))
    }

    async fn links(
        &self,
        _request: Request<LinksRequest>,
    ) -> Result<Response<LinksResponse>, Status> {
        // A copy, so an apply is not held up while the kernel answers.
        let config = self
            .node
            .current
            .lock()
            .await
            .as_ref()
            .map(|s| s.config.clone());
        crate::network::links(config.as_ref(), &self.node.system.run)
            .await
            .map(Response::new)
    }

    async fn addresses(
        &self,
        _request: Request<AddressesRequest>,
    ) -> Result<Response<AddressesResponse>, Status> {
        crate::network::addresses().await.map(Response::new)
    }

    async fn routes(
        &self,
        _request: Request<RoutesRequest>,
    ) -> Result<Response<RoutesResponse>, Status> {
        crate::network::routes().await.map(Response::new)
    }

    async fn resolvers(
        &self,
        _request: Request<ResolversRequest>,
    ) -> Result<Response<ResolversResponse>, Status> {
        let current = self.node.current.lock().await;
        let config = current.as_ref().map(|s| &s.config);
        crate::network::resolvers(config, &self.node.system.resolv_conf).map(Response::new)
    }

    async fn time(&self, _request: Request<TimeRequest>) -> Result<Response<TimeResponse>, Status> {
        Ok(Response::new(crate::network::time(&self.node.system.run)))
    }

    async fn reboot(
        &self,
        _request: Request<RebootRequest>,
    ) -> Result<Response<RebootResponse>, Status> {
        self.node.control("reboot", |_| Ok(())).await?;
        self.node.schedule_shutdown(Shutdown::Reboot, "rebooting");
        Ok(Response::new(RebootResponse {}))
    }

    async fn shutdown(
        &self,
        _request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        self.node.control("shutdown", |_| Ok(())).await?;
        self.node
            .schedule_shutdown(Shutdown::PowerOff, "powering off");
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn images(
        &self,
        request: Request<rt::ImagesRequest>,
    ) -> Result<Response<rt::ImagesResponse>, Status> {
        self.runtime
            .connect()
            .await?
            .images(request.into_inner())
            .await
    }

    async fn image_pull(
        &self,
        request: Request<rt::ImagePullRequest>,
    ) -> Result<Response<rt::ImagePullResponse>, Status> {
        self.runtime
            .connect()
            .await?
            .image_pull(request.into_inner())
            .await
    }

    async fn image_import(
        &self,
        request: Request<tonic::Streaming<rt::ImageImportChunk>>,
    ) -> Result<Response<rt::ImageImportResponse>, Status> {
        use tokio_stream::StreamExt as _;
        // A client that breaks off ends the forwarded stream early: the
        // runtime then sees a truncated archive and stores nothing.
        let chunks = request.into_inner().map_while(Result::ok);
        self.runtime.connect().await?.image_import(chunks).await
    }

    async fn image_remove(
        &self,
        request: Request<rt::ImageRemoveRequest>,
    ) -> Result<Response<rt::ImageRemoveResponse>, Status> {
        self.runtime
            .connect()
            .await?
            .image_remove(request.into_inner())
            .await
    }

    async fn containers(
        &self,
        request: Request<rt::ContainersRequest>,
    ) -> Result<Response<rt::ContainersResponse>, Status> {
        self.runtime
            .connect()
            .await?
            .containers(request.into_inner())
            .await
    }

    type ContainerLogsStream = ResponseStream<rt::ContainerLogLine>;

    async fn container_logs(
        &self,
        request: Request<rt::ContainerLogsRequest>,
    ) -> Result<Response<Self::ContainerLogsStream>, Status> {
        let stream = self
            .runtime
            .connect()
            .await?
            .container_logs(request.into_inner())
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn container_stats(
        &self,
        request: Request<rt::ContainerStatsRequest>,
    ) -> Result<Response<rt::ContainerStatsResponse>, Status> {
        self.runtime
            .connect()
            .await?
            .container_stats(request.into_inner())
            .await
    }

    async fn container_restart(
        &self,
        request: Request<rt::ContainerRestartRequest>,
    ) -> Result<Response<rt::ContainerRestartResponse>, Status> {
        self.runtime
            .connect()
            .await?
            .container_restart(request.into_inner())
            .await
    }
}

/// Lines fetched per poll of a followed log.
const FOLLOW_WINDOW: usize = 500;

fn log_line(l: bramble_supervisor::LogLine) -> LogLine {
    LogLine {
        time_unix_ms: l.time_unix_ms,
        text: l.text,
    }
}

fn service_name(request: Request<ServiceRequest>) -> Result<String, Status> {
    let name = request.into_inner().name;
    if name.is_empty() {
        return Err(Status::invalid_argument("name: name a service"));
    }
    Ok(name)
}
