//! Answers for `get links|addresses|routes|resolvers|time`: the kernel's live
//! state (rtnetlink, through `bramble-netlink`), what the machine
//! configuration asks for, and what the network and time daemons publish
//! under the run directory.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

use bramble_api::machine::v1::{
    Address, AddressesResponse, Link, LinksResponse, ResolversResponse, Route, RoutesResponse,
    TimeResponse,
};
use bramble_config::MachineConfig;
use tonic::Status;

/// Links the configuration names by name that this node does not have, as
/// `path: message` lines; empty when every one exists. Entries chosen by a
/// device selector, and bonds and bridges (created by networkd), are not
/// looked up; their members are. `class_net` is `/sys/class/net`.
pub fn unknown_links(config: &MachineConfig, class_net: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(class_net) else {
        // Without sysfs nothing can be checked; networkd reports what it
        // cannot find.
        return Vec::new();
    };
    let mut present: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    present.sort();
    let have = |name: &str| present.iter().any(|p| p == name);
    let list = present.join(", ");
    let mut out = Vec::new();
    for (i, iface) in config.machine.network.interfaces.iter().enumerate() {
        let path = format!("machine.network.interfaces[{i}]");
        let members = iface
            .bond
            .as_ref()
            .map(|b| ("bond", &b.interfaces))
            .or(iface.bridge.as_ref().map(|b| ("bridge", &b.interfaces)));
        match members {
            Some((kind, members)) => {
                for (j, m) in members.iter().enumerate() {
                    if !have(m) {
                        out.push(format!(
                            "{path}.{kind}.interfaces[{j}]: no link {m:?} on this node (links: {list})"
                        ));
                    }
                }
            }
            None if iface.device_selector.is_none() && !have(&iface.interface) => {
                out.push(format!(
                    "{path}.interface: no link {:?} on this node (links: {list})",
                    iface.interface
                ));
            }
            None => {}
        }
    }
    out
}

/// The kernel's local table (addresses of this host), left out of `Routes`.
const RT_TABLE_LOCAL: u32 = 255;

async fn handle() -> Result<bramble_netlink::rtnetlink::Handle, Status> {
    let (conn, handle, _) = bramble_netlink::rtnetlink::new_connection()
        .map_err(|e| Status::unavailable(format!("cannot open a netlink socket: {e}")))?;
    tokio::spawn(conn);
    Ok(handle)
}

fn dump_error(e: bramble_netlink::DumpError) -> Status {
    Status::unavailable(e.to_string())
}

/// Names of the links the configuration names (interfaces and their VLANs).
fn configured_links(config: Option<&MachineConfig>) -> Vec<String> {
    let Some(config) = config else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for iface in &config.machine.network.interfaces {
        out.push(iface.interface.clone());
        for v in &iface.vlans {
            out.push(format!("{}.{}", iface.interface, v.vlan_id));
        }
    }
    out
}

