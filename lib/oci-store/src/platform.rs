//! Image platforms (`os/architecture[/variant]`) and how the store picks one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// An OCI platform, normalised the way containerd does it: architectures in
/// Go's spelling (`arm64`, `amd64`), `arm64`'s default variant `v8` dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture, e.g. `arm64`.
    pub architecture: String,
    /// CPU variant, e.g. `v7` for `arm`; `None` for the architecture's default.
    pub variant: Option<String>,
}

impl Platform {
    /// A normalised platform.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let os = os.trim().to_ascii_lowercase();
        let arch = architecture.trim().to_ascii_lowercase();
        let variant = variant
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty());
        let (architecture, variant) = match arch.as_str() {
            // The default variant is dropped after the `v` is added, so `1`
            // and `v1` both mean plain amd64.
            "aarch64" | "arm64" => ("arm64", variant.map(|v| with_v(&v)).filter(|v| v != "v8")),
            "x86_64" | "x86-64" | "amd64" => {
                ("amd64", variant.map(|v| with_v(&v)).filter(|v| v != "v1"))
            }
            "i386" | "i686" | "386" => ("386", None),
            "armhf" => ("arm", Some("v7".to_owned())),
            "armel" => ("arm", Some("v6".to_owned())),
            "arm" | "aarch32" => (
                "arm",
                Some(variant.map_or_else(|| "v7".to_owned(), |v| with_v(&v))),
            ),
            other => {
                return Self {
                    os,
                    architecture: other.to_owned(),
                    variant,
                };
            }
        };
        Self {
            os,
            architecture: architecture.to_owned(),
            variant,
        }
    }

    /// `linux/arm64`, the platform of the nodes.
    pub fn linux_arm64() -> Self {
        Self::new("linux", "arm64", None)
    }

    /// `linux/amd64`.
    pub fn linux_amd64() -> Self {
        Self::new("linux", "amd64", None)
    }

    /// The platform this program was built for (`std::env::consts::ARCH`
    /// mapped to OCI names: `aarch64` -> `arm64`, `x86_64` -> `amd64`).
    pub fn host() -> Self {
        Self::new(std::env::consts::OS, std::env::consts::ARCH, None)
    }

    /// Whether an image for `other` runs on `self` (both normalised). A
    /// `self` without a variant accepts any variant of its architecture.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (None, _) => true,
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
            }
    }
}

/// `7` -> `v7`.
fn with_v(v: &str) -> String {
    if v.starts_with('v') {
        v.to_owned()
    } else {
        format!("v{v}")
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = Error;

    /// Parses `os/arch` or `os/arch/variant`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidManifest {
            what: format!("platform {s:?}"),
            reason: "expected os/architecture[/variant]".to_owned(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        let platform = match parts.as_slice() {
            [os, arch] => Self::new(os, arch, None),
            [os, arch, variant] => Self::new(os, arch, Some(variant)),
            _ => return Err(invalid()),
        };
        // Checked after `new` trims them: a blank part is a missing one.
        if platform.os.is_empty() || platform.architecture.is_empty() {
            return Err(invalid());
        }
        Ok(platform)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_containerd() {
        assert_eq!(
            Platform::new("linux", "aarch64", None),
            Platform::linux_arm64()
        );
        assert_eq!(
            Platform::new("Linux", "arm64", Some("v8")),
            Platform::linux_arm64()
        );
        assert_eq!(
            Platform::new("linux", "x86_64", None),
            Platform::linux_amd64()
        );
        assert_eq!(
            Platform::new("linux", "arm", Some("7")).to_string(),
            "linux/arm/v7"
        );
        assert_eq!(Platform::linux_arm64().to_string(), "linux/arm64");
        let parsed: Platform = "linux/arm64/v8".parse().expect("parses");
        assert_eq!(parsed, Platform::linux_arm64());
        assert!("linux".parse::<Platform>().is_err());
    }

    #[test]
    fn default_variants_without_their_v_are_dropped() {
        // Found by the oci_manifest fuzz target: "linux/amd64/1" became
        // linux/amd64/v1, whose own text then parsed to plain linux/amd64.
        assert_eq!(
            Platform::new("linux", "amd64", Some("1")),
            Platform::linux_amd64()
        );
        assert_eq!(
            Platform::new("linux", "arm64", Some("8")),
            Platform::linux_arm64()
        );
        let v2 = Platform::new("linux", "amd64", Some("2"));
        assert_eq!(v2.variant.as_deref(), Some("v2"));
        for p in [v2, Platform::new("linux", "arm", Some("6"))] {
            assert_eq!(p.to_string().parse::<Platform>().ok(), Some(p));
        }
    }

    #[test]
    fn blank_parts_are_refused() {
        // Found by the oci_manifest fuzz target: "\n\n/\n" parsed to a platform
        // whose own text, "/", did not.
        for text in [
            "\n\n/\n",
            " /arm64",
            "linux/ ",
            "/arm64",
            "linux//v7",
            " / /v8",
        ] {
            assert!(text.parse::<Platform>().is_err(), "{text:?}");
        }
        let parsed: Platform = " Linux / ARM64 ".parse().expect("parses");
        assert_eq!(parsed, Platform::linux_arm64());
        assert_eq!(parsed.to_string().parse::<Platform>().ok(), Some(parsed));
    }

    #[test]
    fn host_maps_the_build_target() {
        let host = Platform::host();
        match std::env::consts::ARCH {
            "aarch64" => assert_eq!(host, Platform::linux_arm64()),
            "x86_64" => assert_eq!(host, Platform::linux_amd64()),
            _ => {}
        }
    }

    #[test]
    fn matching() {
        let arm64 = Platform::linux_arm64();
        assert!(arm64.matches(&Platform::new("linux", "arm64", Some("v8"))));
        assert!(!arm64.matches(&Platform::linux_amd64()));
        let v7 = Platform::new("linux", "arm", Some("v7"));
        assert!(!v7.matches(&Platform::new("linux", "arm", Some("v6"))));
    }
}
