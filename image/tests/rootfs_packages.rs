//! `boot/rootfs-packages.txt` against the real pinned packages: what it takes
//! out of etcd-server, etcd-client and libc6, with which modes, and the check
//! that etcd and etcdctl can be loaded from what the root filesystem carries.
//!
//! Needs the pinned `.deb`s in `<workspace>/.cache/debs` (`make deps`).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bramble_image::elf;
use bramble_image::lock::{self, Lock};
use bramble_image::packages::{self, Content, Extracted, FileList};
use bramble_image::tree::Tree;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The list's files, from the verified packages it names.
fn listed() -> Vec<Extracted> {
    let ws = workspace();
    let cache = ws.join(".cache/debs");
    let lock = Lock::load(&ws.join("boot/packages.lock")).unwrap();
    let list = FileList::load(&ws.join("boot").join(packages::ROOTFS_PACKAGES)).unwrap();
    let mut verified = BTreeMap::new();
    for e in &list.entries {
        let entry = lock.get(&e.package).unwrap();
        let data = lock::read_verified(&cache, entry)
            .unwrap_or_else(|err| panic!("{err} (run `make deps`)"));
        verified.insert(e.package.clone(), data);
    }
    list.extract(&lock, &cache, &verified).unwrap()
}

#[test]
fn etcd_and_its_glibc_closure_come_out_with_node_modes() {
    let files = listed();
    let summary: Vec<(&str, &str, String)> = files
        .iter()
        .map(|f| {
            let what = match &f.content {
                Content::File { mode, .. } => format!("{mode:o}"),
                Content::Symlink(target) => format!("-> {target}"),
            };
            (f.package.as_str(), f.path.as_str(), what)
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("etcd-server", "usr/bin/etcd", "755".to_owned()),
            ("etcd-client", "usr/bin/etcdctl", "755".to_owned()),
            (
                "libc6",
                "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
                "755".to_owned()
            ),
            ("libc6", "lib/aarch64-linux-gnu/libc.so.6", "644".to_owned()),
            (
                "libc6",
                "lib/ld-linux-aarch64.so.1",
                "-> aarch64-linux-gnu/ld-linux-aarch64.so.1".to_owned()
            ),
        ]
    );
    let etcd = files.iter().find(|f| f.path == "usr/bin/etcd").unwrap();
    let Content::File { data, .. } = &etcd.content else {
        panic!("etcd is not a file")
    };
    let info = elf::dynamic_info(Path::new("usr/bin/etcd"), data).unwrap();
    assert_eq!(
        info.interpreter.as_deref(),
        Some("/lib/ld-linux-aarch64.so.1")
    );
    assert_eq!(info.needed, vec!["libc.so.6".to_owned()]);

    let mut tree = Tree::new();
    packages::add_to(&mut tree, &files).unwrap();
    elf::check_loadable(&tree, &["usr/bin/etcd".to_owned()]).unwrap();

    // etcdctl (`nodectl bootstrap --recover-from`) needs the same.
    let etcdctl = files.iter().find(|f| f.path == "usr/bin/etcdctl").unwrap();
    let Content::File { data, .. } = &etcdctl.content else {
        panic!("etcdctl is not a file")
    };
    let info = elf::dynamic_info(Path::new("usr/bin/etcdctl"), data).unwrap();
    assert_eq!(info.needed, vec!["libc.so.6".to_owned()]);
    elf::check_loadable(&tree, &["usr/bin/etcdctl".to_owned()]).unwrap();
}

#[test]
fn etcd_without_libc_is_refused_naming_both() {
    let files: Vec<Extracted> = listed()
        .into_iter()
        .filter(|f| !f.path.ends_with("libc.so.6"))
        .collect();
    let mut tree = Tree::new();
    packages::add_to(&mut tree, &files).unwrap();
    let err = elf::check_loadable(&tree, &["usr/bin/etcd".to_owned()])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/usr/bin/etcd: needs the shared library `libc.so.6`"),
        "{err}"
    );

    // Without the loader's link, etcd's PT_INTERP leads nowhere.
    let files: Vec<Extracted> = listed()
        .into_iter()
        .filter(|f| f.path != "lib/ld-linux-aarch64.so.1")
        .collect();
    let mut tree = Tree::new();
    packages::add_to(&mut tree, &files).unwrap();
    let err = elf::check_loadable(&tree, &["usr/bin/etcd".to_owned()])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "/usr/bin/etcd: needs the program interpreter `/lib/ld-linux-aarch64.so.1`"
        ),
        "{err}"
    );
}
