#![allow(clippy::unwrap_used)]
//! A corpus of bad configurations, each made by one edit of a good one, with
//! the field path and the message fragment the error must carry.

use bramble_config::{ConfigError, MachineConfig};

const FULL: &str = include_str!("data/full.yaml");

/// Replaces exactly one occurrence of `from` in the good configuration.
fn edit(from: &str, to: &str) -> String {
    assert_eq!(FULL.matches(from).count(), 1, "ambiguous edit {from:?}");
    FULL.replacen(from, to, 1)
}

fn parse_err(yaml: &str) -> ConfigError {
    match MachineConfig::parse(yaml) {
        Ok(_) => panic!("accepted a bad configuration:\n{yaml}"),
        Err(e) => e,
    }
}

const DUP_IFACE: &str = "    nameservers:";
const DUP_IFACE_TO: &str = "      - interface: eth0\n        dhcp: true\n    nameservers:";

/// (case name, edit from, edit to, expected path, expected message fragment)
const CASES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "etcd heartbeat too short",
        "        -----END EC PRIVATE KEY-----\n  secretboxEncryptionSecret",
        "        -----END EC PRIVATE KEY-----\n    heartbeatIntervalMs: 5\n  secretboxEncryptionSecret",
        "cluster.etcd.heartbeatIntervalMs",
        "is not between 10 and 10000 ms",
    ),
    (
        "etcd election shorter than five heartbeats",
        "        -----END EC PRIVATE KEY-----\n  secretboxEncryptionSecret",
        "        -----END EC PRIVATE KEY-----\n    electionTimeoutMs: 1000\n  secretboxEncryptionSecret",
        "cluster.etcd.electionTimeoutMs",
        "at least five heartbeats (2500 ms",
    ),
    (
        "etcd election past etcd's maximum",
        "        -----END EC PRIVATE KEY-----\n  secretboxEncryptionSecret",
        "        -----END EC PRIVATE KEY-----\n    electionTimeoutMs: 60000\n  secretboxEncryptionSecret",
        "cluster.etcd.electionTimeoutMs",
        "at most 50000 ms",
    ),
    (
        "etcd snapshot count zero",
        "        -----END EC PRIVATE KEY-----\n  secretboxEncryptionSecret",
        "        -----END EC PRIVATE KEY-----\n    snapshotCount: 0\n  secretboxEncryptionSecret",
        "cluster.etcd.snapshotCount",
        "is not between 100",
    ),
    (
        "etcd quota too small",
        "        -----END EC PRIVATE KEY-----\n  secretboxEncryptionSecret",
        "        -----END EC PRIVATE KEY-----\n    quotaBackendBytes: 1024\n  secretboxEncryptionSecret",
        "cluster.etcd.quotaBackendBytes",
        "16 MiB",
    ),
    (
        "etcd retention without a unit",
        "        -----END EC PRIVATE KEY-----\n  secretboxEncryptionSecret",
        "        -----END EC PRIVATE KEY-----\n    autoCompactionRetention: \"12\"\n  secretboxEncryptionSecret",
        "cluster.etcd.autoCompactionRetention",
        "is not a retention",
    ),
    (
        "etcd retention of zero hours",
        "        -----END EC PRIVATE KEY-----\n  secretboxEncryptionSecret",
        "        -----END EC PRIVATE KEY-----\n    autoCompactionRetention: 0h\n  secretboxEncryptionSecret",
        "cluster.etcd.autoCompactionRetention",
        "write `0`",
    ),
    (
        "ports published by a workload on the host's network",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n      hostNetwork: true\n      ports: [{containerPort: 9100}]\n",
        "machine.workloads[0].ports",
        "nothing to publish with hostNetwork",
    ),
    (
        "port zero",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n      ports: [{containerPort: 0}]\n",
        "machine.workloads[0].ports[0].containerPort",
        "must be 1 to 65535",
    ),
    (
        "port beyond 65535",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n      ports: [{containerPort: 70000}]\n",
        "machine.workloads[0].ports[0].containerPort",
        "invalid value",
    ),
    (
        "the machine API's port published",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n      ports: [{containerPort: 80, hostPort: 50000}]\n",
        "machine.workloads[0].ports[0].hostPort",
        "the machine API's port",
    ),
    (
        "a port published twice",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n      ports: [{containerPort: 9100}, {containerPort: 80, hostPort: 9100}]\n",
        "machine.workloads[0].ports[1].hostPort",
        "already published by workloads[0].ports[0]",
    ),
    (
        "a port protocol",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n      ports: [{containerPort: 53, protocol: udp}]\n",
        "machine.workloads[0].ports[0].protocol",
        "unknown field `protocol`",
    ),
    (
        "workload seccomp profile that does not exist",
        "      image: ghcr.io/bramble-os/metrics:v1\n",
        "      image: ghcr.io/bramble-os/metrics:v1\n      seccomp: none\n",
        "machine.workloads[0].seccomp",
        "unknown variant `none`",
    ),
    (
        "image reference with upper-case repository",
        "image: ghcr.io/bramble-os/metrics:v1",
        "image: ghcr.io/Bramble/metrics:v1",
        "machine.workloads[0].image",
        "is not an image reference",
    ),
    (
        "workload memory with an unknown unit",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n      resources:\n        memory: 64MB\n",
        "machine.workloads[0].resources.memory",
        "unknown unit \"MB\"",
    ),
    (
        "workload memory too small",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n      resources:\n        memory: 1Ki\n",
        "machine.workloads[0].resources.memory",
        "below the smallest limit",
    ),
    (
        "workload cpu not a number",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n      resources:\n        cpu: lots\n",
        "machine.workloads[0].resources.cpu",
        "not a CPU amount",
    ),
    (
        "workload restart policy unknown",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n      restart: sometimes\n",
        "machine.workloads[0].restart",
        "unknown variant `sometimes`",
    ),
    (
        "workload mount source relative",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n      mounts:\n        - source: data\n          destination: /data\n",
        "machine.workloads[0].mounts[0].source",
        "is not an absolute path",
    ),
    (
        "workload capability unknown",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n      capabilities: [NET_WIZARD]\n",
        "machine.workloads[0].capabilities[0]",
        "is not a Linux capability",
    ),
    (
        "workload user malformed",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n      user: \"1000:\"\n",
        "machine.workloads[0].user",
        "neither uid[:gid]",
    ),
    (
        "registry mirror without scheme",
        "  workloads:\n",
        "  registries:\n    mirrors:\n      docker.io: [mirror.local:5000]\n  workloads:\n",
        "machine.registries.mirrors.docker.io[0]",
        "must start with http:// or https://",
    ),
    (
        "registry auth with password only",
        "  workloads:\n",
        "  registries:\n    auth:\n      ghcr.io:\n        password: hunter2\n  workloads:\n",
        "machine.registries.auth.ghcr.io.username",
        "missing for password",
    ),
    (
        "registry CA not a certificate",
        "  workloads:\n",
        "  registries:\n    ca: [\"not a certificate\"]\n  workloads:\n",
        "machine.registries.ca[0]",
        "is not a PEM certificate",
    ),
    (
        "insecure registry not a host",
        "  workloads:\n",
        "  registries:\n    insecure: [\"http://10.0.0.5:5000\"]\n  workloads:\n",
        "machine.registries.insecure[0]",
        "is not a",
    ),
    (
        "unknown field",
        "  network:",
        "  netwrk:",
        "machine.netwrk",
        "unknown field `netwrk`",
    ),
    (
        "unknown nested field",
        "        dhcp: true\n        mtu",
        "        dhcp: true\n        speed: 1000\n        mtu",
        "machine.network.interfaces[0].speed",
        "unknown field `speed`",
    ),
    (
        "wrong type",
        "mtu: 1500",
        "mtu: x",
        "machine.network.interfaces[0].mtu",
        "invalid type: string \"x\", expected u16",
    ),
    (
        "number out of type range",
        "mtu: 1500",
        "mtu: 70000",
        "machine.network.interfaces[0].mtu",
        "expected u16",
    ),
    (
        "missing required field",
        "  name: my-cluster\n",
        "",
        "cluster.name",
        "missing; this field is required",
    ),
    (
        "missing CA certificate",
        "    crt: |\n      -----BEGIN CERTIFICATE-----\n      MIIBszCCAVmgAwIBAgIUQnJhbWJsZSBPUyBDQQ==\n      -----END CERTIFICATE-----\n",
        "",
        "machine.ca.crt",
        "missing",
    ),
    (
        "unknown machine type",
        "type: controlplane",
        "type: boss",
        "machine.type",
        "unknown variant `boss`, expected `controlplane` or `worker`",
    ),
    (
        "wrong version",
        "version: v1alpha1",
        "version: v1",
        "version",
        "unsupported version \"v1\"; supported versions: v1alpha1",
    ),
    (
        "missing version",
        "version: v1alpha1\n",
        "",
        "version",
        "missing; add `version: v1alpha1`",
    ),
    (
        "hostname syntax",
        "hostname: node-1",
        "hostname: node_1",
        "machine.hostname",
        "\"node_1\" is not a valid host name",
    ),
    (
        "hostname label too long",
        "hostname: node-1",
        "hostname: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.lan",
        "machine.hostname",
        "is 64 characters long; the limit is 63",
    ),
    (
        "hostname leading dash",
        "hostname: node-1",
        "hostname: -node",
        "machine.hostname",
        "must start and end with a letter or digit",
    ),
    (
        "cluster name",
        "name: my-cluster",
        "name: My_Cluster",
        "cluster.name",
        "is not a DNS label",
    ),
    (
        "endpoint scheme",
        "endpoint: https://10.0.0.10:6443",
        "endpoint: http://10.0.0.10:6443",
        "cluster.controlPlane.endpoint",
        "must use https",
    ),
    (
        "endpoint port",
        "endpoint: https://10.0.0.10:6443",
        "endpoint: https://10.0.0.10",
        "cluster.controlPlane.endpoint",
        "has no port",
    ),
    (
        "endpoint host",
        "endpoint: https://10.0.0.10:6443",
        "endpoint: https://:6443",
        "cluster.controlPlane.endpoint",
        "has no host",
    ),
    (
        "token format",
        "token: abcdef.0123456789abcdef",
        "token: abcdef-0123456789abcdef",
        "machine.token",
        "is not a bootstrap token",
    ),
    (
        "certificate is not PEM",
        "      MIIBszCCAVmgAwIBAgIUQnJhbWJsZSBPUyBDQQ==\n      -----END CERTIFICATE-----\n    key",
        "      MIIBszCCAVmgAwIBAgIUQnJhbWJsZSBPUyBDQQ==\n      -----END CERTIFICATE-----\n      trailing words\n    key",
        "machine.ca.crt",
        "text outside its PEM blocks",
    ),
    (
        "key is not a key",
        "      -----BEGIN PRIVATE KEY-----\n      MC4CAQAwBQYDK2VwBCIEIG1hY2hpbmUtY2Eta2V5LXNlY3JldA==\n      -----END PRIVATE KEY-----",
        "      -----BEGIN CERTIFICATE-----\n      MC4CAQAwBQYDK2VwBCIEIG1hY2hpbmUtY2Eta2V5LXNlY3JldA==\n      -----END CERTIFICATE-----",
        "machine.ca.key",
        "holds a CERTIFICATE block, not a private key",
    ),
    (
        "etcd certificate is a key",
        "        -----BEGIN CERTIFICATE-----\n        MIIBszCCAVmgAwIBAgIUZXRjZCBDQQ==\n        -----END CERTIFICATE-----",
        "        -----BEGIN PRIVATE KEY-----\n        MIIBszCCAVmgAwIBAgIUZXRjZCBDQQ==\n        -----END PRIVATE KEY-----",
        "cluster.etcd.ca.crt",
        "holds a PRIVATE KEY block where only CERTIFICATE blocks belong",
    ),
    (
        "PEM body not base64",
        "MIIBszCCAVmgAwIBAgIUZXRjZCBDQQ==",
        "MIIBszCC!VmgAwIBAgIUZXRjZCBDQQ==",
        "cluster.etcd.ca.crt",
        "does not hold valid base64",
    ),
    (
        "address is not a prefix",
        "- 10.0.0.10/24",
        "- 10.0.0.300/24",
        "machine.network.interfaces[0].addresses[0]",
        "\"10.0.0.300/24\" is not an IP prefix",
    ),
    (
        "address without prefix length",
        "- fd00::10/64",
        "- fd00::10",
        "machine.network.interfaces[0].addresses[1]",
        "add the prefix length",
    ),
    (
        "route network",
        "network: 0.0.0.0/0",
        "network: default",
        "machine.network.interfaces[0].routes[0].network",
        "\"default\" is not an IP prefix",
    ),
    (
        "route network host bits",
        "network: 0.0.0.0/0",
        "network: 10.1.2.3/16",
        "machine.network.interfaces[0].routes[0].network",
        "did you mean \"10.1.0.0/16\"",
    ),
    (
        "route gateway family",
        "gateway: 10.0.0.1",
        "gateway: fd00::1",
        "machine.network.interfaces[0].routes[0].gateway",
        "gateway fd00::1 is IPv6 but network 0.0.0.0/0 is IPv4",
    ),
    (
        "route gateway not an IP",
        "gateway: 10.0.0.1",
        "gateway: router",
        "machine.network.interfaces[0].routes[0].gateway",
        "\"router\" is not an IP address",
    ),
    (
        "route gateway outside every address of its link",
        "              - 10.10.0.10/24\n",
        "              - 10.10.0.10/24\n            routes:\n              - network: 10.20.0.0/16\n                gateway: 10.9.0.1\n",
        "machine.network.interfaces[0].vlans[0].routes[0].gateway",
        "gateway 10.9.0.1 is unreachable: none of eth0.10's addresses (10.10.0.10/24) covers it",
    ),
    (
        "same address twice on a link",
        "          - fd00::10/64\n",
        "          - fd00::10/64\n          - 10.0.0.10/16\n",
        "machine.network.interfaces[0].addresses[2]",
        "address 10.0.0.10 is already listed at addresses[0]",
    ),
    (
        "subnet on two links",
        "              - 10.10.0.10/24\n",
        "              - 10.0.0.99/24\n",
        "machine.network.interfaces[0].vlans[0].addresses[0]",
        "10.0.0.99/24 overlaps 10.0.0.10/24 on eth0 (machine.network.interfaces[0].addresses[0])",
    ),
    (
        "route table",
        "            metric: 1024\n",
        "            metric: 1024\n            table: 255\n",
        "machine.network.interfaces[0].routes[0].table",
        "table 255 is reserved or out of range",
    ),
    (
        "bond mode",
        DUP_IFACE,
        "      - interface: bond0\n        bond:\n          mode: fastest\n          interfaces: [eth1, eth2]\n    nameservers:",
        "machine.network.interfaces[1].bond.mode",
        "\"fastest\" is not a bonding mode; use one of balance-rr, active-backup",
    ),
    (
        "bridge without members",
        DUP_IFACE,
        "      - interface: br0\n        bridge:\n          interfaces: []\n    nameservers:",
        "machine.network.interfaces[1].bridge.interfaces",
        "is empty; list the member links",
    ),
    (
        "member with its own address",
        DUP_IFACE,
        "      - interface: br0\n        bridge:\n          interfaces: [eth0]\n    nameservers:",
        "machine.network.interfaces[0]",
        "\"eth0\" is a member of br0; put its addresses, routes and DHCP on br0",
    ),
    (
        "selector that selects nothing",
        DUP_IFACE,
        "      - interface: lan\n        deviceSelector: {}\n    nameservers:",
        "machine.network.interfaces[1].deviceSelector",
        "selects nothing; give hardwareAddr and/or driver",
    ),
    (
        "selector hardware address",
        DUP_IFACE,
        "      - interface: lan\n        deviceSelector:\n          hardwareAddr: 02:00:zz:00:00:01\n    nameservers:",
        "machine.network.interfaces[1].deviceSelector.hardwareAddr",
        "is not a hardware address",
    ),
    (
        "duplicate interface",
        DUP_IFACE,
        DUP_IFACE_TO,
        "machine.network.interfaces[1].interface",
        "interface \"eth0\" is already configured at interfaces[0]",
    ),
    (
        "duplicate vlan",
        "              - 10.10.0.10/24\n",
        "              - 10.10.0.10/24\n          - vlanId: 10\n",
        "machine.network.interfaces[0].vlans[1].vlanId",
        "VLAN 10 is already configured at vlans[0]",
    ),
    (
        "vlan id range",
        "vlanId: 10",
        "vlanId: 4095",
        "machine.network.interfaces[0].vlans[0].vlanId",
        "out of range; use 1 to 4094",
    ),
    (
        "mtu too small",
        "mtu: 1500",
        "mtu: 60",
        "machine.network.interfaces[0].mtu",
        "MTU 60 is too small",
    ),
    (
        "link name too long",
        "interface: eth0",
        "interface: enx0123456789abcdef",
        "machine.network.interfaces[0].interface",
        "longer than 15 bytes",
    ),
    (
        "nameserver",
        "- 1.1.1.1",
        "- one.one.one.one",
        "machine.network.nameservers[0]",
        "\"one.one.one.one\" is not an IP address",
    ),
    (
        "search domain",
        "- lan\n",
        "- bad domain\n",
        "machine.network.searchDomains[0]",
        "not a valid host name",
    ),
    (
        "extra host ip",
        "ip: 10.0.0.2",
        "ip: 10.0.0.256",
        "machine.network.extraHosts[0].ip",
        "\"10.0.0.256\" is not an IP address",
    ),
    (
        "extra host alias",
        "- node-2",
        "- node_2",
        "machine.network.extraHosts[0].aliases[0]",
        "\"node_2\" is not a valid host name",
    ),
    (
        "configTxt newline",
        "- dtoverlay=disable-wifi",
        "- \"dtoverlay=disable-wifi\\ngpu_mem=16\"",
        "machine.pi.configTxt[0]",
        "must be a single line",
    ),
    (
        "configTxt empty",
        "- dtoverlay=disable-wifi",
        "- \"\"",
        "machine.pi.configTxt[0]",
        "is empty",
    ),
    (
        "workload name",
        "- name: metrics",
        "- name: Metrics",
        "machine.workloads[0].name",
        "is not a DNS label",
    ),
    (
        "workload image",
        "image: ghcr.io/bramble-os/metrics:v1",
        "image: \"\"",
        "machine.workloads[0].image",
        "is empty; give an image reference",
    ),
    (
        "duplicate workload",
        "        LOG_LEVEL: info\n",
        "        LOG_LEVEL: info\n    - name: metrics\n      image: busybox\n",
        "machine.workloads[1].name",
        "workload name \"metrics\" is already used by workloads[0]",
    ),
    (
        "secretbox length",
        "secretboxEncryptionSecret: c2VjcmV0Ym94LWtleS0zMi1ieXRlcy1sb25nLi4uLi4=",
        "secretboxEncryptionSecret: c2hvcnQ=",
        "cluster.secretboxEncryptionSecret",
        "decodes to 5 bytes but must be 32",
    ),
    (
        "secretbox not base64",
        "secretboxEncryptionSecret: c2VjcmV0Ym94LWtleS0zMi1ieXRlcy1sb25nLi4uLi4=",
        "secretboxEncryptionSecret: not-base64!",
        "cluster.secretboxEncryptionSecret",
        "is not base64",
    ),
    (
        "certSANs entry",
        "- node-1.lan",
        "- \"node 1\"",
        "machine.certSANs[1]",
        "neither an IP address nor a DNS name",
    ),
    (
        "time server",
        "- pool.ntp.org",
        "- pool..ntp.org",
        "machine.time.servers[0]",
        "neither an IP address nor a host name",
    ),
    (
        "time step bound",
        "maxStepSeconds: 1000",
        "maxStepSeconds: 0",
        "machine.time.maxStepSeconds",
        "is not between 1 and 4294967295 seconds",
    ),
    (
        "kubelet flag dashes",
        "max-pods: \"50\"",
        "--max-pods: \"50\"",
        "machine.kubelet.extraArgs.--max-pods",
        "without leading dashes: \"max-pods\"",
    ),
];

