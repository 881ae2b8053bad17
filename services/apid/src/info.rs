//! What the node reports about itself (`Version`), read from the running
//! system: `/etc/os-release`, `uname(2)`, `/proc/cmdline`, `/proc/uptime`.
//!
//! Every path is a field of [`NodeInfoSource`] so that tests can point them at
//! fixtures.

use std::fs;
use std::path::{Path, PathBuf};

use bramble_api::machine::v1::VersionResponse;

/// Git revision the binary was built from, set by the image build through
/// the `BRAMBLE_GIT_REVISION` environment variable at compile time.
pub const GIT_REVISION: &str = match option_env!("BRAMBLE_GIT_REVISION") {
    Some(rev) => rev,
    None => "unknown",
};

/// Used for `os_name` when os-release has no NAME.
pub const DEFAULT_OS_NAME: &str = "Bramble";

/// Kernel command-line token naming the boot slot (`bramble.slot=A`).
pub const SLOT_TOKEN: &str = "bramble.slot=";

/// Where the facts come from.
#[derive(Debug, Clone)]
pub struct NodeInfoSource {
    /// os-release files, first existing one wins (`/etc/os-release`, then
    /// `/usr/lib/os-release`, as os-release(5) says).
    pub os_release: Vec<PathBuf>,
    /// The kernel command line.
    pub cmdline: PathBuf,
    /// Seconds since boot.
    pub uptime: PathBuf,
}

impl Default for NodeInfoSource {
    fn default() -> Self {
        Self::system()
    }
}

impl NodeInfoSource {
    /// The real system's paths.
    pub fn system() -> Self {
        Self {
            os_release: vec!["/etc/os-release".into(), "/usr/lib/os-release".into()],
            cmdline: "/proc/cmdline".into(),
            uptime: "/proc/uptime".into(),
        }
    }

    /// Collects the answer to `Version`. Missing or unreadable sources give
    /// empty (or fallback) fields, never an error: the call must answer on a
    /// half-broken node.
    pub fn version(&self) -> VersionResponse {
        let os = self.os_release();
        let uts = Uname::get();
        VersionResponse {
            os_name: os.name.unwrap_or_else(|| DEFAULT_OS_NAME.to_owned()),
            os_version: os
                .version_id
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
            git_revision: GIT_REVISION.to_owned(),
            kernel_version: uts.release,
            architecture: uts.machine,
            boot_slot: read_or_log(&self.cmdline)
                .map(|c| boot_slot(&c))
                .unwrap_or_default(),
            uptime_seconds: read_or_log(&self.uptime)
                .and_then(|u| parse_uptime(&u))
                .unwrap_or(0.0),
            // Filled in by the server, which knows whether a configuration
            // is in force.
            maintenance: false,
            hostname: uts.nodename,
            // Filled in by the server too.
            machine_type: String::new(),
        }
    }

    fn os_release(&self) -> OsRelease {
        self.os_release
            .iter()
            .find_map(|p| fs::read_to_string(p).ok())
            .map(|s| OsRelease::parse(&s))
            .unwrap_or_default()
    }
}

/// The few fields of uname(2) the API reports.
#[derive(Debug, Clone, Default)]
pub struct Uname {
    /// `uname -n`.
    pub nodename: String,
    /// `uname -r`.
    pub release: String,
    /// `uname -m`.
    pub machine: String,
}

impl Uname {
    /// Reads uname(2); empty fields if it fails (it does not on Linux).
    pub fn get() -> Self {
        match nix::sys::utsname::uname() {
            Ok(u) => Self {
                nodename: u.nodename().to_string_lossy().into_owned(),
                release: u.release().to_string_lossy().into_owned(),
                machine: u.machine().to_string_lossy().into_owned(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "uname failed");
                Self::default()
            }
        }
    }
}

fn read_or_log(path: &Path) -> Option<String> {
    match fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot read");
            None
        }
    }
}

