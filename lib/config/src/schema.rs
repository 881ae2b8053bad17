//! The typed machine configuration, version `v1alpha1`.
//!
//! Every struct refuses unknown fields. Optional sections default to empty and
//! are left out when written back, so `parse` → `to_yaml` → `parse` gives the
//! same value.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The text that replaces every secret in a [`MachineConfig::redacted`] copy.
pub const REDACTED: &str = "******";

/// The configuration versions this crate reads.
pub const SUPPORTED_VERSIONS: &[&str] = &["v1alpha1"];

/// A secret string: a CA private key, the bootstrap token, an encryption key.
///
/// Written to YAML as a plain string (the configuration must carry it), but
/// `Debug` never shows it and [`MachineConfig::redacted`] replaces it with
/// [`REDACTED`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The stand-in shown instead of a secret.
    pub fn redacted() -> Self {
        Self(REDACTED.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

/// The configuration schema version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    /// `v1alpha1`, the only version so far.
    #[default]
    #[serde(rename = "v1alpha1")]
    V1Alpha1,
}

/// The role of a node in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    /// Runs etcd and the Kubernetes control plane, and the kubelet.
    #[serde(rename = "controlplane")]
    ControlPlane,
    /// Runs the kubelet and workloads only.
    Worker,
}

impl MachineType {
    /// The name used in the YAML document.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ControlPlane => "controlplane",
            Self::Worker => "worker",
        }
    }
}

impl fmt::Display for MachineType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole machine configuration document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MachineConfig {
    /// Schema version (`version: v1alpha1`).
    pub version: Version,
    /// This node's own settings.
    pub machine: Machine,
    /// Settings shared by every node of the cluster.
    pub cluster: Cluster,
}

/// The node's own settings (`machine:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Machine {
    /// Control plane or worker (`type:`).
    #[serde(rename = "type")]
    pub machine_type: MachineType,
    /// Hostname: one or more RFC 1123 labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}` (secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// The OS certificate authority the machine API's mTLS trusts.
    pub ca: CertificateAuthority,
    /// Extra subject alternative names (IPs or DNS names) for the API certificate.
    #[serde(default, rename = "certSANs", skip_serializing_if = "Vec::is_empty")]
    pub cert_sans: Vec<String>,
    /// Links, addresses, routes and resolvers.
    #[serde(default, skip_serializing_if = "Network::is_empty")]
    pub network: Network,
    /// Time synchronisation.
    #[serde(default, skip_serializing_if = "Time::is_empty")]
    pub time: Time,
    /// The kubelet.
    #[serde(default, skip_serializing_if = "Kubelet::is_empty")]
    pub kubelet: Kubelet,
    /// Raspberry Pi firmware settings.
    #[serde(default, skip_serializing_if = "Pi::is_empty")]
    pub pi: Pi,
    /// Where images come from: mirrors, plain-HTTP registries, credentials.
    #[serde(default, skip_serializing_if = "Registries::is_empty")]
    pub registries: Registries,
    /// Containers the node's runtime keeps running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<Workload>,
}

/// A certificate (PEM) and, optionally, its private key (PEM, secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateAuthority {
    /// One or more PEM `CERTIFICATE` blocks.
    pub crt: String,
    /// One PEM private key block (secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
}

/// Network settings (`machine.network`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    /// Links to configure, each named by `interface`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// DNS resolvers (IP addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// DNS search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search_domains: Vec<String>,
    /// Static `/etc/hosts` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<ExtraHost>,
}

impl Network {
    /// True when nothing is configured.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One link (`machine.network.interfaces[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Interface {
    /// Link name, e.g. `eth0`; the key patches merge interfaces by. With a
    /// `deviceSelector` it names the entry only, and the selected link keeps
    /// its kernel name; with `bond` or `bridge` it is the name of the link
    /// created.
    pub interface: String,
    /// Picks a physical link by its properties instead of its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_selector: Option<DeviceSelector>,
    /// Make this link a bond of other links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<Bond>,
    /// Make this link a bridge of other links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Bridge>,
    /// Keep the link administratively down (nothing else is configured on it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub down: bool,
    /// Run the DHCPv4 client on this link.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dhcp: bool,
    /// MTU, 68..=65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Static addresses as prefixes, e.g. `10.0.0.10/24`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Static routes through this link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// 802.1Q VLANs on this link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<Vlan>,
}

