//! `nodectl health`: asks every node given and says whether the cluster is
//! healthy.
//!
//! Each node is asked, concurrently, for its version (whether it answers,
//! its role), its services, and its etcd member's status and member list
//! (`Version`, `ServiceList`, `EtcdStatus`, `EtcdMembers`). What the answers
//! mean is decided by [`evaluate`], a pure function: a node answers; its
//! services run (a one-shot one that exited with code 0 did its work, like a
//! worker's `etcd`; on a control-plane node `etcd` must run); on
//! control-plane nodes etcd answers, votes (no learner), sees a leader and
//! reports no error; across them, one leader, one cluster, one member list
//! and raft indexes within [`MAX_RAFT_LAG`] of the largest; every member of
//! the list is a node that answered, or is named as unreachable (its node
//! was asked but its member did not answer) or as not asked (its node was
//! not given with `-n`: not checked, not counted as unhealthy).

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use bramble_api::machine::v1::{
    EtcdMember, EtcdMembersRequest, EtcdStatusRequest, EtcdStatusResponse, Service,
    ServiceListRequest, VersionRequest,
};
use serde::Serialize;

use crate::cli::{GlobalArgs, OutputFormat};
use crate::client::MachineClient;
use crate::error::{Error, NodeError};
use crate::output::write_table;
use crate::{describe_failure, session};

/// How many raft entries a member may be behind the most advanced one
/// before it counts as unhealthy (followers apply within milliseconds; a
/// member this far behind is not keeping up).
pub const MAX_RAFT_LAG: u64 = 1000;

/// What one node answered: the input of [`evaluate`].
#[derive(Debug, Clone)]
pub struct Observed {
    /// The node as named on the command line.
    pub node: String,
    /// Its host, as given (to find its etcd member by name or URL).
    pub host: String,
    /// What it answered, or why it did not answer the API.
    pub answer: Result<Answered, String>,
}

/// A node that answers the API.
#[derive(Debug, Clone)]
pub struct Answered {
    /// Its host name.
    pub hostname: String,
    /// "controlplane" or "worker" (empty: not known).
    pub role: String,
    /// Its supervised services, or why they could not be listed.
    pub services: Result<Vec<Service>, String>,
    /// Its etcd member.
    pub etcd: Etcd,
}

/// A node's etcd, as it answered.
#[derive(Debug, Clone)]
pub enum Etcd {
    /// The node runs no etcd (a worker).
    None,
    /// Its member's status and the members it lists.
    Member {
        /// `EtcdStatus`.
        status: EtcdStatusResponse,
        /// `EtcdMembers`.
        members: Vec<EtcdMember>,
    },
    /// It did not answer: why.
    NoAnswer(String),
}

/// One node's line of the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeHealth {
    /// The node as named on the command line.
    pub node: String,
    /// Its host name (when it answered), or its etcd member's name.
    pub hostname: String,
    /// controlplane, worker, or empty when not known.
    pub role: String,
    /// Whether it answers the API.
    pub answers: bool,
    /// Why it does not.
    pub error: String,
    /// Services that do not run: `NAME: STATE`.
    pub services_not_running: Vec<String>,
    /// Its etcd member's ID (control-plane nodes whose etcd answers).
    pub etcd_member: String,
    /// Whether that member is a learner.
    pub etcd_learner: bool,
    /// The leader it sees (empty: none).
    pub etcd_leader: String,
    /// Its cluster's ID.
    pub etcd_cluster: String,
    /// Its raft index.
    pub raft_index: Option<u64>,
    /// How far behind the largest raft index of the nodes asked.
    pub raft_lag: Option<u64>,
    /// The members it lists, by name (or ID before a member started).
    pub etcd_members: Vec<String>,
    /// Why its etcd did not answer.
    pub etcd_error: String,
    /// What is wrong with it.
    pub problems: Vec<String>,
}

