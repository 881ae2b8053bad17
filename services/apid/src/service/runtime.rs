//! The container calls: Images, ImagePull, ImageImport, ImageRemove,
//! Containers, ContainerLogs, ContainerStats and ContainerRestart, each
//! forwarded to runtimed as it is.

use bramble_api::runtime::v1 as rt;
use tonic::{Request, Response, Status};

use super::{MachineApi, ResponseStream};

#[tracing::instrument(skip_all)]
pub(super) async fn images(
    api: &MachineApi,
    request: Request<rt::ImagesRequest>,
) -> Result<Response<rt::ImagesResponse>, Status> {
    api.runtime
        .connect()
        .await?
        .images(request.into_inner())
        .await
}

#[tracing::instrument(skip_all)]
pub(super) async fn image_pull(
    api: &MachineApi,
    request: Request<rt::ImagePullRequest>,
) -> Result<Response<rt::ImagePullResponse>, Status> {
    api.runtime
        .connect()
        .await?
        .image_pull(request.into_inner())
        .await
}

#[tracing::instrument(skip_all)]
pub(super) async fn image_import(
    api: &MachineApi,
    request: Request<tonic::Streaming<rt::ImageImportChunk>>,
) -> Result<Response<rt::ImageImportResponse>, Status> {
    use tokio_stream::StreamExt as _;
    // A client that breaks off ends the forwarded stream early: the
    // runtime then sees a truncated archive and stores nothing.
    let chunks = request.into_inner().map_while(Result::ok);
    api.runtime.connect().await?.image_import(chunks).await
}

#[tracing::instrument(skip_all)]
pub(super) async fn image_remove(
    api: &MachineApi,
    request: Request<rt::ImageRemoveRequest>,
) -> Result<Response<rt::ImageRemoveResponse>, Status> {
    api.runtime
        .connect()
        .await?
        .image_remove(request.into_inner())
        .await
}

#[tracing::instrument(skip_all)]
pub(super) async fn containers(
    api: &MachineApi,
    request: Request<rt::ContainersRequest>,
) -> Result<Response<rt::ContainersResponse>, Status> {
    api.runtime
        .connect()
        .await?
        .containers(request.into_inner())
        .await
}

#[tracing::instrument(skip_all, fields(container = %request.get_ref().name, follow = request.get_ref().follow))]
pub(super) async fn container_logs(
    api: &MachineApi,
    request: Request<rt::ContainerLogsRequest>,
) -> Result<Response<ResponseStream<rt::ContainerLogLine>>, Status> {
    let stream = api
        .runtime
        .connect()
        .await?
        .container_logs(request.into_inner())
        .await?
        .into_inner();
    Ok(Response::new(Box::pin(stream)))
}

#[tracing::instrument(skip_all)]
pub(super) async fn container_stats(
    api: &MachineApi,
    request: Request<rt::ContainerStatsRequest>,
) -> Result<Response<rt::ContainerStatsResponse>, Status> {
    api.runtime
        .connect()
        .await?
        .container_stats(request.into_inner())
        .await
}

#[tracing::instrument(skip_all, fields(container = %request.get_ref().name))]
pub(super) async fn container_restart(
    api: &MachineApi,
    request: Request<rt::ContainerRestartRequest>,
) -> Result<Response<rt::ContainerRestartResponse>, Status> {
    api.runtime
        .connect()
        .await?
        .container_restart(request.into_inner())
        .await
}