/// Picks a link by its properties (`interfaces[].deviceSelector`); every
/// property given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceSelector {
    /// Hardware address, `aa:bb:cc:dd:ee:ff`; `*` matches any one byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_addr: Option<String>,
    /// Kernel driver name, e.g. `virtio_net`, `bcmgenet`, `smsc95xx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// A bond (`interfaces[].bond`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bond {
    /// Bonding mode: `balance-rr`, `active-backup`, `balance-xor`,
    /// `broadcast`, `802.3ad`, `balance-tlb` or `balance-alb`.
    pub mode: String,
    /// The member links, by name.
    pub interfaces: Vec<String>,
    /// Link monitoring interval in milliseconds (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miimon: Option<u32>,
}

/// A bridge (`interfaces[].bridge`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bridge {
    /// The member links, by name.
    pub interfaces: Vec<String>,
    /// Run the spanning tree protocol.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stp: bool,
}

/// A VLAN on a link (`interfaces[].vlans[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Vlan {
    /// VLAN id, 1..=4094; the key patches merge VLANs by.
    pub vlan_id: u16,
    /// Run the DHCPv4 client on the VLAN link.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dhcp: bool,
    /// MTU, 68..=65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Static addresses as prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Static routes through the VLAN link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    /// Destination prefix, e.g. `0.0.0.0/0`.
    pub network: String,
    /// Next hop, of the same address family as `network`; none for an on-link route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Route priority; lower wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    /// The gateway is reachable directly on the link even though no address
    /// of the link covers it (a provider's router outside the subnet).
    #[serde(default, skip_serializing_if = "is_false")]
    pub on_link: bool,
    /// Routing table, 1..=252 or 254 (main, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
}

/// A static hosts entry (`machine.network.extraHosts[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtraHost {
    /// The address the aliases resolve to.
    pub ip: String,
    /// Host names for `ip`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// Time synchronisation (`machine.time`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Time {
    /// Turn SNTP off.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// SNTP servers (host names or IPs); empty means the built-in default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// The largest correction, in seconds, that one server's answer may make
    /// on its own (default 1000, ntpd's panic threshold). A larger step
    /// needs two server addresses that agree, or, when only one answers,
    /// several consistent answers from it. At least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_step_seconds: Option<u64>,
}

impl Time {
    /// True when nothing is configured.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The kubelet (`machine.kubelet`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kubelet {
    /// Image reference; none means the image's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Extra command-line flags, by name without leading dashes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_args: BTreeMap<String, String>,
}

impl Kubelet {
    /// True when nothing is configured.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Raspberry Pi firmware settings (`machine.pi`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pi {
    /// Extra `config.txt` lines, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_txt: Vec<String>,
}

impl Pi {
    /// True when nothing is configured.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A container the node keeps running (`machine.workloads[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    /// Unique name, a DNS label; the key patches merge workloads by.
    pub name: String,
    /// Image reference (`registry/repository[:tag][@sha256:...]`; a bare
    /// name means Docker Hub's `library/`).
    pub image: String,
    /// Replaces the image's entry point.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments passed to the entry point (replace the image's `Cmd`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables, added to (and overriding) the image's. Their
    /// values count as secrets (a workload's credentials go here): only
    /// admins see them; readers and operators see the names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; default the image's, else `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `uid[:gid]` (numbers) or a user name from the image's `/etc/passwd`;
    /// default the image's user, else root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Host paths bound into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<WorkloadMount>,
    /// Memory, CPU and process limits.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// What to do when the container exits.
    #[serde(default, skip_serializing_if = "RestartPolicy::is_default")]
    pub restart: RestartPolicy,
    /// Mount the image's root filesystem read-only (no writable layer).
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only_rootfs: bool,
    /// Capabilities added to the default set (`CAP_NET_ADMIN` or `NET_ADMIN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Seconds between SIGTERM and SIGKILL when stopping (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period_seconds: Option<u32>,
    /// The system-call filter: `runtime-default` (the default) or
    /// `unconfined`.
    #[serde(default, skip_serializing_if = "SeccompProfile::is_default")]
    pub seccomp: SeccompProfile,
    /// Share the node's network stack (its links, addresses and ports).
    /// Without it (the default) the container has a network namespace of its
    /// own holding only loopback: it reaches no network and sees none of the
    /// node's links, and only its `ports` are reachable from outside.
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_network: bool,
    /// TCP ports of the container published on the node's addresses (only
    /// without `hostNetwork`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<WorkloadPort>,
}

