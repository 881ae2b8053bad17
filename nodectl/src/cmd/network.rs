//! Rows of `nodectl get links|addresses|routes|resolvers|hostname|time`.

use bramble_api::machine::v1 as api;
use serde::Serialize;

use crate::output::Row;

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-" } else { s }.to_owned()
}

/// One link of one node.
#[derive(Debug, Serialize)]
pub struct LinkRow {
    /// The node as named on the command line.
    pub node: String,
    #[serde(flatten)]
    #[allow(missing_docs)]
    pub link: LinkFields,
}

/// The API's link, serialisable.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct LinkFields {
    pub name: String,
    pub index: u32,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub carrier: bool,
    pub kind: String,
    pub configured: bool,
    pub dhcp: String,
    pub controller: String,
}

impl LinkRow {
    /// From the API's answer.
    pub fn new(node: &str, l: api::Link) -> Self {
        Self {
            node: node.to_owned(),
            link: LinkFields {
                name: l.name,
                index: l.index,
                mac: l.mac,
                mtu: l.mtu,
                up: l.up,
                carrier: l.carrier,
                kind: l.kind,
                configured: l.configured,
                dhcp: l.dhcp,
                controller: l.controller,
            },
        }
    }
}

impl Row for LinkRow {
    fn headers() -> &'static [&'static str] {
        &[
            "NODE",
            "LINK",
            "KIND",
            "MAC",
            "MTU",
            "UP",
            "CARRIER",
            "CONFIGURED",
            "DHCP",
        ]
    }

    fn cells(&self) -> Vec<String> {
        let l = &self.link;
        vec![
            self.node.clone(),
            l.name.clone(),
            or_dash(&l.kind),
            or_dash(&l.mac),
            l.mtu.to_string(),
            yes(l.up),
            yes(l.carrier),
            yes(l.configured),
            or_dash(&l.dhcp),
            or_dash(&l.controller),
        ]
    }
}

/// One address of one node.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct AddressRow {
    /// The node as named on the command line.
    pub node: String,
    pub link: String,
    pub address: String,
    pub scope: String,
    pub origin: String,
}

impl AddressRow {
    /// From the API's answer.
    pub fn new(node: &str, a: api::Address) -> Self {
        Self {
            node: node.to_owned(),
            link: a.link,
            address: a.address,
            scope: a.scope,
            origin: a.origin,
        }
    }
}

impl Row for AddressRow {
    fn headers() -> &'static [&'static str] {
        &["NODE", "LINK", "ADDRESS", "SCOPE", "ORIGIN"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            self.link.clone(),
            self.address.clone(),
            self.scope.clone(),
            self.origin.clone(),
        ]
    }
}

/// One route of one node.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct RouteRow {
    /// The node as named on the command line.
    pub node: String,
    pub destination: String,
    pub gateway: String,
    pub link: String,
    pub metric: u32,
    pub protocol: String,
    pub scope: String,
    pub table: u32,
    pub source: String,
}

impl RouteRow {
    /// From the API's answer.
    pub fn new(node: &str, r: api::Route) -> Self {
        Self {
            node: node.to_owned(),
            destination: r.destination,
            gateway: r.gateway,
            link: r.link,
            metric: r.metric,
            protocol: r.protocol,
            scope: r.scope,
            table: r.table,
            source: r.source,
        }
    }
}

impl Row for RouteRow {
    fn headers() -> &'static [&'static str] {
        &[
            "NODE",
            "DESTINATION",
            "GATEWAY",
            "LINK",
            "METRIC",
            "PROTOCOL",
            "SCOPE",
            "TABLE",
            "SOURCE",
        ]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            self.destination.clone(),
            or_dash(&self.gateway),
            or_dash(&self.link),
            self.metric.to_string(),
            self.protocol.clone(),
            self.scope.clone(),
            self.table.to_string(),
            or_dash(&self.source),
        ]
    }
}

/// The resolvers of one node.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct ResolversRow {
    /// The node as named on the command line.
    pub node: String,
    pub nameservers: Vec<String>,
    pub search_domains: Vec<String>,
    pub configured_nameservers: Vec<String>,
    pub configured_search_domains: Vec<String>,
}

impl ResolversRow {
    /// From the API's answer.
    pub fn new(node: &str, r: api::ResolversResponse) -> Self {
        Self {
            node: node.to_owned(),
            nameservers: r.nameservers,
            search_domains: r.search_domains,
            configured_nameservers: r.configured_nameservers,
            configured_search_domains: r.configured_search_domains,
        }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

impl Row for ResolversRow {
    fn headers() -> &'static [&'static str] {
        &[
            "NODE",
            "NAMESERVERS",
            "SEARCH",
            "CONFIGURED NAMESERVERS",
            "CONFIGURED SEARCH",
        ]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            list(&self.nameservers),
            list(&self.search_domains),
            list(&self.configured_nameservers),
            list(&self.configured_search_domains),
        ]
    }
}

/// The host name of one node.
#[derive(Debug, Serialize)]
pub struct HostnameRow {
    /// The node as named on the command line.
    pub node: String,
    /// The kernel's host name.
    pub hostname: String,
}

impl Row for HostnameRow {
    fn headers() -> &'static [&'static str] {
        &["NODE", "HOSTNAME"]
    }

    fn cells(&self) -> Vec<String> {
        vec![self.node.clone(), self.hostname.clone()]
    }
}

/// The clock of one node.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct TimeRow {
    /// The node as named on the command line.
    pub node: String,
    pub now_unix_ms: i64,
    pub synced: bool,
    pub disabled: bool,
    pub servers: Vec<String>,
    pub server: String,
    pub stratum: u32,
    pub offset_seconds: f64,
    pub last_sync_unix: f64,
    pub consecutive_failures: u32,
    pub last_error: String,
    pub restored_from_state: bool,
    pub status_error: String,
}

impl TimeRow {
    /// From the API's answer.
    pub fn new(node: &str, t: api::TimeResponse) -> Self {
        Self {
            node: node.to_owned(),
            now_unix_ms: t.now_unix_ms,
            synced: t.synced,
            disabled: t.disabled,
            servers: t.servers,
            server: t.server,
            stratum: t.stratum,
            offset_seconds: t.offset_seconds,
            last_sync_unix: t.last_sync_unix,
            consecutive_failures: t.consecutive_failures,
            last_error: t.last_error,
            restored_from_state: t.restored_from_state,
            status_error: t.status_error,
        }
    }
}

impl Row for TimeRow {
    fn headers() -> &'static [&'static str] {
        &[
            "NODE",
            "NOW (UNIX)",
            "SYNCED",
            "SERVER",
            "STRATUM",
            "OFFSET",
            "FAILURES",
            "NOTE",
        ]
    }

    fn cells(&self) -> Vec<String> {
        let note = if self.disabled {
            "disabled by machine.time".to_owned()
        } else if !self.status_error.is_empty() {
            self.status_error.clone()
        } else {
            or_dash(&self.last_error)
        };
        vec![
            self.node.clone(),
            format!("{:.3}", self.now_unix_ms as f64 / 1000.0),
            yes(self.synced),
            or_dash(&self.server),
            self.stratum.to_string(),
            if self.synced {
                format!("{:+.6} s", self.offset_seconds)
            } else {
                "-".to_owned()
            },
            self.consecutive_failures.to_string(),
            note,
        ]
    }
}
