//! `nodectl bootstrap` and `nodectl etcd ...`: etcd on the control-plane
//! nodes, through each node's machine API.
//!
//! The calls that change the cluster (bootstrap, leave, remove-member) and
//! the snapshot act through exactly one node: two bootstraps at once would
//! form two clusters, and two leaves at once could each see a quorum the
//! other is about to take away. Defragmentation goes one node after the
//! other, since a member answers nothing else meanwhile.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bramble_api::machine::v1::{
    BootstrapRecoverChunk, BootstrapRequest, EtcdAlarm, EtcdAlarmDisarmRequest,
    EtcdAlarmListRequest, EtcdDefragmentRequest, EtcdLeaveRequest, EtcdMember, EtcdMembersRequest,
    EtcdRemoveMemberRequest, EtcdSnapshotRequest, EtcdStatusRequest, EtcdStatusResponse,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::cli::{AlarmCommand, EtcdCommand, GlobalArgs, OutputFormat};
use crate::client::{ClientTls, MachineClient, connect};
use crate::cmd::runtime::bytes;
use crate::error::{Error, NodeError};
use crate::nodes::Target;
use crate::output::Row;
use crate::{describe_failure, output, report, rows, session};

/// How long a membership change may take (the node asks etcd several
/// things, each bounded there).
pub(crate) const CHANGE_TIMEOUT: Duration = Duration::from_secs(40);
/// How long one defragmentation may take (the node allows five minutes).
const DEFRAG_TIMEOUT: Duration = Duration::from_secs(330);
/// How long a snapshot may go without a piece arriving.
const SNAPSHOT_STALL: Duration = Duration::from_secs(90);

/// One member as one node's etcd lists it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberRow {
    /// The node as named on the command line.
    pub node: String,
    /// The member's ID (16 hex digits).
    pub id: String,
    /// Its name (empty until an added member has started).
    pub name: String,
    /// Where its peers reach it.
    pub peer_urls: Vec<String>,
    /// Where clients reach it.
    pub client_urls: Vec<String>,
    /// Whether it is a learner (not voting yet).
    pub learner: bool,
}

impl MemberRow {
    /// From the API's answer.
    pub fn new(node: &str, m: EtcdMember) -> Self {
        Self {
            node: node.to_owned(),
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            learner: m.is_learner,
        }
    }
}

fn dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

impl Row for MemberRow {
    fn headers() -> &'static [&'static str] {
        &["NODE", "ID", "NAME", "PEER URLS", "CLIENT URLS", "LEARNER"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            self.id.clone(),
            dash(self.name.clone()),
            dash(self.peer_urls.join(",")),
            dash(self.client_urls.join(",")),
            self.learner.to_string(),
        ]
    }
}

/// One node's member.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    /// The node as named on the command line.
    pub node: String,
    /// The cluster's ID.
    pub cluster_id: String,
    /// This node's member.
    pub member_id: String,
    /// The leader it knows (empty: none).
    pub leader: String,
    /// Whether this member is the leader.
    pub is_leader: bool,
    /// Its raft term.
    pub raft_term: u64,
    /// Its last raft index.
    pub raft_index: u64,
    /// The raft index it has applied.
    pub raft_applied_index: u64,
    /// Its database's size.
    pub db_size_bytes: i64,
    /// etcd's version.
    pub version: String,
    /// Whether it is a learner.
    pub learner: bool,
    /// Alarms and errors it reports.
    pub errors: Vec<String>,
}

impl StatusRow {
    /// From the API's answer.
    pub fn new(node: &str, s: EtcdStatusResponse) -> Self {
        Self {
            node: node.to_owned(),
            is_leader: !s.leader.is_empty() && s.leader == s.member_id,
            cluster_id: s.cluster_id,
            member_id: s.member_id,
            leader: s.leader,
            raft_term: s.raft_term,
            raft_index: s.raft_index,
            raft_applied_index: s.raft_applied_index,
            db_size_bytes: s.db_size_bytes,
            version: s.version,
            learner: s.is_learner,
            errors: s.errors,
        }
    }
}

