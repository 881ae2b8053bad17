//! Hostile registries and archives: manifests without end, lying lengths,
//! blobs longer than their descriptors, gzip bombs and layers of too many
//! entries are cut off at the store's bounds, with an error naming what and
//! the bound, and leave the store as it was.
//!
//! The registries that misbehave are an HTTP server in the test, on
//! 127.0.0.1; well-formed images that are too big go through a real
//! `docker-registry` on loopback.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bramble_oci_store::build::{Entry, ImageBuilder};
use bramble_oci_store::manifest::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST};
use bramble_oci_store::{Error, Limits, RegistryConfig, Store};
use bramble_testkit::registry::Registry;
use common::registry::{push_client, push_image};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the test server answers on a path.
#[derive(Debug, Clone)]
enum Body {
    /// These bytes, with their true `Content-Length`.
    Bytes(&'static str, Vec<u8>),
    /// `prefix`, then spaces without end, announcing `length` (None: no
    /// `Content-Length`, the body ends when the connection closes).
    Endless {
        content_type: &'static str,
        prefix: Vec<u8>,
        length: Option<u64>,
    },
}

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Body>>,
    requests: Mutex<Vec<String>>,
    /// Bytes written by each endless answer, by path.
    written: Mutex<HashMap<String, u64>>,
}

/// A registry that says whatever the test makes it say.
struct FakeRegistry {
    host: String,
    state: Arc<State>,
    /// How many endless answers have ended (their reader hung up).
    ended: watch::Receiver<u64>,
}

impl FakeRegistry {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(State::default());
        let (ended_tx, ended) = watch::channel(0u64);
        let ended_tx = Arc::new(ended_tx);
        let s = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, Arc::clone(&s), Arc::clone(&ended_tx)));
            }
        });
        Self { host, state, ended }
    }

    fn route(&self, path: &str, body: Body) {
        self.state
            .routes
            .lock()
            .expect("routes")
            .insert(path.to_owned(), body);
    }

    fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.host)
    }

    fn config(&self) -> RegistryConfig {
        RegistryConfig {
            insecure: vec![self.host.clone()],
            ..RegistryConfig::default()
        }
    }

    fn requests(&self) -> Vec<String> {
        self.state.requests.lock().expect("requests").clone()
    }

    fn written(&self, path: &str) -> u64 {
        self.state
            .written
            .lock()
            .expect("written")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Waits (30 s at most) until `n` endless answers have ended: the
    /// store closed the connection rather than reading on.
    async fn wait_ended(&mut self, n: u64) {
        tokio::time::timeout(Duration::from_secs(30), self.ended.wait_for(|e| *e >= n))
            .await
            .unwrap_or_else(|_| {
                panic!("the store kept reading an endless answer ({n} expected to end)")
            })
            .expect("server gone");
    }
}

async fn serve(mut sock: TcpStream, state: Arc<State>, ended: Arc<watch::Sender<u64>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or_default().to_owned();
        let path = words
            .next()
            .unwrap_or_default()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        state
            .requests
            .lock()
            .expect("requests")
            .push(format!("{method} {path}"));
        let route = state.routes.lock().expect("routes").get(&path).cloned();
        let body = match (path.as_str(), route) {
            ("/v2/", _) => Body::Bytes("application/json", b"{}".to_vec()),
            (_, Some(b)) => b,
            (_, None) => {
                let text =
                    br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
                let head = format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    text.len()
                );
                if sock.write_all(head.as_bytes()).await.is_err()
                    || sock.write_all(text).await.is_err()
                {
                    return;
                }
                continue;
            }
        };
        match body {
            Body::Bytes(content_type, bytes) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    bytes.len()
                );
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                if method != "HEAD" && sock.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Body::Endless {
                content_type,
                prefix,
                length,
            } => {
                let length = match length {
                    Some(n) => format!("Content-Length: {n}\r\n"),
                    None => "Connection: close\r\n".to_owned(),
                };
                let head =
                    format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{length}\r\n");
                let mut total = 0u64;
                let spaces = vec![b' '; 64 << 10];
                let mut ok = sock.write_all(head.as_bytes()).await.is_ok()
                    && sock.write_all(&prefix).await.is_ok();
                while ok {
                    ok = sock.write_all(&spaces).await.is_ok();
                    if ok {
                        total += spaces.len() as u64;
                        state
                            .written
                            .lock()
                            .expect("written")
                            .insert(path.clone(), total);
                    }
                }
                ended.send_modify(|n| *n += 1);
                return;
            }
        }
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The store holds nothing: no reference, blob, snapshot or leftover.
fn assert_untouched(store: &Store) {
    assert!(store.list().expect("list").is_empty(), "a reference");
    assert!(
        common::blobs(store).is_empty(),
        "blobs left: {:?}",
        common::blobs(store)
    );
    assert!(common::snapshots(store).is_empty(), "snapshots left");
    assert!(common::tmp_leftovers(store).is_empty(), "tmp/ left");
}

