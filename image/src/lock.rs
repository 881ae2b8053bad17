//! `boot/packages.lock`: the pinned Debian packages, and checking the cached copies.
//!
//! Each non-comment line is `name version arch sha256 file` (whitespace-separated);
//! `#` starts a comment. Every cached `.deb` is read into memory and hashed before
//! anything looks inside it, so what is checked is exactly what is used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockEntry {
    /// Package name (`linux-image-6.1.0-56-arm64`).
    pub name: String,
    /// Debian version.
    pub version: String,
    /// Debian architecture (`arm64`, `all`).
    pub arch: String,
    /// Lower-case hex sha256 of the `.deb`.
    pub sha256: String,
    /// File name inside the cache directory.
    pub file: String,
    /// 1-based line in the lock file.
    pub line: usize,
}

/// A parsed lock file.
#[derive(Debug, Clone)]
pub struct Lock {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// Entries in file order.
    pub entries: Vec<LockEntry>,
}

impl Lock {
    /// Reads and parses a lock file.
    pub fn load(path: &Path) -> Result<Lock> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        Lock::parse(path, &text)
    }

    /// Parses lock text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Lock> {
        let err = |line: usize, reason: String| Error::LockSyntax {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let mut entries: Vec<LockEntry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [name, version, arch, sha256, file] = fields[..] else {
                return Err(err(
                    line,
                    format!(
                        "expected 5 fields `name version arch sha256 file`, found {}",
                        fields.len()
                    ),
                ));
            };
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(line, format!("sha256 `{sha256}` is not 64 hex digits")));
            }
            if file.contains('/') || file == "." || file == ".." || !file.ends_with(".deb") {
                return Err(err(
                    line,
                    format!("file `{file}` must be a plain `.deb` file name inside the cache"),
                ));
            }
            if let Some(prev) = entries.iter().find(|e| e.name == name) {
                return Err(err(
                    line,
                    format!("package `{name}` is already pinned on line {}", prev.line),
                ));
            }
            entries.push(LockEntry {
                name: name.to_string(),
                version: version.to_string(),
                arch: arch.to_string(),
                sha256: sha256.to_ascii_lowercase(),
                file: file.to_string(),
                line,
            });
        }
        if entries.is_empty() {
            return Err(err(0, "no packages pinned".into()));
        }
        Ok(Lock {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The entry for `name`.
    pub fn get(&self, name: &str) -> Result<&LockEntry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::LockMissingPackage {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// The single entry whose name starts with `prefix` (e.g. `linux-image-`).
    pub fn get_prefixed(&self, prefix: &str) -> Result<&LockEntry> {
        let mut it = self.entries.iter().filter(|e| e.name.starts_with(prefix));
        match (it.next(), it.next()) {
            (Some(e), None) => Ok(e),
            (None, _) => Err(Error::LockMissingPackage {
                path: self.path.clone(),
                name: format!("{prefix}*"),
            }),
            (Some(a), Some(b)) => Err(Error::LockSyntax {
                path: self.path.clone(),
                line: b.line,
                reason: format!(
                    "more than one `{prefix}*` package pinned (`{}` on line {}, `{}`)",
                    a.name, a.line, b.name
                ),
            }),
        }
    }
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// sha256 of `data` as lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Reads `<cache>/<entry.file>` and checks its sha256 against the lock; returns the
/// bytes only if they match.
pub fn read_verified(cache: &Path, entry: &LockEntry) -> Result<Vec<u8>> {
    let path = cache.join(&entry.file);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::DebMissing {
                path,
                expected: entry.sha256.clone(),
            });
        }
        Err(e) => return Err(Error::io(path)(e)),
    };
    let actual = sha256_hex(&data);
    if actual != entry.sha256 {
        return Err(Error::Sha256Mismatch {
            path,
            expected: entry.sha256.clone(),
            actual,
        });
    }
    Ok(data)
}

/// Verifies every pinned package in the cache; returns the verified bytes by name.
pub fn verify_all(lock: &Lock, cache: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for e in &lock.entries {
        let data = read_verified(cache, e)?;
        tracing::debug!(package = %e.name, file = %e.file, "sha256 ok");
        out.insert(e.name.clone(), data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# comment\n\
        a 1.0 all 0000000000000000000000000000000000000000000000000000000000000000 a_1.0_all.deb\n\
        \n\
        linux-image-6.1.0-56-arm64 6.1 arm64 1111111111111111111111111111111111111111111111111111111111111111 k.deb # trailing\n";

    #[test]
    fn parses_and_skips_comments() {
        let lock = Lock::parse(Path::new("p.lock"), GOOD).unwrap();
        assert_eq!(lock.entries.len(), 2);
        assert_eq!(lock.entries[1].line, 4);
        assert_eq!(lock.get_prefixed("linux-image-").unwrap().file, "k.deb");
        assert!(lock.get("b").is_err());
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let text = format!("{GOOD}broken line\n");
        let err = Lock::parse(Path::new("p.lock"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("p.lock:5: expected 5 fields"), "{err}");

        let text = "x 1 all abc x.deb\n";
        let err = Lock::parse(Path::new("p.lock"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p.lock:1:") && err.contains("64 hex digits"),
            "{err}"
        );

        let text = format!("{GOOD}a 2 all {} a2.deb\n", "2".repeat(64));
        let err = Lock::parse(Path::new("p.lock"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":5:") && err.contains("already pinned on line 2"),
            "{err}"
        );

        let text = format!("a 2 all {} ../evil.deb\n", "2".repeat(64));
        let err = Lock::parse(Path::new("p.lock"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":1:") && err.contains("plain"), "{err}");

        assert!(Lock::parse(Path::new("p.lock"), "# nothing\n").is_err());
    }

    #[test]
    fn sha256_mismatch_names_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a_1.0_all.deb"), b"hello").unwrap();
        let lock = Lock::parse(Path::new("p.lock"), GOOD).unwrap();
        let err = read_verified(dir.path(), &lock.entries[0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("a_1.0_all.deb"), "{err}");
        assert!(err.contains(&"0".repeat(64)), "{err}");
        // sha256("hello")
        assert!(
            err.contains("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"),
            "{err}"
        );
        assert!(err.contains("make deps"), "{err}");

        let err = read_verified(dir.path(), &lock.entries[1])
            .unwrap_err()
            .to_string();
        assert!(err.contains("k.deb") && err.contains("not found"), "{err}");
        assert!(err.contains("make deps"), "{err}");

        let good = LockEntry {
            sha256: sha256_hex(b"hello"),
            ..lock.entries[0].clone()
        };
        assert_eq!(read_verified(dir.path(), &good).unwrap(), b"hello");
    }
}