impl Row for StatusRow {
    fn headers() -> &'static [&'static str] {
        &[
            "NODE",
            "MEMBER",
            "CLUSTER",
            "LEADER",
            "TERM",
            "RAFT INDEX",
            "APPLIED",
            "DB SIZE",
            "VERSION",
            "LEARNER",
            "ERRORS",
        ]
    }
    fn cells(&self) -> Vec<String> {
        let leader = match (self.leader.is_empty(), self.is_leader) {
            (true, _) => "none".to_owned(),
            (false, true) => format!("{} (this)", self.leader),
            (false, false) => self.leader.clone(),
        };
        vec![
            self.node.clone(),
            self.member_id.clone(),
            self.cluster_id.clone(),
            leader,
            self.raft_term.to_string(),
            self.raft_index.to_string(),
            self.raft_applied_index.to_string(),
            bytes(u64::try_from(self.db_size_bytes).unwrap_or(0)),
            self.version.clone(),
            self.learner.to_string(),
            dash(self.errors.join("; ")),
        ]
    }
}

/// One raised alarm, as one node's etcd lists it.
#[derive(Debug, Clone, Serialize)]
pub struct AlarmRow {
    /// The node as named on the command line.
    pub node: String,
    /// The member that raised it.
    pub member_id: String,
    /// Its name, when known.
    pub member_name: String,
    /// NOSPACE or CORRUPT.
    pub alarm: String,
}

impl AlarmRow {
    /// From the API's answer.
    pub fn new(node: &str, a: EtcdAlarm) -> Self {
        Self {
            node: node.to_owned(),
            member_id: a.member_id,
            member_name: a.member_name,
            alarm: a.alarm,
        }
    }
}

impl Row for AlarmRow {
    fn headers() -> &'static [&'static str] {
        &["NODE", "MEMBER", "NAME", "ALARM"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            self.member_id.clone(),
            dash(self.member_name.clone()),
            self.alarm.clone(),
        ]
    }
}

/// The one node a command that changes the cluster acts through.
fn one_target(targets: Vec<Target>, what: &str) -> Result<Target, Error> {
    let count = targets.len();
    let mut targets = targets.into_iter();
    match (targets.next(), targets.next()) {
        (Some(t), None) => Ok(t),
        _ => Err(Error::Usage(format!(
            "{what} acts through one node: give exactly one with -n (got {count})"
        ))),
    }
}

/// Calls `call` on the one node of the session, bounded by `timeout`;
/// prints the answer with `print`, or the node's failure to `err`.
async fn on_one<T, F, Fut>(
    g: &GlobalArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    what: &str,
    timeout: Duration,
    call: F,
    print: impl Fn(&mut dyn Write, &str, T) -> std::io::Result<()>,
) -> Result<bool, Error>
where
    T: Send + 'static,
    F: Fn(MachineClient) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
{
    let (targets, tls) = session(g)?;
    let target = one_target(targets, what)?;
    let results = super::fan_out(&[target], &tls, timeout, move |c| {
        let fut = call(c);
        async move { fut.await.map(tonic::Response::into_inner) }
    })
    .await;
    let (answers, ok) = report(err, results)?;
    for (node, answer) in answers {
        print(out, &node, answer)?;
    }
    Ok(ok)
}

/// `nodectl bootstrap [--recover-from FILE]`.
pub async fn bootstrap(
    g: &GlobalArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    recover_from: Option<PathBuf>,
) -> Result<bool, Error> {
    let timeout = g.timeout.max(CHANGE_TIMEOUT);
    if let Some(file) = recover_from {
        return recover(g, out, err, file, timeout).await;
    }
    let call = |mut c: MachineClient| async move { c.bootstrap(BootstrapRequest {}).await };
    on_one(g, out, err, "bootstrap", timeout, call, |out, node, r| {
        writeln!(out, "{node}: {}", r.summary)
    })
    .await
}

/// How fast a snapshot is assumed to upload at least, for the call's bound.
const UPLOAD_BYTES_PER_SEC: u64 = 1 << 20;
/// The pieces a snapshot is sent in.
const UPLOAD_CHUNK: usize = 1 << 20;