/// Slack for what sockets buffer between a server that writes without end
/// and a reader that stopped: far below "without end".
const SOCKET_SLACK: u64 = 64 << 20;

fn too_large(err: &Error) -> String {
    assert!(matches!(err, Error::Pull { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("the store's bound is"), "{msg}");
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_cut_off_while_they_stream() {
    let mut fake = FakeRegistry::start().await;
    let (_dir, store) = common::host_store();
    assert_eq!(store.limits(), Limits::default());
    assert_eq!(Limits::default().manifest_bytes, 4 << 20);
    let config = fake.config();
    let prefix = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","#;

    // A Content-Length past the bound: refused before the body is read.
    fake.route(
        "/v2/test/announced/manifests/v1",
        Body::Endless {
            content_type: OCI_MANIFEST,
            prefix: prefix.to_vec(),
            length: Some(1 << 30),
        },
    );
    let err = store
        .pull(&fake.reference("test/announced:v1"), &config)
        .await
        .expect_err("an announced gigabyte");
    let msg = too_large(&err);
    eprintln!("refused as expected: {msg}");
    assert!(
        msg.contains("the registry announces 1073741824 bytes (Content-Length)"),
        "{msg}"
    );
    assert!(msg.contains("4194304 bytes per manifest"), "{msg}");
    fake.wait_ended(1).await;
    assert!(fake.written("/v2/test/announced/manifests/v1") < SOCKET_SLACK);
    assert_untouched(&store);

    // No Content-Length at all: counted, cut off at the bound.
    fake.route(
        "/v2/test/unannounced/manifests/v1",
        Body::Endless {
            content_type: OCI_MANIFEST,
            prefix: prefix.to_vec(),
            length: None,
        },
    );
    let err = store
        .pull(&fake.reference("test/unannounced:v1"), &config)
        .await
        .expect_err("an endless manifest");
    let msg = too_large(&err);
    eprintln!("refused as expected: {msg}");
    assert!(
        msg.contains("the registry sent more than 4194304 bytes (without a Content-Length)"),
        "{msg}"
    );
    fake.wait_ended(2).await;
    let written = fake.written("/v2/test/unannounced/manifests/v1");
    assert!(written >= 4 << 20, "the bound was reached: {written}");
    assert!(written < (4 << 20) + SOCKET_SLACK, "{written}");
    assert_untouched(&store);

    // A Content-Length that lies (small, then endless): nothing past the
    // announced length is read.
    fake.route(
        "/v2/test/lying/manifests/v1",
        Body::Endless {
            content_type: OCI_MANIFEST,
            prefix: prefix.to_vec(),
            length: Some(prefix.len() as u64 + 100),
        },
    );
    let err = store
        .pull(&fake.reference("test/lying:v1"), &config)
        .await
        .expect_err("a lying manifest");
    let msg = err.to_string();
    eprintln!("refused as expected: {msg}");
    assert!(msg.contains("not a manifest or index"), "{msg}");
    fake.wait_ended(3).await;
    assert!(fake.written("/v2/test/lying/manifests/v1") < SOCKET_SLACK);
    assert_untouched(&store);

    // The bound is the store's to set: a small one refuses a small index.
    let small = store.clone().with_limits(Limits {
        manifest_bytes: 1024,
        ..Limits::default()
    });
    let mut index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec();
    index.resize(2048, b' ');
    fake.route("/v2/test/index/manifests/v1", Body::Bytes(OCI_INDEX, index));
    let err = small
        .pull(&fake.reference("test/index:v1"), &config)
        .await
        .expect_err("past a small bound");
    let msg = too_large(&err);
    assert!(
        msg.contains("announces 2048 bytes") && msg.contains("1024 bytes per manifest"),
        "{msg}"
    );
    assert_untouched(&store);
}

/// A manifest (and its config) for one layer the test serves itself.
fn one_layer_manifest(
    layer: &[u8],
    layer_size: u64,
    config_size_override: Option<u64>,
) -> (Vec<u8>, Vec<u8>) {
    let diff_id = sha256(b"never checked");
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": common::host_arch(),
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "config": {}
    }))
    .expect("config");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": sha256(&config),
            "size": config_size_override.unwrap_or(config.len() as u64),
        },
        "layers": [{
            "mediaType": OCI_LAYER_GZIP,
            "digest": sha256(layer),
            "size": layer_size,
        }],
    }))
    .expect("manifest");
    (manifest, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_longer_than_its_descriptor_is_cut_off() {
    let mut fake = FakeRegistry::start().await;
    let (_dir, store) = common::host_store();
    let layer = b"the layer the manifest describes".to_vec();
    let (manifest, config) = one_layer_manifest(&layer, layer.len() as u64, None);
    fake.route(
        "/v2/test/long/manifests/v1",
        Body::Bytes(OCI_MANIFEST, manifest),
    );
    fake.route(
        &format!("/v2/test/long/blobs/{}", sha256(&config)),
        Body::Bytes("application/octet-stream", config.clone()),
    );
    let layer_path = format!("/v2/test/long/blobs/{}", sha256(&layer));
    fake.route(
        &layer_path,
        Body::Endless {
            content_type: "application/octet-stream",
            prefix: layer.clone(),
            length: None,
        },
    );
    let err = store
        .pull(&fake.reference("test/long:v1"), &fake.config())
        .await
        .expect_err("a blob without end");
    let msg = err.to_string();
    eprintln!("refused as expected: {msg}");
    assert!(msg.contains("layer 1 of manifest"), "{msg}");
    assert!(
        msg.contains(&format!("more than the descriptor's {} bytes", layer.len())),
        "{msg}"
    );
    fake.wait_ended(1).await;
    assert!(fake.written(&layer_path) < SOCKET_SLACK);
    // The manifest and config it had stored are taken away again.
    assert_untouched(&store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_sizes_past_the_bounds_fetch_no_blob() {
    let fake = FakeRegistry::start().await;
    let (_dir, store) = common::host_store();
    let config = fake.config();

    // A config declared larger than any config the store reads.
    let (manifest, _) = one_layer_manifest(b"l", 1, Some(100 << 20));
    fake.route(
        "/v2/test/bigconfig/manifests/v1",
        Body::Bytes(OCI_MANIFEST, manifest),
    );
    let err = store
        .pull(&fake.reference("test/bigconfig:v1"), &config)
        .await
        .expect_err("a 100 MiB config");
    let msg = too_large(&err);
    assert!(
        msg.contains("config of manifest") && msg.contains("its descriptor says 104857600 bytes"),
        "{msg}"
    );

    // Layers declaring more than the image bound (a small one, set here).
    let small = store.clone().with_limits(Limits {
        image_bytes: 1 << 20,
        ..Limits::default()
    });
    let (manifest, _) = one_layer_manifest(b"l", 2 << 20, None);
    fake.route(
        "/v2/test/biglayers/manifests/v1",
        Body::Bytes(OCI_MANIFEST, manifest),
    );
    let err = small
        .pull(&fake.reference("test/biglayers:v1"), &config)
        .await
        .expect_err("2 MiB of layers past a 1 MiB bound");
    let msg = too_large(&err);
    assert!(
        msg.contains("its 1 layers declare 2097152 bytes compressed")
            && msg.contains("1048576 bytes per image"),
        "{msg}"
    );

    // An index pointing at a manifest it says is a gigabyte.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": sha256(b"a gigabyte"),
            "size": 1u64 << 30,
            "platform": {"os": "linux", "architecture": common::host_arch()},
        }],
    }))
    .expect("index");
    fake.route(
        "/v2/test/bigchild/manifests/v1",
        Body::Bytes(OCI_INDEX, index),
    );
    let err = store
        .pull(&fake.reference("test/bigchild:v1"), &config)
        .await
        .expect_err("a gigabyte manifest in an index");
    let msg = too_large(&err);
    assert!(msg.contains("the index says 1073741824 bytes"), "{msg}");

    let requests = fake.requests();
    assert!(
        requests.iter().all(|r| !r.contains("/blobs/")),
        "a blob was fetched: {requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains(&sha256(b"a gigabyte"))),
        "the announced gigabyte was fetched: {requests:?}"
    );
    assert_untouched(&store);
}