/// A container's TCP port published on the node (`machine.workloads[].ports[]`):
/// connections to `hostPort` on any of the node's addresses are forwarded to
/// `containerPort` on the container's loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadPort {
    /// The port the container listens on (on `127.0.0.1` or every address).
    pub container_port: u16,
    /// The node's port; default `containerPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
}

impl WorkloadPort {
    /// The node's port.
    pub fn host(&self) -> u16 {
        self.host_port.unwrap_or(self.container_port)
    }
}

impl Workload {
    /// Grace period used when none is configured.
    pub const DEFAULT_STOP_GRACE_PERIOD_SECONDS: u32 = 10;

    /// The configured grace period, or the default.
    pub fn stop_grace_period(&self) -> u32 {
        self.stop_grace_period_seconds
            .unwrap_or(Self::DEFAULT_STOP_GRACE_PERIOD_SECONDS)
    }
}

/// A host path bound into a workload (`machine.workloads[].mounts[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadMount {
    /// Absolute path on the node; it must exist.
    pub source: String,
    /// Absolute path in the container.
    pub destination: String,
    /// Bind it read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
}

/// Resource limits of a workload (`machine.workloads[].resources`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    /// Memory limit: bytes, or with a suffix `Ki`, `Mi`, `Gi` (`64Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// CPU limit in cores: `500m` (millicores) or `1.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Largest number of processes and threads; the node's runtime limits a
    /// workload that sets none to 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

impl Resources {
    /// True when nothing is configured.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The memory limit in bytes, if it is set and valid.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory.as_deref().and_then(|m| parse_memory(m).ok())
    }

    /// The CPU limit in millicores, if it is set and valid.
    pub fn cpu_millis(&self) -> Option<u64> {
        self.cpu.as_deref().and_then(|c| parse_cpu(c).ok())
    }
}

/// `64Mi` → 67108864. Plain numbers are bytes.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|ch: char| !ch.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let scale: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?}; write bytes or use Ki, Mi or Gi (64Mi)"
            ));
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 64Mi"))?;
    n.checked_mul(scale)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("{text:?} is out of range"))
}

/// `500m` → 500, `1.5` → 1500, `2` → 2000 (millicores).
pub fn parse_cpu(text: &str) -> Result<u64, String> {
    let err = || format!("{text:?} is not a CPU amount such as 500m or 1.5");
    let millis = if let Some(m) = text.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| err())?
    } else {
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        if frac.len() > 3 || !frac.chars().all(|ch| ch.is_ascii_digit()) {
            return Err(err());
        }
        let whole: u64 = whole.parse().map_err(|_| err())?;
        let frac_millis: u64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<3}").parse().map_err(|_| err())?
        };
        whole
            .checked_mul(1000)
            .and_then(|w| w.checked_add(frac_millis))
            .ok_or_else(err)?
    };
    if millis == 0 {
        return Err(format!("{text:?} must be more than zero"));
    }
    Ok(millis)
}

/// Which system calls a workload's processes may make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeccompProfile {
    /// The runtime's filter (the default): the system calls a container has
    /// no business making (kernel keyrings, eBPF, perf events, module and
    /// kexec loading, io_uring, new namespaces and mounts without
    /// `CAP_SYS_ADMIN`, ...) fail with `EPERM`.
    #[default]
    RuntimeDefault,
    /// No filter.
    Unconfined,
}

impl SeccompProfile {
    /// True for the default, which is not written out.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// When the runtime starts a workload's container again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit (the default).
    #[default]
    Always,
    /// Only after a non-zero exit or a kill.
    OnFailure,
    /// Never: the container stays exited.
    Never,
}

impl RestartPolicy {
    /// True for the default, which is not written out.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Where images come from (`machine.registries`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Registries {
    /// Mirrors by registry host (`docker.io: [http://10.0.0.5:5000]`),
    /// tried in order before the registry itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registry hosts (`host[:port]`) reached over plain HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure: Vec<String>,
    /// Credentials by registry host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub auth: BTreeMap<String, RegistryAuth>,
    /// PEM certificates of authorities trusted for HTTPS registries besides
    /// the image's own (a private registry's CA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca: Vec<String>,
}

