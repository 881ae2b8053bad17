//! What a pull or import may bind a reference to: a reference in use moves
//! to another image only unforced, a reference pinned by digest names only
//! that digest (or the verified index it names).

mod common;

use bramble_oci_store::build::{Entry, ImageBuilder, IndexBuilder};
use bramble_oci_store::{Error, Guard, RegistryConfig};
use bramble_testkit::registry::Registry;
use common::registry::{push_client, push_index};

fn image(text: &str) -> ImageBuilder {
    ImageBuilder::new(&common::host_arch())
        .layer(vec![Entry::file("version", 0o644, text.as_bytes())])
        .config(&["/bin/true"], &[], &[], "", "")
}

#[test]
fn a_reference_in_use_is_not_repointed_unless_forced() {
    let (_dir, store) = common::host_store();
    let reference = "registry.example/test/app:v1";
    let one = image("one").annotate_ref(reference);
    let two = image("two").annotate_ref(reference);
    let first = store
        .import_archive(&common::archive(&one)[..], None)
        .expect("first import")
        .remove(0);
    let blobs_before = common::blobs(&store);
    let snapshots_before = common::snapshots(&store);

    let mut guard = Guard::new();
    // Protected as the workload writes it: normalised by the guard.
    guard.protect("registry.example/test/app:v1", "workload \"web\"");
    let err = store
        .import_archive_guarded(&common::archive(&two)[..], None, &guard)
        .expect_err("repointing a reference in use");
    let msg = err.to_string();
    eprintln!("refused as expected: {msg}");
    let two_digest = two.parts().expect("parts").manifest_digest;
    assert!(
        matches!(&err, Error::InUse { reference: r, current, new, .. }
            if r == reference && *current == first.digest && *new == two_digest),
        "{err:?}"
    );
    assert!(msg.contains("workload \"web\" uses"), "{msg}");
    // Nothing changed: the reference, and no blob or snapshot of the refused image.
    assert_eq!(
        store.resolve(reference).expect("resolve"),
        Some(first.clone())
    );
    assert_eq!(common::blobs(&store), blobs_before);
    assert_eq!(common::snapshots(&store), snapshots_before);
    assert!(common::tmp_leftovers(&store).is_empty());

    // The same image again is no repoint.
    let again = store
        .import_archive_guarded(&common::archive(&one)[..], None, &guard)
        .expect("the image it names already");
    assert_eq!(again[0].digest, first.digest);
    // Another reference is not protected.
    store
        .import_archive_guarded(
            &common::archive(&two)[..],
            Some("registry.example/test/app:v2"),
            &guard,
        )
        .expect("another reference");
    // Without the guard (forced), it moves.
    let moved = store
        .import_archive(&common::archive(&two)[..], None)
        .expect("forced");
    assert_eq!(moved[0].digest, two_digest);
    assert_eq!(
        store.resolve(reference).expect("resolve").map(|i| i.digest),
        Some(two_digest)
    );
}

#[test]
fn a_reference_pinned_by_digest_names_only_that_digest() {
    let (_dir, store) = common::host_store();
    let one = image("one");
    let one_digest = one.parts().expect("parts").manifest_digest;
    let two = image("two");

    // An archive naming its image by another image's digest.
    let liar = two
        .clone()
        .annotate_ref(&format!("registry.example/test/pin@{one_digest}"));
    let err = store
        .import_archive(&common::archive(&liar)[..], None)
        .expect_err("a pin to another digest");
    let msg = err.to_string();
    eprintln!("refused as expected: {msg}");
    assert!(matches!(err, Error::PinMismatch { .. }), "{err:?}");
    assert!(
        msg.contains(&format!(
            "registry.example/test/pin@{one_digest} is pinned to {one_digest}"
        )),
        "{msg}"
    );
    assert!(store.list().expect("list").is_empty());
    assert!(
        common::blobs(&store).is_empty(),
        "a blob of the refused image stayed"
    );
    assert!(common::snapshots(&store).is_empty());

    // Its own digest binds.
    let honest = one
        .clone()
        .annotate_ref(&format!("registry.example/test/pin@{one_digest}"));
    store
        .import_archive(&common::archive(&honest)[..], None)
        .expect("a pin to its own digest");
    let found = store
        .resolve(&format!("registry.example/test/pin@{one_digest}"))
        .expect("resolve")
        .expect("found");
    assert_eq!(found.digest, one_digest);

    // An index pinned by its digest names the image picked from it.
    let index = IndexBuilder::new().image(image("multi"));
    let index_digest = index.parts().expect("parts").index_digest;
    let pinned = format!("registry.example/test/multi@{index_digest}");
    let mut bytes = Vec::new();
    index
        .clone()
        .annotate_ref(&pinned)
        .write_archive(&mut bytes)
        .expect("archive");
    let info = store
        .import_archive(&bytes[..], None)
        .expect("index pin")
        .remove(0);
    assert_eq!(
        info.digest,
        index.parts().expect("parts").images[0].manifest_digest
    );
    assert_eq!(store.resolve(&pinned).expect("resolve"), Some(info));

    // A refs.json that says otherwise (written by hand here, as an older
    // store or a damaged disk might have it) is not believed.
    let refs_path = store.root().join("refs.json");
    let refs = std::fs::read_to_string(&refs_path).expect("refs.json");
    let two_digest = two.parts().expect("parts").manifest_digest;
    std::fs::write(&refs_path, refs.replace(&one_digest, &two_digest)).expect("write");
    assert_eq!(
        store
            .resolve(&format!("registry.example/test/pin@{one_digest}"))
            .expect("resolve"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_by_digest_and_guarded_pulls() {
    let registry = Registry::start();
    require_root!();
    let client = push_client();
    let index = IndexBuilder::new().image(image("pulled"));
    let parts = index.parts().expect("parts");
    let tagged = registry.reference("test/pull:v1");
    push_index(&client, &tagged, &parts).await;
    let config = RegistryConfig {
        insecure: vec![registry.host()],
        ..RegistryConfig::default()
    };
    let (_dir, store) = common::host_store();
    let by_index = format!("{}/test/pull@{}", registry.host(), parts.index_digest);
    let pulled = store
        .pull(&by_index, &config)
        .await
        .expect("pull by index digest");
    assert_eq!(pulled.image.digest, parts.images[0].manifest_digest);
    assert_eq!(
        store.resolve(&by_index).expect("resolve").map(|i| i.digest),
        Some(parts.images[0].manifest_digest.clone())
    );

    // A tag in use, moved on the registry: the guarded pull refuses.
    store.pull(&tagged, &config).await.expect("pull the tag");
    let newer = IndexBuilder::new().image(image("newer"));
    let newer_parts = newer.parts().expect("parts");
    push_index(&client, &tagged, &newer_parts).await;
    let mut guard = Guard::new();
    guard.protect(&tagged, "workload \"app\"");
    let err = store
        .pull_guarded(&tagged, &config, &guard)
        .await
        .expect_err("a moved tag in use");
    assert!(matches!(err, Error::InUse { .. }), "{err:?}");
    assert_eq!(
        store.resolve(&tagged).expect("resolve").map(|i| i.digest),
        Some(parts.images[0].manifest_digest.clone())
    );
    let blobs_of_newer = newer_parts.images[0].blobs();
    for (digest, _) in &blobs_of_newer {
        assert!(
            !common::blobs(&store).contains(&digest["sha256:".len()..]),
            "a blob of the refused image stayed"
        );
    }
    let forced = store.pull(&tagged, &config).await.expect("forced");
    assert_eq!(forced.image.digest, newer_parts.images[0].manifest_digest);
}
