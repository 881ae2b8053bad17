//! Files out of pinned Debian packages: the one place that takes them out of
//! the verified `.deb`s, for the image's root file system (the list in
//! `boot/rootfs-packages.txt`) and for `make bench`'s comparison image.
//!
//! A wanted path that is a symbolic link in its package brings the link and,
//! followed within the same package, what it points to (so listing
//! `lib/ld-linux-aarch64.so.1` brings `lib/aarch64-linux-gnu/ld-linux-aarch64.so.1`
//! too). Modes are set for the node, not copied from the package: see
//! [`extract_files`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::deb::{self, Kind as DebKind};
use crate::error::{Error, Result};
use crate::lock::{self, Lock};
use crate::tree::Tree;

/// The list's file name in the boot directory (`boot/rootfs-packages.txt`).
pub const ROOTFS_PACKAGES: &str = "rootfs-packages.txt";

/// What to take out of one package.
pub enum Select<'a> {
    /// These paths (relative, `usr/bin/etcd`); each must be a file or a
    /// symbolic link in the package.
    Paths(Vec<String>),
    /// Every file and symbolic link whose path matches.
    Matching(&'a dyn Fn(&str) -> bool),
}

impl std::fmt::Debug for Select<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Select::Paths(p) => f.debug_tuple("Paths").field(p).finish(),
            Select::Matching(_) => f.write_str("Matching(..)"),
        }
    }
}

/// A package and what to take out of it.
#[derive(Debug)]
pub struct Wanted<'a> {
    /// The package's name in the lock.
    pub package: &'a str,
    /// What to take.
    pub select: Select<'a>,
}

/// What an extracted entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A regular file with the mode it gets on the node.
    File {
        /// Its bytes.
        data: Arc<[u8]>,
        /// `0o755` or `0o644`.
        mode: u16,
    },
    /// A symbolic link to this target (as the package stores it).
    Symlink(String),
}

/// One file or symbolic link taken out of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// The package it came from.
    pub package: String,
    /// Its path, relative (`usr/bin/etcd`).
    pub path: String,
    /// Its contents or target.
    pub content: Content,
}

