//! Several nodes on one private LAN, for cluster tests.
//!
//! A [`Lan`] is a network namespace the test creates (named
//! `bramble-t<pid>-<n>`) holding a bridge with the host's side of the
//! subnet ([`host_addr`], 10.77.0.1/24), Debian's `chronyd` serving time on
//! that address ([`Lan::start_ntp`]) and one tap device per node. QEMU runs
//! inside the namespace with its first card on that tap
//! ([`qemu::Network::Lan`]), so nothing touches the host's own network. Node
//! `i` (1, 2, ...) gets the hardware address [`node_mac`]`(i)` and, from its
//! machine configuration ([`node_patch`], [`Configs`]), placed on its boot
//! partition before the first boot ([`place_config`]) as `nodectl image
//! flash --config` places it, the host name `cp<i>` and the static address
//! [`node_addr`]`(i)` (10.77.0.1<i>/24): no DHCP (there is no DHCP server on
//! the bridge) and no `apply-config --insecure`. [`Lan::boot_nodes`] boots
//! them all at once. Programs that talk to
//! the nodes (`nodectl`, `etcdctl`...) run inside the namespace too
//! ([`Lan::command`], [`Lan::run`], [`crate::nodectl::Client::in_netns`]).
//!
//! Dropping the `Lan` kills everything still running in the namespace and
//! deletes it, also when the test panics. A namespace left by a test process
//! that was killed outright is deleted by the next [`Lan::create`].
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use bramble_tests::cluster::{self, Configs, Lan, Role};
//! let dir = bramble_tests::paths::test_dir("cluster")?;
//! let image = dir.path().join("image.img");
//! bramble_tests::qemu::prepare_disk(&bramble_tests::paths::image()?, &image, 0)?;
//! let mut lan = Lan::create()?;
//! lan.start_ntp()?;
//! let configs = Configs::generate(&dir.path().join("cluster"), &[Role::ControlPlane; 3], &[])?;
//! let nodes = lan.boot_nodes(&configs, &image, dir.path(), Duration::from_secs(400))?;
//! let c = configs.client.in_netns(lan.name());
//! c.wait_answer(&cluster::node_api(1), Duration::from_secs(60))?;
//! println!("{}", c.ok(&cluster::node_api(1), &["get", "addresses"])?);
//! let members = lan.run(&["etcdctl", "--endpoints", "10.77.0.11:2379", "member", "list"]);
//! # drop((nodes, members));
//! # Ok(())
//! # }
//! ```

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::{nodectl, qemu};

/// The LAN's subnet (a /[`PREFIX_LEN`]): every address of the harness comes
/// from here.
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);
/// The subnet's prefix length.
pub const PREFIX_LEN: u8 = 24;
/// The bridge inside the namespace; the host's address is on it.
pub const BRIDGE: &str = "br0";
/// The machine API's port.
pub const API_PORT: u16 = 50000;
/// Guest memory of a LAN node: a configured idle node uses about 26 MiB of
/// the 476 MiB its kernel leaves, and cluster tests run 3 or 4 nodes at
/// once (Kubernetes' control plane will want more: one constant to raise).
pub const NODE_MEMORY_MIB: u32 = 512;
/// vCPUs of a LAN node. With TCG on a 2-core host, 1 to 4 nodes with one
/// vCPU each boot as fast as or faster than with two each (see
/// `docs/architecture.md`, "Tests").
pub const NODE_CPUS: u32 = 1;
/// How much bigger than the image a LAN node's disk is (a sparse file):
/// `DATA` grows into it at the first boot, as on a real card. The image's
/// own 64 MiB `DATA` cannot hold etcd, whose write-ahead log preallocates
/// 64 MB segments.
pub const NODE_DISK_GROWTH: u64 = 1 << 30;
/// The cluster's name in generated configurations.
pub const CLUSTER_NAME: &str = "lan";
/// Prefix of every namespace a [`Lan`] creates.
const NETNS_PREFIX: &str = "bramble-t";
/// How long a command of the harness (`ip`, `kill`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long chronyd gets to listen, and killed processes to go.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The address of the host's side: the bridge, and the NTP server.
pub fn host_addr() -> Ipv4Addr {
    nth_addr(1)
}

