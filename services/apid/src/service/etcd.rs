//! The etcd calls: Bootstrap, BootstrapRecover, EtcdMembers, EtcdStatus, EtcdLeave,
//! EtcdRemoveMember, EtcdSnapshot, EtcdDefragment, EtcdAlarmList and
//! EtcdAlarmDisarm.
//!
//! etcd runs on control-plane nodes (`services/etcd/`). For each call the
//! API server issues itself a short-lived etcd client certificate from the
//! etcd CA of the configuration in force (`cluster.etcd.ca`, whose key only
//! control-plane nodes hold), in memory, and calls the node's own member at
//! `https://127.0.0.1:2379` (`bramble_etcd::Cluster`). A worker, or a node
//! without that key, is refused with `FailedPrecondition` saying so; a
//! member that does not answer, with `Unavailable` and the reason. Every
//! wait on etcd is bounded.
//!
//! Removing a voting member is refused when the cluster would keep fewer
//! voters than its quorum ([`removal_refusal`]) unless the caller forces
//! it. Reset on a control-plane node makes its member leave first
//! ([`leave_before_reset`]), through the same code as EtcdLeave.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bramble_api::machine::v1::{
    BootstrapRecoverChunk, BootstrapRequest, BootstrapResponse, EtcdAlarm, EtcdAlarmDisarmRequest,
    EtcdAlarmDisarmResponse, EtcdAlarmListRequest, EtcdAlarmListResponse, EtcdDefragmentRequest,
    EtcdDefragmentResponse, EtcdLeaveRequest, EtcdLeaveResponse, EtcdMember, EtcdMembersRequest,
    EtcdMembersResponse, EtcdRemoveMemberRequest, EtcdRemoveMemberResponse, EtcdSnapshotChunk,
    EtcdSnapshotRequest, EtcdStatusRequest, EtcdStatusResponse,
};
use bramble_config::{MachineConfig, MachineType};
use bramble_etcd::{Cluster, Layout, MemberInfo, StatusInfo, format_id};
use bramble_pki::{CertificateAuthority, EtcdCert, IssuedCert, Validity};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::{MachineApi, ResponseStream};

/// The node's own member, for the API server's calls.
pub(crate) const LOCAL_ENDPOINT: &str = "https://127.0.0.1:2379";
/// The common name of the API server's etcd client certificate.
const CLIENT_NAME: &str = "apid";
/// How long the API server's etcd client certificate is valid: it is
/// issued for one call and never written.
const CLIENT_CERT_LIFETIME: Duration = Duration::from_secs(3600);
/// How long one call to etcd may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a look for an existing cluster (Bootstrap) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a defragmentation may take: the member rewrites its whole
/// database, on an SD card.
const DEFRAGMENT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a snapshot may go without a piece arriving.
const SNAPSHOT_STALL: Duration = Duration::from_secs(60);
/// The largest snapshot BootstrapRecover takes: etcd's largest backend
/// quota.
pub(crate) const MAX_RESTORE_BYTES: u64 = 8 << 30;
/// Pieces of a snapshot buffered before etcd's stream waits for the client.
const SNAPSHOT_BUFFER: usize = 8;

/// Why a worker answers no etcd call.
const WORKER: &str = "etcd runs on control-plane nodes; this node is a worker";
/// Why a worker refuses Bootstrap.
const WORKER_BOOTSTRAP: &str = "bootstrap a control-plane node: this one is a worker";

/// Where etcd's state is on this node, and the lock that lets one
/// Bootstrap decide at a time.
#[derive(Debug)]
pub(crate) struct EtcdSite {
    layout: Layout,
    bootstrap: Mutex<()>,
}

impl EtcdSite {
    /// etcd's state under `root` (`/` on a node).
    pub(crate) fn under(root: &Path) -> Self {
        Self {
            layout: Layout::under(root),
            bootstrap: Mutex::new(()),
        }
    }
}

/// What removing a voting member costs: `Some(why)` when a cluster of
/// `voters` voting members would keep fewer than a quorum of them
/// (`voters / 2 + 1`), which is what it needs to agree on the removal and
/// what it would be left with: a cluster of one or two. Removing a learner
/// costs nothing.
pub(crate) fn removal_refusal(voters: usize, removing_voter: bool) -> Option<String> {
    if !removing_voter {
        return None;
    }
    let quorum = voters / 2 + 1;
    let left = voters.saturating_sub(1);
    if left >= quorum {
        return None;
    }
    Some(if voters <= 1 {
        "it is the cluster's last voting member: removing it leaves no etcd cluster".to_owned()
    } else {
        format!(
            "the cluster has {voters} voting members and a quorum of {quorum}: removing one \
             leaves {left}, fewer than that quorum, and a member lost during the change stops \
             the cluster; add a control-plane node first"
        )
    })
}

/// The etcd CA of `config` (certificate and key, PEM), or why this node has
/// none to use: `worker` names the refusal of a worker.
fn etcd_ca<'a>(config: &'a MachineConfig, worker: &str) -> Result<(&'a str, &'a str), Status> {
    if config.machine.machine_type == MachineType::Worker {
        return Err(Status::failed_precondition(worker));
    }
    let Some(etcd) = &config.cluster.etcd else {
        return Err(Status::failed_precondition(
            "this node's configuration has no cluster.etcd (the etcd CA): etcd does not run here",
        ));
    };
    let Some(key) = &etcd.ca.key else {
        return Err(Status::failed_precondition(
            "this node's configuration holds no key of the etcd CA (cluster.etcd.ca.key): it \
             cannot issue itself an etcd client certificate",
        ));
    };
    Ok((&etcd.ca.crt, key.expose()))
}

