//! One real etcd member on a loopback address, as a node runs it
//! (`MemberCerts`, `Launch`), for the host tests of this crate.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bramble_etcd::{Cluster, Initial, Launch, Layout, MemberCerts, url};
use bramble_pki::CertificateAuthority;

/// A running etcd, killed on drop.
pub struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Node {
    pub name: &'static str,
    pub ip: IpAddr,
    pub layout: Layout,
    pub certs: MemberCerts,
}

impl Node {
    pub fn new(root: &Path, ca: &CertificateAuthority, name: &'static str, ip: &str) -> Self {
        let ip: IpAddr = ip.parse().unwrap();
        Self {
            name,
            ip,
            layout: Layout::under(&root.join(name)),
            certs: MemberCerts::issue(ca, name, &[ip]).unwrap(),
        }
    }

    pub fn start(&self, initial: Initial) -> Etcd {
        let files = self.certs.write(&self.layout.pki_dir, None).unwrap();
        std::fs::create_dir_all(&self.layout.data_dir).unwrap();
        let tuning = bramble_config::EtcdTuning {
            // Loopback is fast: etcd's own timing keeps the test short.
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            ..tuning_defaults()
        };
        let args = Launch {
            name: self.name,
            advertise: self.ip,
            cluster: "test",
            layout: &self.layout,
            certs: &files,
            tuning: &tuning,
            initial,
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

    pub fn endpoint(&self) -> Vec<String> {
        vec![url(self.ip, bramble_etcd::CLIENT_PORT)]
    }

    pub async fn client(&self) -> Cluster {
        Cluster::connect(&self.endpoint(), &self.certs.ca_pem, &self.certs.client)
            .await
            .unwrap()
    }

    /// Waits (bounded) until the member answers with a leader.
    pub async fn wait_leader(&self) {
        let mut last = String::new();
        for _ in 0..120 {
            match Cluster::connect(&self.endpoint(), &self.certs.ca_pem, &self.certs.client).await {
                Ok(mut c) => match c.status().await {
                    Ok(s) if s.leader != 0 => return,
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

pub fn tuning_defaults() -> bramble_config::EtcdTuning {
    let d = bramble_config::EtcdTuning::DEFAULT;
    bramble_config::EtcdTuning {
        heartbeat_interval_ms: d.heartbeat_interval_ms,
        election_timeout_ms: d.election_timeout_ms,
        snapshot_count: d.snapshot_count,
        quota_backend_bytes: d.quota_backend_bytes,
        auto_compaction_retention: d.auto_compaction_retention.to_owned(),
    }
}
