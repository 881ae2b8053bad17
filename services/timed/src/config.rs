//! The daemon's settings from the machine configuration (`machine.time`).

use std::io;
use std::path::Path;

use bramble_config::MachineConfig;

use crate::error::Error;
use crate::guard;

/// The server used when the machine configuration names none (or there is
/// no configuration yet, in maintenance mode): the NTP Pool's global name,
/// which resolves to a few nearby public servers.
pub const DEFAULT_SERVER: &str = "pool.ntp.org";

/// What `machine.time` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Servers in order of preference (names or IP addresses).
    pub servers: Vec<String>,
    /// `machine.time.disabled`: never query a server.
    pub disabled: bool,
    /// True when the servers are the built-in default.
    pub default_servers: bool,
    /// `machine.time.maxStepSeconds`: the largest correction one answer
    /// makes on its own (see `guard`).
    pub max_step_seconds: u64,
}

impl Settings {
    /// The settings with no configuration: the default server.
    pub fn defaults() -> Self {
        Self {
            servers: vec![DEFAULT_SERVER.to_owned()],
            disabled: false,
            default_servers: true,
            max_step_seconds: guard::DEFAULT_MAX_STEP_SECONDS,
        }
    }

    fn from_config(config: &MachineConfig) -> Self {
        let time = &config.machine.time;
        let max_step_seconds = time
            .max_step_seconds
            .unwrap_or(guard::DEFAULT_MAX_STEP_SECONDS);
        if time.servers.is_empty() {
            Self {
                disabled: time.disabled,
                max_step_seconds,
                ..Self::defaults()
            }
        } else {
            Self {
                servers: time.servers.clone(),
                disabled: time.disabled,
                default_servers: false,
                max_step_seconds,
            }
        }
    }
}

/// Reads the settings from the machine configuration at `path`. A missing
/// file means no configuration (maintenance mode): the defaults. A file
/// that does not parse or validate is an error naming the file and every
/// field at fault.
pub fn load(path: &Path) -> Result<Settings, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Settings::defaults()),
        Err(source) => {
            return Err(Error::File(bramble_atomic::FileError {
                what: "read",
                path: path.to_owned(),
                source,
            }));
        }
    };
    let config = MachineConfig::parse(&text).map_err(|e| Error::Config {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok(Settings::from_config(&config))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid machine configuration with `time` as its `machine.time` block
    /// (YAML, indented for that position).
    pub(crate) fn config_yaml(time: &str) -> String {
        format!(
            r#"version: v1alpha1
machine:
  type: worker
  hostname: node-2
  ca:
    crt: |
      -----BEGIN CERTIFICATE-----
      MIIBszCCAVmgAwIBAgIUZ2VuZXJhdGVk
      -----END CERTIFICATE-----
{time}
cluster:
  name: bramble
  controlPlane:
    endpoint: https://10.0.0.10:6443
"#
        )
    }

    #[test]
    fn missing_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let s = load(&dir.path().join("config.yaml")).unwrap();
        assert_eq!(s, Settings::defaults());
        assert_eq!(s.servers, vec!["pool.ntp.org".to_string()]);
        assert!(s.default_servers);
        assert!(!s.disabled);
    }

    #[test]
    fn servers_and_disabled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            config_yaml("  time:\n    servers: [10.0.0.1, time.example.org]"),
        )
        .unwrap();
        let s = load(&path).unwrap();
        assert_eq!(s.servers, vec!["10.0.0.1", "time.example.org"]);
        assert!(!s.default_servers);
        assert!(!s.disabled);
        assert_eq!(s.max_step_seconds, 1000);

        std::fs::write(
            &path,
            config_yaml("  time:\n    servers: [10.0.0.1]\n    maxStepSeconds: 60"),
        )
        .unwrap();
        assert_eq!(load(&path).unwrap().max_step_seconds, 60);

        std::fs::write(&path, config_yaml("  time:\n    disabled: true")).unwrap();
        let s = load(&path).unwrap();
        assert!(s.disabled);
        assert_eq!(s.servers, vec![DEFAULT_SERVER]);

        // A configuration without a time block: defaults.
        std::fs::write(&path, config_yaml("")).unwrap();
        assert_eq!(load(&path).unwrap(), Settings::defaults());
    }

    #[test]
    fn bad_config_names_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            config_yaml("  time:\n    servers: [10.0.0.1, \"not a host!\"]"),
        )
        .unwrap();
        let msg = load(&path).unwrap_err().to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("machine.time.servers[1]"), "{msg}");

        std::fs::write(&path, config_yaml("  time:\n    servrs: [10.0.0.1]")).unwrap();
        let msg = load(&path).unwrap_err().to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("machine.time"), "{msg}");
        assert!(msg.contains("servrs"), "{msg}");

        std::fs::write(&path, config_yaml("  time:\n    maxStepSeconds: 0")).unwrap();
        let msg = load(&path).unwrap_err().to_string();
        assert!(msg.contains("machine.time.maxStepSeconds"), "{msg}");
    }
}
