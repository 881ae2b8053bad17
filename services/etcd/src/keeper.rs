//! The keeper: from the configuration to a running, voting member.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bramble_config::{MachineConfig, MachineType};
use bramble_etcd::restore::Restore;
use bramble_etcd::{Cluster, Initial, Launch, Layout, MemberCerts, format_id};
use bramble_pki::CertificateAuthority;
use tokio::signal::unix::{SignalKind, signal};

use crate::status::{Phase, publish};

/// How often the node's addresses are compared with the certificates'.
const ADDRESS_CHECK: Duration = Duration::from_secs(30);
/// How long a joining learner may take to catch up before it gives up
/// (and the supervisor starts it again).
const PROMOTE_WITHIN: Duration = Duration::from_secs(600);
/// How often a member still waiting for a leader says so.
const QUIET_WAIT: Duration = Duration::from_secs(60);
/// How long etcd may take to stop after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(25);

/// What `etcdd` runs with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The machine configuration file.
    pub config: PathBuf,
    /// etcd's program.
    pub etcd: PathBuf,
    /// `etcdctl`, which restores a snapshot (`nodectl bootstrap
    /// --recover-from`).
    pub etcdctl: PathBuf,
    /// Where etcd's state lives.
    pub layout: Layout,
    /// The user and group etcd runs as (`None`: the caller's).
    pub owner: Option<(u32, u32)>,
}

/// Runs until SIGTERM (exit 0), until the node turns out to be a worker
/// (exit 0), or until etcd fails (an error: the supervisor starts `etcdd`
/// again after its delay).
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let config = loop {
        match load(&opts.config)? {
            Some(config) => break config,
            None => {
                publish(
                    &opts.layout.status,
                    Phase::WaitingForConfiguration,
                    "no machine configuration yet",
                );
                tokio::select! {
                    _ = term.recv() => return Ok(()),
                    _ = hup.recv() => {}
                }
            }
        }
    };
    let Some((ca, tuning)) = etcd_settings(&config)? else {
        tracing::info!("etcd runs on control-plane nodes only; this node is a worker");
        return Ok(());
    };
    Member::new(&config, ca, tuning)?
        .keep(&opts, &mut term, &mut hup)
        .await
}

/// The machine configuration, `None` when the node has none.
fn load(path: &std::path::Path) -> anyhow::Result<Option<MachineConfig>> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if text.len() > bramble_config::MAX_DOCUMENT_BYTES {
        bail!("{} is larger than a configuration may be", path.display());
    }
    let text =
        String::from_utf8(text).with_context(|| format!("{} is not UTF-8", path.display()))?;
    let config = MachineConfig::parse(&text).with_context(|| format!("{}", path.display()))?;
    Ok(Some(config))
}

/// The etcd CA with its key and etcd's tuning, on a control-plane node;
/// `None` on a worker.
fn etcd_settings(
    config: &MachineConfig,
) -> anyhow::Result<Option<(CertificateAuthority, bramble_config::EtcdTuning)>> {
    if config.machine.machine_type != MachineType::ControlPlane {
        return Ok(None);
    }
    let etcd = config.cluster.etcd.as_ref().context(
        "this control-plane node's configuration has no cluster.etcd.ca: regenerate it with `nodectl gen config`",
    )?;
    let key = etcd.ca.key.as_ref().context(
        "cluster.etcd.ca.key is missing: a control-plane node issues its etcd certificates itself",
    )?;
    let ca = CertificateAuthority::from_pem(&etcd.ca.crt, key.expose())?;
    Ok(Some((ca, etcd.tuning())))
}

/// This node as an etcd member.
struct Member {
    name: String,
    cluster: String,
    ca: CertificateAuthority,
    tuning: bramble_config::EtcdTuning,
    /// Where a joining member looks for the cluster.
    seeds: Vec<String>,
}

impl Member {
    fn new(
        config: &MachineConfig,
        ca: CertificateAuthority,
        tuning: bramble_config::EtcdTuning,
    ) -> anyhow::Result<Self> {
        let name = match &config.machine.hostname {
            Some(name) => name.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .context("the node has no host name to name its etcd member")?,
        };
        Ok(Self {
            name,
            cluster: config.cluster.name.clone(),
            ca,
            tuning,
            seeds: seeds(&config.cluster.control_plane.endpoint),
        })
    }

