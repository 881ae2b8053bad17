//! The node and its services: Version, ServiceList/Start/Stop/Restart
//! (through PID 1's supervisor), the /proc readers (Memory, LoadAvg,
//! Processes, Mounts), Reboot and Shutdown.

use bramble_api::machine::v1::{
    LoadAvgRequest, LoadAvgResponse, MemoryRequest, MemoryResponse, MountsRequest, MountsResponse,
    ProcessesRequest, ProcessesResponse, RebootRequest, RebootResponse, Service,
    ServiceListRequest, ServiceListResponse, ServiceRequest, ServiceResponse, ShutdownRequest,
    ShutdownResponse, VersionRequest, VersionResponse,
};
use bramble_supervisor::Shutdown;
use tonic::{Request, Response, Status};

use super::{MachineApi, SELF_SERVICE};

#[tracing::instrument(skip_all)]
pub(super) async fn version(
    api: &MachineApi,
    request: Request<VersionRequest>,
) -> Result<Response<VersionResponse>, Status> {
    tracing::debug!(peer = ?request.remote_addr(), "Version");
    let mut v = api.node.info.version();
    let current = api.node.current.lock().await;
    v.maintenance = current.is_none();
    v.machine_type = current
        .as_ref()
        .map(|s| s.config.machine.machine_type.as_str().to_owned())
        .unwrap_or_default();
    drop(current);
    Ok(Response::new(v))
}

#[tracing::instrument(skip_all)]
pub(super) async fn service_list(
    api: &MachineApi,
    _request: Request<ServiceListRequest>,
) -> Result<Response<ServiceListResponse>, Status> {
    let list = api.node.control("list services", |c| c.list()).await?;
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
            last_exit: s.last_exit.map(|e| e.to_string()).unwrap_or_default(),
        })
        .collect();
    Ok(Response::new(ServiceListResponse { services }))
}

#[tracing::instrument(skip_all, fields(service = %request.get_ref().name))]
pub(super) async fn service_start(
    api: &MachineApi,
    request: Request<ServiceRequest>,
) -> Result<Response<ServiceResponse>, Status> {
    let name = service_name(request)?;
    api.node.control("start", move |c| c.start(&name)).await?;
    Ok(Response::new(ServiceResponse {}))
}

#[tracing::instrument(skip_all, fields(service = %request.get_ref().name))]
pub(super) async fn service_stop(
    api: &MachineApi,
    request: Request<ServiceRequest>,
) -> Result<Response<ServiceResponse>, Status> {
    let name = service_name(request)?;
    if name == SELF_SERVICE {
        return Err(Status::failed_precondition(
            "stopping apid would cut off the API; restart it instead",
        ));
    }
    api.node.control("stop", move |c| c.stop(&name)).await?;
    Ok(Response::new(ServiceResponse {}))
}

#[tracing::instrument(skip_all, fields(service = %request.get_ref().name))]
pub(super) async fn service_restart(
    api: &MachineApi,
    request: Request<ServiceRequest>,
) -> Result<Response<ServiceResponse>, Status> {
    let name = service_name(request)?;
    api.node
        .control("restart", move |c| c.restart(&name))
        .await?;
    Ok(Response::new(ServiceResponse {}))
}

#[tracing::instrument(skip_all)]
pub(super) async fn memory(
    api: &MachineApi,
    _request: Request<MemoryRequest>,
) -> Result<Response<MemoryResponse>, Status> {
    api.node
        .system
        .memory()
        .map(Response::new)
        .map_err(|e| Status::unavailable(format!("/proc/meminfo: {e}")))
}

#[tracing::instrument(skip_all)]
pub(super) async fn load_avg(
    api: &MachineApi,
    _request: Request<LoadAvgRequest>,
) -> Result<Response<LoadAvgResponse>, Status> {
    api.node
        .system
        .load_avg()
        .map(Response::new)
        .map_err(|e| Status::unavailable(format!("/proc/loadavg: {e}")))
}

#[tracing::instrument(skip_all)]
pub(super) async fn processes(
    api: &MachineApi,
    _request: Request<ProcessesRequest>,
) -> Result<Response<ProcessesResponse>, Status> {
    let processes = api
        .node
        .system
        .processes()
        .map_err(|e| Status::unavailable(format!("/proc: {e}")))?;
    Ok(Response::new(ProcessesResponse { processes }))
}

#[tracing::instrument(skip_all)]
pub(super) async fn mounts(
    api: &MachineApi,
    _request: Request<MountsRequest>,
) -> Result<Response<MountsResponse>, Status> {
    let mounts = api
        .node
        .system
        .mounts()
        .map_err(|e| Status::unavailable(format!("/proc/api/mountinfo: {e}")))?;
    Ok(Response::new(MountsResponse { mounts }))
}

#[tracing::instrument(skip_all)]
pub(super) async fn reboot(
    api: &MachineApi,
    _request: Request<RebootRequest>,
) -> Result<Response<RebootResponse>, Status> {
    api.node.control("reboot", |_| Ok(())).await?;
    api.node.schedule_shutdown(Shutdown::Reboot, "rebooting");
    Ok(Response::new(RebootResponse {}))
}

#[tracing::instrument(skip_all)]
pub(super) async fn shutdown(
    api: &MachineApi,
    _request: Request<ShutdownRequest>,
) -> Result<Response<ShutdownResponse>, Status> {
    api.node.control("shutdown", |_| Ok(())).await?;
    api.node
        .schedule_shutdown(Shutdown::PowerOff, "powering off");
    Ok(Response::new(ShutdownResponse {}))
}

fn service_name(request: Request<ServiceRequest>) -> Result<String, Status> {
    let name = request.into_inner().name;
    if name.is_empty() {
        return Err(Status::invalid_argument("name: name a service"));
    }
    Ok(name)
}