/// The API server's etcd client certificate, issued now from the etcd CA
/// of `config`, with the CA's certificate.
fn client_of(config: &MachineConfig, worker: &str) -> Result<(String, IssuedCert), Status> {
    let (crt, key) = etcd_ca(config, worker)?;
    let ca = CertificateAuthority::from_pem(crt, key).map_err(|e| {
        Status::failed_precondition(format!("cluster.etcd.ca cannot issue certificates: {e}"))
    })?;
    let client = ca
        .issue_etcd(
            EtcdCert::Client,
            CLIENT_NAME,
            &[],
            Validity::from_now(CLIENT_CERT_LIFETIME),
        )
        .map_err(|e| Status::internal(format!("issuing the etcd client certificate: {e}")))?;
    Ok((crt.to_owned(), client))
}

/// `https://HOST:2379` for the host of the control-plane endpoint
/// (`https://HOST:PORT`, `HOST` a name, an IPv4 address or a bracketed IPv6
/// one).
pub(crate) fn etcd_url_of(endpoint: &str) -> Result<String, String> {
    let rest = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| format!("{endpoint:?} does not start with https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or_else(|| format!("{endpoint:?}: an IPv6 address without its closing ]"))?;
        &authority[..end + 2]
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("{endpoint:?} names no host"));
    }
    Ok(format!("https://{host}:{}", bramble_etcd::CLIENT_PORT))
}

/// A client certificate, its CA and where etcd is.
struct Access {
    ca_pem: String,
    client: IssuedCert,
    endpoint: String,
}

impl Access {
    /// Connects (lazily: the first call dials) and runs `op`, bounded by
    /// `timeout`.
    async fn call<T, F, Fut>(&self, what: &str, timeout: Duration, op: F) -> Result<T, Status>
    where
        F: FnOnce(Cluster) -> Fut,
        Fut: Future<Output = Result<T, bramble_etcd::Error>>,
    {
        let endpoints = [self.endpoint.clone()];
        let run = async {
            let cluster = Cluster::connect(&endpoints, &self.ca_pem, &self.client).await?;
            op(cluster).await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result.map_err(|e| error_status(&self.endpoint, e)),
            Err(_) => Err(Status::unavailable(format!(
                "etcd at {} did not answer ({what}) within {} s",
                self.endpoint,
                timeout.as_secs()
            ))),
        }
    }
}

/// A failed etcd call as the API's status: a transport failure or an
/// unavailable member is `Unavailable`; etcd's own refusals keep their code.
fn error_status(endpoint: &str, e: bramble_etcd::Error) -> Status {
    use etcd_client::Error as E;
    let text = format!("{e} (etcd at {endpoint})");
    match &e {
        bramble_etcd::Error::Etcd { source, .. } => match source {
            E::GRpcStatus(s) => match s.code() {
                tonic::Code::Unknown | tonic::Code::Internal => Status::internal(text),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Status::unavailable(text),
                code => Status::new(code, text),
            },
            E::TransportError(_) | E::IoError(_) => Status::unavailable(text),
            _ => Status::internal(text),
        },
        _ => Status::internal(text),
    }
}

