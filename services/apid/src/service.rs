//! The `bramble.machine.v1.MachineService` implementation.
//!
//! Who may call what is decided before a call gets here (`auth.rs`); the
//! handlers only read the [`Caller`] where the answer depends on it
//! (secrets in `GetConfig`, an anonymous `ApplyConfiguration`). Service control, logs, reboot and shutdown go to
//! PID 1's supervisor through its control socket.
//!
//! This file holds the state every call shares ([`Node`]), the server type
//! ([`MachineApi`]) and the RPC table, each entry handing its call to the
//! module of its group, where the handler opens its tracing span:
//!
//! * `config`: ApplyConfiguration (carrying out a [`plan`]; an anonymous
//!   caller only gives a never-configured node its first configuration, one
//!   at a time), GetConfig, Reset;
//! * `plan`: what an apply will do, decided before anything is written;
//! * `system`: Version, the Service* calls, Memory, LoadAvg, Processes,
//!   Mounts, Reboot, Shutdown;
//! * `network`: the network readers (Hostname, Links, Addresses, Routes,
//!   Resolvers, Time);
//! * `logs`: the streams that can be followed: Logs, Dmesg, Events;
//! * `runtime`: the container calls, forwarded to runtimed;
//! * `join`: NodeCertificate, a worker's server certificate from this
//!   node's CA, for the join token;
//! * `etcd`: Bootstrap, BootstrapRecover and the Etcd* calls, to the
//!   node's own etcd member on control-plane nodes.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bramble_api::machine::v1::machine_service_server::MachineService;
use bramble_api::machine::v1::{
    AddressesRequest, AddressesResponse, ApplyConfigurationRequest, ApplyConfigurationResponse,
    BootstrapRecoverChunk, BootstrapRequest, BootstrapResponse, DmesgRequest,
    EtcdAlarmDisarmRequest, EtcdAlarmDisarmResponse, EtcdAlarmListRequest, EtcdAlarmListResponse,
    EtcdDefragmentRequest, EtcdDefragmentResponse, EtcdLeaveRequest, EtcdLeaveResponse,
    EtcdMembersRequest, EtcdMembersResponse, EtcdRemoveMemberRequest, EtcdRemoveMemberResponse,
    EtcdSnapshotChunk, EtcdSnapshotRequest, EtcdStatusRequest, EtcdStatusResponse, Event,
    EventsRequest, GetConfigRequest, GetConfigResponse, HostnameRequest, HostnameResponse,
    KernelLogLine, LinksRequest, LinksResponse, LoadAvgRequest, LoadAvgResponse, LogLine,
    LogsRequest, MemoryRequest, MemoryResponse, MountsRequest, MountsResponse,
    NodeCertificateRequest, NodeCertificateResponse, ProcessesRequest, ProcessesResponse,
    RebootRequest, RebootResponse, ResetRequest, ResetResponse, ResolversRequest,
    ResolversResponse, RoutesRequest, RoutesResponse, ServiceListRequest, ServiceListResponse,
    ServiceRequest, ServiceResponse, ShutdownRequest, ShutdownResponse, TimeRequest, TimeResponse,
    VersionRequest, VersionResponse,
};
use bramble_api::runtime::v1 as rt;
use bramble_supervisor::Shutdown;
use bramble_supervisor::control::Client;
use tokio::sync::{Mutex, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::info::NodeInfoSource;
use crate::runtime::RuntimeClient;
use crate::store::{ConfigStore, Stored};
use crate::system::SystemSource;

mod config;
mod etcd;
mod join;
mod logs;
mod network;
mod plan;
mod runtime;
mod system;

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
/// The API server's own service name: its changes are applied by the server
/// itself (it restarts its listener), not by the supervisor.
const SELF_SERVICE: &str = "apid";

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
    /// Set while an anonymous (maintenance-mode) apply runs: a node takes
    /// its first configuration from one caller, and a second anonymous
    /// apply meanwhile is refused (`config::FirstApply`).
    first_apply: std::sync::atomic::AtomicBool,
    /// Names the boot disk whose FAT gets `machine.pi.configTxt`
    /// (`crate::pi`); `None` off a node.
    boot_device_file: Option<PathBuf>,
    /// One writer of the boot partition at a time; holds the lines the card
    /// is known to have (none until the first write or check).
    pi_lock: Mutex<Option<Vec<String>>>,
    /// The record of the configured node the card is known to hold
    /// (`None`: not known yet), so that an apply that keeps the CA does not
    /// open the boot partition.
    ca_on_card: std::sync::Mutex<Option<Option<String>>>,
    /// Where etcd's state is (its data, the bootstrap request).
    etcd: etcd::EtcdSite,
}