#[test]
fn the_good_configuration_is_accepted() {
    MachineConfig::parse(FULL).unwrap();
}

#[test]
fn every_bad_configuration_is_refused_at_its_field() {
    assert!(CASES.len() >= 20);
    let mut failures = Vec::new();
    for (name, from, to, path, fragment) in CASES {
        let err = parse_err(&edit(from, to));
        let errors = err.errors();
        if errors.len() != 1 || errors[0].path != *path || !errors[0].message.contains(fragment) {
            failures.push(format!(
                "{name}: expected exactly `{path}: …{fragment}…`, got:\n{err}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn display_is_path_colon_message() {
    let err = parse_err(&edit("- 10.0.0.10/24", "- 10.0.0.300/24"));
    assert_eq!(
        err.to_string(),
        "machine.network.interfaces[0].addresses[0]: \"10.0.0.300/24\" is not an IP prefix"
    );
}

#[test]
fn serde_errors_carry_the_line() {
    let err = parse_err(&edit("mtu: 1500", "mtu: x"));
    assert!(
        err.errors()[0].message.ends_with("at line 22 column 14"),
        "{err}"
    );
}

#[test]
fn three_errors_are_all_reported_in_document_order() {
    let yaml = FULL
        .replacen("hostname: node-1", "hostname: node_1", 1)
        .replacen("- fd00::10/64", "- fd00::10/640", 1)
        .replacen("name: my-cluster", "name: -cluster", 1);
    let err = parse_err(&yaml);
    let paths: Vec<&str> = err.errors().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "machine.hostname",
            "machine.network.interfaces[0].addresses[1]",
            "cluster.name"
        ]
    );
    assert_eq!(err.to_string().lines().count(), 3);
}

#[test]
fn errors_follow_the_document_not_the_schema() {
    // The same mistakes with `cluster` written before `machine`.
    let yaml = r#"
version: v1alpha1
cluster:
  controlPlane:
    endpoint: http://cp:6443
  name: Bad
machine:
  type: worker
  hostname: "bad host"
  ca:
    crt: nope
"#;
    let err = parse_err(yaml);
    let paths: Vec<&str> = err.errors().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "cluster.controlPlane.endpoint",
            "cluster.name",
            "machine.hostname",
            "machine.ca.crt"
        ]
    );
}