/// gzip of `data`.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// A gzip layer whose tar holds one file of `mib` MiB of zeros, made of
/// concatenated gzip members (one compressed MiB repeated): about 1 KiB
/// compressed per MiB.
fn gzip_bomb(mib: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path("zeros").expect("path");
    header.set_size(mib << 20);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut out = gzip(header.as_bytes());
    let one = gzip(&vec![0u8; 1 << 20]);
    for _ in 0..mib {
        out.extend_from_slice(&one);
    }
    out.extend_from_slice(&gzip(&[0u8; 1024]));
    out
}

/// A gzip layer of `n` empty files.
fn many_entries(n: usize) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for i in 0..n {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, format!("f{i}"), &[][..])
            .expect("tar entry");
    }
    gzip(&tar.into_inner().expect("tar"))
}

fn image_with(layers: Vec<Vec<u8>>, name: &str) -> ImageBuilder {
    let mut image = ImageBuilder::new(&common::host_arch()).layer(vec![Entry::file(
        "bottom",
        0o644,
        b"a fine layer\n",
    )]);
    for data in layers {
        // The diff_id is never reached: the bound stops the layer first.
        image = image.raw_layer(OCI_LAYER_GZIP, data, &sha256(b"never checked"));
    }
    image
        .config(&["/bin/true"], &[], &[], "", "")
        .annotate_ref(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bombs_and_crowded_layers_stop_at_the_bounds() {
    let registry = Registry::start();
    require_root!();
    let client = push_client();
    let config = RegistryConfig {
        insecure: vec![registry.host()],
        ..RegistryConfig::default()
    };
    assert_eq!(Limits::default().image_bytes, 4 << 30);
    assert_eq!(Limits::default().layer_entries, 500_000);
    let limits = Limits {
        image_bytes: 16 << 20,
        layer_entries: 1000,
        ..Limits::default()
    };

    // 1 GiB of zeros in about 1 MiB, on top of a layer that unpacks fine.
    let bomb = gzip_bomb(1024);
    assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
    let cases = [
        (
            "test/bomb:v1",
            image_with(vec![bomb], "registry.example/test/bomb:v1"),
            "it unpacks to more than the",
            "16777216 uncompressed bytes per image (Limits::image_bytes)",
        ),
        (
            "test/crowded:v1",
            image_with(vec![many_entries(1500)], "registry.example/test/crowded:v1"),
            "it holds more than 1000 entries",
            "1000 entries per layer (Limits::layer_entries)",
        ),
    ];
    for (name, image, detail, bound) in cases {
        let parts = image.parts().expect("parts");
        let layer = &parts.layers[1].digest;
        let reference = registry.reference(name);
        push_image(&client, &reference, &parts).await;

        let (_dir, store) = common::host_store();
        let store = store.with_limits(limits);
        let err = store.pull(&reference, &config).await.expect_err(name);
        let msg = err.to_string();
        eprintln!("refused as expected: {msg}");
        assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
        assert!(
            msg.contains(&format!(
                "layer 2 ({layer}) of manifest {}",
                parts.manifest_digest
            )),
            "{msg}"
        );
        assert!(msg.contains(detail) && msg.contains(bound), "{msg}");
        // The first layer's snapshot and every blob went with the refusal.
        assert_untouched(&store);

        // The same image as an archive.
        let err = store
            .import_archive(&common::archive(&image)[..], None)
            .expect_err(name);
        let msg = err.to_string();
        assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
        assert!(msg.contains(&format!("layer 2 ({layer})")), "{msg}");
        assert!(msg.contains(detail) && msg.contains(bound), "{msg}");
        assert_untouched(&store);
    }
}

#[test]
fn an_archive_is_cut_off_past_its_bound() {
    let (_dir, store) = common::host_store();
    // 4 MiB of incompressible bytes, in a gzip archive of a 1 MiB bound.
    let mut noise = Vec::with_capacity(4 << 20);
    let mut block = Sha256::digest(b"seed").to_vec();
    while noise.len() < 4 << 20 {
        block = Sha256::digest(&block).to_vec();
        noise.extend_from_slice(&block);
    }
    let image = ImageBuilder::new(&common::host_arch())
        .layer(vec![Entry::file("noise", 0o644, &noise)])
        .annotate_ref("registry.example/test/big:v1");
    let archive = gzip(&common::archive(&image));
    let small = store.clone().with_limits(Limits {
        archive_bytes: 1 << 20,
        ..Limits::default()
    });
    let err = small
        .import_archive(&archive[..], None)
        .expect_err("past the archive bound");
    let msg = err.to_string();
    eprintln!("refused as expected: {msg}");
    assert!(
        msg.contains("the image archive: it holds more than 1048576 bytes")
            && msg.contains("1048576 bytes per archive, decompressed (Limits::archive_bytes)"),
        "{msg}"
    );
    assert_untouched(&store);
}