/// `nodectl bootstrap --recover-from FILE`: the file's size and SHA-256
/// first (read once before dialling), then the file again, in pieces.
async fn recover(
    g: &GlobalArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    file: PathBuf,
    timeout: Duration,
) -> Result<bool, Error> {
    let input = |e: std::io::Error| Error::Input {
        path: file.clone(),
        reason: e.to_string(),
    };
    let (size, sha256) = digest(&file).await.map_err(input)?;
    if size == 0 {
        return Err(input(std::io::Error::other("the file is empty")));
    }
    let timeout = timeout + Duration::from_secs(size / UPLOAD_BYTES_PER_SEC);
    let call = move |mut c: MachineClient| {
        let (file, sha256) = (file.clone(), sha256.clone());
        async move {
            let chunks = upload_chunks(&file, size, sha256)
                .await
                .map_err(|e| tonic::Status::invalid_argument(format!("{}: {e}", file.display())))?;
            c.bootstrap_recover(chunks).await
        }
    };
    on_one(g, out, err, "bootstrap", timeout, call, |out, node, r| {
        writeln!(out, "{node}: {}", r.summary)
    })
    .await
}

/// The size and SHA-256 (hex) of `file`.
async fn digest(file: &Path) -> std::io::Result<(u64, String)> {
    use tokio::io::AsyncReadExt as _;
    let mut f = tokio::fs::File::open(file).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; UPLOAD_CHUNK];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((size, hex))
}