#[test]
fn a_document_that_is_not_a_configuration() {
    for (yaml, fragment) in [
        ("", "the configuration is empty"),
        ("- a\n- b\n", "not a YAML mapping"),
        ("version: v1alpha1\nmachine: [\n", "invalid YAML"),
        ("version: 1\n", "unsupported version 1"),
        (
            "version: v1alpha1\nmachine: {type: worker, ca: {crt: x}}\n",
            "cluster: missing; this field is required",
        ),
    ] {
        let err = parse_err(yaml);
        assert_eq!(err.errors().len(), 1, "{yaml:?}: {err}");
        assert!(err.to_string().contains(fragment), "{yaml:?}: {err}");
    }
}

#[test]
fn an_oversized_document_is_refused_before_parsing() {
    // Valid YAML up to the limit: a comment pads the good configuration.
    let pad = |n: usize| format!("{FULL}\n#{}\n", "x".repeat(n));
    let at_limit = pad(bramble_config::MAX_DOCUMENT_BYTES - FULL.len() - 3);
    assert_eq!(at_limit.len(), bramble_config::MAX_DOCUMENT_BYTES);
    MachineConfig::parse(&at_limit).unwrap();
    let over = pad(bramble_config::MAX_DOCUMENT_BYTES - FULL.len() - 2);
    let err = parse_err(&over).to_string();
    assert!(
        err.contains("1048577 bytes") && err.contains("at most 1048576 bytes"),
        "{err}"
    );
    // Refused unread: not even its syntax is looked at.
    let garbage = "{".repeat(bramble_config::MAX_DOCUMENT_BYTES + 1);
    let err = parse_err(&garbage).to_string();
    assert!(err.contains("at most 1048576 bytes"), "{err}");
}

#[test]
fn the_ca_certificate_is_found_in_a_document_that_no_longer_parses() {
    let good = MachineConfig::parse(FULL).unwrap();
    // An unknown field (a newer schema, a damaged file): invalid, yet its CA
    // is still known.
    let damaged = format!("{FULL}\nfromTheFuture: 1\n");
    parse_err(&damaged);
    assert_eq!(
        MachineConfig::ca_certificate_of(&damaged).as_deref(),
        Some(good.machine.ca.crt.as_str())
    );
    // Not YAML, no CA, or something else than a certificate there: none.
    assert_eq!(MachineConfig::ca_certificate_of("machine: ["), None);
    assert_eq!(MachineConfig::ca_certificate_of("machine: {}"), None);
    let pem = |tag: &str| {
        format!(
            "machine:\n  ca:\n    crt: \"-----BEGIN {tag}-----\\nMIIB\\n-----END {tag}-----\\n\"\n"
        )
    };
    assert!(MachineConfig::ca_certificate_of(&pem("CERTIFICATE")).is_some());
    assert_eq!(MachineConfig::ca_certificate_of(&pem("PRIVATE KEY")), None);
}
