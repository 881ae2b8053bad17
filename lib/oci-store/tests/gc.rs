//! Garbage collection after remove, shared layers, and the keep list.

mod common;

use bramble_oci_store::build::{Entry, ImageBuilder};
use bramble_oci_store::{Error, GcReport};

fn base() -> Vec<Entry> {
    vec![
        Entry::dir("usr", 0o755),
        Entry::file("usr/base", 0o644, b"shared base layer\n"),
    ]
}

#[test]
fn gc_after_remove_keeps_shared_layers() {
    require_root!();
    let (_dir, store) = common::host_store();
    let arch = common::host_arch();
    let one = ImageBuilder::new(&arch)
        .layer(base())
        .layer(vec![Entry::file("one", 0o644, b"one\n")])
        .annotate_ref("example.com/one:1");
    let two = ImageBuilder::new(&arch)
        .layer(base())
        .layer(vec![Entry::file("two", 0o644, b"two\n")])
        .annotate_ref("example.com/two:1");
    store
        .import_archive(&common::archive(&one)[..], None)
        .expect("one");
    store
        .import_archive(&common::archive(&two)[..], None)
        .expect("two");
    // Shared base layer: 1 shared + 2 own snapshots; blobs: 2 x (manifest,
    // config, top layer) + 1 shared base layer.
    assert_eq!(common::snapshots(&store).len(), 3);
    assert_eq!(common::blobs(&store).len(), 7);
    let one_layers = store.image("example.com/one:1").expect("one").layers;
    let two_layers = store.image("example.com/two:1").expect("two").layers;
    assert_eq!(
        one_layers[0], two_layers[0],
        "the base layer's snapshot is shared"
    );

    // Nothing is garbage while both are tagged.
    assert_eq!(store.gc(&[]).expect("gc"), GcReport::default());

    let report = store.remove("example.com/one:1").expect("remove one");
    assert_eq!(
        report,
        GcReport {
            removed_blobs: 3,
            removed_snapshots: 1
        }
    );
    assert!(
        store
            .resolve("example.com/one:1")
            .expect("resolve")
            .is_none()
    );
    assert!(!one_layers[1].exists());
    assert!(one_layers[0].exists());
    let two_again = store.image("example.com/two:1").expect("two still runs");
    assert_eq!(two_again.layers, two_layers);

    // Removing what is not there.
    let err = store
        .remove("example.com/one:1")
        .expect_err("already removed");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("example.com/one:1"), "{err}");

    // An untagged image in use by a container survives gc via `keep`.
    let two_digest = two_again.info.digest.clone();
    store.untag("example.com/two:1").expect("untag");
    assert_eq!(
        store
            .gc(std::slice::from_ref(&two_digest))
            .expect("gc keep"),
        GcReport::default()
    );
    assert!(two_layers.iter().all(|d| d.exists()));
    let err = store
        .gc(&["sha256:nope".to_owned()])
        .expect_err("bad keep digest");
    assert!(err.to_string().contains("sha256:nope"), "{err}");

    // Once nothing needs it, everything goes.
    let report = store.gc(&[]).expect("gc all");
    assert_eq!(
        report,
        GcReport {
            removed_blobs: 4,
            removed_snapshots: 2
        }
    );
    assert!(common::blobs(&store).is_empty());
    assert!(common::snapshots(&store).is_empty());
    assert!(common::tmp_leftovers(&store).is_empty());
    assert!(store.list().expect("list").is_empty());
    let err = store.image("example.com/two:1").expect_err("gone");
    assert!(err.to_string().contains("is not in the store"), "{err}");

    // remove_keeping keeps what is in use.
    store
        .import_archive(&common::archive(&one)[..], None)
        .expect("one again");
    let digest = store
        .resolve("example.com/one:1")
        .expect("resolve")
        .expect("one")
        .digest;
    let report = store
        .remove_keeping("example.com/one:1", std::slice::from_ref(&digest))
        .expect("remove keeping");
    assert_eq!(report, GcReport::default());
    assert_eq!(common::blobs(&store).len(), 4);
}

#[test]
fn concurrent_imports_and_gc_do_not_lose_data() {
    require_root!();
    let (_dir, store) = common::host_store();
    let arch = common::host_arch();
    let archives: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            common::archive(
                &ImageBuilder::new(&arch)
                    .layer(base())
                    .layer(vec![Entry::file("n", 0o644, format!("{i}").as_bytes())])
                    .annotate_ref(&format!("example.com/concurrent:{i}")),
            )
        })
        .collect();
    std::thread::scope(|s| {
        for archive in &archives {
            for _ in 0..2 {
                let store = store.clone();
                s.spawn(move || store.import_archive(&archive[..], None).expect("import"));
            }
        }
        for _ in 0..3 {
            let store = store.clone();
            s.spawn(move || store.gc(&[]).expect("gc"));
        }
    });
    assert_eq!(store.list().expect("list").len(), 3);
    for i in 0..3 {
        store
            .image(&format!("example.com/concurrent:{i}"))
            .expect("every image complete");
    }
    assert_eq!(store.gc(&[]).expect("gc"), GcReport::default());
    assert_eq!(common::snapshots(&store).len(), 4);
    assert!(common::tmp_leftovers(&store).is_empty());
}
