//! `nodectl version`: ask every node for its version, concurrently.

use std::time::Duration;

use bramble_api::machine::v1::{VersionRequest, VersionResponse};
use serde::Serialize;

use crate::client::ClientTls;
use crate::error::NodeError;
use crate::nodes::Target;
use crate::output::{Row, human_duration};

/// One node's answer, as printed.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct VersionRow {
    /// The node as named on the command line.
    pub node: String,
    /// See the proto for the other fields.
    pub os_name: String,
    #[allow(missing_docs)]
    pub os_version: String,
    #[allow(missing_docs)]
    pub git_revision: String,
    #[allow(missing_docs)]
    pub kernel_version: String,
    #[allow(missing_docs)]
    pub architecture: String,
    #[allow(missing_docs)]
    pub boot_slot: String,
    #[allow(missing_docs)]
    pub uptime_seconds: f64,
    #[allow(missing_docs)]
    pub maintenance: bool,
    #[allow(missing_docs)]
    pub hostname: String,
}

impl VersionRow {
    /// Combines the node's name and its answer.
    pub fn new(node: String, v: VersionResponse) -> Self {
        Self {
            node,
            os_name: v.os_name,
            os_version: v.os_version,
            git_revision: v.git_revision,
            kernel_version: v.kernel_version,
            architecture: v.architecture,
            boot_slot: v.boot_slot,
            uptime_seconds: v.uptime_seconds,
            maintenance: v.maintenance,
            hostname: v.hostname,
        }
    }
}

impl Row for VersionRow {
    fn headers() -> &'static [&'static str] {
        &[
            "NODE",
            "OS",
            "VERSION",
            "GIT",
            "KERNEL",
            "ARCH",
            "SLOT",
            "UPTIME",
            "MAINTENANCE",
        ]
    }

    fn cells(&self) -> Vec<String> {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_owned()
            } else {
                s.to_owned()
            }
        };
        vec![
            self.node.clone(),
            dash(&self.os_name),
            dash(&self.os_version),
            dash(&self.git_revision.chars().take(12).collect::<String>()),
            dash(&self.kernel_version),
            dash(&self.architecture),
            dash(&self.boot_slot),
            human_duration(self.uptime_seconds),
            if self.maintenance { "yes" } else { "no" }.to_owned(),
        ]
    }
}

/// Asks every target concurrently; results come back in the targets' order.
pub async fn fan_out(
    targets: &[Target],
    tls: &ClientTls,
    timeout: Duration,
) -> Vec<(Target, Result<VersionResponse, NodeError>)> {
    super::fan_out(targets, tls, timeout, |mut client| async move {
        client
            .version(VersionRequest {})
            .await
            .map(tonic::Response::into_inner)
    })
    .await
}