/// The DHCP phase per link from networkd's `network/state.json`.
fn dhcp_phases(run_dir: &Path) -> HashMap<String, String> {
    let Ok(text) = fs::read_to_string(run_dir.join("network/state.json")) else {
        return HashMap::new();
    };
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) else {
        return HashMap::new();
    };
    doc["links"]
        .as_array()
        .map(|links| {
            links
                .iter()
                .filter_map(|l| {
                    Some((
                        l["name"].as_str()?.to_owned(),
                        l["dhcp"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every link.
pub async fn links(
    config: Option<&MachineConfig>,
    run_dir: &Path,
) -> Result<LinksResponse, Status> {
    let h = handle().await?;
    let configured = configured_links(config);
    let phases = dhcp_phases(run_dir);
    let kernel = bramble_netlink::links(&h).await.map_err(dump_error)?;
    let names: HashMap<u32, String> = kernel.iter().map(|l| (l.index, l.name.clone())).collect();
    let mut links: Vec<Link> = kernel
        .into_iter()
        .map(|l| Link {
            controller: l
                .controller
                .and_then(|c| names.get(&c).cloned())
                .unwrap_or_default(),
            mac: l.mac_text(),
            mtu: l.mtu.unwrap_or(0),
            up: l.is_up(),
            carrier: l.carrier,
            kind: l.kind.clone().unwrap_or_default(),
            configured: configured.contains(&l.name),
            dhcp: phases.get(&l.name).cloned().unwrap_or_default(),
            index: l.index,
            name: l.name,
        })
        .collect();
    links.sort_by_key(|l| l.index);
    Ok(LinksResponse { links })
}

async fn link_names(
    h: &bramble_netlink::rtnetlink::Handle,
) -> Result<HashMap<u32, String>, Status> {
    Ok(bramble_netlink::links(h)
        .await
        .map_err(dump_error)?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect())
}

/// Every address on every link.
pub async fn addresses() -> Result<AddressesResponse, Status> {
    let h = handle().await?;
    let names = link_names(&h).await?;
    let addresses = bramble_netlink::addresses(&h)
        .await
        .map_err(dump_error)?
        .into_iter()
        .map(|a| Address {
            link: names
                .get(&a.index)
                .cloned()
                .unwrap_or_else(|| a.index.to_string()),
            address: a.net.to_string(),
            scope: a.scope.to_owned(),
            origin: bramble_netlink::address_origin(a.protocol).to_owned(),
        })
        .collect();
    Ok(AddressesResponse { addresses })
}

/// Every route outside the local table.
pub async fn routes() -> Result<RoutesResponse, Status> {
    let h = handle().await?;
    let names = link_names(&h).await?;
    let routes = bramble_netlink::routes(&h)
        .await
        .map_err(dump_error)?
        .into_iter()
        .filter(|r| r.table != RT_TABLE_LOCAL)
        .map(|r| Route {
            destination: r.destination.to_string(),
            gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
            link: r
                .oif
                .map(|i| names.get(&i).cloned().unwrap_or_else(|| i.to_string()))
                .unwrap_or_default(),
            metric: r.metric,
            protocol: bramble_netlink::protocol_name(r.protocol),
            scope: r.scope.to_owned(),
            table: r.table,
            source: r.source.map(|s| s.to_string()).unwrap_or_default(),
        })
        .collect();
    Ok(RoutesResponse { routes })
}

/// The resolvers in `resolv_conf` and the configured ones.
pub fn resolvers(
    config: Option<&MachineConfig>,
    resolv_conf: &Path,
) -> Result<ResolversResponse, Status> {
    let text = match fs::read_to_string(resolv_conf) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(Status::unavailable(format!(
                "cannot read {}: {e}",
                resolv_conf.display()
            )));
        }
    };
    let (nameservers, search_domains) = parse_resolv_conf(&text);
    let network = config.map(|c| &c.machine.network);
    Ok(ResolversResponse {
        nameservers,
        search_domains,
        configured_nameservers: network.map(|n| n.nameservers.clone()).unwrap_or_default(),
        configured_search_domains: network
            .map(|n| n.search_domains.clone())
            .unwrap_or_default(),
    })
}

fn parse_resolv_conf(text: &str) -> (Vec<String>, Vec<String>) {
    let mut nameservers = Vec::new();
    let mut search = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => nameservers.extend(words.next().map(str::to_owned)),
            Some("search") => search = words.map(str::to_owned).collect(),
            _ => {}
        }
    }
    (nameservers, search)
}

/// The clock and what the time daemon published in `time/state.json`.
pub fn time(run_dir: &Path) -> TimeResponse {
    let now_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let path = run_dir.join("time/state.json");
    let doc = fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .and_then(|t| {
            serde_json::from_str::<serde_json::Value>(&t)
                .map_err(|e| format!("{}: {e}", path.display()))
        });
    let doc = match doc {
        Ok(d) => d,
        Err(status_error) => {
            return TimeResponse {
                now_unix_ms,
                status_error,
                ..TimeResponse::default()
            };
        }
    };
    let text = |k: &str| doc[k].as_str().unwrap_or_default().to_owned();
    TimeResponse {
        now_unix_ms,
        synced: doc["synced"].as_bool().unwrap_or(false),
        disabled: doc["disabled"].as_bool().unwrap_or(false),
        servers: doc["servers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        default_servers: doc["default_servers"].as_bool().unwrap_or(false),
        server: text("server"),
        address: text("address"),
        stratum: doc["stratum"]
            .as_u64()
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(0),
        offset_seconds: doc["offset_seconds"].as_f64().unwrap_or(0.0),
        delay_seconds: doc["delay_seconds"].as_f64().unwrap_or(0.0),
        last_sync_unix: doc["last_sync_unix"].as_f64().unwrap_or(0.0),
        consecutive_failures: doc["consecutive_failures"]
            .as_u64()
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(0),
        last_error: text("last_error"),
        restored_from_state: doc["restored_from_state"].as_bool().unwrap_or(false),
        status_error: String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn links_the_node_lacks_are_named_with_their_paths() {
        let sys = tempfile::tempdir().unwrap();
        for l in ["lo", "eth0", "eth1"] {
            fs::create_dir(sys.path().join(l)).unwrap();
        }
        let yaml = "version: v1alpha1
machine:
  type: worker
  ca:
    crt: |
      -----BEGIN CERTIFICATE-----
      MIIBszCCAVmgAwIBAgIUQnJhbWJsZSBPUyBDQQ==
      -----END CERTIFICATE-----
  network:
    interfaces:
      - interface: eth0
        dhcp: true
      - interface: eth9
        dhcp: true
      - interface: br0
        bridge: {interfaces: [eth1, eth7]}
      - interface: lan
        deviceSelector: {driver: virtio_net}
cluster:
  name: c
  controlPlane:
    endpoint: https://10.0.0.1:6443
";
        let config = MachineConfig::parse(yaml).unwrap();
        assert_eq!(
            unknown_links(&config, sys.path()),
            [
                "machine.network.interfaces[1].interface: no link \"eth9\" on this node (links: eth0, eth1, lo)",
                "machine.network.interfaces[2].bridge.interfaces[1]: no link \"eth7\" on this node (links: eth0, eth1, lo)",
            ]
        );
    }

    #[test]
    fn resolv_conf_is_read_as_resolvers_read_it() {
        let (ns, search) = parse_resolv_conf(
            "# Generated\nnameserver 10.0.0.53\nnameserver fd00::53\nsearch lan example\noptions ndots:1\n",
        );
        assert_eq!(ns, ["10.0.0.53", "fd00::53"]);
        assert_eq!(search, ["lan", "example"]);
    }

    #[test]
    fn time_without_the_daemon_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let t = time(dir.path());
        assert!(!t.synced);
        assert!(
            t.status_error.contains("time/state.json"),
            "{}",
            t.status_error
        );
        assert!(t.now_unix_ms > 0);
    }

    #[test]
    fn time_reports_the_daemon_status() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("time")).unwrap();
        fs::write(
            dir.path().join("time/state.json"),
            r#"{"synced":true,"servers":["10.0.0.1"],"server":"10.0.0.1","stratum":3,"offset_seconds":-0.25,"consecutive_failures":0}"#,
        )
        .unwrap();
        let t = time(dir.path());
        assert!(t.synced);
        assert_eq!(t.stratum, 3);
        assert_eq!(t.offset_seconds, -0.25);
        assert_eq!(t.servers, ["10.0.0.1"]);
        assert_eq!(t.status_error, "");
    }

    #[test]
    fn dhcp_phases_come_from_the_network_status() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("network")).unwrap();
        fs::write(
            dir.path().join("network/state.json"),
            r#"{"online":true,"links":[{"name":"eth0","dhcp":"bound"}]}"#,
        )
        .unwrap();
        let phases = dhcp_phases(dir.path());
        assert_eq!(phases.get("eth0").map(String::as_str), Some("bound"));
        assert!(dhcp_phases(&dir.path().join("missing")).is_empty());
    }
}
