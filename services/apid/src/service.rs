//! The `bramble.machine.v1.MachineService` implementation.

use bramble_api::machine::v1::machine_service_server::MachineService;
use bramble_api::machine::v1::{VersionRequest, VersionResponse};
use tonic::{Request, Response, Status};

use crate::info::NodeInfoSource;

/// Answers the machine API from the running system.
#[derive(Debug, Clone)]
pub struct MachineApi {
    info: NodeInfoSource,
}

impl MachineApi {
    /// Serves facts from `info`.
    pub fn new(info: NodeInfoSource) -> Self {
        Self { info }
    }
}

#[tonic::async_trait]
impl MachineService for MachineApi {
    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        tracing::debug!(peer = ?request.remote_addr(), "Version");
        Ok(Response::new(self.info.version()))
    }
}
