//! The `bramble.runtime.v1.Runtime` service `apid` calls on the runtime's
//! Unix socket.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;

use bramble_api::runtime::v1::runtime_server::Runtime as RuntimeApi;
use bramble_api::runtime::v1::{
    Container, ContainerLogLine, ContainerLogsRequest, ContainerRestartRequest,
    ContainerRestartResponse, ContainerStats, ContainerStatsRequest, ContainerStatsResponse,
    ContainersRequest, ContainersResponse, Image, ImageImportChunk, ImageImportResponse,
    ImagePullRequest, ImagePullResponse, ImageRemoveRequest, ImageRemoveResponse, ImagesRequest,
    ImagesResponse,
};
use bramble_oci_store::{Guard, ImageInfo};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::RuntimeError;
use crate::logs::Line;
use crate::workloads::Runtime;

/// Lines sent first when a request gives no `tail`.
const DEFAULT_TAIL: usize = 100;
/// Most lines a request may ask for first.
const MAX_TAIL: usize = 10_000;
/// Largest archive `ImageImport` accepts.
const MAX_IMPORT_BYTES: u64 = 4 << 30;

/// The service, over the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeService {
    rt: Arc<Runtime>,
}

impl RuntimeService {
    /// Serves `rt`.
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self { rt }
    }

    /// The references the workloads use, which a pull or import may not
    /// move to another image unless forced (nothing protected if forced).
    async fn guard(&self, force: bool) -> Guard {
        let mut guard = Guard::new();
        if !force {
            for s in self.rt.list().await {
                guard.protect(&s.image, &format!("workload {:?}", s.name));
            }
        }
        guard
    }
}

fn image(info: ImageInfo) -> Image {
    Image {
        reference: info.reference,
        digest: info.digest,
        size_bytes: info.size_bytes,
        stored_unix: info.stored_unix,
        platform: info.platform,
    }
}

/// Maps runtime errors to gRPC codes a client can act on.
pub fn status(e: RuntimeError) -> Status {
    use bramble_oci_store::Error as I;
    match &e {
        RuntimeError::NotFound(_) => Status::not_found(e.to_string()),
        RuntimeError::Image(inner) => match inner {
            I::InvalidReference { .. } => Status::invalid_argument(e.to_string()),
            I::NotFound { .. } => Status::not_found(e.to_string()),
            I::Registry { .. } | I::Pull { .. } => Status::unavailable(e.to_string()),
            I::InUse { .. } => Status::failed_precondition(format!(
                "{e}: pass force (nodectl image pull|import --force) to replace it"
            )),
            _ => Status::failed_precondition(e.to_string()),
        },
        _ => Status::internal(e.to_string()),
    }
}

fn blocking_failed(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("the store's task failed: {e}"))
}

type LogStream = Pin<Box<dyn Stream<Item = Result<ContainerLogLine, Status>> + Send>>;

fn log_line(l: Line) -> ContainerLogLine {
    ContainerLogLine {
        time_unix_ms: l.time_unix_ms,
        stream: l.stream.as_str().to_owned(),
        text: l.text,
    }
}

