//! Where etcd's state lives on a node, and who owns it.
//!
//! | what | where | lifetime |
//! | --- | --- | --- |
//! | the member's data (raft log, snapshots, the bbolt database) | `/var/lib/etcd` (`DATA`), owned by etcd's user, mode 0700 | until Reset with `--wipe-data` |
//! | the request `nodectl bootstrap` leaves | `/var/lib/bramble/etcd-bootstrap.json` (`DATA`, root's) | until etcd has formed the cluster |
//! | the snapshot `nodectl bootstrap --recover-from` uploads | `/var/lib/bramble/etcd-restore.db` (`DATA`, root's) | until it is restored into the data |
//! | the member's certificates and keys | `/run/bramble/etcd/pki/` (tmpfs) | issued anew at every start of `etcdd` |
//! | what `etcdd` is doing | `/run/bramble/etcd/state.json` | this boot |
//!
//! The bootstrap request sits beside the data on `DATA` on purpose: a node
//! whose `/var` is wiped forgets both, so it can never form a second cluster
//! from an old request.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// etcd's client API port.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer (raft) port.
pub const PEER_PORT: u16 = 2380;
/// The user etcd runs as: its own, so that nothing else on the node reads
/// its data and nothing it runs can touch the node's other state. No other
/// process of the node runs as this user.
pub const ETCD_UID: u32 = 379;
/// etcd's group.
pub const ETCD_GID: u32 = 379;

/// The paths of etcd's state; [`Layout::node`] on a node, anywhere in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// etcd's `--data-dir`.
    pub data_dir: PathBuf,
    /// The member's certificates and keys.
    pub pki_dir: PathBuf,
    /// The bootstrap request ([`BootstrapRequest`]).
    pub bootstrap_request: PathBuf,
    /// `etcdd`'s status file.
    pub status: PathBuf,
    /// The snapshot a recovering bootstrap restores from.
    pub restore_snapshot: PathBuf,
}

impl Layout {
    /// The node's layout.
    pub fn node() -> Self {
        Self::under(Path::new("/"))
    }

    /// The node's layout under `root` (tests).
    pub fn under(root: &Path) -> Self {
        Self {
            data_dir: root.join("var/lib/etcd"),
            pki_dir: root.join("run/bramble/etcd/pki"),
            bootstrap_request: root.join("var/lib/bramble/etcd-bootstrap.json"),
            status: root.join("run/bramble/etcd/state.json"),
            restore_snapshot: root.join("var/lib/bramble/etcd-restore.db"),
        }
    }

    /// Whether this node holds a member's data: etcd then starts from it
    /// and ignores how the cluster was first formed.
    pub fn has_data(&self) -> bool {
        self.data_dir.join("member/wal").is_dir()
    }

    /// The bootstrap request, if one is waiting.
    pub fn bootstrap_request(&self) -> Result<Option<BootstrapRequest>, Error> {
        match std::fs::read(&self.bootstrap_request) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Unexpected(format!(
                    "{} does not hold a bootstrap request: {e}",
                    self.bootstrap_request.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &self.bootstrap_request)(e)),
        }
    }

    /// Leaves a bootstrap request for `etcdd`, atomically.
    pub fn request_bootstrap(&self, request: &BootstrapRequest) -> Result<(), Error> {
        if let Some(dir) = self.bootstrap_request.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        }
        let json = serde_json::to_vec_pretty(request)
            .map_err(|e| Error::Unexpected(format!("encoding the bootstrap request: {e}")))?;
        bramble_atomic::write(&self.bootstrap_request, &json, 0o600)?;
        Ok(())
    }

    /// Removes the bootstrap request once the cluster is formed.
    pub fn clear_bootstrap_request(&self) -> Result<(), Error> {
        bramble_atomic::remove_if_exists(&self.bootstrap_request)?;
        Ok(())
    }
}

/// What `nodectl bootstrap` asks of a control-plane node: form a new
/// one-member cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRequest {
    /// `cluster.name` when it was asked (the cluster's `--initial-cluster-token`).
    pub cluster: String,
    /// When it was asked, seconds since the epoch.
    pub requested_at: u64,
    /// A snapshot (`nodectl etcd snapshot`) to restore the cluster from
    /// (`nodectl bootstrap --recover-from`): `etcdctl snapshot restore`
    /// makes the data from it before etcd starts. `None`: an empty cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_bootstrap_request_round_trips_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under(dir.path());
        assert_eq!(layout.bootstrap_request().unwrap(), None);
        let request = BootstrapRequest {
            cluster: "pis".into(),
            requested_at: 1_800_000_000,
            restore_from: None,
        };
        layout.request_bootstrap(&request).unwrap();
        assert_eq!(layout.bootstrap_request().unwrap(), Some(request));
        layout.clear_bootstrap_request().unwrap();
        assert_eq!(layout.bootstrap_request().unwrap(), None);
        // A request written before `restore_from` existed still parses.
        std::fs::write(
            &layout.bootstrap_request,
            br#"{"cluster": "pis", "requested_at": 1}"#,
        )
        .unwrap();
        assert_eq!(
            layout.bootstrap_request().unwrap().unwrap().restore_from,
            None
        );
        let recovering = BootstrapRequest {
            cluster: "pis".into(),
            requested_at: 2,
            restore_from: Some(layout.restore_snapshot.clone()),
        };
        layout.request_bootstrap(&recovering).unwrap();
        assert_eq!(layout.bootstrap_request().unwrap(), Some(recovering));
        std::fs::write(&layout.bootstrap_request, b"{").unwrap();
        let e = layout.bootstrap_request().unwrap_err().to_string();
        assert!(e.contains("does not hold a bootstrap request"), "{e}");
    }

    #[test]
    fn data_means_a_write_ahead_log() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under(dir.path());
        assert!(!layout.has_data());
        std::fs::create_dir_all(layout.data_dir.join("member/wal")).unwrap();
        assert!(layout.has_data());
    }
}
