//! Pulling from a real registry (Debian's docker-registry) on loopback.

mod common;

use std::fs;

use bramble_oci_store::build::{Entry, ImageBuilder, IndexBuilder};
use bramble_oci_store::manifest::OCI_LAYER_ZSTD;
use bramble_oci_store::{Platform, RegistryConfig};
use bramble_testkit::registry::{Registry, free_port};
use common::registry::{push_client, push_image, push_index, push_with_client_push};

fn insecure(hosts: &[&str]) -> RegistryConfig {
    RegistryConfig {
        insecure: hosts.iter().map(|h| (*h).to_owned()).collect(),
        ..RegistryConfig::default()
    }
}

fn blob_bytes(parts: &bramble_oci_store::build::ImageParts) -> u64 {
    (parts.config.len() + parts.layers.iter().map(|l| l.data.len()).sum::<usize>()) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_stores_verifies_and_skips_known_blobs() {
    // The registry must be there whether or not we are root.
    let registry = Registry::start();
    require_root!();
    let client = push_client();
    let image = common::sample_image(&common::host_arch());
    let parts = image.parts().expect("parts");
    let reference = registry.reference("test/sample:v1");
    push_image(&client, &reference, &parts).await;

    let (_dir, store) = common::host_store();
    let config = insecure(&[&registry.host()]);
    let future = store.pull(&reference, &config);
    fn assert_send<T: Send>(_: &T) {}
    assert_send(&future);
    let report = future.await.expect("pull");
    assert_eq!(report.image.reference, reference);
    assert_eq!(report.image.digest, parts.manifest_digest);
    assert_eq!(report.image.platform, Platform::host().to_string());
    assert_eq!(report.fetched_bytes, blob_bytes(&parts));

    let resolved = store.image(&reference).expect("image");
    common::check_sample_snapshots(&resolved.layers);
    common::check_sample_config(&resolved.config);
    assert!(common::tmp_leftovers(&store).is_empty());

    // Again: nothing to download.
    let again = store.pull(&reference, &config).await.expect("second pull");
    assert_eq!(again.fetched_bytes, 0);
    assert_eq!(again.image.digest, parts.manifest_digest);

    // By digest, as another reference.
    let by_digest = format!("{}/test/sample@{}", registry.host(), parts.manifest_digest);
    let r = store
        .pull(&by_digest, &config)
        .await
        .expect("pull by digest");
    assert_eq!(r.fetched_bytes, 0);
    assert_eq!(r.image.reference, by_digest);
    assert_eq!(store.list().expect("list").len(), 2);

    // Pushed with oci-client's high-level push (Docker media types).
    let docker = ImageBuilder::new(&common::host_arch())
        .layer(vec![Entry::file("docker", 0o644, b"docker media types\n")])
        .docker_media_types();
    let docker_parts = docker.parts().expect("parts");
    let docker_ref = registry.reference("test/docker:1");
    push_with_client_push(&client, &docker_ref, &docker_parts).await;
    let r = store
        .pull(&docker_ref, &config)
        .await
        .expect("pull docker image");
    assert_eq!(r.fetched_bytes, blob_bytes(&docker_parts));
    let resolved = store.image(&docker_ref).expect("image");
    assert_eq!(
        fs::read(resolved.layers[0].join("docker")).expect("file"),
        b"docker media types\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_platform_index_picks_the_right_platform() {
    let registry = Registry::start();
    require_root!();
    let client = push_client();
    let oci = IndexBuilder::new()
        .image(ImageBuilder::new("amd64").layer(vec![Entry::file("arch", 0o644, b"amd64")]))
        .image(ImageBuilder::new("arm64").layer(vec![Entry::file("arch", 0o644, b"arm64")]));
    let oci_parts = oci.parts().expect("parts");
    let oci_ref = registry.reference("test/multi:oci");
    push_index(&client, &oci_ref, &oci_parts).await;
    let docker = IndexBuilder::new()
        .image(
            ImageBuilder::new("amd64")
                .docker_media_types()
                .layer(vec![Entry::file("arch", 0o644, b"docker amd64")]),
        )
        .image(
            ImageBuilder::new("arm64")
                .docker_media_types()
                .layer(vec![Entry::file("arch", 0o644, b"docker arm64")]),
        )
        .docker_manifest_list();
    let docker_parts = docker.parts().expect("parts");
    let docker_ref = registry.reference("test/multi:docker");
    push_index(&client, &docker_ref, &docker_parts).await;
    let config = insecure(&[&registry.host()]);

    for (platform, idx) in [(Platform::linux_amd64(), 0), (Platform::linux_arm64(), 1)] {
        let (_dir, store) = common::store_for(platform.clone());
        for (reference, parts, prefix) in [
            (&oci_ref, &oci_parts, ""),
            (&docker_ref, &docker_parts, "docker "),
        ] {
            let report = store.pull(reference, &config).await.expect("pull");
            let image = &parts.images[idx];
            assert_eq!(
                report.image.digest, image.manifest_digest,
                "{platform} {reference}"
            );
            assert_eq!(report.image.platform, platform.to_string());
            assert_eq!(report.fetched_bytes, blob_bytes(image));
            let resolved = store.image(reference).expect("image");
            assert_eq!(
                fs::read(resolved.layers[0].join("arch")).expect("arch"),
                format!("{prefix}{}", platform.architecture).as_bytes()
            );
        }
        // The index digest finds the same image.
        let by_index = format!("{}/test/multi@{}", registry.host(), oci_parts.index_digest);
        let report = store
            .pull(&by_index, &config)
            .await
            .expect("pull by index digest");
        assert_eq!(report.image.digest, oci_parts.images[idx].manifest_digest);
    }

    let (_dir, store) = common::store_for(Platform::new("linux", "riscv64", None));
    let err = store.pull(&oci_ref, &config).await.expect_err("no riscv64");
    let msg = err.to_string();
    assert!(
        msg.contains("linux/riscv64") && msg.contains("linux/amd64, linux/arm64"),
        "{msg}"
    );
    assert!(store.list().expect("list").is_empty());
    assert!(common::blobs(&store).is_empty(), "nothing downloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_errors_are_clear_and_store_nothing() {
    let registry = Registry::start();
    require_root!();
    let client = push_client();
    let (_dir, store) = common::host_store();
    let config = insecure(&[&registry.host()]);

    // A bad reference never reaches the network.
    let err = store
        .pull("127.0.0.1:1/Bad/Name", &config)
        .await
        .expect_err("bad reference");
    assert!(
        err.to_string()
            .contains("invalid image reference \"127.0.0.1:1/Bad/Name\""),
        "{err}"
    );

    // Unknown tag, unknown repository.
    let parts = ImageBuilder::new(&common::host_arch())
        .layer(vec![Entry::file("x", 0o644, b"x")])
        .parts()
        .expect("parts");
    push_image(&client, &registry.reference("test/exists:v1"), &parts).await;
    for missing in ["test/exists:nope", "test/absent:v1"] {
        let reference = registry.reference(missing);
        let err = store.pull(&reference, &config).await.expect_err("unknown");
        let msg = err.to_string();
        eprintln!("refused as expected: {msg}");
        assert!(
            msg.contains(&format!("pulling {reference} failed")),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("registry {}", registry.host())),
            "{msg}"
        );
        assert!(
            msg.contains("manifest unknown") || msg.contains("unknown"),
            "{msg}"
        );
    }

    // A registry nobody listens on.
    let closed = format!("127.0.0.1:{}", free_port());
    let reference = format!("{closed}/test/exists:v1");
    let err = store
        .pull(&reference, &insecure(&[&closed]))
        .await
        .expect_err("unreachable");
    let msg = err.to_string();
    eprintln!("refused as expected: {msg}");
    assert!(msg.contains(&format!("registry {closed}")), "{msg}");
    assert!(msg.to_lowercase().contains("connect"), "{msg}");

    // HTTPS to a plain-HTTP registry (not marked insecure) fails, naming it.
    let err = store
        .pull(
            &registry.reference("test/exists:v1"),
            &RegistryConfig::default(),
        )
        .await
        .expect_err("https to an http registry");
    eprintln!("refused as expected: {err}");
    assert!(err.to_string().contains(&registry.host()), "{err}");

    // A zstd layer is refused before anything big is downloaded.
    let zstd = ImageBuilder::new(&common::host_arch())
        .raw_layer(
            OCI_LAYER_ZSTD,
            vec![0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3],
            &parts.layers[0].diff_id,
        )
        .parts()
        .expect("parts");
    let zstd_ref = registry.reference("test/zstd:1");
    push_image(&client, &zstd_ref, &zstd).await;
    let err = store.pull(&zstd_ref, &config).await.expect_err("zstd");
    assert!(
        err.to_string()
            .contains("zstd-compressed layers are not supported"),
        "{err}"
    );
    assert!(!common::blobs(&store).contains(&zstd.layers[0].digest["sha256:".len()..]));

    assert!(store.list().expect("list").is_empty());
    assert!(common::tmp_leftovers(&store).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_that_are_down_or_lack_the_image_fall_through() {
    let mirror = Registry::start();
    let empty_mirror = Registry::start();
    require_root!();
    let client = push_client();
    let parts = ImageBuilder::new(&common::host_arch())
        .layer(vec![Entry::file("m", 0o644, b"from the mirror\n")])
        .parts()
        .expect("parts");
    // The "upstream" registry is a closed port: only the mirror has it.
    let upstream = format!("127.0.0.1:{}", free_port());
    let down = format!("127.0.0.1:{}", free_port());
    push_image(&client, &mirror.reference("test/app:v1"), &parts).await;
    let reference = format!("{upstream}/test/app:v1");

    let mut config = insecure(&[&upstream]);
    config.mirrors.insert(
        upstream.clone(),
        vec![
            format!("http://{down}"),
            format!("http://{}", empty_mirror.host()),
            format!("http://{}", mirror.host()),
        ],
    );
    let (_dir, store) = common::host_store();
    let report = store
        .pull(&reference, &config)
        .await
        .expect("pull via the mirror");
    assert_eq!(report.image.reference, reference);
    assert_eq!(report.image.digest, parts.manifest_digest);
    assert_eq!(report.fetched_bytes, blob_bytes(&parts));
    let resolved = store.image(&reference).expect("image");
    assert_eq!(
        fs::read(resolved.layers[0].join("m")).expect("m"),
        b"from the mirror\n"
    );

    // Every source down: the error names each attempt, in order.
    let other = format!("127.0.0.1:{}", free_port());
    config.mirrors.insert(
        upstream.clone(),
        vec![
            format!("http://{down}"),
            format!("http://{other}"),
            "https://bad/with/path".to_owned(),
        ],
    );
    let err = store
        .pull(&format!("{upstream}/test/other:v1"), &config)
        .await
        .expect_err("all down");
    let msg = err.to_string();
    eprintln!("refused as expected: {msg}");
    let positions: Vec<usize> = [
        format!("mirror http://{down}:"),
        format!("mirror http://{other}:"),
        "mirror https://bad/with/path:".to_owned(),
        format!("registry {upstream}:"),
    ]
    .iter()
    .map(|needle| {
        msg.find(needle.as_str())
            .unwrap_or_else(|| panic!("{msg:?} lacks {needle:?}"))
    })
    .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "attempts in order: {msg}"
    );
    assert_eq!(store.list().expect("list").len(), 1);
    assert!(common::tmp_leftovers(&store).is_empty());
}

#[test]
fn registry_binary_is_installed() {
    // Fails (never skips) without the registry, saying how to get it.
    let registry = Registry::start();
    assert!(registry.host().starts_with("127.0.0.1:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_basic_credentials_and_a_private_ca() {
    let registry = Registry::start_secure("robot", "s3cret");
    require_root!();
    let secure = registry.secure().expect("a secure registry").clone();
    let ca = vec![secure.ca_pem.clone()];
    let pusher = bramble_oci_store::push::Pusher::with(
        false,
        &ca,
        Some((&secure.username, &secure.password)),
    );
    let parts = common::sample_image(&common::host_arch())
        .parts()
        .expect("parts");
    let reference = registry.reference("private/app:v1");
    push_image(&pusher, &reference, &parts).await;
    let host = registry.host();
    let creds = |password: &str| RegistryConfig {
        auth: [(
            host.clone(),
            bramble_oci_store::Credentials::Basic {
                username: secure.username.clone(),
                password: password.to_owned(),
            },
        )]
        .into(),
        ca_certificates: ca.clone(),
        ..RegistryConfig::default()
    };

    let (_dir, store) = common::host_store();
    // Without the CA the registry's certificate is not trusted.
    let no_ca = RegistryConfig {
        ca_certificates: Vec::new(),
        ..creds(&secure.password)
    };
    let err = store
        .pull(&reference, &no_ca)
        .await
        .expect_err("an untrusted certificate");
    let msg = format!("{err:#}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    // Without credentials, and with a wrong password, the registry refuses.
    let anonymous = RegistryConfig {
        ca_certificates: ca.clone(),
        ..RegistryConfig::default()
    };
    for config in [anonymous, creds("wrong")] {
        let err = store
            .pull(&reference, &config)
            .await
            .expect_err("refused without the right credentials");
        let msg = format!("{err:#}").to_lowercase();
        assert!(
            msg.contains("401") || msg.contains("unauthorized") || msg.contains("auth"),
            "{msg}"
        );
    }
    assert!(store.list().expect("list").is_empty(), "nothing stored");
    // With both: pulled over HTTPS.
    let report = store
        .pull(&reference, &creds(&secure.password))
        .await
        .expect("pull with credentials");
    assert_eq!(report.image.digest, parts.manifest_digest);
    assert_eq!(report.fetched_bytes, blob_bytes(&parts));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens() {
    let registry = Registry::start_with_tokens();
    require_root!();
    let push_token = registry.bearer_token("private/tok", &["pull", "push"]);
    let pusher = bramble_oci_store::push::Pusher::with_bearer(&push_token);
    let parts = common::sample_image(&common::host_arch())
        .parts()
        .expect("parts");
    let reference = registry.reference("private/tok:v1");
    push_image(&pusher, &reference, &parts).await;
    let host = registry.host();
    let with_token = |token: String| RegistryConfig {
        insecure: vec![host.clone()],
        auth: [(host.clone(), bramble_oci_store::Credentials::Bearer(token))].into(),
        ..RegistryConfig::default()
    };
    let (_dir, store) = common::host_store();
    // A token for another repository does not open this one.
    let other = registry.bearer_token("private/other", &["pull"]);
    let err = store
        .pull(&reference, &with_token(other))
        .await
        .expect_err("a token for another repository");
    let msg = format!("{err:#}").to_lowercase();
    assert!(msg.contains("not authorized"), "{msg}");
    assert!(store.list().expect("list").is_empty(), "nothing stored");
    let report = store
        .pull(
            &reference,
            &with_token(registry.bearer_token("private/tok", &["pull"])),
        )
        .await
        .expect("pull with a bearer token");
    assert_eq!(report.image.digest, parts.manifest_digest);
}
