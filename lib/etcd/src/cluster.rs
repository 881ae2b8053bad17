//! The cluster operations, over etcd's client API with mutual TLS.

use std::time::{Duration, Instant};

use bramble_pki::IssuedCert;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, MemberAddOptions, TlsOptions};
use serde::Serialize;

use crate::Error;

/// How long connecting to a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a membership change is retried while the cluster settles.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(60);

/// One member, as the members API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberInfo {
    /// The member's ID.
    pub id: u64,
    /// Its name; empty until a member that was added has started.
    pub name: String,
    /// Where its peers reach it.
    pub peer_urls: Vec<String>,
    /// Where clients reach it; empty until it has started.
    pub client_urls: Vec<String>,
    /// A learner receives the log but does not vote.
    pub is_learner: bool,
}

/// One member's view of the cluster (the maintenance API's status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusInfo {
    /// The cluster's ID.
    pub cluster_id: u64,
    /// The member that answered.
    pub member_id: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
    /// etcd's version.
    pub version: String,
    /// Its raft term.
    pub raft_term: u64,
    /// Its last raft index.
    pub raft_index: u64,
    /// The index it has applied.
    pub raft_applied_index: u64,
    /// Its backend database's size in bytes.
    pub db_size: i64,
    /// Whether it is a learner.
    pub is_learner: bool,
    /// Alarms and errors it reports.
    pub errors: Vec<String>,
}

