//! `nodectl version`: ask every node for its version, concurrently.

use std::time::Duration;

use bramble_api::machine::v1::{VersionRequest, VersionResponse};
use serde::Serialize;

use crate::client::{ClientTls, connect};
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

/// Asks one node.
pub async fn version_of(
    target: &Target,
    tls: &ClientTls,
    timeout: Duration,
) -> Result<VersionResponse, NodeError> {
    let call = async {
        let mut client = connect(&target.dial, tls, timeout).await?;
        let response = client.version(VersionRequest {}).await?;
        Ok(response.into_inner())
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| NodeError::Timeout { after: timeout })?
}

/// Asks every target concurrently; results come back in the targets' order.
pub async fn fan_out(
    targets: &[Target],
    tls: &ClientTls,
    timeout: Duration,
) -> Vec<(Target, Result<VersionResponse, NodeError>)> {
    let handles: Vec<_> = targets
        .iter()
        .map(|t| {
            let (t, tls) = (t.clone(), tls.clone());
            tokio::spawn(async move { version_of(&t, &tls, timeout).await })
        })
        .collect();
    let mut out = Vec::with_capacity(targets.len());
    for (target, handle) in targets.iter().zip(handles) {
        let result = handle
            .await
            .unwrap_or_else(|e| Err(NodeError::Transport(format!("internal error: {e}"))));
        out.push((target.clone(), result));
    }
    out
}