impl Node {
    /// Shared state over `store`, with `current` as the configuration in
    /// force and etcd's state under `etcd_root` (`/` on a node).
    pub fn new(
        info: NodeInfoSource,
        store: ConfigStore,
        control_socket: PathBuf,
        wipe_data_marker: PathBuf,
        boot_device_file: Option<PathBuf>,
        current: Option<Stored>,
        etcd_root: &std::path::Path,
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
            first_apply: std::sync::atomic::AtomicBool::new(false),
            boot_device_file,
            pi_lock: Mutex::new(None),
            ca_on_card: std::sync::Mutex::new(None),
            etcd: etcd::EtcdSite::under(etcd_root),
        })
    }

    /// [`Node::sync_pi`] and [`Node::sync_configured`] for the
    /// configuration in force now (at start).
    pub async fn sync_pi_in_force(self: &Arc<Self>) {
        let current = self.current.lock().await;
        let lines = crate::pi::lines(current.as_ref().map(|s| &s.config));
        self.sync_pi(lines).await;
        if let Some(stored) = current.as_ref() {
            // A node that lost its configuration keeps its record (reset
            // removes it): only a configuration in force writes one here.
            self.sync_configured(Some(stored.config.machine.ca.crt.clone()))
                .await;
        }
        drop(current);
    }

    /// Records on the boot partition that the node is configured, with its
    /// cluster CA (`ca_pem`), or that it is not (`None`, at reset): outside
    /// `STATE`, so that a node whose `STATE` is lost does not fall back to
    /// the open maintenance API (see [`crate::server`]). A failure is
    /// reported; it never fails the call.
    pub async fn sync_configured(self: &Arc<Self>, ca_pem: Option<String>) {
        let Some(file) = self.boot_device_file.clone() else {
            return;
        };
        // The FAT has one writer at a time.
        let _writing = self.pi_lock.lock().await;
        let on_card = || {
            self.ca_on_card
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if on_card().as_ref() == Some(&ca_pem) {
            return;
        }
        let wanted = ca_pem.clone();
        let result = tokio::task::spawn_blocking(move || {
            crate::pi::sync_configured(&file, wanted.as_deref())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if result.is_ok() {
            *on_card() = Some(ca_pem);
        }
        if let Err(e) = result {
            let message = format!(
                "the boot partition's record of the node's configuration ({}) could not be updated: {e}",
                bramble_bootfs::CA_FILE
            );
            tracing::error!("{message}");
            self.note(message);
        }
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

    /// Asks `services` to re-read the configuration (SIGHUP through the
    /// supervisor). A service this node does not have is skipped.
    async fn reload_services(&self, services: &[String]) {
        for service in services {
            let name = service.clone();
            match self.control("reload", move |c| c.reload(&name)).await {
                Ok(()) => tracing::info!(%service, "asked to re-read the configuration"),
                // Not every service exists on every node (or yet).
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => tracing::warn!(%service, error = %e.message(), "not reloaded"),
            }
        }
    }

    /// After the configuration in force changed at apid's start (the first
    /// boot's adoption of the boot partition's file, a staged promotion, a
    /// trial ended by a restart), the services PID 1 started beside apid
    /// may have read the previous one: they re-read it.
    pub async fn reload_for_config_in_force(&self) {
        self.reload_services(&plan::first_config_reloads()).await;
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

#[tonic::async_trait]
impl MachineService for MachineApi {
    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        system::version(self, request).await
    }

    async fn apply_configuration(
        &self,
        request: Request<ApplyConfigurationRequest>,
    ) -> Result<Response<ApplyConfigurationResponse>, Status> {
        config::apply_configuration(self, request).await
    }

    async fn get_config(
        &self,
        request: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        config::get_config(self, request).await
    }

    async fn service_list(
        &self,
        request: Request<ServiceListRequest>,
    ) -> Result<Response<ServiceListResponse>, Status> {
        system::service_list(self, request).await
    }

    async fn service_start(
        &self,
        request: Request<ServiceRequest>,
    ) -> Result<Response<ServiceResponse>, Status> {
        system::service_start(self, request).await
    }

    async fn service_stop(
        &self,
        request: Request<ServiceRequest>,
    ) -> Result<Response<ServiceResponse>, Status> {
        system::service_stop(self, request).await
    }

    async fn service_restart(
        &self,
        request: Request<ServiceRequest>,
    ) -> Result<Response<ServiceResponse>, Status> {
        system::service_restart(self, request).await
    }

    type LogsStream = ResponseStream<LogLine>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        logs::logs(self, request).await
    }

    type DmesgStream = ResponseStream<KernelLogLine>;

    async fn dmesg(
        &self,
        request: Request<DmesgRequest>,
    ) -> Result<Response<Self::DmesgStream>, Status> {
        logs::dmesg(self, request).await
    }

    type EventsStream = ResponseStream<Event>;

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        logs::events(self, request).await
    }

    async fn reset(
        &self,
        request: Request<ResetRequest>,
    ) -> Result<Response<ResetResponse>, Status> {
        config::reset(self, request).await
    }

    async fn memory(
        &self,
        request: Request<MemoryRequest>,
    ) -> Result<Response<MemoryResponse>, Status> {
        system::memory(self, request).await
    }

    async fn load_avg(
        &self,
        request: Request<LoadAvgRequest>,
    ) -> Result<Response<LoadAvgResponse>, Status> {
        system::load_avg(self, request).await
    }

    async fn processes(
        &self,
        request: Request<ProcessesRequest>,
    ) -> Result<Response<ProcessesResponse>, Status> {
        system::processes(self, request).await
    }

    async fn mounts(
        &self,
        request: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        system::mounts(self, request).await
    }

    async fn hostname(
        &self,
        request: Request<HostnameRequest>,
    ) -> Result<Response<HostnameResponse>, Status> {
        network::hostname(self, request).await
    }

    async fn links(
        &self,
        request: Request<LinksRequest>,
    ) -> Result<Response<LinksResponse>, Status> {
        network::links(self, request).await
    }

    async fn addresses(
        &self,
        request: Request<AddressesRequest>,
    ) -> Result<Response<AddressesResponse>, Status> {
        network::addresses(self, request).await
    }

    async fn routes(
        &self,
        request: Request<RoutesRequest>,
    ) -> Result<Response<RoutesResponse>, Status> {
        network::routes(self, request).await
    }

    async fn resolvers(
        &self,
        request: Request<ResolversRequest>,
    ) -> Result<Response<ResolversResponse>, Status> {
        network::resolvers(self, request).await
    }

    async fn time(&self, request: Request<TimeRequest>) -> Result<Response<TimeResponse>, Status> {
        network::time(self, request).await
    }

    async fn reboot(
        &self,
        request: Request<RebootRequest>,
    ) -> Result<Response<RebootResponse>, Status> {
        system::reboot(self, request).await
    }

    async fn shutdown(
        &self,
        request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        system::shutdown(self, request).await
    }

    async fn images(
        &self,
        request: Request<rt::ImagesRequest>,
    ) -> Result<Response<rt::ImagesResponse>, Status> {
        runtime::images(self, request).await
    }

    async fn image_pull(
        &self,
        request: Request<rt::ImagePullRequest>,
    ) -> Result<Response<rt::ImagePullResponse>, Status> {
        runtime::image_pull(self, request).await
    }

    async fn image_import(
        &self,
        request: Request<tonic::Streaming<rt::ImageImportChunk>>,
    ) -> Result<Response<rt::ImageImportResponse>, Status> {
        runtime::image_import(self, request).await
    }

    async fn image_remove(
        &self,
        request: Request<rt::ImageRemoveRequest>,
    ) -> Result<Response<rt::ImageRemoveResponse>, Status> {
        runtime::image_remove(self, request).await
    }

    async fn containers(
        &self,
        request: Request<rt::ContainersRequest>,
    ) -> Result<Response<rt::ContainersResponse>, Status> {
        runtime::containers(self, request).await
    }

    type ContainerLogsStream = ResponseStream<rt::ContainerLogLine>;

    async fn container_logs(
        &self,
        request: Request<rt::ContainerLogsRequest>,
    ) -> Result<Response<Self::ContainerLogsStream>, Status> {
        runtime::container_logs(self, request).await
    }

    async fn container_stats(
        &self,
        request: Request<rt::ContainerStatsRequest>,
    ) -> Result<Response<rt::ContainerStatsResponse>, Status> {
        runtime::container_stats(self, request).await
    }

    async fn container_restart(
        &self,
        request: Request<rt::ContainerRestartRequest>,
    ) -> Result<Response<rt::ContainerRestartResponse>, Status> {
        runtime::container_restart(self, request).await
    }

    async fn node_certificate(
        &self,
        request: Request<NodeCertificateRequest>,
    ) -> Result<Response<NodeCertificateResponse>, Status> {
        join::node_certificate(self, request).await
    }

    async fn bootstrap(
        &self,
        request: Request<BootstrapRequest>,
    ) -> Result<Response<BootstrapResponse>, Status> {
        etcd::bootstrap(self, request).await
    }

    async fn bootstrap_recover(
        &self,
        request: Request<tonic::Streaming<BootstrapRecoverChunk>>,
    ) -> Result<Response<BootstrapResponse>, Status> {
        etcd::bootstrap_recover(self, request).await
    }

    async fn etcd_members(
        &self,
        request: Request<EtcdMembersRequest>,
    ) -> Result<Response<EtcdMembersResponse>, Status> {
        etcd::etcd_members(self, request).await
    }

    async fn etcd_status(
        &self,
        request: Request<EtcdStatusRequest>,
    ) -> Result<Response<EtcdStatusResponse>, Status> {
        etcd::etcd_status(self, request).await
    }

    async fn etcd_leave(
        &self,
        request: Request<EtcdLeaveRequest>,
    ) -> Result<Response<EtcdLeaveResponse>, Status> {
        etcd::etcd_leave(self, request).await
    }

    async fn etcd_remove_member(
        &self,
        request: Request<EtcdRemoveMemberRequest>,
    ) -> Result<Response<EtcdRemoveMemberResponse>, Status> {
        etcd::etcd_remove_member(self, request).await
    }

    type EtcdSnapshotStream = ResponseStream<EtcdSnapshotChunk>;

    async fn etcd_snapshot(
        &self,
        request: Request<EtcdSnapshotRequest>,
    ) -> Result<Response<Self::EtcdSnapshotStream>, Status> {
        etcd::etcd_snapshot(self, request).await
    }

    async fn etcd_defragment(
        &self,
        request: Request<EtcdDefragmentRequest>,
    ) -> Result<Response<EtcdDefragmentResponse>, Status> {
        etcd::etcd_defragment(self, request).await
    }

    async fn etcd_alarm_list(
        &self,
        request: Request<EtcdAlarmListRequest>,
    ) -> Result<Response<EtcdAlarmListResponse>, Status> {
        etcd::etcd_alarm_list(self, request).await
    }

    async fn etcd_alarm_disarm(
        &self,
        request: Request<EtcdAlarmDisarmRequest>,
    ) -> Result<Response<EtcdAlarmDisarmResponse>, Status> {
        etcd::etcd_alarm_disarm(self, request).await
    }
}