/// A client of the cluster.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to the first of `endpoints` (`https://host:2379`) that
    /// answers, trusting `ca_pem` and presenting `client`.
    pub async fn connect(
        endpoints: &[String],
        ca_pem: &str,
        client: &IssuedCert,
    ) -> Result<Self, Error> {
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(Identity::from_pem(&client.cert_pem, &client.key_pem));
        let options = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(Error::etcd(format!(
                "connecting to {}",
                endpoints.join(", ")
            )))?;
        Ok(Self { client })
    }

    /// The etcd client itself, for reads and writes.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The members.
    pub async fn members(&mut self) -> Result<Vec<MemberInfo>, Error> {
        let resp = self
            .client
            .member_list()
            .await
            .map_err(Error::etcd("listing members"))?;
        Ok(resp.members().iter().map(member_info).collect())
    }

    /// The status of the member this client is connected to.
    pub async fn status(&mut self) -> Result<StatusInfo, Error> {
        let resp = self
            .client
            .status()
            .await
            .map_err(Error::etcd("asking for the status"))?;
        let header = resp
            .header()
            .ok_or_else(|| Error::Unexpected("a status without a header".into()))?;
        Ok(StatusInfo {
            cluster_id: header.cluster_id(),
            member_id: header.member_id(),
            leader: resp.leader(),
            version: resp.version().to_owned(),
            raft_term: resp.raft_term(),
            raft_index: resp.raft_index(),
            raft_applied_index: resp.raft_applied_index(),
            db_size: resp.db_size(),
            is_learner: resp.is_learner(),
            errors: resp.errors().to_vec(),
        })
    }

    /// Adds a learner that peers reach at `peer_url`; returns its ID and
    /// the members after the addition (the learner among them, nameless).
    /// etcd refuses a change while a member it has is not connected
    /// ("unhealthy cluster", for a few seconds after one started): retried
    /// for at most [`SETTLE_WITHIN`].
    pub async fn add_learner(&mut self, peer_url: &str) -> Result<(u64, Vec<MemberInfo>), Error> {
        let deadline = Instant::now() + SETTLE_WITHIN;
        let mut delay = Duration::from_millis(500);
        loop {
            let e = match self
                .client
                .member_add([peer_url], Some(MemberAddOptions::new().with_is_learner()))
                .await
            {
                Ok(resp) => {
                    let id = resp.member().map(|m| m.id()).ok_or_else(|| {
                        Error::Unexpected("member add answered without the member".into())
                    })?;
                    return Ok((id, resp.member_list().iter().map(member_info).collect()));
                }
                Err(e) => e,
            };
            // The change may have been applied although the answer says
            // otherwise (etcd 3.4 can answer "member not found" to an add
            // that raced a removal): the member list says.
            if let Ok(members) = self.members().await
                && let Some(added) = members
                    .iter()
                    .find(|m| m.is_learner && m.peer_urls.iter().any(|u| u == peer_url))
            {
                return Ok((added.id, members.clone()));
            }
            let retry = transient(&e) || e.to_string().contains("member not found");
            if !retry || Instant::now() + delay >= deadline {
                return Err(Error::etcd(format!("adding {peer_url} as a learner"))(e));
            }
            tracing::info!(error = %e, "the cluster is settling; adding the learner again shortly");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Promotes learner `id` to a voting member, retrying while etcd says
    /// the learner has not caught up with the leader yet, for at most
    /// `within`.
    pub async fn promote(&mut self, id: u64, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        let mut delay = Duration::from_millis(500);
        loop {
            match self.client.member_promote(id).await {
                Ok(_) => return Ok(()),
                Err(e) if transient(&e) && Instant::now() + delay < deadline => {
                    tracing::info!(member = %format_id(id), "learner not caught up yet; promoting again shortly");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(Error::etcd(format!("promoting member {}", format_id(id)))(
                        e,
                    ));
                }
            }
        }
    }

    /// Removes member `id`.
    pub async fn remove(&mut self, id: u64) -> Result<(), Error> {
        self.client
            .member_remove(id)
            .await
            .map_err(Error::etcd(format!("removing member {}", format_id(id))))?;
        Ok(())
    }
}

/// Member and cluster IDs as etcd prints them: 16 hex digits.
pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

fn member_info(m: &etcd_client::Member) -> MemberInfo {
    MemberInfo {
        id: m.id(),
        name: m.name().to_owned(),
        peer_urls: m.peer_urls().to_vec(),
        client_urls: m.client_urls().to_vec(),
        is_learner: m.is_learner(),
    }
}

/// etcd refuses to promote a learner whose log is behind the leader's
/// ("can only promote a learner member which is in sync with leader"), and
/// answers "etcdserver: unhealthy cluster"/"too many requests" while it
/// settles: all worth a retry.
fn transient(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    [
        "in sync with leader",
        "unhealthy cluster",
        "too many requests",
        "leader changed",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Makes room for this node in the cluster and adds it as a learner:
/// a member of the same name or peer URL (the same node, before its disk
/// was wiped, or a join that stopped before etcd started) is removed first.
/// Returns the learner's ID and how etcd must start to join
/// ([`crate::Initial::Existing`], every member with its name, this one's
/// included).
pub async fn enter(
    cluster: &mut Cluster,
    name: &str,
    peer_url: &str,
) -> Result<(u64, crate::Initial), Error> {
    for stale in cluster.members().await? {
        if stale.name == name || stale.peer_urls.iter().any(|u| u == peer_url) {
            tracing::warn!(
                member = %format_id(stale.id),
                name = %stale.name,
                "replacing this node's stale member (its data is gone)"
            );
            cluster.remove(stale.id).await?;
        }
    }
    let (id, members) = cluster.add_learner(peer_url).await?;
    let mut initial = Vec::with_capacity(members.len());
    for m in members {
        let url = m.peer_urls.first().cloned().ok_or_else(|| {
            Error::Unexpected(format!("member {} has no peer URL", format_id(m.id)))
        })?;
        let member_name = if m.id == id {
            name.to_owned()
        } else if m.name.is_empty() {
            // Another learner that has not started: etcd 3.4 allows one
            // learner at a time, so this add would have been refused.
            return Err(Error::Unexpected(format!(
                "member {} ({url}) has not started yet; joining again later",
                format_id(m.id)
            )));
        } else {
            m.name
        };
        initial.push((member_name, url));
    }
    Ok((id, crate::Initial::Existing(initial)))
}
