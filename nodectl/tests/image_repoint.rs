//! An operator cannot repoint an image reference a workload uses without
//! `--force`, and a reference pinned by digest names only that image:
//! through the real `nodectl`, the in-process `apid` over mutual TLS and
//! the real runtime's API with a workload, against a real
//! `docker-registry` on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bramble_oci_store::build::{Entry, ImageBuilder, ImageParts};
use bramble_oci_store::push::Pusher;
use bramble_oci_store::{Platform, RegistryConfig};
use bramble_testkit::registry::Registry;
use common::{TestRuntime, TestServer, fixture_info, nodectl, stderr, stdout};

fn run(args: &[&str]) -> (bool, String, String) {
    let o = nodectl(args);
    (o.status.success(), stdout(&o), stderr(&o))
}

fn ok(args: &[&str]) -> String {
    let (success, out, err) = run(args);
    assert!(success, "nodectl {args:?} failed:\n{out}{err}");
    out
}

fn image(text: &str) -> ImageBuilder {
    ImageBuilder::new(Platform::host().architecture.as_str())
        .layer(vec![Entry::file("version", 0o644, text.as_bytes())])
        .config(&["/bin/true"], &[], &[], "", "")
}

fn archive(dir: &Path, name: &str, image: &ImageBuilder) -> String {
    let path = dir.join(name);
    let mut bytes = Vec::new();
    image.write_archive(&mut bytes).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn push(registry: &Registry, reference: &str, parts: &ImageParts) {
    Pusher::new(true)
        .image(reference, parts)
        .await
        .unwrap_or_else(|e| panic!("pushing {reference} to {}: {e}", registry.host()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_a_workload_uses_moves_only_when_forced() {
    let registry = Registry::start();
    let reference = registry.reference("test/app:v1");
    let one = image("one").parts().unwrap();
    let two = image("two").parts().unwrap();
    let three = image("three").parts().unwrap();
    push(&registry, &reference, &one).await;

    // A node with one workload running `reference`, and an operator.
    let keys = tempfile::tempdir().unwrap();
    let secrets = keys.path().join("secrets.yaml");
    ok(&["gen", "secrets", "--output-file", secrets.to_str().unwrap()]);
    let out_dir = keys.path().join("operator");
    ok(&[
        "gen",
        "config",
        "test",
        "https://127.0.0.1:6443",
        "--with-secrets",
        secrets.to_str().unwrap(),
        "--output-dir",
        out_dir.to_str().unwrap(),
        "--role",
        "operator",
    ]);
    let state = tempfile::tempdir().unwrap();
    let server = TestServer::start(state.path(), fixture_info(state.path()));
    let workload: bramble_config::Workload =
        serde_json::from_value(serde_json::json!({"name": "web", "image": reference})).unwrap();
    let _runtime = TestRuntime::start_with(
        state.path(),
        vec![workload],
        RegistryConfig {
            insecure: vec![registry.host()],
            ..RegistryConfig::default()
        },
    );
    let node = server.node();
    let cp = out_dir.join("controlplane.yaml");
    ok(&[
        "apply-config",
        "--insecure",
        "-n",
        &node,
        "-f",
        cp.to_str().unwrap(),
    ]);
    let cfg = out_dir.join("nodeconfig");
    let cfg = cfg.to_str().unwrap();
    let operator = |args: &[&str]| {
        let mut all = vec!["--nodeconfig", cfg, "-n", &node];
        all.extend_from_slice(args);
        run(&all)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !operator(&["version"]).0 {
        assert!(Instant::now() < deadline, "mutual TLS never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let images = || operator(&["images", "-o", "json"]).1;

    // The image the workload uses (pulled by the workload or here: the
    // same image either way is no repoint).
    let (success, out, err) = operator(&["image", "pull", &reference]);
    assert!(success, "{out}{err}");
    assert!(out.contains(&one.manifest_digest), "{out}");

    // The tag moves on the registry: pulling it would repoint the workload.
    push(&registry, &reference, &two).await;
    let (success, _, err) = operator(&["image", "pull", &reference]);
    assert!(!success, "a repointing pull was allowed");
    eprintln!("refused as expected: {err}");
    for needle in [
        reference.as_str(),
        "workload \"web\" uses",
        one.manifest_digest.as_str(),
        two.manifest_digest.as_str(),
        "--force",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    assert!(images().contains(&one.manifest_digest), "{}", images());

    // An archive stored under the reference: refused the same way.
    let two_tar = archive(state.path(), "two.tar", &image("two"));
    let (success, _, err) = operator(&["image", "import", &two_tar, "--reference", &reference]);
    assert!(!success, "a repointing import was allowed");
    assert!(
        err.contains("workload \"web\" uses") && err.contains("--force"),
        "{err}"
    );
    assert!(images().contains(&one.manifest_digest), "{}", images());
    assert!(!images().contains(&two.manifest_digest), "{}", images());

    // Forced, it moves.
    let out = ok(&[
        "--nodeconfig",
        cfg,
        "-n",
        &node,
        "image",
        "import",
        &two_tar,
        "--reference",
        &reference,
        "--force",
    ]);
    assert!(out.contains(&two.manifest_digest), "{out}");
    push(&registry, &reference, &three).await;
    let (success, out, err) = operator(&["image", "pull", &reference, "--force"]);
    assert!(success, "{out}{err}");
    assert!(out.contains(&three.manifest_digest), "{out}");
    assert!(images().contains(&three.manifest_digest), "{}", images());

    // A reference by digest names that image, whatever the tag says now.
    let pinned = format!("{}/test/app@{}", registry.host(), one.manifest_digest);
    let (success, out, err) = operator(&["image", "pull", &pinned]);
    assert!(success, "{out}{err}");
    assert!(
        out.contains(&pinned) && out.contains(&one.manifest_digest),
        "{out}"
    );
}
