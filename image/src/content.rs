//! What goes into the root file system and the initramfs.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::modules::Selection;
use crate::packages::{self, Extracted};
use crate::tree::Tree;

/// The node binaries, as `(file name in --bin-dir, path in the rootfs)`.
pub const BINARIES: [(&str, &str); 6] = [
    ("bramble-init", "sbin/init"),
    ("bramble-apid", "usr/bin/apid"),
    ("bramble-networkd", "usr/bin/networkd"),
    ("bramble-timed", "usr/bin/timed"),
    ("bramble-runtimed", "usr/bin/runtimed"),
    ("bramble-etcdd", "usr/bin/etcdd"),
];

/// Empty directories of the rootfs (mount points and writable places).
const ROOTFS_DIRS: [(&str, u16); 10] = [
    ("boot", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("run", 0o755),
    ("sys", 0o555),
    ("system", 0o755),
    ("system/state", 0o755),
    ("tmp", 0o1777),
    ("var", 0o755),
];

/// Directories of the initramfs.
const INITRD_DIRS: [&str; 6] = ["dev", "proc", "sys", "run", "sysroot", "tmp"];

/// Checks a value that ends up in os-release (and the image's file names).
pub fn check_token(field: &str, value: &str) -> Result<()> {
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+~".contains(&b))
    {
        return Err(Error::Invalid {
            field: field.to_string(),
            reason: format!(
                "`{value}` must be non-empty and only letters, digits and `.`, `_`, `-`, `+`, `~`"
            ),
        });
    }
    Ok(())
}

/// `/etc/os-release` (also the initramfs' `/etc/initrd-release`).
pub fn os_release(version: &str, git_revision: &str) -> String {
    format!(
        "NAME=\"Bramble\"\nID=bramble\nVERSION_ID={version}\nVERSION=\"{version}\"\nPRETTY_NAME=\"Bramble {version}\"\nBUILD_ID={git_revision}\n"
    )
}

/// The kernel modules and depmod files, shared by the rootfs and the initramfs.
#[derive(Debug, Clone)]
pub struct ModuleFiles {
    /// Kernel release (`6.1.0-56-arm64`).
    pub kver: String,
    /// `(path under /lib/modules/<kver>/, contents)`.
    pub files: Vec<(String, Arc<[u8]>)>,
}

impl ModuleFiles {
    /// Collects the selected `.ko` files, `modules.dep`, `modules.alias`,
    /// `modules.softdep` and the kernel's `modules.builtin`.
    pub fn new(kver: &str, sel: &Selection<'_>, modules_builtin: &[u8]) -> ModuleFiles {
        let mut files: Vec<(String, Arc<[u8]>)> = sel
            .modules
            .iter()
            .map(|m| (m.relpath.clone(), Arc::from(&m.data[..])))
            .collect();
        files.push(("modules.dep".into(), Arc::from(sel.modules_dep.as_bytes())));
        files.push((
            "modules.alias".into(),
            Arc::from(sel.modules_alias.as_bytes()),
        ));
        files.push((
            "modules.softdep".into(),
            Arc::from(sel.modules_softdep.as_bytes()),
        ));
        files.push(("modules.builtin".into(), Arc::from(modules_builtin)));
        ModuleFiles {
            kver: kver.to_string(),
            files,
        }
    }

    fn add_to(&self, tree: &mut Tree) -> Result<()> {
        for (rel, data) in &self.files {
            tree.file(
                &format!("lib/modules/{}/{rel}", self.kver),
                0o644,
                data.clone(),
            )?;
        }
        Ok(())
    }
}

/// Inputs for the root file system.
#[derive(Debug)]
pub struct RootfsInputs<'a> {
    /// The binaries, in [`BINARIES`] order.
    pub binaries: &'a [Arc<[u8]>; BINARIES.len()],
    /// `/etc/os-release`.
    pub os_release: &'a str,
    /// `/etc/ssl/certs/ca-certificates.crt`.
    pub ca_bundle: &'a [u8],
    /// Modules.
    pub modules: &'a ModuleFiles,
    /// Files from pinned packages (`boot/rootfs-packages.txt`).
    pub package_files: &'a [Extracted],
    /// `--rootfs-overlay`.
    pub overlay: &'a Path,
}

/// The root file system tree.
pub fn rootfs(inp: &RootfsInputs<'_>) -> Result<Tree> {
    let mut t = Tree::new();
    for (dir, mode) in ROOTFS_DIRS {
        t.dir(dir, mode)?;
    }
    for ((_, path), data) in BINARIES.iter().zip(inp.binaries.iter()) {
        t.file(path, 0o755, data.clone())?;
    }
    t.file("etc/os-release", 0o644, inp.os_release.as_bytes().to_vec())?;
    t.file(
        "etc/ssl/certs/ca-certificates.crt",
        0o644,
        inp.ca_bundle.to_vec(),
    )?;
    // The kernel asks /sbin/modprobe for modules nothing loaded yet (a VLAN,
    // a bond); PID 1's binary answers as modprobe.
    t.symlink("sbin/modprobe", "init")?;
    t.symlink("etc/resolv.conf", "../run/bramble/resolv.conf")?;
    t.symlink("etc/hostname", "../run/bramble/hostname")?;
    // networkd writes it (localhost, the node's name, machine.network.extraHosts);
    // PID 1 writes localhost only before networkd starts.
    t.symlink("etc/hosts", "../run/bramble/hosts")?;
    t.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n"
            .to_vec(),
    )?;
    t.file(
        "etc/group",
        0o644,
        b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
    )?;
    inp.modules.add_to(&mut t)?;
    packages::add_to(&mut t, inp.package_files)?;
    if !inp.overlay.is_dir() {
        return Err(Error::Invalid {
            field: format!("--rootfs-overlay {}", inp.overlay.display()),
            reason: "is not a directory".into(),
        });
    }
    t.overlay(inp.overlay)?;
    Ok(t)
}

/// The initramfs tree: `/init`, `/dev/console`, mount points, the release marker
/// and the modules.
pub fn initrd(init: &Arc<[u8]>, initrd_release: &str, modules: &ModuleFiles) -> Result<Tree> {
    let mut t = Tree::new();
    for d in INITRD_DIRS {
        t.dir(d, 0o755)?;
    }
    t.char_dev("dev/console", 0o600, 5, 1)?;
    t.file("init", 0o755, init.clone())?;
    t.file(
        "etc/initrd-release",
        0o644,
        initrd_release.as_bytes().to_vec(),
    )?;
    modules.add_to(&mut t)?;
    Ok(t)
}

/// Concatenates certificates (sorted by name), each ending in a newline.
pub fn ca_bundle(certs: &std::collections::BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for data in certs.values() {
        out.extend_from_slice(data);
        if !data.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_fields() {
        let s = os_release("0.1.0", "abc123");
        assert!(s.contains("NAME=\"Bramble\"\n"));
        assert!(s.contains("ID=bramble\n"));
        assert!(s.contains("VERSION_ID=0.1.0\n"));
        assert!(s.contains("PRETTY_NAME=\"Bramble 0.1.0\"\n"));
        assert!(s.contains("BUILD_ID=abc123\n"));
        assert!(!s.contains("HOME_URL"));
        assert!(check_token("--version", "0.1.0").is_ok());
        assert!(check_token("--version", "0.1 0").is_err());
        assert!(check_token("--git-revision", "a\"b").is_err());
        assert!(check_token("--git-revision", "").is_err());
    }
}