/// Takes the wanted files out of the pinned packages in `cache`, each read and
/// checked against its sha256 in `lock` first (see [`lock::read_verified`]).
///
/// Modes are the node's, not the package's: a shared library (an ELF file with
/// a DT_SONAME) is 0644 even where Debian marks it executable (`libc.so.6`),
/// except a program interpreter that an extracted ELF file names in its
/// PT_INTERP (the kernel executes the loader: 0755); any other file is 0755 if
/// the package marks it executable, 0644 otherwise. Entries come in `wanted`
/// order, each package's sorted by path.
pub fn extract_files(lock: &Lock, cache: &Path, wanted: &[Wanted<'_>]) -> Result<Vec<Extracted>> {
    extract_with(wanted, |name| {
        let entry = lock.get(name)?;
        Ok((
            cache.join(&entry.file),
            std::borrow::Cow::Owned(lock::read_verified(cache, entry)?),
        ))
    })
}

/// Like [`extract_files`], from packages already read and verified
/// ([`lock::verify_all`]'s map, by package name).
pub fn extract_verified(
    lock: &Lock,
    cache: &Path,
    verified: &BTreeMap<String, Vec<u8>>,
    wanted: &[Wanted<'_>],
) -> Result<Vec<Extracted>> {
    extract_with(wanted, |name| {
        let entry = lock.get(name)?;
        let data = verified.get(name).ok_or_else(|| Error::DebMissing {
            path: cache.join(&entry.file),
            expected: entry.sha256.clone(),
        })?;
        Ok((
            cache.join(&entry.file),
            std::borrow::Cow::Borrowed(&data[..]),
        ))
    })
}

type Loaded<'d> = (PathBuf, std::borrow::Cow<'d, [u8]>);

fn extract_with<'d>(
    wanted: &[Wanted<'_>],
    mut load: impl FnMut(&str) -> Result<Loaded<'d>>,
) -> Result<Vec<Extracted>> {
    let mut out = Vec::new();
    for w in wanted {
        let (deb_path, deb) = load(w.package)?;
        out.extend(extract_one(w, &deb_path, &deb)?);
    }
    set_modes(&mut out);
    Ok(out)
}

/// A member's metadata from the first pass.
struct Meta {
    kind: DebKind,
    mode: u32,
    target: Option<String>,
}

/// `target` of a symbolic link at `link`, as a normalised path in the package.
fn link_destination(link: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        let mut p: Vec<&str> = link.split('/').collect();
        p.pop();
        p
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn kind_name(kind: DebKind) -> &'static str {
    match kind {
        DebKind::Dir => "a directory",
        DebKind::File => "a file",
        DebKind::Symlink => "a symbolic link",
        DebKind::Other => "a hard link or special file",
    }
}

/// One package: a pass over the archive for metadata and the selected files'
/// bytes, the symbolic links followed, and a second pass only if a link led to
/// a file whose bytes the first pass did not keep.
fn extract_one(w: &Wanted<'_>, deb_path: &Path, deb: &[u8]) -> Result<Vec<Extracted>> {
    let package = w.package;
    let listed: BTreeSet<&str> = match &w.select {
        Select::Paths(paths) => paths.iter().map(|p| p.trim_start_matches('/')).collect(),
        Select::Matching(_) => BTreeSet::new(),
    };
    let selected = |path: &str| match &w.select {
        Select::Paths(_) => listed.contains(path),
        Select::Matching(f) => f(path),
    };
    let mut meta: BTreeMap<String, Meta> = BTreeMap::new();
    let mut bytes: BTreeMap<String, Arc<[u8]>> = BTreeMap::new();
    deb::for_each_member(deb_path, deb, |m, r| {
        if m.kind == DebKind::File && selected(&m.path) {
            bytes.insert(m.path.clone(), Arc::from(deb::read_all(&m.path, r)?));
        }
        meta.insert(
            m.path.clone(),
            Meta {
                kind: m.kind,
                mode: m.mode,
                target: m.link_target.clone(),
            },
        );
        Ok(())
    })?;

    // The starting points.
    let mut todo: Vec<String> = Vec::new();
    match &w.select {
        Select::Paths(_) => {
            for path in &listed {
                let m = meta.get(*path).ok_or_else(|| Error::MissingInPackage {
                    package: package.to_owned(),
                    member: (*path).to_owned(),
                })?;
                if !matches!(m.kind, DebKind::File | DebKind::Symlink) {
                    return Err(Error::NotAFile {
                        package: package.to_owned(),
                        member: (*path).to_owned(),
                        what: kind_name(m.kind),
                    });
                }
                todo.push((*path).to_owned());
            }
        }
        Select::Matching(f) => {
            for (path, m) in &meta {
                if matches!(m.kind, DebKind::File | DebKind::Symlink) && f(path) {
                    todo.push(path.clone());
                }
            }
        }
    }

    // Follow symbolic links within the package (each path once, so a loop
    // ends).
    let mut files: BTreeSet<String> = BTreeSet::new();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    while let Some(path) = todo.pop() {
        if files.contains(&path) || links.contains_key(&path) {
            continue;
        }
        let Some(m) = meta.get(&path) else {
            continue;
        };
        match (m.kind, &m.target) {
            (DebKind::File, _) => {
                files.insert(path);
            }
            (DebKind::Symlink, Some(target)) => {
                let dest = link_destination(&path, target);
                let dangling = || Error::DanglingSymlink {
                    package: package.to_owned(),
                    link: path.clone(),
                    target: target.clone(),
                };
                let dm = meta.get(&dest).ok_or_else(dangling)?;
                if !matches!(dm.kind, DebKind::File | DebKind::Symlink) {
                    return Err(dangling());
                }
                links.insert(path.clone(), target.clone());
                todo.push(dest);
            }
            (kind, _) => {
                return Err(Error::NotAFile {
                    package: package.to_owned(),
                    member: path,
                    what: kind_name(kind),
                });
            }
        }
    }

    let missing: BTreeSet<&String> = files.iter().filter(|p| !bytes.contains_key(*p)).collect();
    if !missing.is_empty() {
        let mut more: BTreeMap<String, Arc<[u8]>> = BTreeMap::new();
        deb::for_each_member(deb_path, deb, |m, r| {
            if m.kind == DebKind::File && missing.contains(&m.path) {
                more.insert(m.path.clone(), Arc::from(deb::read_all(&m.path, r)?));
            }
            Ok(())
        })?;
        bytes.extend(more);
    }

    let mut out: BTreeMap<String, Extracted> = BTreeMap::new();
    for path in files {
        let data = bytes
            .get(&path)
            .cloned()
            .ok_or_else(|| Error::MissingInPackage {
                package: package.to_owned(),
                member: path.clone(),
            })?;
        let executable = meta.get(&path).is_some_and(|m| m.mode & 0o111 != 0);
        out.insert(
            path.clone(),
            Extracted {
                package: package.to_owned(),
                path,
                content: Content::File {
                    data,
                    mode: if executable { 0o755 } else { 0o644 },
                },
            },
        );
    }
    for (path, target) in links {
        out.insert(
            path.clone(),
            Extracted {
                package: package.to_owned(),
                path,
                content: Content::Symlink(target),
            },
        );
    }
    Ok(out.into_values().collect())
}

/// Shared libraries 0644; program interpreters 0755 (see [`extract_files`]).
fn set_modes(files: &mut [Extracted]) {
    let mut tree = Tree::new();
    let mut interpreters: BTreeSet<String> = BTreeSet::new();
    let mut libraries: BTreeSet<String> = BTreeSet::new();
    for f in files.iter() {
        // Only for resolving links among the extracted files: a path taken
        // twice is reported when the files go into the image.
        let _ = match &f.content {
            Content::File { data, mode } => tree.file(&f.path, *mode, data.clone()),
            Content::Symlink(target) => tree.symlink(&f.path, target),
        };
        if let Content::File { data, .. } = &f.content
            && crate::elf::is_elf(data)
            && let Ok(info) = crate::elf::dynamic_info(Path::new(&f.path), data)
        {
            if let Some(interp) = info.interpreter {
                interpreters.insert(interp);
            }
            if info.soname.is_some() {
                libraries.insert(f.path.clone());
            }
        }
    }
    let interpreters: BTreeSet<String> = interpreters
        .iter()
        .filter_map(|i| tree.resolve(i).map(|(real, _)| real))
        .collect();
    for f in files.iter_mut() {
        if let Content::File { mode, .. } = &mut f.content {
            if interpreters.contains(&f.path) {
                *mode = 0o755;
            } else if libraries.contains(&f.path) {
                *mode = 0o644;
            }
        }
    }
}

/// Adds extracted files and links to `tree` (a path already there is an
/// error, naming it).
pub fn add_to(tree: &mut Tree, files: &[Extracted]) -> Result<()> {
    for f in files {
        match &f.content {
            Content::File { data, mode } => tree.file(&f.path, *mode, data.clone())?,
            Content::Symlink(target) => tree.symlink(&f.path, target)?,
        }
    }
    Ok(())
}

/// One line of a file list: a package and a path in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// The package's name in the lock.
    pub package: String,
    /// The path in the package (relative, `usr/bin/etcd`).
    pub path: String,
    /// 1-based line in the list.
    pub line: usize,
}