impl Registries {
    /// True when nothing is configured.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Credentials for one registry: a user name and password, or a bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryAuth {
    /// User name (basic auth, also used to obtain bearer tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password (secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A bearer token used as it is (secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

/// Cluster-wide settings (`cluster:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cluster {
    /// Cluster name, a DNS label.
    pub name: String,
    /// Where the Kubernetes API is reached.
    pub control_plane: ControlPlane,
    /// etcd settings (control-plane nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<Etcd>,
    /// Key for Kubernetes secrets encryption at rest: 32 bytes in base64 (secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secretbox_encryption_secret: Option<Secret>,
}

/// The control-plane endpoint (`cluster.controlPlane`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControlPlane {
    /// `https://HOST:PORT` of the Kubernetes API.
    pub endpoint: String,
}

/// etcd settings (`cluster.etcd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Etcd {
    /// The CA etcd's peer and client certificates are issued from.
    pub ca: CertificateAuthority,
    /// Raft heartbeat interval in milliseconds (default
    /// [`EtcdTuning::DEFAULT`]'s, five times etcd's own: an SD card's fsync
    /// can take a hundred milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u32>,
    /// Raft election timeout in milliseconds: at least five heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_timeout_ms: Option<u32>,
    /// Applied entries between two snapshots of the raft log; fewer keep
    /// less log in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<u64>,
    /// The backend database's size limit in bytes; past it etcd raises its
    /// `NOSPACE` alarm and refuses writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<u64>,
    /// How much history periodic auto-compaction keeps: a whole number of
    /// minutes or hours, `30m`, `1h`; `0` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction_retention: Option<String>,
}

impl Etcd {
    /// The tuning in force: each setting given, or its default.
    pub fn tuning(&self) -> EtcdTuning {
        let d = EtcdTuning::DEFAULT;
        EtcdTuning {
            heartbeat_interval_ms: self
                .heartbeat_interval_ms
                .unwrap_or(d.heartbeat_interval_ms),
            election_timeout_ms: self.election_timeout_ms.unwrap_or(d.election_timeout_ms),
            snapshot_count: self.snapshot_count.unwrap_or(d.snapshot_count),
            quota_backend_bytes: self.quota_backend_bytes.unwrap_or(d.quota_backend_bytes),
            auto_compaction_retention: self
                .auto_compaction_retention
                .clone()
                .unwrap_or_else(|| d.auto_compaction_retention.to_owned()),
        }
    }
}

/// etcd's settings with every default filled in (see [`Etcd::tuning`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTuning {
    /// `--heartbeat-interval`, milliseconds.
    pub heartbeat_interval_ms: u32,
    /// `--election-timeout`, milliseconds.
    pub election_timeout_ms: u32,
    /// `--snapshot-count`.
    pub snapshot_count: u64,
    /// `--quota-backend-bytes`.
    pub quota_backend_bytes: u64,
    /// `--auto-compaction-retention` (mode `periodic`).
    pub auto_compaction_retention: String,
}

/// The defaults, for SD cards and 1 GiB of memory.
#[derive(Debug, Clone, Copy)]
pub struct EtcdDefaults {
    /// See [`EtcdTuning::heartbeat_interval_ms`].
    pub heartbeat_interval_ms: u32,
    /// See [`EtcdTuning::election_timeout_ms`].
    pub election_timeout_ms: u32,
    /// See [`EtcdTuning::snapshot_count`].
    pub snapshot_count: u64,
    /// See [`EtcdTuning::quota_backend_bytes`].
    pub quota_backend_bytes: u64,
    /// See [`EtcdTuning::auto_compaction_retention`].
    pub auto_compaction_retention: &'static str,
}

impl EtcdTuning {
    /// Slow fsync: heartbeats every 500 ms (etcd's 100 ms would lose
    /// leaders to one slow write) and elections after 5 s; small memory: a
    /// snapshot every 10 000 entries (etcd 3.4's 100 000 keeps ten times the
    /// log in memory) and a 1 GiB backend; history compacted hourly.
    pub const DEFAULT: EtcdDefaults = EtcdDefaults {
        heartbeat_interval_ms: 500,
        election_timeout_ms: 5000,
        snapshot_count: 10_000,
        quota_backend_bytes: 1 << 30,
        auto_compaction_retention: "1h",
    };
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(value: &bool) -> bool {
    !*value
}
