//! Image references: `busybox` -> `docker.io/library/busybox:latest`.

use oci_client::Reference;

use crate::Error;

/// Normalises an image reference: the registry defaults to `docker.io`,
/// Docker Hub's official images get `library/`, a missing tag becomes
/// `latest`, and a digest (`name@sha256:...`) is kept (with its tag if both
/// are given).
///
/// ```
/// use bramble_oci_store::normalize_reference;
/// assert_eq!(normalize_reference("busybox").unwrap(), "docker.io/library/busybox:latest");
/// assert_eq!(
///     normalize_reference("localhost:5000/app:v1").unwrap(),
///     "localhost:5000/app:v1"
/// );
/// assert!(normalize_reference("Not A Reference").is_err());
/// ```
pub fn normalize_reference(reference: &str) -> Result<String, Error> {
    parse(reference).map(|r| r.whole())
}

/// Parses and normalises a reference.
pub(crate) fn parse(reference: &str) -> Result<Reference, Error> {
    let invalid = |reason: String| Error::InvalidReference {
        reference: reference.to_owned(),
        reason,
    };
    if reference.trim() != reference || reference.is_empty() {
        return Err(invalid("empty or surrounded by whitespace".to_owned()));
    }
    if let Some(hex) = reference.strip_prefix("sha256:")
        && crate::digest::is_hex64(hex)
    {
        return Err(invalid(
            "a bare digest names no repository; use name@sha256:...".to_owned(),
        ));
    }
    // Parsed by hand: oci-client's own parser compiles a regular expression
    // that costs the process over 12 MiB (see bramble-reference).
    let parsed = bramble_reference::ImageReference::parse(reference).map_err(|e| {
        invalid(format!(
            "{e} (expected [registry[:port]/]name[:tag][@sha256:digest], lowercase)"
        ))
    })?;
    if let Some(digest) = &parsed.digest {
        crate::digest::hex_of(digest).map_err(|_| {
            invalid("only sha256 digests (64 lowercase hex digits) are supported".to_owned())
        })?;
    }
    let bramble_reference::ImageReference {
        registry,
        repository,
        tag,
        digest,
    } = parsed;
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t, d),
        (None, Some(d)) => Reference::with_digest(registry, repository, d),
        (t, None) => Reference::with_tag(
            registry,
            repository,
            t.unwrap_or_else(|| bramble_reference::DEFAULT_TAG.to_owned()),
        ),
    })
}

/// The reference without tag or digest: `docker.io/library/busybox`.
pub(crate) fn repository_of(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}

/// Whether an `org.opencontainers.image.ref.name` value is a full reference
/// (names a repository) rather than only a tag such as `v1` or `latest`.
pub(crate) fn is_full_reference(name: &str) -> bool {
    name.contains('/') || name.contains(':') || name.contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("user/app", "docker.io/user/app:latest"),
            ("ghcr.io/org/app:v2", "ghcr.io/org/app:v2"),
            ("127.0.0.1:5000/test/img", "127.0.0.1:5000/test/img:latest"),
            ("localhost/app", "localhost/app:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_reference(input).expect(input), want, "{input}");
        }
        let d = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert_eq!(
            normalize_reference(&format!("busybox@{d}")).expect("digest"),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            normalize_reference(&format!("busybox:1@{d}")).expect("tag and digest"),
            format!("docker.io/library/busybox:1@{d}")
        );
    }

    #[test]
    fn rejects_bad_references_naming_them() {
        for bad in [
            "",
            "Busybox",
            "busy box",
            "busybox:",
            "busybox@sha256:abc",
            "a/../b",
            " busybox",
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        ] {
            let err = normalize_reference(bad).expect_err(bad);
            let msg = err.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.starts_with("invalid image reference"), "{msg}");
        }
    }

    #[test]
    fn full_references() {
        assert!(!is_full_reference("v1"));
        assert!(!is_full_reference("latest"));
        assert!(is_full_reference("busybox:1"));
        assert!(is_full_reference("example.com/app"));
    }
}