    /// Starts etcd and keeps it; returns when it must stop.
    async fn keep(
        &self,
        opts: &Options,
        term: &mut tokio::signal::unix::Signal,
        hup: &mut tokio::signal::unix::Signal,
    ) -> anyhow::Result<()> {
        let layout = &opts.layout;
        let addresses = bramble_netlink::local_addresses();
        let advertise = advertised(&addresses)?;
        let certs = MemberCerts::issue(&self.ca, &self.name, &addresses)?;
        let files = certs.write(&layout.pki_dir, opts.owner)?;
        prepare_data_dir(layout, opts.owner)?;

        let bootstrap = layout.bootstrap_request()?;
        let peer_url = bramble_etcd::url(advertise, bramble_etcd::PEER_PORT);
        if let Some(from) = bootstrap.as_ref().and_then(|b| b.restore_from.as_deref())
            && !layout.has_data()
        {
            self.restore(opts, from, &peer_url)?;
        }
        let (initial, mut learner) = if layout.has_data() {
            publish(&layout.status, Phase::Starting, "from this node's data");
            (Initial::New, None)
        } else if bootstrap.is_some() {
            publish(
                &layout.status,
                Phase::Starting,
                "forming a new cluster (nodectl bootstrap)",
            );
            (Initial::New, None)
        } else {
            let (seed, id, initial) = tokio::select! {
                joined = self.join(layout, &certs, &peer_url) => joined?,
                _ = term.recv() => return Ok(()),
            };
            (initial, Some((seed, id)))
        };

        let launch = Launch {
            name: &self.name,
            advertise,
            cluster: &self.cluster,
            layout,
            certs: &files,
            tuning: &self.tuning,
            initial,
        };
        let mut child = spawn(opts, &launch)?;
        let local = vec![bramble_etcd::url(
            if advertise.is_loopback() {
                advertise
            } else {
                IpAddr::from([127, 0, 0, 1])
            },
            bramble_etcd::CLIENT_PORT,
        )];
        let ready = async {
            let mut status = wait_answering(&local, &certs, layout).await?;
            if let Some((seed, id)) = learner.as_mut() {
                publish(
                    &layout.status,
                    Phase::Joining,
                    &format!("learner {}: catching up", format_id(*id)),
                );
                seed.promote(*id, PROMOTE_WITHIN).await?;
                status = wait_answering(&local, &certs, layout).await?;
            }
            anyhow::Ok(status)
        };
        let status = tokio::select! {
            status = ready => status?,
            exit = child.wait() => bail!("etcd exited before it answered: {}", describe(exit?)),
            _ = term.recv() => return stop(child, layout).await,
        };
        if bootstrap.is_some() {
            layout.clear_bootstrap_request()?;
        }
        publish(
            &layout.status,
            Phase::Running,
            &format!(
                "member {} of cluster {}",
                format_id(status.member_id),
                format_id(status.cluster_id)
            ),
        );
        if let Err(e) = bramble_daemon::ready::notify_from_env() {
            tracing::warn!(error = %e, "readiness not sent");
        }

        let mut check = tokio::time::interval(ADDRESS_CHECK);
        check.tick().await;
        loop {
            tokio::select! {
                exit = child.wait() => bail!("etcd exited: {}", describe(exit?)),
                _ = term.recv() => return stop(child, layout).await,
                _ = hup.recv() => {
                    // Configuration changes that matter to etcd restart the
                    // service (bramble-config's diff); nothing to re-read.
                }
                _ = check.tick() => {
                    let now = bramble_netlink::local_addresses();
                    if now != addresses {
                        tracing::info!(?now, was = ?addresses, "the node's addresses changed: restarting etcd with new certificates");
                        stop(child, layout).await?;
                        bail!("restarting for the node's new addresses");
                    }
                }
            }
        }
    }

    /// Makes the member's data from the snapshot a recovering bootstrap
    /// request names. A failure is published and ends `etcdd` (the
    /// supervisor tries again), keeping the request and the snapshot.
    fn restore(
        &self,
        opts: &Options,
        from: &std::path::Path,
        peer_url: &str,
    ) -> anyhow::Result<()> {
        let layout = &opts.layout;
        publish(
            &layout.status,
            Phase::Starting,
            &format!(
                "restoring the cluster from {} (nodectl bootstrap --recover-from)",
                from.display()
            ),
        );
        let restore = Restore {
            etcdctl: &opts.etcdctl,
            snapshot: from,
            name: &self.name,
            cluster: &self.cluster,
            peer_url,
            layout,
            owner: opts.owner,
        };
        if let Err(e) = restore.run() {
            let why = format!(
                "{e}; the bootstrap request ({}) and the snapshot stay: reset the node with \
                 --wipe-data to give up",
                layout.bootstrap_request.display()
            );
            tracing::error!("{why}");
            publish(&layout.status, Phase::Failed, &why);
            bail!(why);
        }
        Ok(())
    }