/// Whether something listens at `addr`: `Err(why)` when nothing does, so
/// that a call to a member that is not running says so at once.
async fn listening(addr: SocketAddr) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("nothing listens on {addr} ({e})")),
        Err(_) => Err(format!(
            "{addr} did not accept a connection within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// A member as the API lists it.
fn member(m: &MemberInfo) -> EtcdMember {
    EtcdMember {
        id: format_id(m.id),
        name: m.name.clone(),
        peer_urls: m.peer_urls.clone(),
        client_urls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// A member's name, or its ID before it has started.
fn label(m: &MemberInfo) -> String {
    if m.name.is_empty() {
        format_id(m.id)
    } else {
        m.name.clone()
    }
}

fn names(members: &[MemberInfo]) -> String {
    members.iter().map(label).collect::<Vec<_>>().join(", ")
}

/// The member `wanted` names: its ID (hex, leading zeros optional) or its
/// name; refused when it names none, or two different members.
fn find_member<'a>(members: &'a [MemberInfo], wanted: &str) -> Result<&'a MemberInfo, Status> {
    let wanted = wanted.trim();
    if wanted.is_empty() {
        return Err(Status::invalid_argument(
            "member: name the member by its ID or its name (nodectl etcd members lists them)",
        ));
    }
    let id = u64::from_str_radix(wanted, 16).ok();
    let by_id = members.iter().find(|m| Some(m.id) == id);
    let by_name = members.iter().find(|m| m.name == wanted);
    match (by_id, by_name) {
        (Some(a), Some(b)) if a.id != b.id => Err(Status::invalid_argument(format!(
            "member: {wanted:?} is the ID of {} and the name of member {}: give the ID",
            label(a),
            format_id(b.id)
        ))),
        (Some(m), _) | (None, Some(m)) => Ok(m),
        (None, None) => Err(Status::not_found(format!(
            "no etcd member has the ID or name {wanted:?} (members: {})",
            members
                .iter()
                .map(|m| format!("{} {}", format_id(m.id), label(m)))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `2026-12-08 19:40:00 UTC` for seconds since the epoch.
fn utc(secs: u64) -> String {
    let Ok(t) = bramble_pki::time::OffsetDateTime::from_unix_timestamp(
        i64::try_from(secs).unwrap_or(i64::MAX),
    ) else {
        return format!("{secs} s after the epoch");
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

impl MachineApi {
    /// Access to this node's own member for an etcd call: refused on a
    /// worker or a node without the etcd CA's key, and, at once, when
    /// nothing listens on etcd's client port.
    async fn local_etcd(&self) -> Result<Access, Status> {
        let stored = self
            .node
            .current()
            .await
            .ok_or_else(|| Status::failed_precondition("this node has no configuration"))?;
        let (ca_pem, client) = client_of(&stored.config, WORKER)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], bramble_etcd::CLIENT_PORT));
        listening(addr).await.map_err(|why| {
            Status::unavailable(format!(
                "etcd does not answer on this node: {why}; its service is not running, or has \
                 not formed or joined a cluster yet (nodectl services, nodectl logs etcd)"
            ))
        })?;
        Ok(Access {
            ca_pem,
            client,
            endpoint: LOCAL_ENDPOINT.to_owned(),
        })
    }
}

/// This member's status and the members, in one connection.
async fn status_and_members(
    access: &Access,
    timeout: Duration,
) -> Result<(StatusInfo, Vec<MemberInfo>), Status> {
    access
        .call("status and members", timeout, |mut c| async move {
            let status = c.status().await?;
            let members = c.members().await?;
            Ok((status, members))
        })
        .await
}

#[tracing::instrument(skip_all)]
pub(super) async fn etcd_members(
    api: &MachineApi,
    _request: Request<EtcdMembersRequest>,
) -> Result<Response<EtcdMembersResponse>, Status> {
    let access = api.local_etcd().await?;
    let members = access
        .call("listing members", CALL_TIMEOUT, |mut c| async move {
            c.members().await
        })
        .await?;
    Ok(Response::new(EtcdMembersResponse {
        members: members.iter().map(member).collect(),
    }))
}

#[tracing::instrument(skip_all)]
pub(super) async fn etcd_status(
    api: &MachineApi,
    _request: Request<EtcdStatusRequest>,
) -> Result<Response<EtcdStatusResponse>, Status> {
    let access = api.local_etcd().await?;
    let s = access
        .call(
            "status",
            CALL_TIMEOUT,
            |mut c| async move { c.status().await },
        )
        .await?;
    Ok(Response::new(EtcdStatusResponse {
        cluster_id: format_id(s.cluster_id),
        member_id: format_id(s.member_id),
        leader: if s.leader == 0 {
            String::new()
        } else {
            format_id(s.leader)
        },
        raft_term: s.raft_term,
        raft_index: s.raft_index,
        raft_applied_index: s.raft_applied_index,
        db_size_bytes: s.db_size,
        version: s.version,
        errors: s.errors,
        is_learner: s.is_learner,
    }))
}

/// Removes `target` from a cluster of `members` after the quorum check
/// (unless `force`).
async fn remove_checked(
    access: &Access,
    members: &[MemberInfo],
    target: &MemberInfo,
    force: bool,
) -> Result<(), Status> {
    let voters = members.iter().filter(|m| !m.is_learner).count();
    if let Some(why) = removal_refusal(voters, !target.is_learner) {
        if !force {
            return Err(Status::failed_precondition(format!(
                "member {} ({}) was not removed: {why} (--force removes it anyway)",
                label(target),
                format_id(target.id)
            )));
        }
        tracing::warn!(member = %format_id(target.id), "removing anyway (forced): {why}");
    }
    let id = target.id;
    access
        .call("removing a member", CALL_TIMEOUT, |mut c| async move {
            c.remove(id).await
        })
        .await
}

/// What asking this node's member to leave came to.
enum Leave {
    /// It left its cluster.
    Left(MemberInfo),
    /// It is not among the cluster's members (any more): why, in a
    /// sentence.
    NotAMember(String),
}

/// Makes this node's own member (the one that answered `status`) leave the
/// cluster of `members`, after the quorum check unless `force`: the one
/// code path of EtcdLeave and of Reset on a control-plane node.
async fn leave_cluster(
    access: &Access,
    status: &StatusInfo,
    members: &[MemberInfo],
    force: bool,
) -> Result<Leave, Status> {
    let Some(me) = members.iter().find(|m| m.id == status.member_id) else {
        return Ok(Leave::NotAMember(format!(
            "this node's member {} is not among the cluster's members ({}): it has left already",
            format_id(status.member_id),
            names(members)
        )));
    };
    remove_checked(access, members, me, force).await?;
    Ok(Leave::Left(me.clone()))
}

#[tracing::instrument(skip_all, fields(force = request.get_ref().force))]
pub(super) async fn etcd_leave(
    api: &MachineApi,
    request: Request<EtcdLeaveRequest>,
) -> Result<Response<EtcdLeaveResponse>, Status> {
    let force = request.into_inner().force;
    let access = api.local_etcd().await?;
    let (status, members) = status_and_members(&access, CALL_TIMEOUT).await?;
    let me = match leave_cluster(&access, &status, &members, force).await? {
        Leave::Left(me) => me,
        Leave::NotAMember(why) => return Err(Status::failed_precondition(why)),
    };
    let summary = format!(
        "member {} ({}) left etcd cluster {}: etcd on this node stops by itself once it sees \
         its removal; its data stays in {} until the node is reset with --wipe-data",
        label(&me),
        format_id(me.id),
        format_id(status.cluster_id),
        api.node.etcd.layout.data_dir.display()
    );
    api.node.note(summary.clone());
    Ok(Response::new(EtcdLeaveResponse {
        member: Some(member(&me)),
        summary,
    }))
}

/// Reset's first step: on a control-plane node whose etcd member answers,
/// the member leaves its cluster ([`leave_cluster`], as EtcdLeave does).
/// `Ok(None)` when the node runs no etcd (a worker, no configuration);
/// `Ok(Some(sentence))` saying what happened (the member left, had left
/// already, etcd did not answer, or, with `force`, could not leave) for the
/// node's events and the answer; `Err` when the reset must not go on
/// (nothing changed): leaving would cost the cluster its quorum, or the
/// member answered but could not leave, and `force` was not given.
pub(super) async fn leave_before_reset(
    api: &MachineApi,
    force: bool,
) -> Result<Option<String>, Status> {
    let Some(stored) = api.node.current().await else {
        return Ok(None);
    };
    if stored.config.machine.machine_type == MachineType::Worker {
        return Ok(None);
    }
    let refuse = |e: Status| {
        Status::new(
            e.code(),
            format!(
                "the node was not reset (nothing changed): its etcd member leaves the cluster \
                 first, and {}; nodectl reset --force resets the node anyway",
                e.message()
            ),
        )
    };
    let access = match api.local_etcd().await {
        Ok(access) => access,
        Err(e) if e.code() == tonic::Code::FailedPrecondition => {
            return Ok(Some(format!("etcd was not asked: {}", e.message())));
        }
        Err(e) if e.code() == tonic::Code::Unavailable => {
            return Ok(Some(format!(
                "{}; no member left an etcd cluster",
                e.message()
            )));
        }
        Err(e) if force => {
            return Ok(Some(format!(
                "etcd was not asked ({}); reset anyway (forced)",
                e.message()
            )));
        }
        Err(e) => return Err(refuse(e)),
    };
    let (status, members) = match status_and_members(&access, CALL_TIMEOUT).await {
        Ok(known) => known,
        Err(e) if e.code() == tonic::Code::Unavailable => {
            return Ok(Some(format!(
                "etcd does not answer on this node ({}); no member left an etcd cluster",
                e.message()
            )));
        }
        Err(e) if force => {
            return Ok(Some(format!(
                "etcd's members were not listed ({}); reset anyway (forced)",
                e.message()
            )));
        }
        Err(e) => return Err(refuse(e)),
    };
    match leave_cluster(&access, &status, &members, force).await {
        Ok(Leave::Left(me)) => Ok(Some(format!(
            "etcd member {} ({}) left cluster {} first",
            label(&me),
            format_id(me.id),
            format_id(status.cluster_id)
        ))),
        Ok(Leave::NotAMember(why)) => Ok(Some(why)),
        Err(e) if force => Ok(Some(format!(
            "etcd member {} did not leave cluster {} ({}); reset anyway (forced)",
            format_id(status.member_id),
            format_id(status.cluster_id),
            e.message()
        ))),
        Err(e) => Err(refuse(e)),
    }
}

#[tracing::instrument(skip_all, fields(member = %request.get_ref().member, force = request.get_ref().force))]
pub(super) async fn etcd_remove_member(
    api: &MachineApi,
    request: Request<EtcdRemoveMemberRequest>,
) -> Result<Response<EtcdRemoveMemberResponse>, Status> {
    let req = request.into_inner();
    let access = api.local_etcd().await?;
    let (status, members) = status_and_members(&access, CALL_TIMEOUT).await?;
    let target = find_member(&members, &req.member)?;
    if target.id == status.member_id {
        return Err(Status::failed_precondition(format!(
            "member {} ({}) is this node's own: it leaves with nodectl etcd leave on this node",
            label(target),
            format_id(target.id)
        )));
    }
    remove_checked(&access, &members, target, req.force).await?;
    api.node.note(format!(
        "etcd member {} ({}) removed from cluster {}",
        label(target),
        format_id(target.id),
        format_id(status.cluster_id)
    ));
    Ok(Response::new(EtcdRemoveMemberResponse {
        member: Some(member(target)),
    }))
}

#[tracing::instrument(skip_all)]
pub(super) async fn etcd_snapshot(
    api: &MachineApi,
    _request: Request<EtcdSnapshotRequest>,
) -> Result<Response<ResponseStream<EtcdSnapshotChunk>>, Status> {
    let access = api.local_etcd().await?;
    let (cluster, mut stream) = access
        .call("starting a snapshot", CALL_TIMEOUT, |mut c| async move {
            let stream =
                c.client()
                    .snapshot()
                    .await
                    .map_err(|source| bramble_etcd::Error::Etcd {
                        what: "starting a snapshot".into(),
                        source,
                    })?;
            Ok((c, stream))
        })
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_BUFFER);
    let endpoint = access.endpoint;
    let forward = async move {
        // The client (and its channel) lives as long as the stream.
        let _cluster = cluster;
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        loop {
            let next = match tokio::time::timeout(SNAPSHOT_STALL, stream.message()).await {
                Ok(next) => next,
                Err(_) => {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "etcd at {endpoint} sent no snapshot data for {} s",
                            SNAPSHOT_STALL.as_secs()
                        ))))
                        .await;
                    return;
                }
            };
            match next {
                Ok(Some(piece)) => {
                    let data = piece.blob().to_vec();
                    hasher.update(&data);
                    total += data.len() as u64;
                    let chunk = EtcdSnapshotChunk {
                        data,
                        remaining_bytes: piece.remaining_bytes(),
                        ..EtcdSnapshotChunk::default()
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        tracing::info!(sent = total, "the client left before the snapshot ended");
                        return;
                    }
                }
                Ok(None) => break,
                Err(source) => {
                    let e = bramble_etcd::Error::Etcd {
                        what: "reading the snapshot".into(),
                        source,
                    };
                    let _ = tx.send(Err(error_status(&endpoint, e))).await;
                    return;
                }
            }
        }
        let sha256: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        tracing::info!(bytes = total, %sha256, "snapshot sent");
        let _ = tx
            .send(Ok(EtcdSnapshotChunk {
                done: true,
                total_bytes: total,
                sha256,
                ..EtcdSnapshotChunk::default()
            }))
            .await;
    };
    tokio::spawn(forward.instrument(tracing::Span::current()));
    api.node
        .note("etcd snapshot taken through the machine API".into());
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

#[tracing::instrument(skip_all)]
pub(super) async fn etcd_defragment(
    api: &MachineApi,
    _request: Request<EtcdDefragmentRequest>,
) -> Result<Response<EtcdDefragmentResponse>, Status> {
    let access = api.local_etcd().await?;
    let (before, after) = access
        .call("defragmenting", DEFRAGMENT_TIMEOUT, |mut c| async move {
            let before = c.status().await?;
            c.client()
                .defragment()
                .await
                .map_err(|source| bramble_etcd::Error::Etcd {
                    what: "defragmenting".into(),
                    source,
                })?;
            let after = c.status().await?;
            Ok((before, after))
        })
        .await?;
    api.node.note(format!(
        "etcd member {} defragmented: {} bytes before, {} after",
        format_id(after.member_id),
        before.db_size,
        after.db_size
    ));
    Ok(Response::new(EtcdDefragmentResponse {
        member_id: format_id(after.member_id),
        db_size_before_bytes: before.db_size,
        db_size_after_bytes: after.db_size,
    }))
}

/// The raised alarms, with the members' names.
async fn alarms(access: &Access) -> Result<Vec<(u64, AlarmType, EtcdAlarm)>, Status> {
    let (raised, members) = access
        .call("listing alarms", CALL_TIMEOUT, |mut c| async move {
            let raised = c
                .client()
                .alarm(AlarmAction::Get, AlarmType::None, None)
                .await
                .map_err(|source| bramble_etcd::Error::Etcd {
                    what: "listing alarms".into(),
                    source,
                })?;
            let members = c.members().await?;
            Ok((raised, members))
        })
        .await?;
    Ok(raised
        .alarms()
        .iter()
        .map(|a| {
            let name = members
                .iter()
                .find(|m| m.id == a.member_id())
                .map(|m| m.name.clone())
                .unwrap_or_default();
            (
                a.member_id(),
                a.alarm(),
                EtcdAlarm {
                    member_id: format_id(a.member_id()),
                    member_name: name,
                    alarm: a.alarm().as_str_name().to_owned(),
                },
            )
        })
        .collect())
}

#[tracing::instrument(skip_all)]
pub(super) async fn etcd_alarm_list(
    api: &MachineApi,
    _request: Request<EtcdAlarmListRequest>,
) -> Result<Response<EtcdAlarmListResponse>, Status> {
    let access = api.local_etcd().await?;
    let alarms = alarms(&access).await?;
    Ok(Response::new(EtcdAlarmListResponse {
        alarms: alarms.into_iter().map(|(_, _, a)| a).collect(),
    }))
}

#[tracing::instrument(skip_all)]
pub(super) async fn etcd_alarm_disarm(
    api: &MachineApi,
    _request: Request<EtcdAlarmDisarmRequest>,
) -> Result<Response<EtcdAlarmDisarmResponse>, Status> {
    let access = api.local_etcd().await?;
    let raised = alarms(&access).await?;
    let mut disarmed = Vec::with_capacity(raised.len());
    for (id, kind, alarm) in raised {
        access
            .call("disarming an alarm", CALL_TIMEOUT, |mut c| async move {
                let mut options = AlarmOptions::new();
                options.with_member(id);
                c.client()
                    .alarm(AlarmAction::Deactivate, kind, Some(options))
                    .await
                    .map_err(|source| bramble_etcd::Error::Etcd {
                        what: format!(
                            "disarming {} of member {}",
                            kind.as_str_name(),
                            format_id(id)
                        ),
                        source,
                    })
            })
            .await?;
        api.node.note(format!(
            "etcd alarm {} of member {} disarmed",
            alarm.alarm, alarm.member_id
        ));
        disarmed.push(alarm);
    }
    Ok(Response::new(EtcdAlarmDisarmResponse { disarmed }))
}

/// An etcd cluster that answers at `url`: its ID and its members' names.
/// `None` when nothing (of this cluster's CA) answers there.
async fn existing_cluster(
    url: &str,
    ca_pem: &str,
    client: &IssuedCert,
) -> Option<(u64, Vec<MemberInfo>)> {
    // Resolve and probe first: a name that does not resolve or a port
    // where nothing listens is answered at once.
    let authority = url.strip_prefix("https://").unwrap_or(url).to_owned();
    let resolved = tokio::task::spawn_blocking(move || {
        authority.to_socket_addrs().map(|a| a.collect::<Vec<_>>())
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    let mut reachable = false;
    for addr in resolved {
        match listening(addr).await {
            Ok(()) => {
                reachable = true;
                break;
            }
            Err(why) => tracing::debug!(%url, "no etcd there: {why}"),
        }
    }
    if !reachable {
        return None;
    }
    let access = Access {
        ca_pem: ca_pem.to_owned(),
        client: client.clone(),
        endpoint: url.to_owned(),
    };
    match status_and_members(&access, PROBE_TIMEOUT).await {
        Ok((status, members)) if !members.is_empty() => Some((status.cluster_id, members)),
        Ok(_) => None,
        Err(e) => {
            tracing::info!(%url, error = %e.message(), "no etcd cluster of this CA answers there");
            None
        }
    }
}

#[tracing::instrument(skip_all)]
pub(super) async fn bootstrap(
    api: &MachineApi,
    _request: Request<BootstrapRequest>,
) -> Result<Response<BootstrapResponse>, Status> {
    let (cluster, deciding) = may_bootstrap(api).await?;
    leave_request(api, cluster, None, deciding).await
}

#[tracing::instrument(skip_all)]
pub(super) async fn bootstrap_recover(
    api: &MachineApi,
    request: Request<tonic::Streaming<BootstrapRecoverChunk>>,
) -> Result<Response<BootstrapResponse>, Status> {
    let mut stream = request.into_inner();
    let (cluster, deciding) = may_bootstrap(api).await?;
    let dest = api.node.etcd.layout.restore_snapshot.clone();
    let (size, sha256) = receive_snapshot(&mut stream, &dest).await?;
    tracing::info!(bytes = size, %sha256, path = %dest.display(), "snapshot to restore received");
    let restore = Restored {
        path: dest.clone(),
        size,
        sha256,
    };
    let answer = leave_request(api, cluster, Some(restore), deciding).await;
    if answer.is_err() {
        let _ = bramble_atomic::remove_if_exists(&dest);
    }
    answer
}

/// The snapshot a recovering bootstrap left for etcd's service.
struct Restored {
    path: PathBuf,
    size: u64,
    sha256: String,
}

/// Receives the snapshot into `dest`: a temporary file beside it, synced,
/// renamed into place only when its size and SHA-256 are the ones the
/// first message named. Returns both.
async fn receive_snapshot<S>(stream: &mut S, dest: &Path) -> Result<(u64, String), Status>
where
    S: tokio_stream::Stream<Item = Result<BootstrapRecoverChunk, Status>> + Unpin,
{
    let tmp = bramble_atomic::temporary_path(dest)
        .map_err(|e| Status::internal(format!("the snapshot cannot be written: {e}")))?;
    let result = async {
        let got = write_upload(stream, &tmp).await?;
        bramble_atomic::rename(&tmp, dest)
            .map_err(|e| Status::internal(format!("the snapshot was not written: {e}")))?;
        Ok(got)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn write_upload<S>(stream: &mut S, tmp: &Path) -> Result<(u64, String), Status>
where
    S: tokio_stream::Stream<Item = Result<BootstrapRecoverChunk, Status>> + Unpin,
{
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use tokio_stream::StreamExt as _;
    async fn next<S>(stream: &mut S) -> Result<Option<BootstrapRecoverChunk>, Status>
    where
        S: tokio_stream::Stream<Item = Result<BootstrapRecoverChunk, Status>> + Unpin,
    {
        match tokio::time::timeout(SNAPSHOT_STALL, stream.next()).await {
            Ok(got) => got.transpose(),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no piece of the snapshot arrived for {} s",
                SNAPSHOT_STALL.as_secs()
            ))),
        }
    }
    let first = next(stream)
        .await?
        .ok_or_else(|| Status::invalid_argument("no snapshot was sent"))?;
    let size = first.size;
    if size == 0 || size > MAX_RESTORE_BYTES {
        return Err(Status::invalid_argument(format!(
            "the first message names a snapshot of {size} bytes: it must have 1 to \
             {MAX_RESTORE_BYTES} (8 GiB, etcd's largest backend quota)"
        )));
    }
    let want = first.sha256.to_ascii_lowercase();
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::invalid_argument(
            "the first message must name the snapshot's SHA-256 (64 hex digits)",
        ));
    }
    if let Some(dir) = tmp.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Status::internal(format!("creating {}: {e}", dir.display())))?;
    }
    let _ = std::fs::remove_file(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| Status::internal(format!("creating {}: {e}", tmp.display())))?;
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    let mut chunk = Some(first);
    while let Some(piece) = chunk {
        total = total.saturating_add(piece.data.len() as u64);
        if total > size {
            return Err(Status::invalid_argument(format!(
                "more than the {size} bytes the first message named were sent: nothing written"
            )));
        }
        hasher.update(&piece.data);
        file.write_all(&piece.data)
            .map_err(|e| Status::internal(format!("writing {}: {e}", tmp.display())))?;
        chunk = next(stream).await?;
    }
    if total != size {
        return Err(Status::invalid_argument(format!(
            "the snapshot ended after {total} of the {size} bytes the first message named: \
             nothing written"
        )));
    }
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != want {
        return Err(Status::invalid_argument(format!(
            "the snapshot's SHA-256 is {got}, not {want} as the first message named: nothing \
             written"
        )));
    }
    file.sync_all()
        .map_err(|e| Status::internal(format!("syncing {}: {e}", tmp.display())))?;
    Ok((size, got))
}

