#![allow(clippy::unwrap_used)]
//! Diffs between configurations and what applying them takes.

use bramble_config::{DiffKind, MachineConfig, Secret, Service, apply_patch, diff};

const FULL: &str = include_str!("data/full.yaml");

fn base() -> MachineConfig {
    MachineConfig::parse(FULL).unwrap()
}

fn patched(patch: &str) -> MachineConfig {
    MachineConfig::parse(&apply_patch(FULL, patch).unwrap()).unwrap()
}

#[test]
fn no_change_is_empty() {
    let d = diff(&base(), &base());
    assert!(d.is_empty());
    assert!(d.restart.is_empty());
    assert!(!d.reboot);
    assert!(d.lines.iter().all(|l| l.kind == DiffKind::Unchanged));
    assert_eq!(d.to_string(), "");
}

#[test]
fn hostname_change_reloads_networkd_without_restart_or_reboot() {
    let d = diff(&base(), &patched("machine: {hostname: node-2}"));
    assert!(!d.is_empty());
    assert_eq!(d.changed, ["machine.hostname"]);
    assert!(d.restart.is_empty());
    assert_eq!(
        d.reload.iter().copied().collect::<Vec<_>>(),
        [Service::Networkd]
    );
    assert!(!d.reboot);
    let changed: Vec<String> = d
        .lines
        .iter()
        .filter(|l| l.kind != DiffKind::Unchanged)
        .map(|l| format!("{}{}", l.kind.marker(), l.text))
        .collect();
    assert_eq!(changed, ["-  hostname: node-1", "+  hostname: node-2"]);
    let expected = [
        "@@ -1,7 +1,7 @@",
        " version: v1alpha1",
        " machine:",
        "   type: controlplane",
        "-  hostname: node-1",
        "+  hostname: node-2",
        "   token: '******'",
        "   ca:",
        "     crt: |",
        "reload: networkd",
    ];
    assert_eq!(d.to_string(), expected.map(|l| format!("{l}\n")).concat());
}

#[test]
fn type_change_needs_a_reboot() {
    let d = diff(&base(), &patched("machine: {type: worker}"));
    assert!(d.reboot);
    assert_eq!(d.changed, ["machine.type"]);
    assert!(d.to_string().ends_with("reboot required\n"));
}

#[test]
fn each_section_maps_to_its_service() {
    // Reloaded in place: the network, time sync and the container runtime
    // re-read the configuration.
    for (patch, service) in [
        ("machine: {time: {disabled: true}}", Service::Timed),
        (
            "machine: {workloads: [{name: logs, image: busybox}]}",
            Service::Runtimed,
        ),
        (
            "machine: {registries: {insecure: ['10.0.2.100:5000']}}",
            Service::Runtimed,
        ),
        (
            "machine: {network: {nameservers: [9.9.9.9]}}",
            Service::Networkd,
        ),
    ] {
        let d = diff(&base(), &patched(patch));
        assert!(d.restart.is_empty(), "{patch}: {:?}", d.restart);
        assert_eq!(d.reload.iter().copied().collect::<Vec<_>>(), [service]);
        assert!(!d.reboot, "{patch}");
    }
    for (patch, service, reboot) in [
        (
            "machine: {certSANs: [10.0.0.11]}",
            Some(Service::Apid),
            false,
        ),
        (
            "machine: {kubelet: {extraArgs: {max-pods: '80'}}}",
            Some(Service::Kubelet),
            false,
        ),
        ("machine: {pi: {configTxt: [gpu_mem=16]}}", None, true),
        ("cluster: {name: other}", None, true),
        (
            "cluster: {etcd: {$patch: delete}}",
            Some(Service::Etcd),
            false,
        ),
        (
            "cluster: {etcd: {snapshotCount: 5000}}",
            Some(Service::Etcd),
            false,
        ),
    ] {
        let d = diff(&base(), &patched(patch));
        assert_eq!(d.restart.iter().next().copied(), service, "{patch}");
        assert!(d.restart.len() <= 1, "{patch}: {:?}", d.restart);
        assert_eq!(d.reboot, reboot, "{patch}");
    }
}

#[test]
fn a_workload_environment_change_shows_without_its_value() {
    let old = patched(
        "machine: {workloads: [{name: app, image: busybox, env: {API_KEY: old-key-value}}]}",
    );
    let new = patched(
        "machine: {workloads: [{name: app, image: busybox, env: {API_KEY: new-key-value}}]}",
    );
    let d = diff(&old, &new);
    assert_eq!(d.changed, ["machine.workloads", "machine.workloads[].env"]);
    assert_eq!(
        d.reload.iter().copied().collect::<Vec<_>>(),
        [Service::Runtimed]
    );
    assert!(d.lines.iter().all(|l| l.kind == DiffKind::Unchanged));
    let text = d.to_string();
    assert!(
        text.contains("secrets changed: machine.workloads[].env"),
        "{text}"
    );
    assert!(!text.contains("key-value"), "{text}");
    // A new workload shows its variables' names, not their values; one
    // without variables changes no secret.
    let d = diff(&base(), &new);
    let text = d.to_string();
    assert!(text.contains("API_KEY: '******'"), "{text}");
    assert!(!text.contains("new-key-value"), "{text}");
    let d = diff(
        &base(),
        &patched("machine: {workloads: [{name: app, image: busybox}]}"),
    );
    assert_eq!(d.changed, ["machine.workloads"]);
}

#[test]
fn a_secret_change_shows_without_its_value() {
    let old = base();
    let mut new = old.clone();
    new.machine.token = Some(Secret::new("zzzzzz.0123456789abcdef"));
    let d = diff(&old, &new);
    assert!(!d.is_empty());
    assert_eq!(d.changed, ["machine.token"]);
    assert!(d.lines.iter().all(|l| l.kind == DiffKind::Unchanged));
    let text = d.to_string();
    assert!(text.contains("secrets changed: machine.token"), "{text}");
    assert!(!text.contains("zzzzzz"));
}
