//! A snapshot restored into a fresh member with real etcd: Debian's `etcd`
//! and `etcdctl` (packages `etcd-server`, `etcd-client`) on the build host,
//! on loopback addresses of their own (127.0.0.5 and .6).
//!
//! A member holding a key is snapshotted with `etcdctl snapshot save`;
//! [`Restore`] (what `etcdd` runs for `nodectl bootstrap --recover-from`)
//! makes another node's data from it; etcd started from that data is a
//! one-member cluster of that node, with the key.
//!
//! Needs `/usr/bin/etcd` and `/usr/bin/etcdctl` (without them, the test says
//! so and passes, except under `CI=true`, where it fails).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;

use bramble_etcd::restore::Restore;
use bramble_etcd::{Initial, url};
use bramble_pki::{CertificateAuthority, Validity};
use bramble_testkit::{skip_reason, skip_unless};
use common::Node;

#[tokio::test(flavor = "current_thread")]
async fn a_snapshot_restored_into_a_fresh_member_keeps_its_keys() {
    skip_unless!(available: skip_reason(&[("etcd", "etcd-server"), ("etcdctl", "etcd-client")]));
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate(
        "test etcd CA",
        Validity::from_now(Duration::from_secs(3600)),
    )
    .unwrap();
    let old = Node::new(dir.path(), &ca, "old", "127.0.0.5");
    let new = Node::new(dir.path(), &ca, "new", "127.0.0.6");

    let snapshot = dir.path().join("snapshot.db");
    {
        let _etcd = old.start(Initial::New);
        old.wait_leader().await;
        let mut c = old.client().await;
        c.client()
            .put("bramble/test", "before the snapshot", None)
            .await
            .unwrap();
        let files = old.certs.write(&old.layout.pki_dir, None).unwrap();
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(old.endpoint()[0].as_str())
            .arg("--cacert")
            .arg(&files.ca)
            .arg("--cert")
            .arg(&files.client.0)
            .arg("--key")
            .arg(&files.client.1)
            .arg("snapshot")
            .arg("save")
            .arg(&snapshot)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcdctl snapshot save: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let peer_url = url(new.ip, bramble_etcd::PEER_PORT);
    std::fs::create_dir_all(&new.layout.data_dir).unwrap();
    Restore {
        etcdctl: Path::new("/usr/bin/etcdctl"),
        snapshot: &snapshot,
        name: new.name,
        cluster: "test",
        peer_url: &peer_url,
        layout: &new.layout,
        owner: None,
    }
    .run()
    .unwrap();
    assert!(new.layout.has_data());
    assert!(!snapshot.exists(), "the snapshot was not removed");

    let _etcd = new.start(Initial::New);
    new.wait_leader().await;
    let mut c = new.client().await;
    let got = c.client().get("bramble/test", None).await.unwrap();
    assert_eq!(got.kvs()[0].value_str().unwrap(), "before the snapshot");
    let members = c.members().await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0].name, "new");
    assert_eq!(members[0].peer_urls, [peer_url]);
}