/// Node `index`'s address (1 → 10.77.0.11).
pub fn node_addr(index: u32) -> Ipv4Addr {
    nth_addr(10 + index)
}

/// `ADDRESS:50000` of node `index`'s machine API, for `nodectl -n`.
pub fn node_api(index: u32) -> String {
    format!("{}:{API_PORT}", node_addr(index))
}

/// Node `index`'s fixed hardware address (QEMU's prefix 52:54:00).
pub fn node_mac(index: u32) -> String {
    format!(
        "52:54:00:4c:{:02x}:{:02x}",
        (index >> 8) & 0xff,
        index & 0xff
    )
}

/// Node `index`'s tap device in the namespace.
pub fn node_tap(index: u32) -> String {
    format!("tap{index}")
}

/// The host name node `index` gets: `cp1`, `cp2`... for control-plane
/// nodes, `worker1`... for workers.
pub fn node_hostname(index: u32, role: Role) -> String {
    match role {
        Role::ControlPlane => format!("cp{index}"),
        Role::Worker => format!("worker{index}"),
    }
}

/// The control-plane endpoint of the generated configurations: node 1.
/// (A worker asks this host's API, port 50000, for its certificate.)
pub fn endpoint() -> String {
    format!("https://{}:6443", node_addr(1))
}

fn nth_addr(n: u32) -> Ipv4Addr {
    let host_bits = 32 - u32::from(PREFIX_LEN);
    assert!(
        n > 0 && u64::from(n) < (1u64 << host_bits) - 1,
        "host number {n} is not in {SUBNET}/{PREFIX_LEN}"
    );
    Ipv4Addr::from(u32::from(SUBNET) | n)
}

/// A LAN node's memory: `BRAMBLE_LAN_MEMORY_MIB`, else [`NODE_MEMORY_MIB`].
pub fn node_memory_mib() -> u32 {
    env_u32("BRAMBLE_LAN_MEMORY_MIB").unwrap_or(NODE_MEMORY_MIB)
}

/// A LAN node's vCPUs: `BRAMBLE_LAN_CPUS`, else [`NODE_CPUS`].
pub fn node_cpus() -> u32 {
    env_u32("BRAMBLE_LAN_CPUS").unwrap_or(NODE_CPUS)
}

/// The variable `name` as a number, if set to one.
fn env_u32(name: &str) -> Option<u32> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// `PROGRAM` run inside the network namespace `netns` (`ip netns exec`,
/// which then executes it: the child's process id is the program's).
pub fn netns_command(netns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).arg(program);
    cmd
}

/// Runs `cmd` to its end, bounded by [`COMMAND_TIMEOUT`], failing unless it
/// succeeds; its standard output.
fn output(mut cmd: Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    output(cmd)
}

/// The processes in namespace `netns`.
fn netns_pids(netns: &str) -> Result<Vec<u32>> {
    Ok(ip(&["netns", "pids", netns])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Kills every process in `netns` and deletes it; each step bounded.
fn remove_netns(netns: &str) -> Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let pids = netns_pids(netns)?;
        if pids.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "processes {pids:?} still in {netns} after SIGKILL"
        );
        let mut kill = Command::new("kill");
        kill.arg("-KILL").args(pids.iter().map(u32::to_string));
        // A process may exit by itself between the listing and the kill.
        let _ = output(kill);
        std::thread::sleep(Duration::from_millis(50));
    }
    ip(&["netns", "del", netns]).map(drop)
}

/// Deletes the namespaces of earlier test processes that no longer exist
/// (killed before their `Lan` was dropped), with whatever still runs there.
fn remove_stale() -> Result<()> {
    for line in ip(&["netns", "list"])?.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing the namespace {name} of the ended test process {pid}");
            remove_netns(name)?;
        }
    }
    Ok(())
}

