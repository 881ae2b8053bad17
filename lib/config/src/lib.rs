//! The machine configuration of a Bramble node.
//!
//! A machine configuration is a versioned YAML document (`version: v1alpha1`)
//! that `nodectl gen config` writes and `nodectl apply-config` sends to a node.
//! This crate is a pure library — it reads and writes strings, nothing else —
//! and builds for the host and for `aarch64-unknown-linux-musl`.
//!
//! - [`MachineConfig::parse`] turns YAML into a typed [`MachineConfig`] and
//!   validates it. Every problem is reported, each with the path of its field
//!   (`machine.network.interfaces[1].addresses[0]: "10.0.0.300/24" is not an
//!   IP prefix`), in document order; see [`ConfigError`].
//! - [`MachineConfig::to_yaml`] writes it back (omitted optional fields stay
//!   omitted); [`MachineConfig::redacted`] replaces every secret (CA keys, the
//!   bootstrap token, the secretbox key, registry credentials, the values of
//!   workloads' environment variables) with `"******"` for display.
//! - [`apply_patch`] applies a strategic-merge YAML patch or an RFC 6902 JSON
//!   Patch to a configuration document; [`diff`] compares two configurations
//!   and says which services must restart or re-read the configuration, and
//!   whether the node must reboot.
//!
//! # Example
//!
//! ```
//! let yaml = r#"
//! version: v1alpha1
//! machine:
//!   type: worker
//!   hostname: node-2
//!   ca:
//!     crt: |
//!       -----BEGIN CERTIFICATE-----
//!       MIIBszCCAVmgAwIBAgIUZ2VuZXJhdGVk
//!       -----END CERTIFICATE-----
//! cluster:
//!   name: bramble
//!   controlPlane:
//!     endpoint: https://10.0.0.10:6443
//! "#;
//! let config = bramble_config::MachineConfig::parse(yaml).expect("valid");
//! assert_eq!(config.machine.hostname.as_deref(), Some("node-2"));
//!
//! let patched = bramble_config::apply_patch(yaml, "machine: {hostname: node-3}").expect("patch");
//! let new = bramble_config::MachineConfig::parse(&patched).expect("still valid");
//! let diff = bramble_config::diff(&config, &new);
//! assert!(!diff.reboot);
//! assert!(diff.restart.is_empty());
//! assert!(diff.reload.contains(&bramble_config::Service::Networkd));
//! ```

#![warn(missing_docs)]

mod diff;
mod error;
mod patch;
mod schema;
mod validate;

pub use diff::{Diff, DiffKind, DiffLine, Service, diff};
pub use error::{ConfigError, FieldError};
pub use patch::apply_patch;
pub use schema::{
    Bond, Bridge, CertificateAuthority, Cluster, ControlPlane, DeviceSelector, Etcd, EtcdDefaults,
    EtcdTuning, ExtraHost, Interface, Kubelet, Machine, MachineConfig, MachineType, Network, Pi,
    REDACTED, Registries, RegistryAuth, Resources, RestartPolicy, Route, SUPPORTED_VERSIONS,
    SeccompProfile, Secret, Time, Version, Vlan, Workload, WorkloadMount, WorkloadPort, parse_cpu,
    parse_memory,
};
pub use validate::RESERVED_HOST_PORTS;

use std::collections::HashMap;

use serde_norway::Value;

/// The largest configuration document [`MachineConfig::parse`] reads, in
/// bytes: a real one is a few KiB, and the limit is checked before any
/// parsing, so a hostile document cannot make the parser work for long.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