/// One etcd member of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct MemberHealth {
    /// Its ID.
    pub id: String,
    /// Its name (empty until it has started).
    pub name: String,
    /// `answers`, `unreachable` (its node was asked, the member did not
    /// answer) or `not asked` (its node was not given with -n).
    pub state: String,
    /// The node it was found on.
    pub node: String,
    /// Whether it is a learner.
    pub learner: bool,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// True when nothing is wrong.
    pub healthy: bool,
    /// One per node asked, in the order given.
    pub nodes: Vec<NodeHealth>,
    /// The etcd members the control-plane nodes list.
    pub etcd_members: Vec<MemberHealth>,
    /// What is wrong, one sentence each.
    pub problems: Vec<String>,
    /// What could not be checked (members whose node was not asked).
    pub not_checked: Vec<String>,
}

/// The host of an etcd URL (`https://HOST:PORT`, IPv6 in brackets).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    authority.split(':').next().unwrap_or_default()
}

/// Whether `m` is the member of the node at `host` (as given) called
/// `hostname`: by name, or by the host of one of its URLs.
fn member_of(m: &EtcdMember, host: &str, hostname: &str) -> bool {
    (!m.name.is_empty() && (m.name == host || m.name == hostname))
        || m.peer_urls
            .iter()
            .chain(&m.client_urls)
            .any(|u| url_host(u) == host)
}

fn member_label(m: &EtcdMember) -> String {
    if m.name.is_empty() {
        m.id.clone()
    } else {
        m.name.clone()
    }
}

/// Whether service `s` is as it should be: running or ready, or a one-shot
/// that exited with code 0 (a worker's etcd); on a control-plane node
/// etcd must run.
fn service_ok(s: &Service, control_plane: bool) -> bool {
    match s.state.as_str() {
        "running" | "ready" => true,
        "exited" => {
            (s.last_exit.is_empty() || s.last_exit == "code 0")
                && !(control_plane && s.name == "etcd")
        }
        _ => false,
    }
}

fn service_state(s: &Service) -> String {
    let mut text = format!("{}: {}", s.name, s.state);
    if !s.last_exit.is_empty() && s.state != "running" && s.state != "ready" {
        text.push_str(&format!(" ({})", s.last_exit));
    }
    text
}