/// What Bootstrap and BootstrapRecover check before they ask anything:
/// a control-plane node, without etcd data or a request waiting, and no
/// cluster answering at the endpoint. Returns the cluster's name and the
/// lock that lets one bootstrap decide at a time.
async fn may_bootstrap(
    api: &MachineApi,
) -> Result<(String, tokio::sync::MutexGuard<'_, ()>), Status> {
    let node = &api.node;
    let stored = node
        .current()
        .await
        .ok_or_else(|| Status::failed_precondition("this node has no configuration"))?;
    let config = &stored.config;
    let (ca_pem, client) = client_of(config, WORKER_BOOTSTRAP)?;
    // One bootstrap decides at a time: a second one sees the first's request.
    let _deciding = node.etcd.bootstrap.lock().await;
    let layout = &node.etcd.layout;
    if layout.has_data() {
        let access = Access {
            ca_pem: ca_pem.clone(),
            client: client.clone(),
            endpoint: LOCAL_ENDPOINT.to_owned(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], bramble_etcd::CLIENT_PORT));
        let known = match listening(addr).await {
            Ok(()) => status_and_members(&access, PROBE_TIMEOUT)
                .await
                .map_err(|e| e.message().to_owned()),
            Err(why) => Err(why),
        };
        let what = match known {
            Ok((status, members)) => format!(
                "it is a member of etcd cluster {} (members {})",
                format_id(status.cluster_id),
                names(&members)
            ),
            Err(why) => format!(
                "etcd starts from it ({}; etcd does not answer now: {why})",
                layout.data_dir.display()
            ),
        };
        return Err(Status::already_exists(format!(
            "this node already holds etcd data: {what}; nothing to bootstrap"
        )));
    }
    match layout.bootstrap_request() {
        Ok(None) => {}
        Ok(Some(waiting)) => {
            return Err(Status::already_exists(format!(
                "a bootstrap request is already waiting on this node (cluster {:?}, asked at {}, \
                 in {}): etcd forms the cluster when its service starts (nodectl logs etcd)",
                waiting.cluster,
                utc(waiting.requested_at),
                layout.bootstrap_request.display()
            )));
        }
        Err(e) => {
            return Err(Status::failed_precondition(format!(
                "{e}: remove it or reset the node with --wipe-data"
            )));
        }
    }
    let endpoint = &config.cluster.control_plane.endpoint;
    let url = etcd_url_of(endpoint).map_err(|why| {
        Status::failed_precondition(format!("cluster.controlPlane.endpoint: {why}"))
    })?;
    if let Some((cluster_id, members)) = existing_cluster(&url, &ca_pem, &client).await {
        return Err(Status::already_exists(format!(
            "an etcd cluster already exists (cluster {}, members {}, at {url}): this node joins \
             it by itself",
            format_id(cluster_id),
            names(&members)
        )));
    }
    Ok((config.cluster.name.clone(), _deciding))
}

