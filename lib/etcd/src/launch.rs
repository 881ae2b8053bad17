//! etcd's command line.

use std::net::IpAddr;

use bramble_config::EtcdTuning;

use crate::layout::Layout;
use crate::pki::CertFiles;
use crate::{CLIENT_PORT, PEER_PORT, url};

/// How the member enters the cluster when it has no data yet. A member
/// with data starts from it, and etcd ignores these flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initial {
    /// Form a new one-member cluster (`nodectl bootstrap`).
    New,
    /// Join an existing cluster that already lists this member as a
    /// learner: every member's `(name, peer URL)`, this one's included.
    Existing(Vec<(String, String)>),
}

/// Everything etcd's command line is made from.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    /// The member's name: the node's host name.
    pub name: &'a str,
    /// The address peers and clients reach it at.
    pub advertise: IpAddr,
    /// `cluster.name`: the `--initial-cluster-token`, so two clusters
    /// formed side by side never take each other's members.
    pub cluster: &'a str,
    /// Where its data and certificates are.
    pub layout: &'a Layout,
    /// The certificate files.
    pub certs: &'a CertFiles,
    /// `cluster.etcd`'s settings.
    pub tuning: &'a EtcdTuning,
    /// How it enters the cluster.
    pub initial: Initial,
}

impl Launch<'_> {
    /// Clients reach the member at its address and, on the node itself, at
    /// 127.0.0.1 (the machine API server's calls); a member whose address
    /// is a loopback one (tests) listens there only.
    fn client_listen_urls(&self) -> String {
        let own = url(self.advertise, CLIENT_PORT);
        if self.advertise.is_loopback() {
            own
        } else {
            format!(
                "{own},{}",
                url(std::net::Ipv4Addr::LOCALHOST.into(), CLIENT_PORT)
            )
        }
    }

    /// etcd's arguments (without the program).
    pub fn args(&self) -> Vec<String> {
        let path = |p: &std::path::Path| p.display().to_string();
        let peer_url = url(self.advertise, PEER_PORT);
        let (initial_cluster, state) = match &self.initial {
            Initial::New => (format!("{}={peer_url}", self.name), "new"),
            Initial::Existing(members) => (
                members
                    .iter()
                    .map(|(name, url)| format!("{name}={url}"))
                    .collect::<Vec<_>>()
                    .join(","),
                "existing",
            ),
        };
        let t = self.tuning;
        let flags: Vec<(&str, String)> = vec![
            ("name", self.name.to_owned()),
            ("data-dir", path(&self.layout.data_dir)),
            ("listen-peer-urls", url(self.advertise, PEER_PORT)),
            ("listen-client-urls", self.client_listen_urls()),
            ("advertise-client-urls", url(self.advertise, CLIENT_PORT)),
            ("initial-advertise-peer-urls", peer_url),
            ("initial-cluster", initial_cluster),
            ("initial-cluster-state", state.to_owned()),
            ("initial-cluster-token", self.cluster.to_owned()),
            ("trusted-ca-file", path(&self.certs.ca)),
            ("cert-file", path(&self.certs.server.0)),
            ("key-file", path(&self.certs.server.1)),
            ("client-cert-auth", "true".to_owned()),
            ("peer-trusted-ca-file", path(&self.certs.ca)),
            ("peer-cert-file", path(&self.certs.peer.0)),
            ("peer-key-file", path(&self.certs.peer.1)),
            ("peer-client-cert-auth", "true".to_owned()),
            ("heartbeat-interval", t.heartbeat_interval_ms.to_string()),
            ("election-timeout", t.election_timeout_ms.to_string()),
            ("snapshot-count", t.snapshot_count.to_string()),
            ("quota-backend-bytes", t.quota_backend_bytes.to_string()),
            ("auto-compaction-mode", "periodic".to_owned()),
            (
                "auto-compaction-retention",
                t.auto_compaction_retention.clone(),
            ),
            // One structured logger to stderr, which the supervisor keeps.
            ("logger", "zap".to_owned()),
            ("log-outputs", "stderr".to_owned()),
        ];
        flags
            .into_iter()
            .map(|(flag, value)| format!("--{flag}={value}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn launch<'a>(
        layout: &'a Layout,
        certs: &'a CertFiles,
        tuning: &'a EtcdTuning,
        initial: Initial,
    ) -> Vec<String> {
        Launch {
            name: "cp2",
            advertise: "10.77.0.12".parse().unwrap(),
            cluster: "pis",
            layout,
            certs,
            tuning,
            initial,
        }
        .args()
    }

    #[test]
    fn joining_names_every_member_and_the_tuning() {
        let layout = Layout::node();
        let certs = CertFiles::in_dir(&layout.pki_dir);
        let tuning = bramble_config::Etcd {
            ca: bramble_config::CertificateAuthority {
                crt: String::new(),
                key: None,
            },
            heartbeat_interval_ms: Some(250),
            election_timeout_ms: None,
            snapshot_count: None,
            quota_backend_bytes: None,
            auto_compaction_retention: Some("30m".into()),
        }
        .tuning();
        let args = launch(
            &layout,
            &certs,
            &tuning,
            Initial::Existing(vec![
                ("cp1".into(), "https://10.77.0.11:2380".into()),
                ("cp2".into(), "https://10.77.0.12:2380".into()),
            ]),
        );
        for want in [
            "--name=cp2",
            "--data-dir=/var/lib/etcd",
            "--initial-cluster=cp1=https://10.77.0.11:2380,cp2=https://10.77.0.12:2380",
            "--initial-cluster-state=existing",
            "--initial-advertise-peer-urls=https://10.77.0.12:2380",
            "--advertise-client-urls=https://10.77.0.12:2379",
            "--listen-client-urls=https://10.77.0.12:2379,https://127.0.0.1:2379",
            "--listen-peer-urls=https://10.77.0.12:2380",
            "--heartbeat-interval=250",
            "--election-timeout=5000",
            "--auto-compaction-retention=30m",
            "--peer-client-cert-auth=true",
            "--client-cert-auth=true",
            "--peer-cert-file=/run/bramble/etcd/pki/peer.crt",
        ] {
            assert!(
                args.iter().any(|a| a == want),
                "{want} missing from {args:?}"
            );
        }
        let new = launch(&layout, &certs, &tuning, Initial::New);
        assert!(
            new.iter()
                .any(|a| a == "--initial-cluster=cp2=https://10.77.0.12:2380")
        );
        assert!(new.iter().any(|a| a == "--initial-cluster-state=new"));
    }
}
