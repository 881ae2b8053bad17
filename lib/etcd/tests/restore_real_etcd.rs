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

use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bramble_etcd::restore::Restore;
use bramble_etcd::{Cluster, Initial, Launch, Layout, MemberCerts, url};
use bramble_pki::{CertificateAuthority, Validity};
use bramble_testkit::{skip_reason, skip_unless};

/// A running etcd, killed on drop.
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Node {
    name: &'static str,
    ip: IpAddr,
    layout: Layout,
    certs: MemberCerts,
}

impl Node {
    fn new(root: &Path, ca: &CertificateAuthority, name: &'static str, ip: &str) -> Self {
        let ip: IpAddr = ip.parse().unwrap();
        Self {
            name,
            ip,
            layout: Layout::under(&root.join(name)),
            certs: MemberCerts::issue(ca, name, &[ip]).unwrap(),
        }
    }

    fn start(&self) -> Etcd {
        let files = self.certs.write(&self.layout.pki_dir, None).unwrap();
        std::fs::create_dir_all(&self.layout.data_dir).unwrap();
        let d = bramble_config::EtcdTuning::DEFAULT;
        let tuning = bramble_config::EtcdTuning {
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            snapshot_count: d.snapshot_count,
            quota_backend_bytes: d.quota_backend_bytes,
            auto_compaction_retention: d.auto_compaction_retention.to_owned(),
        };
        let args = Launch {
            name: self.name,
            advertise: self.ip,
            cluster: "test",
            layout: &self.layout,
            certs: &files,
            tuning: &tuning,
            initial: Initial::New,
        }
        .args();
        let log = std::fs::File::create(self.layout.data_dir.with_extension("log")).unwrap();
        Etcd(
            Command::new("etcd")
                .args(args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    fn endpoint(&self) -> Vec<String> {
        vec![url(self.ip, bramble_etcd::CLIENT_PORT)]
    }

    async fn client(&self) -> Cluster {
        let mut last = String::new();
        for _ in 0..120 {
            match Cluster::connect(&self.endpoint(), &self.certs.ca_pem, &self.certs.client).await {
                Ok(mut c) => match c.status().await {
                    Ok(s) if s.leader != 0 => return c,
                    Ok(_) => last = "no leader".into(),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let log =
            std::fs::read_to_string(self.layout.data_dir.with_extension("log")).unwrap_or_default();
        panic!("{} never had a leader: {last}\n{log}", self.name);
    }
}

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
        let _etcd = old.start();
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

    let _etcd = new.start();
    let mut c = new.client().await;
    let got = c.client().get("bramble/test", None).await.unwrap();
    assert_eq!(got.kvs()[0].value_str().unwrap(), "before the snapshot");
    let members = c.members().await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0].name, "new");
    assert_eq!(members[0].peer_urls, [peer_url]);
}
