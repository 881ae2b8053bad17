//! An in-memory file tree: what goes into the rootfs squashfs and the initramfs.
//!
//! Every entry is owned by 0:0 and gets the build's single timestamp when written
//! out; iteration is in path-component order, so parents come before children and
//! the output never depends on the host's directory order.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

/// What a tree entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with these contents.
    File(Arc<[u8]>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A character device node.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// One entry: permission bits and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Permission bits (`0o755`), without the file-type bits.
    pub mode: u16,
    /// The entry's kind.
    pub kind: Kind,
}

/// A tree of entries keyed by relative path (`etc/os-release`).
#[derive(Debug, Clone, Default)]
pub struct Tree {
    nodes: BTreeMap<PathBuf, Node>,
}

fn clean(path: &str) -> Result<PathBuf> {
    let p = Path::new(path.trim_start_matches('/'));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            _ => {
                return Err(Error::Invalid {
                    field: path.to_string(),
                    reason: "path must be relative and must not contain `..`".into(),
                });
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(Error::Invalid {
            field: path.to_string(),
            reason: "empty path".into(),
        });
    }
    Ok(out)
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    fn ensure_parents(&mut self, path: &Path) -> Result<()> {
        let mut parents: Vec<&Path> = path.ancestors().skip(1).collect();
        parents.reverse();
        for p in parents {
            if p.as_os_str().is_empty() {
                continue;
            }
            match self.nodes.get(p) {
                Some(Node {
                    kind: Kind::Dir, ..
                }) => {}
                Some(_) => {
                    return Err(Error::Invalid {
                        field: path.display().to_string(),
                        reason: format!("parent `{}` is not a directory", p.display()),
                    });
                }
                None => {
                    self.nodes.insert(
                        p.to_path_buf(),
                        Node {
                            mode: 0o755,
                            kind: Kind::Dir,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<()> {
        let p = clean(path)?;
        self.ensure_parents(&p)?;
        if let Some(existing) = self.nodes.get(&p) {
            if existing.kind == Kind::Dir && node.kind == Kind::Dir {
                return Ok(());
            }
            return Err(Error::Invalid {
                field: format!("/{}", p.display()),
                reason:
                    "is added to the image twice (an overlay file may not replace a generated one)"
                        .into(),
            });
        }
        self.nodes.insert(p, node);
        Ok(())
    }

    /// Adds a directory (and missing parents, 0755). Adding an existing directory is
    /// a no-op that keeps its mode.
    pub fn dir(&mut self, path: &str, mode: u16) -> Result<()> {
        self.insert(
            path,
            Node {
                mode,
                kind: Kind::Dir,
            },
        )
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u16, data: impl Into<Arc<[u8]>>) -> Result<()> {
        self.insert(
            path,
            Node {
                mode,
                kind: Kind::File(data.into()),
            },
        )
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(
            path,
            Node {
                mode: 0o777,
                kind: Kind::Symlink(target.to_string()),
            },
        )
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, mode: u16, major: u32, minor: u32) -> Result<()> {
        self.insert(
            path,
            Node {
                mode,
                kind: Kind::CharDev { major, minor },
            },
        )
    }

    /// Copies a host directory tree in: files 0644 (0755 if executable on the
    /// host), directories 0755, symlinks as
    /// they are; owner and times are not taken from the host. Other file types and
    /// non-UTF-8 names are errors.
    pub fn overlay(&mut self, host_dir: &Path) -> Result<()> {
        self.overlay_at(host_dir, "")
    }

    fn overlay_at(&mut self, dir: &Path, prefix: &str) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(Error::io(dir))?
            .collect::<std::io::Result<_>>()
            .map_err(Error::io(dir))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let host = e.path();
            let name = e.file_name().into_string().map_err(|_| Error::Invalid {
                field: host.display().to_string(),
                reason: "file name is not UTF-8".into(),
            })?;
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let ft = e.file_type().map_err(Error::io(&host))?;
            if ft.is_dir() {
                self.dir(&path, 0o755)?;
                self.overlay_at(&host, &path)?;
            } else if ft.is_file() {
                let data = std::fs::read(&host).map_err(Error::io(&host))?;
                // Only whether it is executable comes from the host.
                let executable = std::os::unix::fs::PermissionsExt::mode(
                    &e.metadata().map_err(Error::io(&host))?.permissions(),
                ) & 0o111
                    != 0;
                self.file(&path, if executable { 0o755 } else { 0o644 }, data)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&host).map_err(Error::io(&host))?;
                let target = target.to_str().ok_or_else(|| Error::Invalid {
                    field: host.display().to_string(),
                    reason: "symlink target is not UTF-8".into(),
                })?;
                self.symlink(&path, target)?;
            } else {
                return Err(Error::Invalid {
                    field: host.display().to_string(),
                    reason: "only files, directories and symlinks can be in the overlay".into(),
                });
            }
        }
        Ok(())
    }

    /// Entries in path-component order (parents first), as `(relative path, node)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes
            .iter()
            .map(|(p, n)| (p.to_str().unwrap_or_default(), n))
    }

    /// Looks an entry up.
    pub fn get(&self, path: &str) -> Option<&Node> {
        clean(path).ok().and_then(|p| self.nodes.get(&p))
    }

    /// Follows symbolic links (absolute targets from the tree's root, relative
    /// ones from the link's directory, in any component of `path`) and returns
    /// the entry `path` leads to with its link-free path; `None` when it leads
    /// nowhere, or through more than 40 links.
    pub fn resolve(&self, path: &str) -> Option<(String, &Node)> {
        let mut pending: std::collections::VecDeque<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut found: Option<&Node> = None;
        let mut links = 0;
        while let Some(component) = pending.pop_front() {
            match component.as_str() {
                "." => continue,
                ".." => {
                    resolved.pop();
                    found = self.nodes.get(Path::new(&resolved.join("/")));
                    continue;
                }
                _ => {}
            }
            resolved.push(component);
            let node = self.nodes.get(Path::new(&resolved.join("/")))?;
            if let Kind::Symlink(target) = &node.kind {
                links += 1;
                if links > 40 {
                    return None;
                }
                resolved.pop();
                if target.starts_with('/') {
                    resolved.clear();
                }
                for c in target.split('/').rev().filter(|c| !c.is_empty()) {
                    pending.push_front(c.to_owned());
                }
                found = None;
            } else {
                found = Some(node);
            }
        }
        let node = found?;
        Some((resolved.join("/"), node))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Total bytes of regular-file contents.
    pub fn content_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match &n.kind {
                Kind::File(d) => d.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// Writes the tree as a newc cpio archive (see [`crate::cpio`]).
    pub fn write_cpio<W: std::io::Write>(&self, w: &mut W, mtime: u32) -> Result<u64> {
        use crate::cpio::{Entry, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};
        let entries: Vec<Entry<'_>> = self
            .iter()
            .map(|(name, n)| {
                let (ty, data, rdev): (u32, &[u8], _) = match &n.kind {
                    Kind::Dir => (S_IFDIR, &[], (0, 0)),
                    Kind::File(d) => (S_IFREG, d, (0, 0)),
                    Kind::Symlink(t) => (S_IFLNK, t.as_bytes(), (0, 0)),
                    Kind::CharDev { major, minor } => (S_IFCHR, &[], (*major, *minor)),
                };
                Entry {
                    name,
                    mode: ty | u32::from(n.mode),
                    uid: 0,
                    gid: 0,
                    mtime,
                    data,
                    rdev,
                }
            })
            .collect();
        crate::cpio::write(w, &entries).map_err(Error::io("initramfs cpio"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_first_and_conflicts() {
        let mut t = Tree::new();
        t.file("a.b", 0o644, b"x".to_vec()).unwrap();
        t.file("a/b/c", 0o644, b"y".to_vec()).unwrap();
        t.dir("a", 0o700).unwrap();
        t.symlink("/etc/hostname", "../run/bramble/hostname")
            .unwrap();
        let order: Vec<&str> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(
            order,
            vec!["a", "a/b", "a/b/c", "a.b", "etc", "etc/hostname"]
        );
        assert_eq!(t.get("a").unwrap().mode, 0o755);
        assert!(t.file("a/b/c", 0o644, b"z".to_vec()).is_err());
        assert!(t.file("a.b/x", 0o644, b"z".to_vec()).is_err());
        assert!(t.file("../x", 0o644, b"z".to_vec()).is_err());
    }

    #[test]
    fn resolves_symlinks() {
        let mut t = Tree::new();
        t.file("lib/aarch64-linux-gnu/ld.so", 0o755, b"x".to_vec())
            .unwrap();
        t.symlink("lib/ld.so", "aarch64-linux-gnu/ld.so").unwrap();
        t.symlink("usr/lib64", "/lib").unwrap();
        t.symlink("etc/loop", "loop").unwrap();
        t.symlink("etc/up", "../lib/./aarch64-linux-gnu/ld.so")
            .unwrap();
        for path in [
            "lib/ld.so",
            "/lib/ld.so",
            "usr/lib64/ld.so",
            "usr/lib64/aarch64-linux-gnu/ld.so",
            "etc/up",
        ] {
            let (real, node) = t.resolve(path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(real, "lib/aarch64-linux-gnu/ld.so", "{path}");
            assert_eq!(node.mode, 0o755);
        }
        assert_eq!(t.resolve("usr/lib64").unwrap().0, "lib");
        assert_eq!(
            t.resolve("usr/lib64/aarch64-linux-gnu/..").unwrap().0,
            "lib"
        );
        assert!(t.resolve("etc/loop").is_none());
        assert!(t.resolve("lib/missing.so").is_none());
        assert!(t.resolve("lib/aarch64-linux-gnu/ld.so/x").is_none());
        assert!(t.resolve("/").is_none());
    }

    #[test]
    fn overlay_normalizes_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/bramble/services")).unwrap();
        let f = dir.path().join("etc/bramble/x.conf");
        std::fs::write(&f, b"k=v\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let exe = dir.path().join("etc/bramble/run");
        std::fs::write(&exe, b"\x7fELF").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("x.conf", dir.path().join("etc/bramble/y")).unwrap();
        let mut t = Tree::new();
        t.overlay(dir.path()).unwrap();
        assert_eq!(t.get("etc/bramble/x.conf").unwrap().mode, 0o644);
        assert_eq!(t.get("etc/bramble/run").unwrap().mode, 0o755);
        assert_eq!(t.get("etc/bramble/services").unwrap().kind, Kind::Dir);
        assert_eq!(
            t.get("etc/bramble/y").unwrap().kind,
            Kind::Symlink("x.conf".into())
        );
    }
}
