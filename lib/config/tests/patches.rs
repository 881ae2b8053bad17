#![allow(clippy::unwrap_used)]
//! Strategic-merge and JSON patches over a configuration document.

use bramble_config::{MachineConfig, apply_patch};

const FULL: &str = include_str!("data/full.yaml");

fn patched(patch: &str) -> MachineConfig {
    let yaml = apply_patch(FULL, patch).unwrap();
    MachineConfig::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn base() -> MachineConfig {
    MachineConfig::parse(FULL).unwrap()
}

#[test]
fn interfaces_merge_by_name() {
    let c = patched(
        r#"
machine:
  network:
    interfaces:
      - interface: eth0
        mtu: 9000
"#,
    );
    let eth0 = &c.machine.network.interfaces[0];
    assert_eq!(c.machine.network.interfaces.len(), 1);
    assert_eq!(eth0.mtu, Some(9000));
    // Everything else on eth0 is kept.
    assert_eq!(eth0.addresses, ["10.0.0.10/24", "fd00::10/64"]);
    assert!(eth0.dhcp);
    assert_eq!(eth0.routes.len(), 1);
}

#[test]
fn new_items_are_appended() {
    let c = patched(
        r#"
machine:
  network:
    interfaces:
      - interface: eth1
        dhcp: true
"#,
    );
    let names: Vec<&str> = c
        .machine
        .network
        .interfaces
        .iter()
        .map(|i| i.interface.as_str())
        .collect();
    assert_eq!(names, ["eth0", "eth1"]);
}

#[test]
fn nested_lists_merge_by_their_own_key() {
    let c = patched(
        r#"
machine:
  network:
    interfaces:
      - interface: eth0
        vlans:
          - vlanId: 10
            dhcp: true
          - vlanId: 20
            addresses: [10.20.0.10/24]
  workloads:
    - name: metrics
      image: ghcr.io/bramble-os/metrics:v2
"#,
    );
    let vlans = &c.machine.network.interfaces[0].vlans;
    assert_eq!(vlans.len(), 2);
    assert!(vlans[0].dhcp);
    assert_eq!(vlans[0].addresses, ["10.10.0.10/24"]);
    assert_eq!(vlans[1].vlan_id, 20);
    assert_eq!(c.machine.workloads.len(), 1);
    assert_eq!(
        c.machine.workloads[0].image,
        "ghcr.io/bramble-os/metrics:v2"
    );
    assert_eq!(c.machine.workloads[0].args, ["--listen=:9100"]);
}

#[test]
fn an_item_is_deleted_by_key() {
    let two = apply_patch(
        FULL,
        "machine: {network: {interfaces: [{interface: eth1, dhcp: true}]}}",
    )
    .unwrap();
    let yaml = apply_patch(
        &two,
        "machine: {network: {interfaces: [{interface: eth0, $patch: delete}]}}",
    )
    .unwrap();
    let c = MachineConfig::parse(&yaml).unwrap();
    assert_eq!(c.machine.network.interfaces.len(), 1);
    assert_eq!(c.machine.network.interfaces[0].interface, "eth1");

    let c = patched("machine: {network: {extraHosts: [{ip: 10.0.0.2, $patch: delete}]}}");
    assert!(c.machine.network.extra_hosts.is_empty());
}

#[test]
fn a_key_is_deleted() {
    let c = patched("machine: {kubelet: {$patch: delete}, hostname: {$patch: delete}}");
    assert!(c.machine.kubelet.is_empty());
    assert_eq!(c.machine.hostname, None);
    let rest = base();
    assert_eq!(c.machine.network, rest.machine.network);
}

#[test]
fn scalars_replace() {
    let c = patched("machine: {hostname: node-9, type: worker}\ncluster: {name: other}");
    assert_eq!(c.machine.hostname.as_deref(), Some("node-9"));
    assert_eq!(c.machine.machine_type, bramble_config::MachineType::Worker);
    assert_eq!(c.cluster.name, "other");
    assert_eq!(c.cluster.control_plane, base().cluster.control_plane);
}

#[test]
fn plain_lists_replace() {
    let c = patched("machine: {network: {nameservers: [9.9.9.9, 149.112.112.112]}}");
    assert_eq!(
        c.machine.network.nameservers,
        ["9.9.9.9", "149.112.112.112"]
    );
    let c = patched(
        "machine: {network: {interfaces: [{interface: eth0, addresses: [192.168.1.2/24]}]}}",
    );
    assert_eq!(
        c.machine.network.interfaces[0].addresses,
        ["192.168.1.2/24"]
    );
}

#[test]
fn replace_directive_replaces_a_mapping() {
    let c = patched(
        "machine: {network: {interfaces: [{interface: eth0, $patch: replace, dhcp: true}]}}",
    );
    let eth0 = &c.machine.network.interfaces[0];
    assert!(eth0.dhcp);
    assert!(eth0.addresses.is_empty() && eth0.vlans.is_empty() && eth0.mtu.is_none());
}

#[test]
fn key_order_is_kept() {
    let yaml = apply_patch(FULL, "machine: {hostname: node-2}").unwrap();
    let keys: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.is_empty())
        .collect();
    assert_eq!(keys, ["version: v1alpha1", "machine:", "cluster:"]);
    let hostname_line = yaml.lines().position(|l| l == "  hostname: node-2");
    let type_line = yaml.lines().position(|l| l == "  type: controlplane");
    assert_eq!(hostname_line, type_line.map(|t| t + 1));
}