/// A private LAN in a network namespace of its own; see the module
/// documentation. Deleted, with everything in it, when dropped.
#[derive(Debug)]
pub struct Lan {
    name: String,
    /// chronyd's configuration, log and state.
    dir: tempfile::TempDir,
    chronyd: Option<Child>,
}

impl Lan {
    /// Creates the namespace with `lo` and the bridge up, the bridge holding
    /// [`host_addr`]/[`PREFIX_LEN`].
    pub fn create() -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_stale()?;
        let name = format!(
            "{NETNS_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        // From here on, Drop removes the namespace whatever fails next.
        let lan = Self {
            name,
            dir: tempfile::tempdir().context("a directory for chronyd")?,
            chronyd: None,
        };
        lan.ip(&["link", "set", "lo", "up"])?;
        // No STP and no forwarding delay: a port forwards as soon as it is up.
        lan.ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        lan.ip(&[
            "addr",
            "add",
            &format!("{}/{PREFIX_LEN}", host_addr()),
            "dev",
            BRIDGE,
        ])?;
        lan.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(lan)
    }

    /// The namespace's name (for `ip netns exec`, `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAMESPACE ARGS...`, failing unless it succeeds; its output.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        output(cmd)
    }

    /// `program` run inside the namespace: add arguments, then spawn it or
    /// take its output. Nodes are reached from here only.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        netns_command(&self.name, program)
    }

    /// Runs `args[0] args[1..]` inside the namespace (bounded), failing
    /// unless it succeeds; its standard output.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().context("no program")?;
        let mut cmd = self.command(program);
        cmd.args(rest);
        output(cmd)
    }

    /// Starts Debian's `chronyd` in the namespace as the LAN's NTP server on
    /// [`host_addr`], port 123 (`machine.time.servers: ["10.77.0.1"]`):
    /// `local stratum 8` serves the host's clock, `-x` never touches it.
    /// Returns once it listens.
    pub fn start_ntp(&mut self) -> Result<()> {
        ensure!(self.chronyd.is_none(), "chronyd already runs");
        let path = |name: &str| self.dir.path().join(name);
        let conf = path("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "# The LAN's time server: serves the host's clock, never disciplines it.\n\
                 local stratum 8\n\
                 allow {SUBNET}/{PREFIX_LEN}\n\
                 bindaddress {}\n\
                 port 123\n\
                 cmdport 0\n\
                 bindcmdaddress /\n\
                 driftfile {}\n\
                 pidfile {}\n",
                host_addr(),
                path("chrony.drift").display(),
                path("chronyd.pid").display(),
            ),
        )?;
        let log = std::fs::File::create(path("chronyd.log"))?;
        let child = self
            .command("chronyd")
            // -d: foreground, log to stderr; -x: never adjust the system
            // clock; -u root: no privilege drop (its files are ours).
            .args(["-d", "-x", "-u", "root", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting chronyd (Debian package chrony)")?;
        self.chronyd = Some(child);
        let listening = format!("{}:123", host_addr());
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if self.run(&["ss", "-Hnlu"])?.contains(&listening) {
                return Ok(());
            }
            if let Some(chronyd) = self.chronyd.as_mut()
                && let Some(status) = chronyd.try_wait()?
            {
                bail!("chronyd exited ({status}):\n{}", self.chronyd_log());
            }
            ensure!(
                Instant::now() < deadline,
                "chronyd not listening on {listening} within {SETTLE_TIMEOUT:?}:\n{}",
                self.chronyd_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What chronyd logged.
    pub fn chronyd_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chronyd.log")).unwrap_or_default()
    }

    /// Creates node `index`'s tap device on the bridge, up; its name.
    pub fn add_tap(&self, index: u32) -> Result<String> {
        let tap = node_tap(index);
        self.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        self.ip(&["link", "set", &tap, "master", BRIDGE])?;
        self.ip(&["link", "set", &tap, "up"])?;
        Ok(tap)
    }

    /// QEMU options for node `index` booting `disk` on this LAN (its tap
    /// must exist: [`Lan::add_tap`]), with [`node_memory_mib`] and
    /// [`node_cpus`], its console kept in `log_dir/console-node<index>-<boot>.log`
    /// (`boot`: which boot of the node this is) and a monitor socket for
    /// the power button.
    pub fn node_options(
        &self,
        index: u32,
        disk: &Path,
        log_dir: &Path,
        boot: u32,
    ) -> qemu::Options {
        let mut opts = qemu::Options::new(disk.to_path_buf(), 0);
        opts.console_log = Some(log_dir.join(format!("console-node{index}-{boot}.log")));
        opts.monitor_socket = Some(log_dir.join(format!("monitor-node{index}.sock")));
        opts.memory_mib = node_memory_mib();
        opts.cpus = node_cpus();
        opts.network = qemu::Network::Lan {
            netns: self.name.clone(),
            tap: node_tap(index),
            mac: node_mac(index),
        };
        opts
    }

    /// Node `index`'s disk: copies `image` (a private copy of the built
    /// image) to `dir/node<index>.img`, [`NODE_DISK_GROWTH`] bigger, places `config` on its boot partition
    /// ([`place_config`]), and adds the node's tap. Its path.
    pub fn prepare_node(
        &self,
        index: u32,
        image: &Path,
        dir: &Path,
        config: &Path,
    ) -> Result<PathBuf> {
        let disk = dir.join(format!("node{index}.img"));
        qemu::prepare_disk(image, &disk, NODE_DISK_GROWTH)?;
        place_config(&disk, config)?;
        self.add_tap(index)?;
        Ok(disk)
    }

    /// Boots every node of `configs` at once, each from its own copy of
    /// `image` with its configuration on the boot partition, and returns
    /// them (node `i` at index `i - 1`) once every console says the API is
    /// ready, within `timeout` of the start. apid adopts the configuration
    /// at its start and has the services that started beside it read it
    /// again, so one boot is enough.
    pub fn boot_nodes(
        &self,
        configs: &Configs,
        image: &Path,
        dir: &Path,
        timeout: Duration,
    ) -> Result<Vec<qemu::Node>> {
        let started = Instant::now();
        let left = || timeout.saturating_sub(started.elapsed());
        let indexes: Vec<u32> = (1..).take(configs.len()).collect();
        let mut disks = Vec::new();
        for &index in &indexes {
            disks.push(self.prepare_node(index, image, dir, configs.machine_config(index)?)?);
        }
        let mut nodes = indexes
            .iter()
            .zip(&disks)
            .map(|(&index, disk)| qemu::Node::start(&self.node_options(index, disk, dir, 1)))
            .collect::<Result<Vec<_>>>()?;
        for (index, node) in indexes.iter().zip(nodes.iter_mut()) {
            node.wait_ready(left())
                .with_context(|| format!("node {index} did not boot"))?;
        }
        eprintln!("{} node(s) ready in {:.1?}", nodes.len(), started.elapsed());
        Ok(nodes)
    }

    /// The host's neighbour table on the bridge (`ip neigh`): which node
    /// addresses answered ARP, with their hardware addresses.
    pub fn neighbours(&self) -> Result<String> {
        self.ip(&["neigh", "show", "dev", BRIDGE])
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- chronyd in {}\n{}", self.name, self.chronyd_log());
        }
        if let Some(mut chronyd) = self.chronyd.take() {
            let _ = chronyd.kill();
            let _ = chronyd.wait();
        }
        if let Err(e) = remove_netns(&self.name) {
            eprintln!("removing the network namespace {}: {e:#}", self.name);
        }
    }
}

