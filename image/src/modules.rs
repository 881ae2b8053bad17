//! Kernel module selection and the depmod files, without depmod.
//!
//! Each `.ko` carries a `.modinfo` ELF section of NUL-separated `key=value` strings:
//! `name=`, `depends=` (comma-separated module names), `alias=` (modalias patterns,
//! one per entry) and `softdep=` (`pre: a b post: c`). From those this module
//!
//! * resolves `boot/modules.txt` (names, `-` and `_` equivalent; a name that is
//!   built into the kernel is skipped, a name that is neither is an error),
//! * closes the set over `depends=` — and over `softdep=` targets, because with no
//!   `/sbin/modprobe` in the image the kernel cannot load e.g. `crc32c` for ext4 on
//!   demand, so they have to be shipped (and listed in `modules.softdep`),
//! * writes `modules.dep` in depmod's format and order (a module's dependencies in
//!   reverse load order: the deepest-needed last, so loading the list from the end
//!   and then the module itself works), `modules.alias` and `modules.softdep`.

use std::collections::{BTreeMap, BTreeSet};

use object::{Object, ObjectSection};

use crate::error::{Error, Result};

/// `-` and `_` are the same in module names; the canonical form uses `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// What a module's `.modinfo` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=`, if present.
    pub name: Option<String>,
    /// `depends=`, split and normalized.
    pub depends: Vec<String>,
    /// Every `alias=` in order.
    pub aliases: Vec<String>,
    /// Every `softdep=` value, raw (`pre: crc32c`).
    pub softdeps: Vec<String>,
}

/// Parses the `.modinfo` section of a `.ko` ELF file.
pub fn parse_modinfo(elf: &[u8]) -> std::result::Result<ModInfo, String> {
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF object: {e}"))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| "no .modinfo section".to_string())?;
    let data = section
        .data()
        .map_err(|e| format!("unreadable .modinfo section: {e}"))?;
    let mut info = ModInfo::default();
    for item in data.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let item = String::from_utf8_lossy(item);
        let Some((key, value)) = item.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = Some(normalize(value)),
            "depends" => info.depends.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(normalize),
            ),
            "alias" => info.aliases.push(value.to_string()),
            "softdep" => info.softdeps.push(value.to_string()),
            _ => {}
        }
    }
    Ok(info)
}

/// One loadable module from the kernel package.
#[derive(Debug, Clone)]
pub struct Module {
    /// Canonical name (`nls_iso8859_1`).
    pub name: String,
    /// Path under `/lib/modules/<kver>/` (`kernel/fs/ext4/ext4.ko`).
    pub relpath: String,
    /// The `.ko` file.
    pub data: Vec<u8>,
    /// Its modinfo.
    pub info: ModInfo,
}

/// All modules of one kernel, plus what is built in.
#[derive(Debug, Default)]
pub struct ModuleSet {
    modules: BTreeMap<String, Module>,
    builtin: BTreeSet<String>,
}

/// A resolved selection and the files that describe it.
#[derive(Debug)]
pub struct Selection<'a> {
    /// Selected modules, sorted by path.
    pub modules: Vec<&'a Module>,
    /// `modules.dep` contents.
    pub modules_dep: String,
    /// `modules.alias` contents.
    pub modules_alias: String,
    /// `modules.softdep` contents.
    pub modules_softdep: String,
    /// Requested names that are built into the kernel (skipped).
    pub builtin_requested: Vec<String>,
}

/// Parses a module list (`boot/modules.txt`): one name per line, `#` comments.
/// Returns `(line number, canonical name)`.
pub fn parse_list(what: &str, text: &str) -> Result<Vec<(usize, String)>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let mut words = content.split_whitespace();
        let name = words.next().unwrap_or_default();
        if words.next().is_some() {
            return Err(Error::Invalid {
                field: format!("{what}:{}", i + 1),
                reason: format!("expected one module name per line, found `{content}`"),
            });
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::Invalid {
                field: format!("{what}:{}", i + 1),
                reason: format!("`{name}` is not a module name"),
            });
        }
        out.push((i + 1, normalize(name)));
    }
    Ok(out)
}

fn stem(relpath: &str) -> &str {
    let file = relpath.rsplit('/').next().unwrap_or(relpath);
    file.strip_suffix(".ko").unwrap_or(file)
}