#[test]
fn an_invalid_result_is_caught_by_parse() {
    let yaml = apply_patch(
        FULL,
        "machine: {network: {interfaces: [{interface: eth1, addresses: [10.0.0.300/24]}]}}",
    )
    .unwrap();
    let err = MachineConfig::parse(&yaml).unwrap_err();
    assert_eq!(err.errors().len(), 1);
    assert_eq!(
        err.to_string(),
        "machine.network.interfaces[1].addresses[0]: \"10.0.0.300/24\" is not an IP prefix"
    );

    let yaml = apply_patch(FULL, "machine: {network: {mtu: 1400}}").unwrap();
    let err = MachineConfig::parse(&yaml).unwrap_err();
    assert_eq!(err.errors()[0].path, "machine.network.mtu");
}

#[test]
fn bad_patches_are_refused() {
    let err = apply_patch(FULL, "machine: {hostname: [").unwrap_err();
    assert!(err.to_string().starts_with("patch: invalid YAML"), "{err}");
    let err = apply_patch(FULL, "just a string").unwrap_err();
    assert!(err.to_string().contains("expected a YAML mapping"), "{err}");
    let err = apply_patch(FULL, "machine: {kubelet: {$patch: remove}}").unwrap_err();
    assert_eq!(err.errors()[0].path, "machine.kubelet.$patch");
}

#[test]
fn json_patch_operations() {
    let patch = r#"[
        {"op": "replace", "path": "/machine/hostname", "value": "node-7"},
        {"op": "add", "path": "/machine/network/interfaces/-", "value": {"interface": "eth1", "dhcp": true}},
        {"op": "add", "path": "/machine/network/nameservers/0", "value": "9.9.9.9"},
        {"op": "remove", "path": "/machine/kubelet"},
        {"op": "add", "path": "/machine/pi/configTxt/1", "value": "gpu_mem=16"}
    ]"#;
    let c = patched(patch);
    assert_eq!(c.machine.hostname.as_deref(), Some("node-7"));
    assert_eq!(c.machine.network.interfaces[1].interface, "eth1");
    assert_eq!(c.machine.network.nameservers, ["9.9.9.9", "1.1.1.1"]);
    assert!(c.machine.kubelet.is_empty());
    assert_eq!(
        c.machine.pi.config_txt,
        ["dtoverlay=disable-wifi", "gpu_mem=16"]
    );
}

#[test]
fn json_patch_errors_name_the_operation() {
    for (patch, path, fragment) in [
        (
            r#"[{"op": "replace", "path": "/machine/netwrk", "value": 1}]"#,
            "[0].path",
            "no key \"netwrk\"",
        ),
        (
            r#"[{"op": "add", "path": "/machine/hostname", "value": "a"}, {"op": "remove", "path": "/machine/network/interfaces/3"}]"#,
            "[1].path",
            "index 3 is past the end of a list of 1",
        ),
        (
            r#"[{"op": "move", "path": "/machine/hostname", "from": "/x"}]"#,
            "[0].op",
            "unsupported operation \"move\"",
        ),
        (
            r#"[{"op": "add", "path": "/machine/x"}]"#,
            "[0].value",
            "missing",
        ),
        (
            r#"[{"op": "add", "path": "machine"}]"#,
            "[0].path",
            "must start with '/'",
        ),
    ] {
        let err = apply_patch(FULL, patch).unwrap_err();
        let e = &err.errors()[0];
        assert_eq!(e.path, path, "{patch}: {err}");
        assert!(e.message.contains(fragment), "{patch}: {err}");
    }
}