/// `who sees x; who sees y` for a disagreement.
fn disagreement(seen: &[(String, String)]) -> String {
    let values: BTreeSet<&str> = seen.iter().map(|(_, v)| v.as_str()).collect();
    values
        .iter()
        .map(|v| {
            let who: Vec<&str> = seen
                .iter()
                .filter(|(_, x)| x == v)
                .map(|(n, _)| n.as_str())
                .collect();
            format!(
                "{} {} {}",
                who.join(", "),
                if who.len() == 1 { "sees" } else { "see" },
                if v.is_empty() { "none" } else { v }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Decides what is healthy in what the nodes answered.
pub fn evaluate(observed: &[Observed]) -> Health {
    // Every member any control-plane node lists, in the order first seen.
    let mut members: Vec<EtcdMember> = Vec::new();
    for o in observed {
        if let Ok(Answered {
            etcd: Etcd::Member {
                members: listed, ..
            },
            ..
        }) = &o.answer
        {
            for m in listed {
                if !members.iter().any(|x| x.id == m.id) {
                    members.push(m.clone());
                }
            }
        }
    }
    // How each node is called: its host name (or its member's name) and
    // the name it was given, e.g. `cp3 (10.77.0.13)`.
    let labels: Vec<String> = observed
        .iter()
        .map(|o| {
            let name = match &o.answer {
                Ok(a) => a.hostname.clone(),
                Err(_) => members
                    .iter()
                    .find(|m| member_of(m, &o.host, ""))
                    .map(|m| m.name.clone())
                    .unwrap_or_default(),
            };
            if name.is_empty() || name == o.node || name == o.host {
                o.node.clone()
            } else {
                format!("{name} ({})", o.node)
            }
        })
        .collect();
    let top = observed
        .iter()
        .filter_map(|o| match &o.answer {
            Ok(Answered {
                etcd: Etcd::Member { status, .. },
                ..
            }) => Some(status.raft_index),
            _ => None,
        })
        .max();

    let mut health = Health::default();
    let mut leaders = Vec::new();
    let mut clusters = Vec::new();
    let mut lists: Vec<(String, String)> = Vec::new();
    for (o, label) in observed.iter().zip(&labels) {
        let mut row = NodeHealth {
            node: o.node.clone(),
            ..NodeHealth::default()
        };
        let mut problems = Vec::new();
        match &o.answer {
            Err(why) => {
                row.error = why.clone();
                row.hostname = label
                    .strip_suffix(&format!(" ({})", o.node))
                    .unwrap_or_default()
                    .to_owned();
                problems.push(format!("{label} does not answer"));
            }
            Ok(a) => {
                row.answers = true;
                row.hostname = a.hostname.clone();
                row.role = a.role.clone();
                let control_plane = matches!(a.etcd, Etcd::Member { .. } | Etcd::NoAnswer(_));
                if row.role.is_empty() {
                    row.role = if control_plane {
                        "controlplane"
                    } else {
                        "worker"
                    }
                    .into();
                }
                match &a.services {
                    Err(why) => {
                        row.services_not_running = vec![format!("not listed: {why}")];
                        problems.push(format!("{label}: its services could not be listed"));
                    }
                    Ok(services) => {
                        for s in services.iter().filter(|s| !service_ok(s, control_plane)) {
                            let state = service_state(s);
                            problems.push(format!(
                                "{label}: service {}",
                                state.replacen(": ", " is ", 1)
                            ));
                            row.services_not_running.push(state);
                        }
                    }
                }
                match &a.etcd {
                    Etcd::None => {}
                    Etcd::NoAnswer(why) => {
                        row.etcd_error = why.clone();
                        problems.push(format!("{label}: etcd does not answer"));
                    }
                    Etcd::Member { status, members } => {
                        let me = members.iter().find(|m| m.id == status.member_id);
                        let name = me.map_or_else(|| status.member_id.clone(), member_label);
                        row.etcd_member = status.member_id.clone();
                        row.etcd_learner = status.is_learner;
                        row.etcd_leader = status.leader.clone();
                        row.etcd_cluster = status.cluster_id.clone();
                        row.raft_index = Some(status.raft_index);
                        row.etcd_members = members.iter().map(member_label).collect();
                        if me.is_none() {
                            problems.push(format!(
                                "{label}: its etcd member {} is not among the cluster's members",
                                status.member_id
                            ));
                        }
                        if status.is_learner {
                            problems.push(format!(
                                "{label}: etcd member {name} is still a learner (not voting)"
                            ));
                        }
                        if status.leader.is_empty() {
                            problems.push(format!("{label}: etcd member {name} sees no leader"));
                        }
                        if !status.errors.is_empty() {
                            problems.push(format!(
                                "{label}: etcd member {name} reports {}",
                                status.errors.join("; ")
                            ));
                        }
                        if let Some(top) = top {
                            let lag = top.saturating_sub(status.raft_index);
                            row.raft_lag = Some(lag);
                            if lag > MAX_RAFT_LAG {
                                problems.push(format!(
                                    "{label}: etcd member {name} is {lag} raft entries behind \
                                     (index {} of {top}; at most {MAX_RAFT_LAG})",
                                    status.raft_index
                                ));
                            }
                        }
                        leaders.push((label.clone(), status.leader.clone()));
                        clusters.push((label.clone(), status.cluster_id.clone()));
                        let ids: BTreeSet<&str> = members.iter().map(|m| m.id.as_str()).collect();
                        lists.push((label.clone(), ids.into_iter().collect::<Vec<_>>().join(",")));
                    }
                }
            }
        }
        health.problems.extend(problems.iter().cloned());
        row.problems = problems;
        health.nodes.push(row);
    }

    let distinct = |seen: &[(String, String)]| {
        seen.iter()
            .map(|(_, v)| v.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    };
    if distinct(&clusters) > 1 {
        health.problems.push(format!(
            "control-plane nodes are in different etcd clusters: {}",
            disagreement(&clusters)
        ));
    }
    if distinct(&leaders) > 1 {
        health.problems.push(format!(
            "control-plane nodes disagree on the etcd leader: {}",
            disagreement(&leaders)
        ));
    }
    if distinct(&lists) > 1 {
        health.problems.push(format!(
            "control-plane nodes list different etcd members: {}",
            disagreement(&lists)
        ));
    }

    // Every member: a node that answered, or named.
    for m in &members {
        let answering = observed.iter().zip(&labels).find(|(o, _)| {
            matches!(&o.answer, Ok(Answered {
                etcd: Etcd::Member { status, .. },
                ..
            }) if status.member_id == m.id)
        });
        let asked = observed.iter().zip(&labels).find(|(o, _)| {
            let hostname = o.answer.as_ref().map_or("", |a| a.hostname.as_str());
            member_of(m, &o.host, hostname)
        });
        let (state, node) = match (answering, asked) {
            (Some((_, label)), _) => ("answers", label.clone()),
            (None, Some((_, label))) => {
                health
                    .problems
                    .push(format!("etcd member {} is unreachable", member_label(m)));
                ("unreachable", label.clone())
            }
            (None, None) => {
                health.not_checked.push(format!(
                    "etcd member {} ({}) was not asked: give its node with -n",
                    member_label(m),
                    m.id
                ));
                ("not asked", String::new())
            }
        };
        health.etcd_members.push(MemberHealth {
            id: m.id.clone(),
            name: m.name.clone(),
            state: state.into(),
            node,
            learner: m.is_learner,
        });
    }
    health.healthy = health.problems.is_empty();
    health
}

impl Health {
    /// The last line: `healthy: ...` or `unhealthy: what; what`.
    pub fn verdict(&self) -> String {
        let not_checked = if self.not_checked.is_empty() {
            String::new()
        } else {
            format!(" (not checked: {})", self.not_checked.join("; "))
        };
        if self.healthy {
            let members = self
                .etcd_members
                .iter()
                .filter(|m| m.state == "answers")
                .count();
            format!(
                "healthy: {} node(s) answer, their services run, {members} etcd member(s) \
                 agree{not_checked}",
                self.nodes.len()
            )
        } else {
            format!("unhealthy: {}{not_checked}", self.problems.join("; "))
        }
    }

    /// Prints the report as two tables (nodes, then etcd members) and the
    /// verdict, or as one JSON or YAML document (the verdict then goes to
    /// `err`).
    pub fn print(
        &self,
        out: &mut dyn Write,
        err: &mut dyn Write,
        format: OutputFormat,
    ) -> Result<(), Error> {
        let encode = |format: &'static str, reason: String| Error::Encode { format, reason };
        match format {
            OutputFormat::Table => {
                let dash = |s: &str| {
                    if s.is_empty() {
                        "-".to_owned()
                    } else {
                        s.to_owned()
                    }
                };
                let number = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
                write_table(
                    out,
                    &[
                        "NODE",
                        "HOSTNAME",
                        "ROLE",
                        "API",
                        "SERVICES NOT RUNNING",
                        "ETCD MEMBER",
                        "LEARNER",
                        "LEADER",
                        "RAFT INDEX",
                        "LAG",
                        "MEMBERS",
                    ],
                    self.nodes.iter().map(|n| {
                        let etcd = |s: &str| {
                            if n.role == "worker" {
                                "-".to_owned()
                            } else if !n.etcd_error.is_empty() {
                                "no answer".to_owned()
                            } else {
                                dash(s)
                            }
                        };
                        vec![
                            n.node.clone(),
                            dash(&n.hostname),
                            dash(&n.role),
                            if n.answers {
                                "ok".to_owned()
                            } else {
                                format!("no answer: {}", n.error)
                            },
                            if n.answers {
                                dash(&n.services_not_running.join(", "))
                            } else {
                                "-".to_owned()
                            },
                            etcd(&n.etcd_member),
                            if n.etcd_member.is_empty() {
                                "-".to_owned()
                            } else {
                                n.etcd_learner.to_string()
                            },
                            etcd(&n.etcd_leader),
                            number(n.raft_index),
                            number(n.raft_lag),
                            dash(&n.etcd_members.join(",")),
                        ]
                    }),
                )?;
                if !self.etcd_members.is_empty() {
                    writeln!(out)?;
                    write_table(
                        out,
                        &["ETCD MEMBER", "NAME", "LEARNER", "STATE", "NODE"],
                        self.etcd_members.iter().map(|m| {
                            vec![
                                m.id.clone(),
                                dash(&m.name),
                                m.learner.to_string(),
                                m.state.clone(),
                                dash(&m.node),
                            ]
                        }),
                    )?;
                }
                for n in self.nodes.iter().filter(|n| !n.etcd_error.is_empty()) {
                    writeln!(out, "{}: etcd: {}", n.node, n.etcd_error)?;
                }
                writeln!(out, "{}", self.verdict())?;
            }
            OutputFormat::Json => {
                let text = serde_json::to_string_pretty(self)
                    .map_err(|e| encode("json", e.to_string()))?;
                writeln!(out, "{text}")?;
                writeln!(err, "{}", self.verdict())?;
            }
            OutputFormat::Yaml => {
                let text =
                    serde_norway::to_string(self).map_err(|e| encode("yaml", e.to_string()))?;
                write!(out, "{text}")?;
                writeln!(err, "{}", self.verdict())?;
            }
        }
        Ok(())
    }
}

/// How long past `--timeout` a node's answers may take: its etcd calls are
/// each bounded by `--timeout`, after connecting.
const MARGIN: Duration = Duration::from_secs(5);

/// `nodectl health`.
pub async fn run(g: &GlobalArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<bool, Error> {
    let (targets, tls) = session(g)?;
    if targets.is_empty() {
        return Err(Error::Usage(
            "health asks the nodes given with -n (or the context's nodes): give every node of \
             the cluster"
                .into(),
        ));
    }
    let each = g.timeout;
    let results = super::fan_out(&targets, &tls, each + MARGIN, move |c: MachineClient| {
        ask(c, each)
    })
    .await;
    let observed: Vec<Observed> = results
        .into_iter()
        .map(|(target, result)| Observed {
            node: target.node.to_string(),
            host: target.node.host.clone(),
            answer: result.map_err(|e| {
                let text = describe_failure(&target, &e);
                text.strip_prefix(&format!("{}: ", target.node))
                    .map_or(text.clone(), str::to_owned)
            }),
        })
        .collect();
    let health = evaluate(&observed);
    health.print(out, err, g.output)?;
    Ok(health.healthy)
}

/// One node's answers: `Err` only when `Version` fails (it does not
/// answer the API); the other calls' failures are part of the answer.
async fn ask(c: MachineClient, each: Duration) -> Result<Answered, tonic::Status> {
    let version = c.clone().version(VersionRequest {}).await?.into_inner();
    let (mut services, mut status, mut members) = (c.clone(), c.clone(), c);
    let (services, status, members) = tokio::join!(
        tokio::time::timeout(each, services.service_list(ServiceListRequest {})),
        tokio::time::timeout(each, status.etcd_status(EtcdStatusRequest {})),
        tokio::time::timeout(each, members.etcd_members(EtcdMembersRequest {})),
    );
    let (services, status, members) = (
        bounded("ServiceList", each, services),
        bounded("EtcdStatus", each, status),
        bounded("EtcdMembers", each, members),
    );
    let text = |s: tonic::Status| NodeError::from(s).to_string();
    let etcd = match (version.machine_type.as_str(), status, members) {
        ("worker", _, _) => Etcd::None,
        // A node that does not say its role (an older one): a worker
        // refuses etcd calls as such.
        ("", Err(s), _) if s.code() == tonic::Code::FailedPrecondition => Etcd::None,
        (_, Ok(status), Ok(members)) => Etcd::Member {
            status,
            members: members.members,
        },
        (_, Err(s), _) | (_, _, Err(s)) => Etcd::NoAnswer(text(s)),
    };
    Ok(Answered {
        hostname: version.hostname,
        role: version.machine_type,
        services: services.map(|r| r.services).map_err(text),
        etcd,
    })
}

/// A call's answer, or its failure, or that it did not answer within
/// `each`.
fn bounded<T>(
    what: &str,
    each: Duration,
    r: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
) -> Result<T, tonic::Status> {
    match r {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "{what}: no answer within {} s",
            each.as_secs_f64()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(name: &str) -> Service {
        Service {
            name: name.into(),
            state: "ready".into(),
            ready: true,
            ..Service::default()
        }
    }

    fn exited(name: &str, code: i32) -> Service {
        Service {
            name: name.into(),
            state: "exited".into(),
            last_exit: format!("code {code}"),
            ..Service::default()
        }
    }

    fn member(i: u64) -> EtcdMember {
        EtcdMember {
            id: format!("{i:016x}"),
            name: format!("cp{i}"),
            peer_urls: vec![format!("https://10.77.0.1{i}:2380")],
            client_urls: vec![format!("https://10.77.0.1{i}:2379")],
            is_learner: false,
        }
    }

    /// Control-plane node `i` of a healthy cluster of `n`, at index `index`.
    fn cp(i: u64, n: u64, index: u64) -> Observed {
        Observed {
            node: format!("10.77.0.1{i}"),
            host: format!("10.77.0.1{i}"),
            answer: Ok(Answered {
                hostname: format!("cp{i}"),
                role: "controlplane".into(),
                services: Ok(vec![running("apid"), running("etcd")]),
                etcd: Etcd::Member {
                    status: EtcdStatusResponse {
                        cluster_id: "00000000000000cc".into(),
                        member_id: format!("{i:016x}"),
                        leader: format!("{:016x}", 1),
                        raft_term: 2,
                        raft_index: index,
                        raft_applied_index: index,
                        ..EtcdStatusResponse::default()
                    },
                    members: (1..=n).map(member).collect(),
                },
            }),
        }
    }

    fn worker(name: &str) -> Observed {
        Observed {
            node: name.into(),
            host: name.into(),
            answer: Ok(Answered {
                hostname: name.into(),
                role: "worker".into(),
                services: Ok(vec![running("apid"), exited("etcd", 0)]),
                etcd: Etcd::None,
            }),
        }
    }

    fn status(o: &mut Observed) -> &mut EtcdStatusResponse {
        match &mut o.answer {
            Ok(Answered {
                etcd: Etcd::Member { status, .. },
                ..
            }) => status,
            _ => panic!("not a member"),
        }
    }

    #[test]
    fn a_healthy_cluster() {
        let h = evaluate(&[cp(1, 3, 100), cp(2, 3, 100), cp(3, 3, 99), worker("w1")]);
        assert!(h.healthy, "{:?}", h.problems);
        assert_eq!(h.nodes[2].raft_lag, Some(1));
        assert_eq!(h.etcd_members.len(), 3);
        assert!(h.etcd_members.iter().all(|m| m.state == "answers"));
        assert_eq!(h.etcd_members[2].node, "cp3 (10.77.0.13)");
        assert!(
            h.verdict().starts_with("healthy: 4 node(s)"),
            "{}",
            h.verdict()
        );
        let mut table = Vec::new();
        h.print(&mut table, &mut Vec::new(), OutputFormat::Table)
            .unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(
            table.contains("RAFT INDEX") && table.contains("answers"),
            "{table}"
        );
        assert!(
            table.lines().last().unwrap().starts_with("healthy"),
            "{table}"
        );
    }

    #[test]
    fn a_worker_without_etcd_is_healthy_but_a_control_plane_without_it_is_not() {
        assert!(evaluate(&[worker("w1")]).healthy);
        let mut node = cp(1, 1, 10);
        if let Ok(a) = &mut node.answer {
            a.services = Ok(vec![running("apid"), exited("etcd", 0)]);
        }
        let h = evaluate(&[node]);
        assert_eq!(
            h.problems,
            ["cp1 (10.77.0.11): service etcd is exited (code 0)"]
        );
        // A worker's service that failed counts.
        let mut w = worker("w1");
        if let Ok(a) = &mut w.answer {
            a.services = Ok(vec![running("apid"), exited("etcd", 1)]);
        }
        assert!(!evaluate(&[w]).healthy);
    }

    #[test]
    fn one_node_down() {
        let down = Observed {
            node: "10.77.0.13".into(),
            host: "10.77.0.13".into(),
            answer: Err("connection refused".into()),
        };
        let h = evaluate(&[cp(1, 3, 100), cp(2, 3, 100), down]);
        assert!(!h.healthy);
        assert_eq!(
            h.verdict(),
            "unhealthy: cp3 (10.77.0.13) does not answer; etcd member cp3 is unreachable"
        );
        assert_eq!(h.nodes[2].hostname, "cp3");
        assert_eq!(h.etcd_members[2].state, "unreachable");
    }

    #[test]
    fn etcd_down_on_an_answering_node() {
        let mut node = cp(1, 1, 10);
        if let Ok(a) = &mut node.answer {
            a.etcd = Etcd::NoAnswer("etcd does not answer on this node".into());
        }
        let h = evaluate(&[node]);
        assert_eq!(h.problems, ["cp1 (10.77.0.11): etcd does not answer"]);
    }

    #[test]
    fn a_member_not_asked_is_named_not_counted() {
        let h = evaluate(&[cp(1, 3, 100), cp(2, 3, 100)]);
        assert!(h.healthy, "{:?}", h.problems);
        assert_eq!(h.etcd_members[2].state, "not asked");
        assert!(h.verdict().contains("etcd member cp3"), "{}", h.verdict());
    }

    #[test]
    fn a_learner_stuck() {
        let mut third = cp(3, 3, 100);
        status(&mut third).is_learner = true;
        if let Ok(Answered {
            etcd: Etcd::Member { members, .. },
            ..
        }) = &mut third.answer
        {
            members[2].is_learner = true;
        }
        let h = evaluate(&[cp(1, 3, 100), cp(2, 3, 100), third]);
        assert_eq!(
            h.problems,
            ["cp3 (10.77.0.13): etcd member cp3 is still a learner (not voting)"]
        );
    }

    #[test]
    fn two_leaders_and_two_clusters() {
        let mut second = cp(2, 3, 100);
        status(&mut second).leader = format!("{:016x}", 2);
        let h = evaluate(&[cp(1, 3, 100), second, cp(3, 3, 100)]);
        assert_eq!(
            h.problems,
            [
                "control-plane nodes disagree on the etcd leader: cp1 (10.77.0.11), cp3 \
              (10.77.0.13) see 0000000000000001; cp2 (10.77.0.12) sees 0000000000000002"
            ]
        );
        let mut other = cp(2, 3, 100);
        status(&mut other).cluster_id = "00000000000000dd".into();
        let h = evaluate(&[cp(1, 3, 100), other]);
        assert!(!h.healthy);
        assert!(
            h.problems[0].starts_with("control-plane nodes are in different etcd clusters"),
            "{:?}",
            h.problems
        );
    }

    #[test]
    fn lag_past_the_bound() {
        let h = evaluate(&[
            cp(1, 3, 5000),
            cp(2, 3, 5000 - MAX_RAFT_LAG),
            cp(3, 3, 5000 - MAX_RAFT_LAG - 1),
        ]);
        assert_eq!(h.nodes[1].raft_lag, Some(MAX_RAFT_LAG));
        assert_eq!(
            h.problems,
            [format!(
                "cp3 (10.77.0.13): etcd member cp3 is 1001 raft entries behind (index 3999 of \
                 5000; at most {MAX_RAFT_LAG})"
            )]
        );
    }

    #[test]
    fn json_carries_the_report() {
        let h = evaluate(&[cp(1, 1, 10)]);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        h.print(&mut out, &mut err, OutputFormat::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["healthy"], true);
        assert_eq!(v["nodes"][0]["raft_index"], 10);
        assert!(String::from_utf8(err).unwrap().starts_with("healthy"));
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("https://10.0.0.1:2379"), "10.0.0.1");
        assert_eq!(url_host("https://[fd00::1]:2379"), "fd00::1");
        assert_eq!(url_host("https://cp1/"), "cp1");
    }
}