#[tonic::async_trait]
impl RuntimeApi for RuntimeService {
    async fn images(
        &self,
        _request: Request<ImagesRequest>,
    ) -> Result<Response<ImagesResponse>, Status> {
        let store = self.rt.store();
        let list = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(blocking_failed)?
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(ImagesResponse {
            images: list.into_iter().map(image).collect(),
        }))
    }

    async fn image_pull(
        &self,
        request: Request<ImagePullRequest>,
    ) -> Result<Response<ImagePullResponse>, Status> {
        let req = request.into_inner();
        let reference = req.reference;
        if reference.trim().is_empty() {
            return Err(Status::invalid_argument(
                "reference: name an image, e.g. docker.io/library/busybox:latest",
            ));
        }
        let registries = self.rt.registries().await;
        let guard = self.guard(req.force).await;
        let report = self
            .rt
            .store()
            .pull_guarded(&reference, &registries, &guard)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(ImagePullResponse {
            image: Some(image(report.image)),
            fetched_bytes: report.fetched_bytes,
            duration_ms: u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
        }))
    }

    async fn image_import(
        &self,
        request: Request<Streaming<ImageImportChunk>>,
    ) -> Result<Response<ImageImportResponse>, Status> {
        let mut stream = request.into_inner();
        // The archive is spooled to /var first: the store reads it in one
        // synchronous pass, and a transfer cut short never reaches it.
        let dir = self.rt.paths().state_dir.join("imports");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Status::internal(format!("{}: {e}", dir.display())))?;
        let mut spool = tempfile_in(&dir)?;
        let mut tag = None;
        let mut force = false;
        let mut total: u64 = 0;
        let mut first = true;
        while let Some(chunk) = stream.message().await? {
            if first {
                if !chunk.reference.is_empty() {
                    tag = Some(chunk.reference.clone());
                }
                force = chunk.force;
                first = false;
            }
            total += chunk.data.len() as u64;
            if total > MAX_IMPORT_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "the archive is larger than {MAX_IMPORT_BYTES} bytes"
                )));
            }
            spool
                .write_all(&chunk.data)
                .map_err(|e| Status::internal(format!("cannot spool the archive: {e}")))?;
        }
        if total == 0 {
            return Err(Status::invalid_argument("the archive is empty"));
        }
        let store = self.rt.store();
        let file = spool
            .reopen()
            .map_err(|e| Status::internal(format!("cannot read the spooled archive: {e}")))?;
        let guard = self.guard(force).await;
        let images = tokio::task::spawn_blocking(move || {
            let result =
                store.import_archive_guarded(std::io::BufReader::new(file), tag.as_deref(), &guard);
            drop(spool);
            result
        })
        .await
        .map_err(blocking_failed)?
        .map_err(|e| status(e.into()))?;
        Ok(Response::new(ImageImportResponse {
            images: images.into_iter().map(image).collect(),
        }))
    }

    async fn image_remove(
        &self,
        request: Request<ImageRemoveRequest>,
    ) -> Result<Response<ImageRemoveResponse>, Status> {
        let reference = request.into_inner().reference;
        let in_use = self.rt.list().await;
        let store = self.rt.store();
        let found = {
            let store = Arc::clone(&store);
            let reference = reference.clone();
            tokio::task::spawn_blocking(move || store.resolve(&reference))
                .await
                .map_err(blocking_failed)?
                .map_err(|e| status(e.into()))?
        };
        let Some(found) = found else {
            return Err(Status::not_found(format!(
                "no image {reference:?} in the store; `nodectl images` lists them"
            )));
        };
        if let Some(c) = in_use.iter().find(|c| c.image_digest == found.digest) {
            return Err(Status::failed_precondition(format!(
                "image {} is in use by container {:?}; remove the workload first",
                found.reference, c.name
            )));
        }
        let keep = self.rt.digests_in_use().await;
        let report = tokio::task::spawn_blocking(move || store.remove_keeping(&reference, &keep))
            .await
            .map_err(blocking_failed)?
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(ImageRemoveResponse {
            removed_blobs: report.removed_blobs,
            removed_snapshots: report.removed_snapshots,
        }))
    }

    async fn containers(
        &self,
        _request: Request<ContainersRequest>,
    ) -> Result<Response<ContainersResponse>, Status> {
        let containers = self
            .rt
            .list()
            .await
            .into_iter()
            .map(|s| {
                let exit = s.last_exit.as_ref();
                Container {
                    name: s.name,
                    image: s.image,
                    state: s.state.as_str().to_owned(),
                    pid: s.pid,
                    restarts: s.restarts,
                    exit_code: exit.and_then(|e| e.exit_code).unwrap_or(-1),
                    exit_signal: exit.and_then(|e| e.signal).unwrap_or(0),
                    oom_killed: exit.is_some_and(|e| e.oom_killed),
                    reason: s.reason,
                    started_unix: s.started_unix,
                    image_digest: s.image_digest,
                    last_run_ms: exit.map_or(0, |e| {
                        e.finished_unix_ms.saturating_sub(e.shim_started_unix_ms)
                    }),
                }
            })
            .collect();
        Ok(Response::new(ContainersResponse { containers }))
    }

    type ContainerLogsStream = LogStream;

    async fn container_logs(
        &self,
        request: Request<ContainerLogsRequest>,
    ) -> Result<Response<Self::ContainerLogsStream>, Status> {
        let req = request.into_inner();
        let log = self.rt.log(&req.name).await.map_err(status)?;
        let tail = match req.tail {
            0 => DEFAULT_TAIL,
            n => (n as usize).min(MAX_TAIL),
        };
        // Subscribe before reading the tail so no line falls between.
        let mut rx = log.subscribe();
        let first = log.tail(tail);
        let last_seen = first.last().map(|l| l.time_unix_ms);
        let follow = req.follow;
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            for line in first {
                if tx.send(Ok(log_line(line))).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                match rx.recv().await {
                    Ok(line) => {
                        if last_seen.is_some_and(|t| line.time_unix_ms < t) {
                            continue;
                        }
                        if tx.send(Ok(log_line(line))).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        let note = ContainerLogLine {
                            time_unix_ms: crate::logs::now_ms(),
                            stream: "stderr".to_owned(),
                            text: format!("bramble-runtimed: {n} lines skipped (reader too slow)"),
                        };
                        if tx.send(Ok(note)).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn container_stats(
        &self,
        _request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let mut stats = Vec::new();
        for s in self.rt.list().await {
            if s.pid == 0 {
                continue;
            }
            let dir = self.rt.paths().cgroup_dir(&s.name);
            match crate::container::read_stats(&dir) {
                Ok(c) => stats.push(ContainerStats {
                    name: s.name,
                    memory_bytes: c.memory_current,
                    memory_limit_bytes: c.memory_max,
                    cpu_usage_usec: c.cpu_usage_usec,
                    pids: c.pids_current,
                }),
                Err(e) => tracing::debug!(container = %s.name, "no stats: {e}"),
            }
        }
        Ok(Response::new(ContainerStatsResponse { stats }))
    }

    async fn container_restart(
        &self,
        request: Request<ContainerRestartRequest>,
    ) -> Result<Response<ContainerRestartResponse>, Status> {
        let name = request.into_inner().name;
        self.rt.restart(&name).await.map_err(status)?;
        Ok(Response::new(ContainerRestartResponse {}))
    }
}

fn tempfile_in(dir: &std::path::Path) -> Result<tempfile::NamedTempFile, Status> {
    tempfile::NamedTempFile::new_in(dir).map_err(|e| {
        Status::internal(format!(
            "cannot spool the archive in {}: {e}",
            dir.display()
        ))
    })
}