/// A list of files to take out of pinned packages (`boot/rootfs-packages.txt`):
/// one `package: path` a line; `#` starts a comment.
#[derive(Debug, Clone)]
pub struct FileList {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// Entries in file order.
    pub entries: Vec<ListEntry>,
}

impl FileList {
    /// Reads and parses a list.
    pub fn load(path: &Path) -> Result<FileList> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        FileList::parse(path, &text)
    }

    /// Parses list text; `path` is only used in messages. An empty list (only
    /// comments) is valid.
    pub fn parse(path: &Path, text: &str) -> Result<FileList> {
        let err = |line: usize, reason: String| Error::FileList {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let mut entries: Vec<ListEntry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let Some((package, file)) = content.split_once(':') else {
                return Err(err(
                    line,
                    format!("expected `package: path`, found `{content}`"),
                ));
            };
            let (package, file) = (package.trim(), file.trim());
            if package.is_empty() || package.contains(char::is_whitespace) {
                return Err(err(line, format!("`{package}` is not a package name")));
            }
            let rel = file.trim_start_matches('/');
            if rel.is_empty()
                || rel.contains(char::is_whitespace)
                || rel.ends_with('/')
                || rel
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(err(
                    line,
                    format!(
                        "`{file}` must be one file's path in the package (`usr/bin/etcd`), without `.`, `..` or spaces"
                    ),
                ));
            }
            if let Some(prev) = entries.iter().find(|e| e.path == rel) {
                return Err(err(
                    line,
                    format!(
                        "`{rel}` is already listed on line {} (from `{}`)",
                        prev.line, prev.package
                    ),
                ));
            }
            entries.push(ListEntry {
                package: package.to_owned(),
                path: rel.to_owned(),
                line,
            });
        }
        Ok(FileList {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// Checks that every package the list names is pinned in `lock`.
    pub fn check_pinned(&self, lock: &Lock) -> Result<()> {
        for e in &self.entries {
            if lock.get(&e.package).is_err() {
                return Err(Error::FileList {
                    path: self.path.clone(),
                    line: e.line,
                    reason: format!(
                        "package `{}` is not pinned in {}",
                        e.package,
                        lock.path.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// What to extract: one [`Wanted`] per package, in the order the list
    /// first names them.
    pub fn wanted(&self) -> Vec<Wanted<'_>> {
        let mut out: Vec<Wanted<'_>> = Vec::new();
        for e in &self.entries {
            match out.iter_mut().find(|w| w.package == e.package) {
                Some(Wanted {
                    select: Select::Paths(paths),
                    ..
                }) => paths.push(e.path.clone()),
                _ => out.push(Wanted {
                    package: &e.package,
                    select: Select::Paths(vec![e.path.clone()]),
                }),
            }
        }
        out
    }

    /// Extracts the listed files from already verified packages (see
    /// [`extract_verified`]); an error about a listed path names its line.
    pub fn extract(
        &self,
        lock: &Lock,
        cache: &Path,
        verified: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Vec<Extracted>> {
        self.check_pinned(lock)?;
        extract_verified(lock, cache, verified, &self.wanted()).map_err(|e| self.locate(e))
    }

    /// Puts the list's line in front of an error about one of its entries.
    fn locate(&self, e: Error) -> Error {
        let (package, member) = match &e {
            Error::MissingInPackage { package, member } => (package, member),
            Error::NotAFile {
                package, member, ..
            } => (package, member),
            Error::DanglingSymlink { package, link, .. } => (package, link),
            _ => return e,
        };
        match self
            .entries
            .iter()
            .find(|x| &x.package == package && &x.path == member)
        {
            Some(entry) => Error::FileList {
                path: self.path.clone(),
                line: entry.line,
                reason: e.to_string(),
            },
            None => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deb::tests::{TestMember as M, make_deb_members};
    use crate::elf::tests::{EM_AARCH64, dynamic_elf};

    const LOADER: &str = "/lib/ld-linux-aarch64.so.1";

    fn libc_deb() -> Vec<u8> {
        let loader = dynamic_elf(EM_AARCH64, None, &[], Some("ld-linux-aarch64.so.1"));
        let libc = dynamic_elf(
            EM_AARCH64,
            Some(LOADER),
            &["ld-linux-aarch64.so.1"],
            Some("libc.so.6"),
        );
        make_deb_members(
            &[
                M::Dir("lib"),
                M::Dir("lib/aarch64-linux-gnu"),
                M::File(
                    "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
                    0o755,
                    &loader,
                ),
                M::File("lib/aarch64-linux-gnu/libc.so.6", 0o755, &libc),
                M::File("lib/aarch64-linux-gnu/libm.so.6", 0o644, b"not wanted"),
                M::Symlink(
                    "lib/ld-linux-aarch64.so.1",
                    "aarch64-linux-gnu/ld-linux-aarch64.so.1",
                ),
                M::Symlink("lib/dangling.so", "nowhere.so"),
            ],
            true,
        )
    }

    fn etcd_deb() -> Vec<u8> {
        let etcd = dynamic_elf(EM_AARCH64, Some(LOADER), &["libc.so.6"], None);
        make_deb_members(
            &[
                M::Dir("usr/bin"),
                M::File("usr/bin/etcd", 0o755, &etcd),
                M::File("etc/default/etcd", 0o644, b"ETCD_X=1\n"),
            ],
            false,
        )
    }

    /// A lock and a verified map for the two test packages.
    fn pinned() -> (Lock, BTreeMap<String, Vec<u8>>) {
        let debs = BTreeMap::from([
            ("libc6".to_owned(), libc_deb()),
            ("etcd-server".to_owned(), etcd_deb()),
        ]);
        let text: String = debs
            .iter()
            .map(|(name, data)| {
                format!(
                    "{name} 1 arm64 {} {name}_1_arm64.deb\n",
                    lock::sha256_hex(data)
                )
            })
            .collect();
        (Lock::parse(Path::new("p.lock"), &text).unwrap(), debs)
    }

    const LIST: &str = "# what the rootfs carries\n\
        etcd-server: usr/bin/etcd\n\
        \n\
        libc6: lib/ld-linux-aarch64.so.1   # the loader, through its link\n\
        libc6: /lib/aarch64-linux-gnu/libc.so.6\n";

    #[test]
    fn the_list_brings_files_links_and_link_targets_with_node_modes() {
        let (lock, debs) = pinned();
        let list = FileList::parse(Path::new("l.txt"), LIST).unwrap();
        assert_eq!(list.entries.len(), 3);
        assert_eq!(list.entries[2].path, "lib/aarch64-linux-gnu/libc.so.6");
        let files = list.extract(&lock, Path::new("cache"), &debs).unwrap();
        let summary: Vec<(&str, &str, Option<u16>)> = files
            .iter()
            .map(|f| {
                let mode = match &f.content {
                    Content::File { mode, .. } => Some(*mode),
                    Content::Symlink(_) => None,
                };
                (f.package.as_str(), f.path.as_str(), mode)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("etcd-server", "usr/bin/etcd", Some(0o755)),
                (
                    "libc6",
                    "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
                    Some(0o755)
                ),
                // Debian marks libc executable; on the node it is a library.
                ("libc6", "lib/aarch64-linux-gnu/libc.so.6", Some(0o644)),
                ("libc6", "lib/ld-linux-aarch64.so.1", None),
            ]
        );
        let mut tree = Tree::new();
        add_to(&mut tree, &files).unwrap();
        crate::elf::check_loadable(&tree, &["usr/bin/etcd".into()]).unwrap();
        // Twice is an error naming the path.
        let err = add_to(&mut tree, &files).unwrap_err().to_string();
        assert!(err.contains("/usr/bin/etcd"), "{err}");
    }

    #[test]
    fn matching_selects_by_predicate_and_files_are_verified() {
        let (lock, debs) = pinned();
        let dir = tempfile::tempdir().unwrap();
        for (name, data) in &debs {
            std::fs::write(dir.path().join(format!("{name}_1_arm64.deb")), data).unwrap();
        }
        let pred = |p: &str| p.ends_with(".so.6");
        let files = extract_files(
            &lock,
            dir.path(),
            &[Wanted {
                package: "libc6",
                select: Select::Matching(&pred),
            }],
        )
        .unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "lib/aarch64-linux-gnu/libc.so.6",
                "lib/aarch64-linux-gnu/libm.so.6"
            ]
        );
        // libc's interpreter, the loader, is not among them: both are
        // library files.
        assert!(
            files
                .iter()
                .all(|f| matches!(f.content, Content::File { mode: 0o644, .. }))
        );

        std::fs::write(dir.path().join("libc6_1_arm64.deb"), b"altered").unwrap();
        let err = extract_files(
            &lock,
            dir.path(),
            &[Wanted {
                package: "libc6",
                select: Select::Matching(&pred),
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");
    }

    #[test]
    fn list_errors_name_the_line() {
        let (lock, debs) = pinned();
        let cache = Path::new("cache");
        let run = |text: &str| {
            FileList::parse(Path::new("l.txt"), text)
                .and_then(|l| l.extract(&lock, cache, &debs))
                .unwrap_err()
                .to_string()
        };
        let err = run("etcd-server: usr/bin/etcd\netcd-server: usr/bin/etcdctl\n");
        assert_eq!(
            err,
            "l.txt:2: package `etcd-server` has no `usr/bin/etcdctl`"
        );
        let err = run("# x\netcd: usr/bin/etcd\n");
        assert_eq!(err, "l.txt:2: package `etcd` is not pinned in p.lock");
        let err = run("libc6: lib/aarch64-linux-gnu\n");
        assert!(
            err.starts_with("l.txt:1: package `libc6`: `lib/aarch64-linux-gnu` is a directory"),
            "{err}"
        );
        let err = run("libc6: lib/dangling.so\n");
        assert!(
            err.starts_with(
                "l.txt:1: package `libc6`: `lib/dangling.so` is a symbolic link to `nowhere.so`"
            ),
            "{err}"
        );
        let err = run("usr/bin/etcd\n");
        assert!(
            err.starts_with("l.txt:1: expected `package: path`"),
            "{err}"
        );
        let err = run("etcd-server: ../etc/shadow\n");
        assert!(err.starts_with("l.txt:1: `../etc/shadow` must be"), "{err}");
        let err = run("etcd-server: usr/bin/etcd\nlibc6: /usr/bin/etcd\n");
        assert!(
            err.starts_with("l.txt:2: `usr/bin/etcd` is already listed on line 1"),
            "{err}"
        );
        let empty = FileList::parse(Path::new("l.txt"), "# nothing yet\n").unwrap();
        assert!(empty.extract(&lock, cache, &debs).unwrap().is_empty());
    }

    #[test]
    fn link_destinations() {
        assert_eq!(
            link_destination("lib/ld.so", "aarch64-linux-gnu/ld.so"),
            "lib/aarch64-linux-gnu/ld.so"
        );
        assert_eq!(link_destination("usr/lib/x/a", "../../../lib/a"), "lib/a");
        assert_eq!(link_destination("usr/lib/a", "/lib/./a"), "lib/a");
        assert_eq!(link_destination("a", "../../b"), "b");
    }
}