impl MachineConfig {
    /// Parses and validates a configuration document.
    ///
    /// A YAML syntax error, a wrong type, a missing or unknown field is
    /// reported alone (the first one met), with its field path. A document
    /// that deserializes is then validated and every problem is reported.
    /// A document over [`MAX_DOCUMENT_BYTES`] is refused unread.
    pub fn parse(yaml: &str) -> Result<Self, ConfigError> {
        if yaml.len() > MAX_DOCUMENT_BYTES {
            return Err(ConfigError::single(
                "",
                format!(
                    "the document is {} bytes; a configuration may be at most {} bytes (1 MiB)",
                    yaml.len(),
                    MAX_DOCUMENT_BYTES
                ),
            ));
        }
        let doc: Value = serde_norway::from_str(yaml)
            .map_err(|e| ConfigError::single("", format!("invalid YAML: {e}")))?;
        check_version(&doc)?;
        let de = serde_norway::Deserializer::from_str(yaml);
        let config: Self = serde_path_to_error::deserialize(de).map_err(serde_error)?;
        let mut errors = validate::validate(&config);
        if errors.is_empty() {
            Ok(config)
        } else {
            sort_by_document_order(&doc, &mut errors);
            Err(ConfigError::new(errors))
        }
    }

    /// `machine.ca.crt` of a document that may not be a valid configuration
    /// (a newer schema, a damaged file): read from the YAML alone, without
    /// validating anything else, and checked only for a PEM certificate.
    /// A node whose stored configuration no longer parses still knows which
    /// cluster's admins to admit.
    pub fn ca_certificate_of(yaml: &str) -> Option<String> {
        if yaml.len() > MAX_DOCUMENT_BYTES {
            return None;
        }
        let doc: Value = serde_norway::from_str(yaml).ok()?;
        let crt = doc.get("machine")?.get("ca")?.get("crt")?.as_str()?;
        let parsed = pem::parse(crt).ok()?;
        (parsed.tag() == "CERTIFICATE").then(|| crt.to_owned())
    }

    /// Validates a configuration built in code (for example by a generator).
    /// Problems come in schema order.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let errors = validate::validate(self);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::new(errors))
        }
    }

    /// The configuration as YAML; [`MachineConfig::parse`] reads it back to an
    /// equal value. Secrets are written in full: use
    /// [`MachineConfig::redacted`] for anything shown to a person.
    ///
    /// # Panics
    ///
    /// Never in practice: every field serializes to plain YAML (string keys,
    /// strings, numbers, booleans, lists and mappings).
    pub fn to_yaml(&self) -> String {
        #[allow(clippy::expect_used)]
        serde_norway::to_string(self).expect("a machine configuration always serializes to YAML")
    }

    /// A copy with every secret replaced by [`REDACTED`]: both CA keys, the
    /// bootstrap token, the secretbox encryption secret, registry passwords
    /// and tokens, and the value of every workload environment variable
    /// (`machine.workloads[].env`: a workload's credentials are passed there,
    /// so every value counts as secret; the names stay). Nothing else changes.
    pub fn redacted(&self) -> MachineConfig {
        let mut copy = self.clone();
        let hide = |s: &mut Option<Secret>| {
            if s.is_some() {
                *s = Some(Secret::redacted());
            }
        };
        hide(&mut copy.machine.token);
        hide(&mut copy.machine.ca.key);
        if let Some(etcd) = &mut copy.cluster.etcd {
            hide(&mut etcd.ca.key);
        }
        hide(&mut copy.cluster.secretbox_encryption_secret);
        for auth in copy.machine.registries.auth.values_mut() {
            hide(&mut auth.password);
            hide(&mut auth.token);
        }
        for workload in &mut copy.machine.workloads {
            for value in workload.env.values_mut() {
                REDACTED.clone_into(value);
            }
        }
        copy
    }

    /// The smallest configuration: a node of `machine_type` in cluster
    /// `cluster_name`, reaching the Kubernetes API at `endpoint`, trusting `ca`
    /// for the machine API. Everything else is empty; generators fill in the
    /// rest and check the result with [`MachineConfig::validate`].
    pub fn new_minimal(
        machine_type: MachineType,
        cluster_name: impl Into<String>,
        endpoint: impl Into<String>,
        ca: CertificateAuthority,
    ) -> Self {
        Self {
            version: Version::V1Alpha1,
            machine: Machine {
                machine_type,
                hostname: None,
                token: None,
                ca,
                cert_sans: Vec::new(),
                network: Network::default(),
                time: Time::default(),
                kubelet: Kubelet::default(),
                pi: Pi::default(),
                registries: Registries::default(),
                workloads: Vec::new(),
            },
            cluster: Cluster {
                name: cluster_name.into(),
                control_plane: ControlPlane {
                    endpoint: endpoint.into(),
                },
                etcd: None,
                secretbox_encryption_secret: None,
            },
        }
    }
}