/// The pieces of `file` for BootstrapRecover, read as they are sent; the
/// first names `size` and `sha256`. A read error ends the stream early,
/// which the node refuses as a truncated upload.
async fn upload_chunks(
    file: &Path,
    size: u64,
    sha256: String,
) -> std::io::Result<tokio_stream::wrappers::ReceiverStream<BootstrapRecoverChunk>> {
    use tokio::io::AsyncReadExt as _;
    let mut f = tokio::fs::File::open(file).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut first = Some((size, sha256));
        loop {
            let mut data = vec![0u8; UPLOAD_CHUNK];
            let n = match f.read(&mut data).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            data.truncate(n);
            let (size, sha256) = first.take().unwrap_or_default();
            if tx
                .send(BootstrapRecoverChunk { size, sha256, data })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// `nodectl etcd ...`.
pub async fn run(
    g: &GlobalArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    what: EtcdCommand,
) -> Result<bool, Error> {
    match what {
        EtcdCommand::Members => {
            let call =
                |mut c: MachineClient| async move { c.etcd_members(EtcdMembersRequest {}).await };
            rows(g, out, err, call, |node, r| {
                r.members
                    .into_iter()
                    .map(|m| MemberRow::new(node, m))
                    .collect()
            })
            .await
        }
        EtcdCommand::Status => {
            let call =
                |mut c: MachineClient| async move { c.etcd_status(EtcdStatusRequest {}).await };
            rows(g, out, err, call, |node, r| vec![StatusRow::new(node, r)]).await
        }
        EtcdCommand::Leave { force } => {
            let call = move |mut c: MachineClient| async move {
                c.etcd_leave(EtcdLeaveRequest { force }).await
            };
            let timeout = g.timeout.max(CHANGE_TIMEOUT);
            on_one(g, out, err, "etcd leave", timeout, call, |out, node, r| {
                writeln!(out, "{node}: {}", r.summary)
            })
            .await
        }
        EtcdCommand::RemoveMember { member, force } => {
            let call = move |mut c: MachineClient| {
                let req = EtcdRemoveMemberRequest {
                    member: member.clone(),
                    force,
                };
                async move { c.etcd_remove_member(req).await }
            };
            let timeout = g.timeout.max(CHANGE_TIMEOUT);
            on_one(
                g,
                out,
                err,
                "etcd remove-member",
                timeout,
                call,
                |out, node, r| {
                    let m = r.member.unwrap_or_default();
                    writeln!(out, "{node}: removed member {} ({})", dash(m.name), m.id)
                },
            )
            .await
        }
        EtcdCommand::Snapshot { file, force } => snapshot(g, out, err, &file, force).await,
        EtcdCommand::Defrag => defrag(g, out, err).await,
        EtcdCommand::Alarm { what } => alarm(g, out, err, what.unwrap_or(AlarmCommand::List)).await,
    }
}

/// `nodectl etcd defrag`: one node after the other.
async fn defrag(g: &GlobalArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<bool, Error> {
    let (targets, tls) = session(g)?;
    let timeout = g.timeout.max(DEFRAG_TIMEOUT);
    let mut all_ok = true;
    for target in targets {
        let results = super::fan_out(&[target], &tls, timeout, |mut c| async move {
            c.etcd_defragment(EtcdDefragmentRequest {})
                .await
                .map(tonic::Response::into_inner)
        })
        .await;
        let (answers, ok) = report(err, results)?;
        all_ok &= ok;
        for (node, r) in answers {
            let size = |n: i64| bytes(u64::try_from(n).unwrap_or(0));
            writeln!(
                out,
                "{node}: member {} defragmented: {} before, {} after",
                r.member_id,
                size(r.db_size_before_bytes),
                size(r.db_size_after_bytes)
            )?;
        }
    }
    Ok(all_ok)
}

/// `nodectl etcd alarm [list|disarm]`.
async fn alarm(
    g: &GlobalArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    what: AlarmCommand,
) -> Result<bool, Error> {
    let (targets, tls) = session(g)?;
    match what {
        AlarmCommand::List => {
            let results = super::fan_out(&targets, &tls, g.timeout, |mut c| async move {
                c.etcd_alarm_list(EtcdAlarmListRequest {})
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await;
            let (answers, ok) = report(err, results)?;
            let mut rows = Vec::new();
            for (node, r) in answers {
                if r.alarms.is_empty() && g.output == OutputFormat::Table {
                    writeln!(out, "{node}: no alarms raised")?;
                }
                rows.extend(r.alarms.into_iter().map(|a| AlarmRow::new(&node, a)));
            }
            output::print(out, g.output, &rows)?;
            Ok(ok)
        }
        AlarmCommand::Disarm => {
            let results = super::fan_out(&targets, &tls, g.timeout, |mut c| async move {
                c.etcd_alarm_disarm(EtcdAlarmDisarmRequest {})
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await;
            let (answers, ok) = report(err, results)?;
            for (node, r) in answers {
                if r.disarmed.is_empty() {
                    writeln!(out, "{node}: no alarms raised")?;
                }
                for a in r.disarmed {
                    writeln!(
                        out,
                        "{node}: disarmed {} of member {}",
                        a.alarm,
                        if a.member_name.is_empty() {
                            a.member_id
                        } else {
                            format!("{} ({})", a.member_name, a.member_id)
                        }
                    )?;
                }
            }
            Ok(ok)
        }
    }
}

/// `nodectl etcd snapshot FILE`: the pieces go into a temporary file
/// beside FILE (mode 0600), checked against the size and SHA-256 the node
/// sends last, made durable and moved into place; anything short of that
/// leaves FILE as it was.
async fn snapshot(
    g: &GlobalArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    file: &Path,
    force: bool,
) -> Result<bool, Error> {
    if !force && file.exists() {
        return Err(Error::Usage(format!(
            "{} exists; pass --force to overwrite it",
            file.display()
        )));
    }
    let input = |reason: String| Error::Input {
        path: file.to_path_buf(),
        reason,
    };
    let tmp = bramble_atomic::temporary_path(file).map_err(|e| input(e.to_string()))?;
    let (targets, tls) = session(g)?;
    let target = one_target(targets, "etcd snapshot")?;
    let result = receive(&target, &tls, g.timeout, &tmp).await;
    let placed = match result {
        Ok(Ok(received)) => place(&tmp, file, force)
            .map(|()| received)
            .map_err(|e| input(format!("the snapshot was not saved: {e}"))),
        Ok(Err(node_error)) => {
            let _ = std::fs::remove_file(&tmp);
            writeln!(err, "{}", describe_failure(&target, &node_error))?;
            return Ok(false);
        }
        Err(e) => Err(input(format!("the snapshot was not saved: {e}"))),
    };
    let (size, sha256) = match placed {
        Ok(received) => received,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    writeln!(
        out,
        "{}: etcd snapshot written to {}: {size} bytes ({}), sha256 {sha256}",
        target.node,
        file.display(),
        bytes(size)
    )?;
    Ok(true)
}

/// Streams the snapshot into `tmp`; the size and SHA-256 received, or why
/// the node did not send it whole (outer error: the local file).
async fn receive(
    target: &Target,
    tls: &ClientTls,
    timeout: Duration,
    tmp: &Path,
) -> Result<Result<(u64, String), NodeError>, std::io::Error> {
    let open = async {
        let mut client = connect(&target.dial, tls, timeout).await?;
        Ok::<_, NodeError>(
            client
                .etcd_snapshot(EtcdSnapshotRequest {})
                .await?
                .into_inner(),
        )
    };
    let mut stream = match tokio::time::timeout(timeout, open).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Ok(Err(e)),
        Err(_) => return Ok(Err(NodeError::Timeout { after: timeout })),
    };
    let _ = tokio::fs::remove_file(tmp).await;
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .await?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let stall = timeout.max(SNAPSHOT_STALL);
    loop {
        let piece = match tokio::time::timeout(stall, stream.message()).await {
            Err(_) => return Ok(Err(NodeError::Timeout { after: stall })),
            Ok(Err(status)) => return Ok(Err(status.into())),
            Ok(Ok(None)) => {
                return Ok(Err(NodeError::Transport(format!(
                    "the snapshot stream ended after {size} bytes without the node's checksum: \
                     it is incomplete"
                ))));
            }
            Ok(Ok(Some(piece))) => piece,
        };
        if piece.done {
            let sha256 = hex(&hasher.finalize());
            if piece.total_bytes != size || piece.sha256 != sha256 {
                return Ok(Err(NodeError::Transport(format!(
                    "the snapshot received ({size} bytes, sha256 {sha256}) is not the one the \
                     node sent ({} bytes, sha256 {})",
                    piece.total_bytes, piece.sha256
                ))));
            }
            f.sync_all().await?;
            return Ok(Ok((size, sha256)));
        }
        hasher.update(&piece.data);
        size += piece.data.len() as u64;
        f.write_all(&piece.data).await?;
    }
}

/// Moves the finished `tmp` to `file`: over it with `force`, else only if
/// it still does not exist (a hard link fails on an existing name).
fn place(tmp: &Path, file: &Path, force: bool) -> Result<(), bramble_atomic::FileError> {
    if force {
        return bramble_atomic::rename(tmp, file);
    }
    std::fs::hard_link(tmp, file).map_err(bramble_atomic::FileError::wrap("create", file))?;
    std::fs::remove_file(tmp).map_err(bramble_atomic::FileError::wrap("remove", tmp))?;
    bramble_atomic::sync_dir(
        file.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_change_goes_through_one_node() {
        let t = |s: &str| Target {
            node: crate::nodes::NodeAddr::parse(s).unwrap(),
            dial: crate::nodes::NodeAddr::parse(s).unwrap(),
        };
        assert!(one_target(vec![t("10.0.0.1")], "bootstrap").is_ok());
        let e = one_target(vec![t("10.0.0.1"), t("10.0.0.2")], "bootstrap")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly one") && e.contains("got 2"), "{e}");
        assert!(one_target(vec![], "etcd leave").is_err());
    }

    #[test]
    fn the_leader_is_marked() {
        let status = EtcdStatusResponse {
            cluster_id: "c".into(),
            member_id: "8e9e05c52164694d".into(),
            leader: "8e9e05c52164694d".into(),
            ..EtcdStatusResponse::default()
        };
        let row = StatusRow::new("n", status);
        assert!(row.is_leader);
        assert_eq!(row.cells()[3], "8e9e05c52164694d (this)");
        let row = StatusRow::new("n", EtcdStatusResponse::default());
        assert_eq!(row.cells()[3], "none");
        assert_eq!(row.cells().len(), StatusRow::headers().len());
    }

    #[test]
    fn a_snapshot_never_replaces_a_file_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snap.db");
        let tmp = bramble_atomic::temporary_path(&file).unwrap();
        std::fs::write(&file, b"old").unwrap();
        std::fs::write(&tmp, b"new").unwrap();
        assert!(place(&tmp, &file, false).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"old");
        place(&tmp, &file, true).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        assert!(!tmp.exists());
        let fresh = dir.path().join("fresh.db");
        let tmp = bramble_atomic::temporary_path(&fresh).unwrap();
        std::fs::write(&tmp, b"x").unwrap();
        place(&tmp, &fresh, false).unwrap();
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&fresh).unwrap(), b"x");
    }
}
