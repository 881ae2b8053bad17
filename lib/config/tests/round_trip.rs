#![allow(clippy::unwrap_used)]
//! parse → to_yaml → parse, and redaction.

use bramble_config::{CertificateAuthority, MachineConfig, MachineType, REDACTED, Secret};

const FULL: &str = include_str!("data/full.yaml");

const MINIMAL: &str = r#"
version: v1alpha1
machine:
  type: worker
  ca:
    crt: |
      -----BEGIN CERTIFICATE-----
      MIIBszCCAVmgAwIBAgIUQnJhbWJsZSBPUyBDQQ==
      -----END CERTIFICATE-----
cluster:
  name: lab
  controlPlane:
    endpoint: https://[fd00::10]:6443
"#;

/// The secret values in `full.yaml`.
const SECRETS: &[&str] = &[
    "abcdef.0123456789abcdef",
    "MC4CAQAwBQYDK2VwBCIEIG1hY2hpbmUtY2Eta2V5LXNlY3JldA==",
    "MHcCAQEEIGV0Y2QtY2Eta2V5LXNlY3JldA==",
    "c2VjcmV0Ym94LWtleS0zMi1ieXRlcy1sb25nLi4uLi4=",
];

#[test]
fn full_configuration_round_trips() {
    let config = MachineConfig::parse(FULL).unwrap();
    let yaml = config.to_yaml();
    let again = MachineConfig::parse(&yaml).unwrap();
    assert_eq!(config, again);
    assert_eq!(yaml, again.to_yaml());
}

#[test]
fn omitted_fields_stay_omitted() {
    let config = MachineConfig::parse(MINIMAL).unwrap();
    let yaml = config.to_yaml();
    assert_eq!(MachineConfig::parse(&yaml).unwrap(), config);
    for absent in [
        "hostname",
        "token",
        "key",
        "certSANs",
        "network",
        "time",
        "kubelet",
        "pi",
        "workloads",
        "etcd",
        "secretbox",
        "dhcp",
    ] {
        assert!(!yaml.contains(absent), "{absent} written out:\n{yaml}");
    }
    assert!(config.machine.network.interfaces.is_empty());
    assert!(!config.machine.time.disabled);
}

#[test]
fn new_minimal_round_trips_and_validates() {
    let ca = CertificateAuthority {
        crt: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_owned(),
        key: Some(Secret::new(
            "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
        )),
    };
    let config =
        MachineConfig::new_minimal(MachineType::ControlPlane, "home", "https://cp.lan:6443", ca);
    config.validate().unwrap();
    assert_eq!(MachineConfig::parse(&config.to_yaml()).unwrap(), config);

    let bad = MachineConfig::new_minimal(
        MachineType::Worker,
        "Home",
        "cp.lan",
        config.machine.ca.clone(),
    );
    let paths: Vec<String> = bad
        .validate()
        .unwrap_err()
        .into_errors()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(paths, ["cluster.name", "cluster.controlPlane.endpoint"]);
}

#[test]
fn redaction_hides_every_secret() {
    let config = MachineConfig::parse(FULL).unwrap();
    let shown = config.redacted().to_yaml();
    for secret in SECRETS {
        assert!(FULL.contains(secret));
        assert!(!shown.contains(secret), "{secret} still in:\n{shown}");
    }
    // And every workload environment value (full.yaml has one), by name.
    let redacted = config.redacted();
    let env = &redacted.machine.workloads[0].env;
    assert_eq!(config.machine.workloads[0].env["LOG_LEVEL"], "info");
    assert_eq!(env.len(), 1);
    assert_eq!(env["LOG_LEVEL"], REDACTED);
    assert!(
        shown.contains(&format!("LOG_LEVEL: '{REDACTED}'")),
        "{shown}"
    );
    assert_eq!(shown.matches(REDACTED).count(), SECRETS.len() + 1);
    let debug = format!("{config:?}");
    for secret in SECRETS {
        assert!(!debug.contains(secret), "{secret} in Debug output");
    }
}

#[test]
fn redaction_changes_nothing_else() {
    let config = MachineConfig::parse(FULL).unwrap();
    let mut redacted = config.redacted();
    assert_eq!(redacted.machine.token.as_ref().unwrap().expose(), REDACTED);
    assert_eq!(
        redacted
            .cluster
            .secretbox_encryption_secret
            .as_ref()
            .unwrap()
            .expose(),
        REDACTED
    );
    // Put the secrets back: the result must be the original.
    redacted.machine.token = config.machine.token.clone();
    redacted.machine.ca.key = config.machine.ca.key.clone();
    redacted.cluster.etcd.as_mut().unwrap().ca.key =
        config.cluster.etcd.as_ref().unwrap().ca.key.clone();
    redacted.cluster.secretbox_encryption_secret =
        config.cluster.secretbox_encryption_secret.clone();
    redacted.machine.workloads[0].env = config.machine.workloads[0].env.clone();
    assert_eq!(redacted, config);
}

#[test]
fn redaction_does_not_invent_secrets() {
    let config = MachineConfig::parse(MINIMAL).unwrap();
    assert_eq!(config.redacted(), config);
    assert!(!config.redacted().to_yaml().contains(REDACTED));
}
