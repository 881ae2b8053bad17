//! OCI image references, as the distribution project defines them:
//! `[registry[:port]/]path[:tag][@algorithm:hex]`, normalised the way
//! Docker does (`busybox` is `docker.io/library/busybox:latest`).
//!
//! Written out by hand: the usual regular expression (with Unicode word
//! classes) costs a process over 12 MiB the first time it is compiled, more
//! than the node's runtime may use in all.
//!
//! ```
//! use bramble_reference::ImageReference;
//! let r = ImageReference::parse("busybox").unwrap();
//! assert_eq!(r.whole(), "docker.io/library/busybox:latest");
//! let r = ImageReference::parse("10.0.2.100:5000/bramble/app:v1").unwrap();
//! assert_eq!((r.registry.as_str(), r.repository.as_str()), ("10.0.2.100:5000", "bramble/app"));
//! assert!(ImageReference::parse("Not A Reference").is_err());
//! ```

use std::fmt;

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of references that name neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository name.
const MAX_NAME: usize = 255;
/// Longest tag.
const MAX_TAG: usize = 128;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    /// `docker.io`, `ghcr.io`, `10.0.2.100:5000`.
    pub registry: String,
    /// `library/busybox`, `org/app`.
    pub repository: String,
    /// The tag, if any (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// `sha256:<hex>`, if given.
    pub digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceError(String);

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReferenceError {}

fn err<T>(reason: impl Into<String>) -> Result<T, ReferenceError> {
    Err(ReferenceError(reason.into()))
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`
fn path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum_lower(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `host[:port]`: labels of `[A-Za-z0-9-]` not starting or ending with `-`.
fn domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// `[\w][\w.-]{0,127}` with ASCII word characters.
fn tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG
        && word(b[0])
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// `algorithm:hex`; sha256 needs exactly 64 hex digits.
fn digest(d: &str) -> Result<(), ReferenceError> {
    let Some((alg, hex)) = d.split_once(':') else {
        return err(format!("digest {d:?} has no algorithm (sha256:...)"));
    };
    let alg_ok = alg.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    });
    if !alg_ok {
        return err(format!("digest algorithm {alg:?} is not valid"));
    }
    if hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return err(format!("digest {d:?}: expected at least 32 hex digits"));
    }
    if alg == "sha256" && hex.len() != 64 {
        return err(format!("digest {d:?}: sha256 takes 64 hex digits"));
    }
    Ok(())
}

impl ImageReference {
    /// Parses and normalises `text`.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        if text.is_empty() {
            return err("is empty");
        }
        let (name_tag, digest_part) = match text.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (text, None),
        };
        if let Some(d) = digest_part {
            digest(d)?;
        }
        // A tag follows the last ':' after the last '/'.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag_part) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(t) = tag_part
            && !tag(t)
        {
            return err(format!(
                "tag {t:?} is not valid (letters, digits, '_', '.', '-'; at most {MAX_TAG})"
            ));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                if !domain(first) {
                    return err(format!("registry {first:?} is not a host[:port]"));
                }
                (first, rest)
            }
            _ => (DEFAULT_REGISTRY, name),
        };
        if path.is_empty() || !path.split('/').all(path_component) {
            return err(format!(
                "repository {path:?} is not valid (lowercase letters and digits, \
                 separated by '.', '_', '__' or '-', components joined by '/')"
            ));
        }
        let registry = if registry == "index.docker.io" {
            DEFAULT_REGISTRY
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        if repository.len() > MAX_NAME {
            return err(format!(
                "repository name is longer than {MAX_NAME} characters"
            ));
        }
        let tag = match (tag_part, digest_part) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (t, _) => t.map(str::to_owned),
        };
        Ok(Self {
            registry: registry.to_owned(),
            repository,
            tag,
            digest: digest_part.map(str::to_owned),
        })
    }

    /// The normalised text: `registry/repository[:tag][@digest]`.
    pub fn whole(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.whole())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn normalises_like_docker() {
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("user/app", "docker.io/user/app:latest"),
            ("ghcr.io/org/app:v2", "ghcr.io/org/app:v2"),
            ("127.0.0.1:5000/test/img", "127.0.0.1:5000/test/img:latest"),
            ("localhost/app", "localhost/app:latest"),
            (
                "localhost:5000/a/b/c:x_y-z.1",
                "localhost:5000/a/b/c:x_y-z.1",
            ),
            ("Registry.Example/app", "Registry.Example/app:latest"),
            ("ghcr.io/a.b__c-d---e/x", "ghcr.io/a.b__c-d---e/x:latest"),
        ] {
            assert_eq!(
                ImageReference::parse(input).expect(input).whole(),
                want,
                "{input}"
            );
        }
        let r = ImageReference::parse(&format!("busybox@{D}")).expect("digest");
        assert_eq!(r.tag, None);
        assert_eq!(r.whole(), format!("docker.io/library/busybox@{D}"));
        let r = ImageReference::parse(&format!("busybox:1@{D}")).expect("both");
        assert_eq!(r.whole(), format!("docker.io/library/busybox:1@{D}"));
        // Normalised text parses to itself.
        let again = ImageReference::parse(&r.whole()).expect("again");
        assert_eq!(again, r);
    }

    #[test]
    fn refuses_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("Busybox", "repository"),
            ("busy box", "repository"),
            ("busybox:", "tag"),
            ("busybox:-x", "tag"),
            ("busybox@sha256:abc", "hex digits"),
            ("busybox@sha256", "algorithm"),
            ("a/../b", "repository"),
            ("a//b", "repository"),
            ("app-/x", "repository"),
            ("-bad.io/app", "registry"),
            ("bad.io:port/app", "registry"),
            ("ghcr.io/", "repository"),
            ("ghcr.io/Org/app", "repository"),
        ] {
            let e = ImageReference::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let long = format!("a/{}", "b".repeat(300));
        assert!(ImageReference::parse(&long).is_err());
        let tag = format!("app:{}", "t".repeat(129));
        assert!(ImageReference::parse(&tag).is_err());
    }
}
