//! The cluster operations against real etcd: Debian's `etcd` (package
//! `etcd-server`) on the build host, three members on loopback addresses
//! (127.0.0.2, .3 and .4, so each listens on its own), with certificates
//! from `MemberCerts` and command lines from `Launch`, as on a node.
//!
//! One member forms the cluster; the others enter as learners, one at a
//! time, start, and are promoted; a key written through one is read
//! through another. Then the third loses its data (its directory removed,
//! as a wiped disk) and enters again: its stale member is replaced, and it
//! votes again with every key.
//!
//! Needs `/usr/bin/etcd` (without it, the test says so and passes, except
//! under `CI=true`, where it fails).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

mod common;

use bramble_etcd::{Cluster, Initial, url};
use bramble_pki::{CertificateAuthority, Validity};
use bramble_testkit::{skip_reason, skip_unless};
use common::Node;

async fn voters(cluster: &mut Cluster) -> Vec<String> {
    let mut names: Vec<String> = cluster
        .members()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.name)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "current_thread")]
async fn a_learner_joins_is_promoted_and_replaces_its_stale_member() {
    skip_unless!(available: skip_reason(&[("etcd", "etcd-server")]));
    for port in [2379, 2380] {
        for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
            assert!(
                std::net::TcpListener::bind((ip, port)).is_ok(),
                "{ip}:{port} is in use: another etcd runs on this host"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate(
        "test etcd CA",
        Validity::from_now(Duration::from_secs(3600)),
    )
    .unwrap();
    let a = Node::new(dir.path(), &ca, "a", "127.0.0.2");
    let b = Node::new(dir.path(), &ca, "b", "127.0.0.3");
    let c = Node::new(dir.path(), &ca, "c", "127.0.0.4");

    let _etcd_a = a.start(Initial::New);
    a.wait_leader().await;
    let mut seed = a.client().await;
    assert_eq!(voters(&mut seed).await, ["a"]);

    // The others enter through the first, one learner at a time, as etcdd does.
    let b_peer = url(b.ip, bramble_etcd::PEER_PORT);
    let (_, initial) = join(&mut seed, &b).await;
    let Initial::Existing(members) = &initial else {
        panic!("{initial:?}")
    };
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.contains(&("b".to_owned(), b_peer)), "{members:?}");
    let _etcd_b = b.start(initial);
    promote_last(&mut seed, &b).await;
    let (c_id, initial) = join(&mut seed, &c).await;
    let mut etcd_c = c.start(initial);
    seed.promote(c_id, Duration::from_secs(60)).await.unwrap();
    c.wait_leader().await;
    assert_eq!(voters(&mut seed).await, ["a", "b", "c"]);

    // A write through one member is read through another.
    seed.client()
        .put("bramble/test", "written through a", None)
        .await
        .unwrap();
    assert_eq!(read(&b).await, "written through a");

    // c loses its disk: its member is stale, and entering again replaces it
    // (a and b keep the quorum that removing it needs).
    drop(etcd_c);
    std::fs::remove_dir_all(&c.layout.data_dir).unwrap();
    let (new_id, initial) = join(&mut seed, &c).await;
    assert_ne!(new_id, c_id, "the stale member was reused");
    etcd_c = c.start(initial);
    seed.promote(new_id, Duration::from_secs(60)).await.unwrap();
    c.wait_leader().await;
    let members = seed.members().await.unwrap();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(
        members.iter().all(|m| !m.is_learner && m.id != c_id),
        "{members:?}"
    );
    assert_eq!(read(&c).await, "written through a");
    drop(etcd_c);
}

async fn join(seed: &mut Cluster, node: &Node) -> (u64, Initial) {
    let peer = url(node.ip, bramble_etcd::PEER_PORT);
    bramble_etcd::enter(seed, node.name, &peer).await.unwrap()
}

/// Promotes the one learner, `node`, and waits until it answers.
async fn promote_last(seed: &mut Cluster, node: &Node) {
    let learner = seed
        .members()
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.is_learner)
        .expect("a learner");
    seed.promote(learner.id, Duration::from_secs(60))
        .await
        .unwrap();
    node.wait_leader().await;
}

async fn read(node: &Node) -> String {
    let mut cluster = node.client().await;
    let got = cluster.client().get("bramble/test", None).await.unwrap();
    got.kvs()[0].value_str().unwrap().to_owned()
}