/// Leaves the bootstrap request (recovering from `restore` if given) and
/// restarts etcd's service to take it up.
async fn leave_request(
    api: &MachineApi,
    cluster: String,
    restore: Option<Restored>,
    deciding: tokio::sync::MutexGuard<'_, ()>,
) -> Result<Response<BootstrapResponse>, Status> {
    let node = &api.node;
    let requested_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let request = bramble_etcd::BootstrapRequest {
        cluster,
        requested_at,
        restore_from: restore.as_ref().map(|r| r.path.clone()),
    };
    node.etcd
        .layout
        .request_bootstrap(&request)
        .map_err(|e| Status::internal(format!("the bootstrap request was not written: {e}")))?;
    drop(deciding);
    let summary = match &restore {
        None => format!(
            "bootstrap requested: etcd forms cluster {:?} with this node as its first member \
             when its service starts; the other control-plane nodes join it by themselves",
            request.cluster
        ),
        Some(r) => format!(
            "recovery requested: the snapshot ({} bytes, sha256 {}) is in {}; etcd restores it \
             and starts cluster {:?} from it with this node as its only member when its service \
             starts (nodectl logs etcd); the other control-plane nodes join it by themselves \
             once their own etcd data is wiped",
            r.size,
            r.sha256,
            r.path.display(),
            request.cluster
        ),
    };
    node.note(summary.clone());
    restart_etcd(Arc::clone(node)).await;
    Ok(Response::new(BootstrapResponse {
        cluster: request.cluster,
        summary,
    }))
}