    /// Finds the cluster and enters it as a learner; retries until a
    /// cluster answers (or `nodectl bootstrap` is asked here meanwhile,
    /// which the supervisor's restart of the service takes up).
    async fn join(
        &self,
        layout: &Layout,
        certs: &MemberCerts,
        peer_url: &str,
    ) -> anyhow::Result<(Cluster, u64, Initial)> {
        let mut delay = Duration::from_secs(2);
        loop {
            match Cluster::connect(&self.seeds, &certs.ca_pem, &certs.client).await {
                Ok(mut seed) => match bramble_etcd::enter(&mut seed, &self.name, peer_url).await {
                    Ok((id, initial)) => {
                        publish(
                            &layout.status,
                            Phase::Joining,
                            &format!("added as learner {}", format_id(id)),
                        );
                        return Ok((seed, id, initial));
                    }
                    Err(e) => publish(
                        &layout.status,
                        Phase::WaitingForCluster,
                        &format!("joining failed: {e}"),
                    ),
                },
                Err(e) => publish(
                    &layout.status,
                    Phase::WaitingForCluster,
                    &format!(
                        "no cluster answers at {} yet (waiting for `nodectl bootstrap` or a cluster to join): {e}",
                        self.seeds.join(", ")
                    ),
                ),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
}

/// `https://HOST:2379` for the control-plane endpoint `https://HOST:PORT`.
fn seeds(endpoint: &str) -> Vec<String> {
    let rest = endpoint.strip_prefix("https://").unwrap_or(endpoint);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    vec![format!("https://{host}:{}", bramble_etcd::CLIENT_PORT)]
}

/// The address the member advertises: the first IPv4 address, else the
/// first address.
fn advertised(addresses: &[IpAddr]) -> anyhow::Result<IpAddr> {
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addresses.first())
        .copied()
        .context("the node has no address to advertise to etcd's peers")
}

/// The least free space etcd starts with: its write-ahead log
/// preallocates 64 MB segments, and its database grows beside it.
const MIN_FREE_BYTES: u64 = 128 << 20;

fn prepare_data_dir(layout: &Layout, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = &layout.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !layout.has_data() {
        let fs = nix::sys::statvfs::statvfs(dir)
            .with_context(|| format!("reading the free space of {}", dir.display()))?;
        let free = fs.blocks_available().saturating_mul(fs.fragment_size());
        if free < MIN_FREE_BYTES {
            bail!(
                "{} has {} MiB free; etcd needs at least {} MiB (its write-ahead log preallocates 64 MB segments): use a bigger card (DATA grows to fill it)",
                dir.display(),
                free >> 20,
                MIN_FREE_BYTES >> 20
            );
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", dir.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .with_context(|| format!("handing {} to etcd's user", dir.display()))?;
    }
    Ok(())
}

fn spawn(opts: &Options, launch: &Launch<'_>) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&opts.etcd);
    cmd.args(launch.args())
        .env_clear()
        .env("PATH", "/usr/bin:/sbin")
        .kill_on_drop(true);
    // Debian's etcd 3.4 only warns on arm64 without this; upstream's
    // refuses to start.
    if cfg!(target_arch = "aarch64") {
        cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
    }
    if let Some((uid, gid)) = opts.owner {
        cmd.uid(uid).gid(gid);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", opts.etcd.display()))?;
    tracing::info!(pid = child.id(), member = launch.name, "etcd started");
    Ok(child)
}

/// Waits until etcd answers its status over mutual TLS with a leader. A
/// member whose peers are down has no leader until enough of them come
/// back: it keeps waiting (etcd keeps running; the caller stops it on
/// SIGTERM or when it exits), saying so in the status every
/// [`QUIET_WAIT`].
async fn wait_answering(
    endpoints: &[String],
    certs: &MemberCerts,
    layout: &Layout,
) -> anyhow::Result<bramble_etcd::StatusInfo> {
    let mut said = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        let last = match Cluster::connect(endpoints, &certs.ca_pem, &certs.client).await {
            Ok(mut c) => match c.status().await {
                Ok(status) if status.leader != 0 => return Ok(status),
                Ok(_) => "no leader yet: waiting for enough members to answer".to_owned(),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if said.elapsed() >= QUIET_WAIT {
            publish(
                &layout.status,
                Phase::Starting,
                &format!("etcd is not ready: {last}"),
            );
            said = tokio::time::Instant::now();
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// SIGTERM to etcd, SIGKILL after [`STOP_WITHIN`].
async fn stop(mut child: tokio::process::Child, layout: &Layout) -> anyhow::Result<()> {
    publish(&layout.status, Phase::Stopping, "SIGTERM sent to etcd");
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(STOP_WITHIN, child.wait()).await {
        Ok(exit) => {
            tracing::info!(status = %describe(exit?), "etcd stopped");
        }
        Err(_) => {
            tracing::warn!("etcd did not stop within {STOP_WITHIN:?}: killing it");
            child.kill().await.context("killing etcd")?;
        }
    }
    Ok(())
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn seeds_come_from_the_endpoint_host() {
        assert_eq!(
            seeds("https://10.77.0.11:6443"),
            ["https://10.77.0.11:2379"]
        );
        assert_eq!(
            seeds("https://cp.example.org:6443/"),
            ["https://cp.example.org:2379"]
        );
        assert_eq!(seeds("https://[fd00::1]:6443"), ["https://[fd00::1]:2379"]);
    }

    #[test]
    fn ipv4_is_advertised_first() {
        let a: Vec<IpAddr> = ["fd00::5", "10.77.0.12"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            advertised(&a).unwrap(),
            "10.77.0.12".parse::<IpAddr>().unwrap()
        );
        assert!(advertised(&[]).is_err());
    }
}
