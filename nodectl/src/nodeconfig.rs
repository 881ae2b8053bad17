//! The client configuration file: named contexts, each with the endpoints
//! and nodes of one cluster and the credentials to reach them (the OS CA and
//! a client certificate whose subject carries a role).
//!
//! ```yaml
//! context: homelab
//! contexts:
//!   homelab:
//!     endpoints: [10.0.0.10]
//!     nodes: [10.0.0.10, 10.0.0.11]
//!     ca: "-----BEGIN CERTIFICATE-----..."
//!     crt: "-----BEGIN CERTIFICATE-----..."
//!     key: "-----BEGIN PRIVATE KEY-----..."
//! ```
//!
//! Found at `--nodeconfig FILE`, else `$NODECONFIG`, else
//! `$XDG_CONFIG_HOME/bramble/nodeconfig` (`~/.config/bramble/nodeconfig`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One cluster's endpoints, nodes and credentials.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Addresses dialled (host[:port]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Nodes acted on when `-n` is not given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// The OS CA certificate (PEM) the nodes' certificates chain to.
    pub ca: String,
    /// The client certificate (PEM).
    pub crt: String,
    /// The client certificate's key (PEM).
    pub key: String,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Context")
            .field("endpoints", &self.endpoints)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// Where the file is when no `--nodeconfig` is given.
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NODECONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("bramble").join("nodeconfig"))
}

impl NodeConfig {
    /// Reads `path`; a missing file is `Ok(None)`.
    pub fn load(path: &Path) -> Result<Option<Self>, Error> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::NodeConfig {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        };
        serde_norway::from_str(&text)
            .map(Some)
            .map_err(|e| Error::NodeConfig {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }

    /// The named context, or the current one.
    pub fn context(&self, name: Option<&str>) -> Result<(&str, &Context), String> {
        let name = match name.or(self.context.as_deref()) {
            Some(n) => n,
            None => return Err("no context is selected (nodectl config use-context NAME)".into()),
        };
        self.contexts
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| {
                let known: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
                format!("no context named \"{name}\" (known: {})", known.join(", "))
            })
    }

    /// Adds (or replaces) a context and makes it the current one.
    pub fn merge(&mut self, name: &str, context: Context) {
        self.contexts.insert(name.to_owned(), context);
        self.context = Some(name.to_owned());
    }

    /// Writes the file atomically, readable by its owner only (it holds a
    /// private key).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let text = serde_norway::to_string(self).map_err(|e| Error::NodeConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        write_private(path, text.as_bytes()).map_err(|e| Error::NodeConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// Replaces `path` atomically with owner-only permissions (`bramble-atomic`:
/// a temporary file beside it, fsync, rename, fsync of the directory).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), bramble_atomic::FileError> {
    bramble_atomic::write(path, contents, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(n: &str) -> Context {
        Context {
            endpoints: vec![n.into()],
            nodes: vec![n.into()],
            ca: "ca".into(),
            crt: "crt".into(),
            key: "key".into(),
        }
    }

    #[test]
    fn round_trip_and_context_selection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/nodeconfig");
        assert_eq!(NodeConfig::load(&path).unwrap(), None);
        let mut c = NodeConfig::default();
        assert!(
            c.context(None)
                .unwrap_err()
                .contains("no context is selected")
        );
        c.merge("a", ctx("10.0.0.1"));
        c.merge("b", ctx("10.0.0.2"));
        c.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let back = NodeConfig::load(&path).unwrap().unwrap();
        assert_eq!(back, c);
        assert_eq!(back.context(None).unwrap().0, "b");
        assert_eq!(back.context(Some("a")).unwrap().1.nodes, ["10.0.0.1"]);
        let e = back.context(Some("zz")).unwrap_err();
        assert!(e.contains("\"zz\"") && e.contains("a, b"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodeconfig");
        fs::write(&path, "context: a\ncontxts: {}\n").unwrap();
        let e = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("nodeconfig") && e.contains("contxts"), "{e}");
    }
}