/// NAME and VERSION_ID from an os-release file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `NAME`.
    pub name: Option<String>,
    /// `VERSION_ID`.
    pub version_id: Option<String>,
}

impl OsRelease {
    /// Parses os-release(5) syntax: `KEY=value` lines, values optionally in
    /// single or double quotes, `#` comments.
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = unquote(value.trim());
            if value.is_empty() {
                continue;
            }
            match key.trim() {
                "NAME" => out.name = Some(value),
                "VERSION_ID" => out.version_id = Some(value),
                _ => {}
            }
        }
        out
    }
}

fn unquote(value: &str) -> String {
    let inner = if value.len() >= 2
        && ((value.starts_with('"') && value.ends_with('"'))
            || (value.starts_with('\'') && value.ends_with('\'')))
    {
        &value[1..value.len() - 1]
    } else {
        value
    };
    // Shell-style escapes inside double quotes: \" \\ \$ \`.
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of the last `bramble.slot=` token on a kernel command line, or "".
pub fn boot_slot(cmdline: &str) -> String {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|t| t.strip_prefix(SLOT_TOKEN))
        .next_back()
        .unwrap_or_default()
        .to_owned()
}

/// First number of `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_ascii_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_parsing() {
        let text = "# comment\nNAME=\"Bramble\"\nVERSION_ID='0.3.1'\nID=bramble\nPRETTY_NAME=\"Bramble \\\"x\\\"\"\n";
        let r = OsRelease::parse(text);
        assert_eq!(r.name.as_deref(), Some("Bramble"));
        assert_eq!(r.version_id.as_deref(), Some("0.3.1"));
        assert_eq!(
            OsRelease::parse("NAME=Plain\n").name.as_deref(),
            Some("Plain")
        );
        assert_eq!(OsRelease::parse("garbage\nNAME=\n"), OsRelease::default());
    }

    #[test]
    fn slot_from_cmdline() {
        assert_eq!(boot_slot("console=ttyAMA0 bramble.slot=B root=x\n"), "B");
        assert_eq!(boot_slot("bramble.slot=A bramble.slot=B"), "B");
        assert_eq!(boot_slot("console=ttyAMA0 xbramble.slot=A"), "");
        assert_eq!(boot_slot(""), "");
    }

    #[test]
    fn uptime_parsing() {
        assert_eq!(parse_uptime("12345.67 54321.00\n"), Some(12345.67));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("abc 1"), None);
    }

    #[test]
    fn version_from_fixtures_and_fallbacks() {
        let dir = tempfile::tempdir().unwrap();
        let os = dir.path().join("os-release");
        let cmdline = dir.path().join("cmdline");
        let uptime = dir.path().join("uptime");
        fs::write(&os, "NAME=Bramble\nVERSION_ID=1.2.3\n").unwrap();
        fs::write(&cmdline, "quiet bramble.slot=A\n").unwrap();
        fs::write(&uptime, "42.50 10.00\n").unwrap();
        let src = NodeInfoSource {
            os_release: vec![dir.path().join("missing"), os],
            cmdline,
            uptime,
        };
        let v = src.version();
        assert_eq!(v.os_name, "Bramble");
        assert_eq!(v.os_version, "1.2.3");
        assert_eq!(v.boot_slot, "A");
        assert!((v.uptime_seconds - 42.5).abs() < f64::EPSILON);
        assert_eq!(v.git_revision, GIT_REVISION);
        assert!(!v.kernel_version.is_empty());
        assert_eq!(v.architecture, std::env::consts::ARCH);
        assert!(!v.hostname.is_empty());

        let none = NodeInfoSource {
            os_release: vec![dir.path().join("missing")],
            cmdline: dir.path().join("missing"),
            uptime: dir.path().join("missing"),
        };
        let v = none.version();
        assert_eq!(v.os_name, DEFAULT_OS_NAME);
        assert_eq!(v.os_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(v.boot_slot, "");
        assert!(v.uptime_seconds.abs() < f64::EPSILON);
    }
}