fn softdep_names(raw: &str) -> impl Iterator<Item = &str> {
    raw.split_whitespace()
        .filter(|w| !w.ends_with(':') && !w.is_empty())
}

impl ModuleSet {
    /// Adds a `.ko` found at `relpath` (relative to `/lib/modules/<kver>/`).
    pub fn add(&mut self, relpath: &str, data: Vec<u8>) -> Result<()> {
        let info = parse_modinfo(&data).map_err(|e| Error::Modules(format!("{relpath}: {e}")))?;
        let name = info
            .name
            .clone()
            .unwrap_or_else(|| normalize(stem(relpath)));
        if let Some(prev) = self.modules.get(&name) {
            return Err(Error::Modules(format!(
                "module `{name}` is in both {} and {relpath}",
                prev.relpath
            )));
        }
        self.modules.insert(
            name.clone(),
            Module {
                name,
                relpath: relpath.to_string(),
                data,
                info,
            },
        );
        Ok(())
    }

    /// Records the kernel's `modules.builtin` (one `kernel/.../x.ko` per line).
    pub fn set_builtin(&mut self, text: &str) {
        self.builtin = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| normalize(stem(l)))
            .collect();
    }

    /// Number of loadable modules known.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether no modules are known.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// Finds the module a softdep target names: a module name, or failing that an
    /// exact (non-wildcard) alias.
    fn resolve_soft(&self, target: &str) -> Option<&Module> {
        let n = normalize(target);
        self.modules.get(&n).or_else(|| {
            self.modules
                .values()
                .find(|m| m.info.aliases.iter().any(|a| a == target))
        })
    }

    /// Resolves `requested` (from [`parse_list`]; `what` names the list in errors)
    /// into the closed set of modules and the depmod files.
    pub fn select(&self, what: &str, requested: &[(usize, String)]) -> Result<Selection<'_>> {
        let mut builtin_requested = Vec::new();
        let mut todo: Vec<String> = Vec::new();
        for (line, name) in requested {
            if self.modules.contains_key(name) {
                todo.push(name.clone());
            } else if self.builtin.contains(name) {
                builtin_requested.push(name.clone());
            } else {
                return Err(Error::Modules(format!(
                    "{what}:{line}: `{name}` is neither a module in the kernel package nor built into the kernel"
                )));
            }
        }
        let mut selected: BTreeSet<String> = BTreeSet::new();
        while let Some(name) = todo.pop() {
            if !selected.insert(name.clone()) {
                continue;
            }
            let m = &self.modules[&name];
            for dep in &m.info.depends {
                if self.modules.contains_key(dep) {
                    todo.push(dep.clone());
                } else if !self.builtin.contains(dep) {
                    return Err(Error::Modules(format!(
                        "`{name}` ({}) depends on `{dep}`, which is not in the kernel package",
                        m.relpath
                    )));
                }
            }
            for raw in &m.info.softdeps {
                for target in softdep_names(raw) {
                    match self.resolve_soft(target) {
                        Some(t) => todo.push(t.name.clone()),
                        None if self.is_builtin(target) => {}
                        None => tracing::warn!(
                            module = %name,
                            softdep = %target,
                            "soft dependency not found in the kernel package; skipped"
                        ),
                    }
                }
            }
        }

        // depmod's order: a topological sort over the selection that emits modules
        // nobody (left) depends on first, ties broken by path for determinism.
        let mut users: BTreeMap<&str, usize> = selected.iter().map(|n| (n.as_str(), 0)).collect();
        for n in &selected {
            for d in &self.modules[n].info.depends {
                if let Some(c) = users.get_mut(d.as_str()) {
                    *c += 1;
                }
            }
        }
        let mut ready: BTreeSet<(&str, &str)> = users
            .iter()
            .filter(|(_, c)| **c == 0)
            .map(|(n, _)| (self.modules[*n].relpath.as_str(), *n))
            .collect();
        let mut sort_idx: BTreeMap<&str, usize> = BTreeMap::new();
        while let Some((path, name)) = ready.pop_first() {
            let _ = path;
            sort_idx.insert(name, sort_idx.len());
            for d in &self.modules[name].info.depends {
                if let Some(c) = users.get_mut(d.as_str()) {
                    *c -= 1;
                    if *c == 0 {
                        ready.insert((self.modules[d].relpath.as_str(), d.as_str()));
                    }
                }
            }
        }
        if sort_idx.len() != selected.len() {
            let cyclic: Vec<&str> = selected
                .iter()
                .map(String::as_str)
                .filter(|n| !sort_idx.contains_key(n))
                .collect();
            return Err(Error::Modules(format!(
                "dependency cycle among {}",
                cyclic.join(", ")
            )));
        }

        let mut modules: Vec<&Module> = selected.iter().map(|n| &self.modules[n]).collect();
        modules.sort_by(|a, b| a.relpath.cmp(&b.relpath));

        let mut modules_dep = String::new();
        let mut modules_alias = String::from("# Aliases extracted from modules themselves.\n");
        let mut modules_softdep =
            String::from("# Soft dependencies extracted from modules themselves.\n");
        for m in &modules {
            let mut deps: BTreeSet<&str> = BTreeSet::new();
            let mut stack: Vec<&str> = m.info.depends.iter().map(String::as_str).collect();
            while let Some(d) = stack.pop() {
                if self.modules.contains_key(d) && deps.insert(d) {
                    stack.extend(self.modules[d].info.depends.iter().map(String::as_str));
                }
            }
            let mut deps: Vec<&str> = deps.into_iter().collect();
            deps.sort_by_key(|d| sort_idx[d]);
            modules_dep.push_str(&m.relpath);
            modules_dep.push(':');
            for d in deps {
                modules_dep.push(' ');
                modules_dep.push_str(&self.modules[d].relpath);
            }
            modules_dep.push('\n');
            for a in &m.info.aliases {
                modules_alias.push_str(&format!("alias {a} {}\n", m.name));
            }
            for s in &m.info.softdeps {
                modules_softdep.push_str(&format!("softdep {} {s}\n", m.name));
            }
        }
        Ok(Selection {
            modules,
            modules_dep,
            modules_alias,
            modules_softdep,
            builtin_requested,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use object::write;
    use object::{Architecture, BinaryFormat, Endianness, SectionKind};

    /// A tiny relocatable aarch64 ELF with a `.modinfo` section, like a `.ko`.
    pub(crate) fn fake_ko(
        name: &str,
        depends: &[&str],
        aliases: &[&str],
        softdep: Option<&str>,
    ) -> Vec<u8> {
        let mut obj =
            write::Object::new(BinaryFormat::Elf, Architecture::Aarch64, Endianness::Little);
        let sec = obj.add_section(
            Vec::new(),
            b".modinfo".to_vec(),
            SectionKind::ReadOnlyString,
        );
        let mut info = Vec::new();
        for a in aliases {
            info.extend_from_slice(format!("alias={a}\0").as_bytes());
        }
        if let Some(s) = softdep {
            info.extend_from_slice(format!("softdep={s}\0").as_bytes());
        }
        info.extend_from_slice(format!("depends={}\0", depends.join(",")).as_bytes());
        info.extend_from_slice(
            format!("name={name}\0vermagic=6.1.0 SMP mod_unload aarch64\0").as_bytes(),
        );
        obj.append_section_data(sec, &info, 1);
        obj.write().unwrap()
    }

    fn set() -> ModuleSet {
        let mut s = ModuleSet::default();
        let add = |s: &mut ModuleSet,
                   path: &str,
                   name: &str,
                   deps: &[&str],
                   aliases: &[&str],
                   soft: Option<&str>| {
            s.add(path, fake_ko(name, deps, aliases, soft)).unwrap();
        };
        // ext4 -> jbd2 -> crc16 ; ext4 -> mbcache ; ext4 -> crc16 (also via jbd2)
        add(
            &mut s,
            "kernel/fs/ext4/ext4.ko",
            "ext4",
            &["jbd2", "mbcache", "crc16"],
            &["fs-ext4"],
            Some("pre: crc32c"),
        );
        add(
            &mut s,
            "kernel/fs/jbd2/jbd2.ko",
            "jbd2",
            &["crc16"],
            &[],
            None,
        );
        add(&mut s, "kernel/fs/mbcache.ko", "mbcache", &[], &[], None);
        add(&mut s, "kernel/lib/crc16.ko", "crc16", &[], &[], None);
        add(
            &mut s,
            "kernel/crypto/crc32c_generic.ko",
            "crc32c_generic",
            &[],
            &["crypto-crc32c", "crc32c"],
            None,
        );
        add(
            &mut s,
            "kernel/drivers/virtio/virtio_pci.ko",
            "virtio_pci",
            &["virtio_pci_modern_dev"],
            &["pci:v00001AF4d*sv*sd*bc*sc*i*"],
            None,
        );
        add(
            &mut s,
            "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
            "virtio_pci_modern_dev",
            &[],
            &[],
            None,
        );
        add(
            &mut s,
            "kernel/fs/nls/nls_iso8859-1.ko",
            "nls_iso8859_1",
            &[],
            &[],
            None,
        );
        add(&mut s, "kernel/unused.ko", "unused", &[], &["x"], None);
        s.set_builtin("kernel/fs/binfmt_script.ko\nkernel/drivers/virtio/virtio.ko\n");
        s
    }

    #[test]
    fn modinfo_of_a_fake_ko() {
        let info = parse_modinfo(&fake_ko("a-b", &["c-d", "e"], &["of:N*"], None)).unwrap();
        assert_eq!(info.name.as_deref(), Some("a_b"));
        assert_eq!(info.depends, vec!["c_d", "e"]);
        assert_eq!(info.aliases, vec!["of:N*"]);
        assert!(parse_modinfo(b"not elf").is_err());
    }

    #[test]
    fn closure_and_dep_order() {
        let s = set();
        let req = parse_list(
            "modules.txt",
            "# fs\next4\nvirtio-pci\nnls_iso8859-1\nvirtio\n",
        )
        .unwrap();
        let sel = s.select("modules.txt", &req).unwrap();
        let names: Vec<&str> = sel.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "crc32c_generic",
                "virtio_pci",
                "virtio_pci_modern_dev",
                "ext4",
                "jbd2",
                "mbcache",
                "nls_iso8859_1",
                "crc16"
            ]
        );
        assert_eq!(sel.builtin_requested, vec!["virtio"]);
        let dep: BTreeMap<&str, Vec<&str>> = sel
            .modules_dep
            .lines()
            .map(|l| {
                let (m, d) = l.split_once(':').unwrap();
                (m, d.split_whitespace().collect())
            })
            .collect();
        // jbd2 needs crc16, so crc16 (deepest) comes after jbd2.
        assert_eq!(
            dep["kernel/fs/ext4/ext4.ko"],
            vec![
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko"
            ]
        );
        assert_eq!(dep["kernel/lib/crc16.ko"], Vec::<&str>::new());
        assert!(sel.modules_dep.contains("kernel/lib/crc16.ko:\n"));
        // Every list is a valid reverse load order: each entry's own deps come later.
        for deps in dep.values() {
            for (i, d) in deps.iter().enumerate() {
                for dd in &dep[d] {
                    assert!(
                        deps[i + 1..].contains(dd),
                        "{d} needs {dd} later in {deps:?}"
                    );
                }
            }
        }
        assert!(sel.modules_alias.contains("alias fs-ext4 ext4\n"));
        assert!(
            sel.modules_alias
                .contains("alias crypto-crc32c crc32c_generic\n")
        );
        assert!(
            sel.modules_alias
                .contains("alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n")
        );
        assert!(!sel.modules_alias.contains(" unused"));
        assert!(sel.modules_softdep.contains("softdep ext4 pre: crc32c\n"));
    }

    #[test]
    fn unknown_names_and_missing_deps_are_errors() {
        let s = set();
        let req = parse_list("modules.txt", "ext4\n\nno-such-module\n").unwrap();
        let err = s.select("modules.txt", &req).unwrap_err().to_string();
        assert!(
            err.contains("modules.txt:3") && err.contains("`no_such_module`"),
            "{err}"
        );

        let mut s = set();
        s.add("kernel/broken.ko", fake_ko("broken", &["ghost"], &[], None))
            .unwrap();
        let req = parse_list("m", "broken").unwrap();
        let err = s.select("m", &req).unwrap_err().to_string();
        assert!(err.contains("`ghost`"), "{err}");

        assert!(
            parse_list("m", "two names\n")
                .unwrap_err()
                .to_string()
                .contains("m:1")
        );
    }

    #[test]
    fn cycles_are_errors() {
        let mut s = ModuleSet::default();
        s.add("kernel/a.ko", fake_ko("a", &["b"], &[], None))
            .unwrap();
        s.add("kernel/b.ko", fake_ko("b", &["a"], &[], None))
            .unwrap();
        let err = s.select("m", &[(1, "a".into())]).unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
    }
}