/// Restarts the `etcd` service so that it reads the bootstrap request now.
/// A node without the service (yet) or without a supervisor only logs it:
/// the request waits for etcd's next start.
async fn restart_etcd(node: Arc<super::Node>) {
    let service = bramble_config::Service::Etcd.name();
    match node.control("restart", move |c| c.restart(service)).await {
        Ok(()) => tracing::info!(service, "restarted to take up the bootstrap request"),
        Err(e) if e.code() == tonic::Code::NotFound => {
            tracing::info!(
                service,
                "no such service on this node: the request waits for etcd's next start"
            );
        }
        Err(e) => tracing::warn!(
            service,
            error = %e.message(),
            "not restarted: the request waits for etcd's next start"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        pieces: Vec<BootstrapRecoverChunk>,
    ) -> tokio_stream::Iter<std::vec::IntoIter<Result<BootstrapRecoverChunk, Status>>> {
        tokio_stream::iter(pieces.into_iter().map(Ok).collect::<Vec<_>>())
    }

    fn upload(data: &[u8], size: u64, sha256: &str) -> Vec<BootstrapRecoverChunk> {
        let mut pieces: Vec<_> = data
            .chunks(3)
            .map(|d| BootstrapRecoverChunk {
                data: d.to_vec(),
                ..BootstrapRecoverChunk::default()
            })
            .collect();
        pieces[0].size = size;
        pieces[0].sha256 = sha256.to_owned();
        pieces
    }

    fn sha(data: &[u8]) -> String {
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[tokio::test]
    async fn an_upload_lands_only_whole_and_with_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("var/lib/bramble/etcd-restore.db");
        let data = b"a snapshot of eleven pieces of three bytes".to_vec();
        let len = data.len() as u64;
        let good = sha(&data);
        let refused = [
            (upload(&data, len, &sha(b"other")), "SHA-256"),
            (upload(&data[..10], len, &good), "ended after 10"),
            (upload(&data, len - 1, &good), "more than the"),
            (upload(&data, 0, &good), "1 to"),
            (upload(&data, MAX_RESTORE_BYTES + 1, &good), "1 to"),
            (upload(&data, len, "abc"), "64 hex digits"),
            (Vec::new(), "no snapshot was sent"),
        ];
        for (pieces, why) in refused {
            let e = receive_snapshot(&mut chunks(pieces), &dest)
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(why), "{why}: {}", e.message());
            assert!(!dest.exists(), "{why}: written");
            let left: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
                .map(|d| d.map(|e| e.unwrap().file_name()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "{why}: left {left:?}");
        }
        // A stream that fails midway changes nothing either.
        let mut failing = tokio_stream::iter(vec![
            Ok(upload(&data, len, &good).remove(0)),
            Err(Status::cancelled("gone")),
        ]);
        receive_snapshot(&mut failing, &dest).await.unwrap_err();
        assert!(!dest.exists());

        let (size, got) =
            receive_snapshot(&mut chunks(upload(&data, len, &good.to_uppercase())), &dest)
                .await
                .unwrap();
        assert_eq!((size, got), (len, good));
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn removal_keeps_a_quorum_unless_the_cluster_is_one_or_two() {
        // (voters, refused when removing a voter)
        for (voters, refused) in [
            (1, true),
            (2, true),
            (3, false),
            (4, false),
            (5, false),
            (7, false),
        ] {
            assert_eq!(
                removal_refusal(voters, true).is_some(),
                refused,
                "{voters} voters"
            );
            // A learner never counts.
            assert_eq!(removal_refusal(voters, false), None, "{voters} voters");
        }
        let last = removal_refusal(1, true).unwrap();
        assert!(last.contains("last voting member"), "{last}");
        let two = removal_refusal(2, true).unwrap();
        assert!(
            two.contains("2 voting members") && two.contains("quorum of 2"),
            "{two}"
        );
        // The rule itself: what is left must still be a quorum of the
        // current voters.
        for voters in 1..=9usize {
            let quorum = voters / 2 + 1;
            assert_eq!(
                removal_refusal(voters, true).is_some(),
                voters - 1 < quorum,
                "{voters} voters"
            );
        }
    }

    #[test]
    fn the_etcd_url_is_the_endpoint_host_on_2379() {
        assert_eq!(
            etcd_url_of("https://10.0.0.10:6443").unwrap(),
            "https://10.0.0.10:2379"
        );
        assert_eq!(
            etcd_url_of("https://cp.example.org:6443/").unwrap(),
            "https://cp.example.org:2379"
        );
        assert_eq!(
            etcd_url_of("https://[fd00::1]:6443").unwrap(),
            "https://[fd00::1]:2379"
        );
        assert_eq!(
            etcd_url_of("https://cp.local").unwrap(),
            "https://cp.local:2379"
        );
        assert!(etcd_url_of("http://10.0.0.10:6443").is_err());
        assert!(etcd_url_of("https://:6443").is_err());
        assert!(etcd_url_of("https://[fd00::1:6443").is_err());
    }

    fn info(id: u64, name: &str, is_learner: bool) -> MemberInfo {
        MemberInfo {
            id,
            name: name.into(),
            peer_urls: vec![],
            client_urls: vec![],
            is_learner,
        }
    }

    #[test]
    fn members_are_found_by_id_or_name() {
        let members = [
            info(0x8e9e_05c5_2164_694d, "cp1", false),
            info(0x91bc_3c39_8fb3_c146, "cp2", false),
            info(0xabc, "cafe", false),
            info(0xcafe, "x", true),
        ];
        assert_eq!(find_member(&members, "cp2").unwrap().id, members[1].id);
        assert_eq!(
            find_member(&members, "8e9e05c52164694d").unwrap().name,
            "cp1"
        );
        assert_eq!(find_member(&members, "0000000000000abc").unwrap().id, 0xabc);
        // "cafe" is member x's ID and member 0xabc's name.
        let e = find_member(&members, "cafe").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("give the ID"), "{}", e.message());
        let e = find_member(&members, "cp9").unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(
            e.message().contains("cp1") && e.message().contains("8e9e05c52164694d"),
            "{}",
            e.message()
        );
        assert_eq!(
            find_member(&members, " ").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn only_a_control_plane_node_with_the_etcd_key_uses_etcd() {
        let ca =
            CertificateAuthority::generate("etcd", Validity::from_now(Duration::from_secs(3600)))
                .unwrap();
        let os =
            CertificateAuthority::generate("os", Validity::from_now(Duration::from_secs(3600)))
                .unwrap();
        let mut config = MachineConfig::new_minimal(
            MachineType::ControlPlane,
            "test",
            "https://10.0.0.10:6443",
            bramble_config::CertificateAuthority {
                crt: os.cert_pem().to_owned(),
                key: None,
            },
        );
        let e = client_of(&config, WORKER).unwrap_err();
        assert!(e.message().contains("no cluster.etcd"), "{}", e.message());
        config.cluster.etcd = Some(bramble_config::Etcd {
            ca: bramble_config::CertificateAuthority {
                crt: ca.cert_pem().to_owned(),
                key: None,
            },
            heartbeat_interval_ms: None,
            election_timeout_ms: None,
            snapshot_count: None,
            quota_backend_bytes: None,
            auto_compaction_retention: None,
        });
        let e = client_of(&config, WORKER).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message().contains("cluster.etcd.ca.key"),
            "{}",
            e.message()
        );
        if let Some(etcd) = &mut config.cluster.etcd {
            etcd.ca.key = Some(bramble_config::Secret::new(ca.key_pem()));
        }
        let (pem, client) = client_of(&config, WORKER).unwrap();
        assert_eq!(pem, ca.cert_pem());
        assert!(client.cert_pem.contains("BEGIN CERTIFICATE"));
        config.machine.machine_type = MachineType::Worker;
        let e = client_of(&config, WORKER_BOOTSTRAP).unwrap_err();
        assert_eq!(e.message(), WORKER_BOOTSTRAP);
        assert_eq!(client_of(&config, WORKER).unwrap_err().message(), WORKER);
    }
}