/// What a node is in the cluster: which generated file it boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `controlplane.yaml`: holds the cluster CA's key, issues its own API
    /// certificate.
    ControlPlane,
    /// `worker.yaml`: no CA key; asks the control-plane node at
    /// [`endpoint`] for its API certificate over the LAN.
    Worker,
}

/// The configuration patch of node `index`: its host name
/// ([`node_hostname`]), [`node_addr`]`/`[`PREFIX_LEN`] on `eth0` (QEMU's
/// virtio-net card) with DHCP off and a default route to the host's side,
/// that address in the API certificate, and the LAN's NTP server.
pub fn node_patch(index: u32, role: Role) -> String {
    let addr = node_addr(index);
    let host = host_addr();
    format!(
        "machine:
  hostname: {hostname}
  certSANs: [\"{addr}\"]
  network:
    interfaces:
      - interface: eth0
        dhcp: false
        addresses: [\"{addr}/{PREFIX_LEN}\"]
        routes:
          - network: 0.0.0.0/0
            gateway: \"{host}\"
  time:
    servers: [\"{host}\"]
",
        hostname = node_hostname(index, role)
    )
}

/// Machine configurations for the nodes of one cluster, generated by the
/// real `nodectl`: one secrets bundle (`gen secrets`), then for node `i`
/// `gen config --with-secrets` with [`node_patch`]`(i)` into `dir/node<i>/`.
/// Every node trusts the same CA, so one client configuration reaches all.
#[derive(Debug)]
pub struct Configs {
    /// Node 1's `nodeconfig` (an admin's) and `controlplane.yaml`.
    pub client: nodectl::Client,
    /// The secrets bundle.
    pub secrets: PathBuf,
    nodes: Vec<PathBuf>,
}

impl Configs {
    /// Generates the configurations of nodes 1..=`roles.len()` into `dir`,
    /// with `patches` applied to all of them after their own.
    pub fn generate(dir: &Path, roles: &[Role], patches: &[&str]) -> Result<Self> {
        ensure!(!roles.is_empty(), "no nodes");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let secrets = dir.join("secrets.yaml");
        let text = |p: &Path| p.to_str().map(str::to_owned).context("non-UTF-8 path");
        let ok = |args: &[&str]| -> Result<()> {
            let out = nodectl::run(args, Duration::from_secs(60))?;
            ensure!(
                out.success,
                "nodectl {args:?}: {}{}",
                out.stdout,
                out.stderr
            );
            Ok(())
        };
        ok(&[
            "gen",
            "secrets",
            "--cluster-name",
            CLUSTER_NAME,
            "--output-file",
            &text(&secrets)?,
        ])?;
        let endpoint = endpoint();
        let mut nodes = Vec::new();
        for (index, role) in (1..).zip(roles) {
            let out = dir.join(format!("node{index}"));
            let patch = node_patch(index, *role);
            let (secrets, out_dir) = (text(&secrets)?, text(&out)?);
            let mut args = vec![
                "gen",
                "config",
                CLUSTER_NAME,
                &endpoint,
                "--with-secrets",
                &secrets,
                "--output-dir",
                &out_dir,
                "--config-patch",
                &patch,
            ];
            for p in patches {
                args.extend(["--config-patch", p]);
            }
            ok(&args)?;
            nodes.push(out.join(match role {
                Role::ControlPlane => "controlplane.yaml",
                Role::Worker => "worker.yaml",
            }));
        }
        let first = dir.join("node1");
        Ok(Self {
            client: nodectl::Client {
                nodeconfig: first.join("nodeconfig"),
                controlplane: first.join("controlplane.yaml"),
            },
            secrets,
            nodes,
        })
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes (never: [`Configs::generate`] needs one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `index`'s machine configuration.
    pub fn machine_config(&self, index: u32) -> Result<&Path> {
        usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.nodes.get(i))
            .map(PathBuf::as_path)
            .with_context(|| format!("no node {index} (1..={})", self.nodes.len()))
    }
}

/// Writes `config` onto `disk`'s boot partition as `machine-config.yaml`, as
/// `nodectl image flash --config` does: the node takes it at its first boot
/// and comes up configured, with no `apply-config --insecure`.
pub fn place_config(disk: &Path, config: &Path) -> Result<()> {
    let data = std::fs::read(config).with_context(|| format!("reading {}", config.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    let boot = bramble_bootfs::BootFs::open(&mut file)?;
    boot.write(bramble_bootfs::CONFIG_FILE, &data)?;
    boot.finish()?;
    file.sync_all()?;
    Ok(())
}