/// Checks the document is a mapping with a supported `version` before the
/// typed pass, so a wrong version is reported as such rather than as whatever
/// field the older or newer schema disagrees on.
fn check_version(doc: &Value) -> Result<(), ConfigError> {
    let supported = SUPPORTED_VERSIONS.join(", ");
    let Value::Mapping(map) = doc else {
        let what = if doc.is_null() {
            "empty"
        } else {
            "not a YAML mapping"
        };
        return Err(ConfigError::single(
            "",
            format!("the configuration is {what}; it must start with `version: v1alpha1`"),
        ));
    };
    match map.get("version") {
        None => Err(ConfigError::single(
            "version",
            format!("missing; add `version: v1alpha1` (supported versions: {supported})"),
        )),
        Some(Value::String(v)) if SUPPORTED_VERSIONS.contains(&v.as_str()) => Ok(()),
        Some(other) => Err(ConfigError::single(
            "version",
            format!(
                "unsupported version {}; supported versions: {supported}",
                scalar_text(other)
            ),
        )),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => serde_norway::to_string(other)
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_else(|_| "(not a scalar)".to_owned()),
    }
}

/// A serde error as a field error: the path from `serde_path_to_error`, the
/// message from `serde_norway` without its own path prefix (it would repeat
/// the path), with its line and column.
fn serde_error(err: serde_path_to_error::Error<serde_norway::Error>) -> ConfigError {
    let path = err.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let mut message = err.inner().to_string();
    if let Some(rest) = message.strip_prefix(&format!("{path}: ")) {
        message = rest.to_owned();
    } else if let Some((prefix, rest)) = message.split_once(": ") {
        // serde_norway names the enclosing mapping for errors raised on a key
        // (unknown field); drop that prefix too when it is a prefix of our path.
        if !prefix.contains(' ') && path.starts_with(prefix) {
            message = rest.to_owned();
        }
    }
    // "missing field `name`" belongs to the missing field, not its parent.
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some((field, location)) = rest.split_once('`')
    {
        let field_path = if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        return ConfigError::single(
            field_path,
            format!("missing; this field is required{location}"),
        );
    }
    ConfigError::single(path, message)
}

/// Sorts errors by where their field appears in the document (stable, so
/// problems of one field keep the order they were found in).
fn sort_by_document_order(doc: &Value, errors: &mut [FieldError]) {
    let mut order = HashMap::new();
    index_paths(doc, String::new(), &mut order);
    errors.sort_by_cached_key(|e| {
        let mut path = e.path.as_str();
        loop {
            if let Some(&i) = order.get(path) {
                return i;
            }
            match parent_path(path) {
                Some(parent) => path = parent,
                None => return 0,
            }
        }
    });
}

/// Numbers every node's path in document order (pre-order).
fn index_paths(value: &Value, path: String, order: &mut HashMap<String, usize>) {
    let next = order.len();
    order.entry(path.clone()).or_insert(next);
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => scalar_text(other),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                index_paths(v, child, order);
            }
        }
        Value::Sequence(seq) => {
            for (i, v) in seq.iter().enumerate() {
                index_paths(v, format!("{path}[{i}]"), order);
            }
        }
        Value::Tagged(tagged) => index_paths(&tagged.value, path, order),
        _ => {}
    }
}

/// `a.b[2]` → `a.b`, `a.b` → `a`, `a` → ``, `` → none.
fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    match path.rfind(['.', '[']) {
        Some(i) => Some(&path[..i]),
        None => Some(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("a.b[2]"), Some("a.b"));
        assert_eq!(parent_path("a.b"), Some("a"));
        assert_eq!(parent_path("a"), Some(""));
        assert_eq!(parent_path(""), None);
    }
}
