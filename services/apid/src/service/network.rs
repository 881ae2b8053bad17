//! The network readers: Hostname, Links (with the configured state),
//! Addresses, Routes, Resolvers and Time (timed's status).

use bramble_api::machine::v1::{
    AddressesRequest, AddressesResponse, HostnameRequest, HostnameResponse, LinksRequest,
    LinksResponse, ResolversRequest, ResolversResponse, RoutesRequest, RoutesResponse, TimeRequest,
    TimeResponse,
};
use tonic::{Request, Response, Status};

use super::MachineApi;
use crate::info::Uname;

#[tracing::instrument(skip_all)]
pub(super) async fn hostname(
    _api: &MachineApi,
    _request: Request<HostnameRequest>,
) -> Result<Response<HostnameResponse>, Status> {
    Ok(Response::new(HostnameResponse {
        hostname: Uname::get().nodename,
    }))
}

#[tracing::instrument(skip_all)]
pub(super) async fn links(
    api: &MachineApi,
    _request: Request<LinksRequest>,
) -> Result<Response<LinksResponse>, Status> {
    // A copy, so an apply is not held up while the kernel answers.
    let config = api
        .node
        .current
        .lock()
        .await
        .as_ref()
        .map(|s| s.config.clone());
    crate::network::links(config.as_ref(), &api.node.system.run)
        .await
        .map(Response::new)
}

#[tracing::instrument(skip_all)]
pub(super) async fn addresses(
    _api: &MachineApi,
    _request: Request<AddressesRequest>,
) -> Result<Response<AddressesResponse>, Status> {
    crate::network::addresses().await.map(Response::new)
}

#[tracing::instrument(skip_all)]
pub(super) async fn routes(
    _api: &MachineApi,
    _request: Request<RoutesRequest>,
) -> Result<Response<RoutesResponse>, Status> {
    crate::network::routes().await.map(Response::new)
}

#[tracing::instrument(skip_all)]
pub(super) async fn resolvers(
    api: &MachineApi,
    _request: Request<ResolversRequest>,
) -> Result<Response<ResolversResponse>, Status> {
    let current = api.node.current.lock().await;
    let config = current.as_ref().map(|s| &s.config);
    crate::network::resolvers(config, &api.node.system.resolv_conf).map(Response::new)
}

#[tracing::instrument(skip_all)]
pub(super) async fn time(
    api: &MachineApi,
    _request: Request<TimeRequest>,
) -> Result<Response<TimeResponse>, Status> {
    Ok(Response::new(crate::network::time(&api.node.system.run)))
}
