//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

use crate::client::Fingerprint;
use crate::nodes::NodeAddr;

/// Manage Bramble nodes through their machine API.
#[derive(Debug, Parser)]
#[command(name = "nodectl", version, propagate_version = true)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes (before or after the command name).
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Nodes to act on: host[:port] (port 50000 by default), comma-separated
    /// or repeated. Each node is contacted directly and concurrently.
    #[arg(
        short = 'n',
        long = "nodes",
        global = true,
        value_delimiter = ',',
        value_name = "HOST[:PORT]",
        value_parser = parse_node
    )]
    pub nodes: Vec<NodeAddr>,

    /// Addresses to dial instead of the nodes themselves: host[:port].
    /// Alone, each endpoint is a node. With -n, give one endpoint and one
    /// node: the endpoint is dialled (a port forward, NAT, QEMU hostfwd) and
    /// the answer is shown under the node's name. Forwarding one endpoint to
    /// several nodes needs the node-to-node proxy and is not supported yet.
    #[arg(
        short = 'e',
        long = "endpoints",
        global = true,
        value_delimiter = ',',
        value_name = "HOST[:PORT]",
        value_parser = parse_node
    )]
    pub endpoints: Vec<NodeAddr>,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Connect without verifying the server certificate. Only for nodes in
    /// maintenance mode (before their first configuration), whose
    /// certificate is self-signed. Prefer --cert-fingerprint.
    #[arg(long, global = true)]
    pub insecure: bool,

    /// Accept only the server certificate with this SHA-256 fingerprint
    /// (SHA256:<hex>, printed on the node's console). Implies the
    /// maintenance-mode connection of --insecure, but verified; a node that
    /// lost its configuration also gets the client configuration's
    /// certificate, and admits it if it is an admin's.
    #[arg(long, global = true, value_name = "SHA256:HEX", value_parser = parse_fingerprint)]
    pub cert_fingerprint: Option<Fingerprint>,

    /// The client configuration file (contexts with endpoints, nodes, CA
    /// and client certificate). Default: $NODECONFIG, else
    /// ~/.config/bramble/nodeconfig.
    #[arg(long, global = true, value_name = "FILE")]
    pub nodeconfig: Option<PathBuf>,

    /// The context of the client configuration to use (default: its current
    /// one).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// How long each node gets to connect and answer: 10s, 500ms, 2m or plain
    /// seconds.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// A JSON array of objects, one per node.
    Json,
    /// A YAML list of objects, one per node.
    Yaml,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the OS version, kernel, boot slot and mode of each node.
    Version,

    /// Generate cluster secrets, machine configurations and client
    /// credentials.
    Gen {
        /// What to generate.
        #[command(subcommand)]
        what: GenCommand,
    },

    /// Check a machine configuration file; print every error with its field
    /// path.
    Validate {
        /// The configuration file.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },

    /// Apply a machine configuration to the nodes.
    ApplyConfig {
        /// The configuration file.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// How the change takes effect.
        #[arg(short = 'm', long, value_enum, default_value_t = ApplyModeArg::Auto)]
        mode: ApplyModeArg,
        /// Validate and show what would change; apply nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --mode try: how long before the previous configuration
        /// returns (10s, 2m, ...).
        #[arg(long = "try-timeout", value_name = "DURATION", value_parser = parse_duration, default_value = "1m")]
        try_timeout: Duration,
        /// A YAML patch (strategic merge) applied to the file first: inline
        /// YAML or @FILE. Repeatable.
        #[arg(short = 'p', long = "config-patch", value_name = "YAML|@FILE")]
        patches: Vec<String>,
    },

    /// Show a resource of the nodes.
    Get {
        /// What to show.
        #[command(subcommand)]
        what: GetCommand,
    },

    /// List the supervised services of each node.
    Services,

    /// Start, stop or restart one service.
    Service {
        /// The service (as `nodectl services` names it).
        name: String,
        /// What to do.
        #[arg(value_enum)]
        action: ServiceAction,
    },

    /// Show the last lines a service (or, with -k, a container) wrote.
    Logs {
        /// The service, or the container with -k.
        service: String,
        /// NAME is a container (a workload), not a service.
        #[arg(short = 'k', long = "container")]
        container: bool,
        /// Number of lines.
        #[arg(long, default_value_t = 100)]
        tail: u32,
        /// Keep printing new lines (Ctrl-C stops).
        #[arg(short = 'f', long)]
        follow: bool,
    },

    /// Show the kernel log.
    Dmesg {
        /// Only the last N records (0: all the kernel still has).
        #[arg(long, default_value_t = 0)]
        tail: u32,
        /// Keep printing new records (Ctrl-C stops).
        #[arg(short = 'f', long)]
        follow: bool,
    },

    /// Show service and configuration events.
    Events {
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Keep printing new events (Ctrl-C stops).
        #[arg(short = 'f', long)]
        follow: bool,
    },

    /// Wipe the machine configuration and reboot into maintenance mode. On
    /// a control-plane node whose etcd answers, its member leaves the
    /// cluster first; refused (nothing changed) when that would cost the
    /// cluster its quorum (a cluster of one or two), or the member could
    /// not leave.
    Reset {
        /// Also empty the data partition (/var) at the next boot.
        #[arg(long)]
        wipe_data: bool,
        /// Reset even when the node's etcd member cannot leave, or leaving
        /// costs the cluster its quorum.
        #[arg(long)]
        force: bool,
    },

    /// Check the nodes given with -n: each answers, its services run, and
    /// on control-plane nodes etcd: one leader, one cluster, raft indexes
    /// close together, every member answering. Exits 0 only when all is
    /// healthy; else the last line says what is not.
    Health,

    /// Show memory use.
    Memory,

    /// List processes.
    Processes,

    /// List mounted file systems.
    Mounts,

    /// List the images in the nodes' stores.
    Images,

    /// List the containers (the configured workloads) and their state.
    Containers,

    /// Show the running containers' memory, CPU and process counts.
    Stats,

    /// Act on one container.
    Container {
        /// The container (as `nodectl containers` names it).
        name: String,
        /// What to do.
        #[arg(value_enum)]
        action: ContainerAction,
    },

    /// Reboot the nodes in order.
    Reboot,

    /// Power the nodes off in order.
    Shutdown,

    /// Form a new etcd cluster on one control-plane node, its first member
    /// (once per cluster; every other control-plane node joins by itself).
    /// Refused on a worker, on a node that holds etcd data or already has a
    /// request waiting, and when an etcd cluster answers at the
    /// control-plane endpoint's host.
    Bootstrap {
        /// Restore the cluster from this snapshot (`nodectl etcd snapshot`)
        /// instead of forming an empty one: the node becomes its only
        /// member, with every key the snapshot holds.
        #[arg(long, value_name = "SNAPSHOT")]
        recover_from: Option<PathBuf>,
    },

    /// etcd on the control-plane nodes: members, status, membership,
    /// snapshots and maintenance.
    Etcd {
        /// What to do.
        #[command(subcommand)]
        what: EtcdCommand,
    },

    /// Manage the client configuration file.
    Config {
        /// What to do.
        #[command(subcommand)]
        what: ConfigCommand,
    },

    /// Container images on the nodes (pull, import, rm), and Bramble's own
    /// image (flash onto an SD card).
    Image {
        /// What to do.
        #[command(subcommand)]
        what: ImageCommand,
    },

    /// Print a shell completion script, e.g. `nodectl completion bash >
    /// /etc/bash_completion.d/nodectl`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// `nodectl image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Write the image onto an SD card (only the blocks its bmap maps), read it
    /// back to verify, and optionally place a machine configuration on the
    /// card's boot partition, applied at the node's first boot. Refuses a disk
    /// that is mounted, holds this system's root or swap, is too small, or an
    /// image that does not match its bmap or SHA256SUMS.
    Flash(FlashArgs),
    /// Fetch a container image into the nodes' stores (linux/arm64).
    Pull {
        /// The image reference, e.g. docker.io/library/busybox:1.36.
        reference: String,
        /// Store it even if the reference names another image a workload
        /// uses (the workload runs the new one at its next start).
        #[arg(long)]
        force: bool,
    },
    /// Send an OCI image archive (a tar of an OCI image layout, as
    /// `skopeo copy ... oci-archive:app.tar` makes) to the nodes' stores: no
    /// registry needed.
    Import {
        /// The archive.
        file: PathBuf,
        /// Tag it with this reference [default: the archive's own
        /// org.opencontainers.image.ref.name].
        #[arg(long, value_name = "REFERENCE")]
        reference: Option<String>,
        /// Store it even if a reference it is stored under names another
        /// image a workload uses.
        #[arg(long)]
        force: bool,
    },
    /// Untag an image and remove the content nothing else uses.
    Rm {
        /// The image reference.
        reference: String,
    },
}

/// `nodectl etcd ...`
#[derive(Debug, Subcommand)]
pub enum EtcdCommand {
    /// List the cluster's members, as each node's member sees them.
    Members,
    /// Show each node's member: its cluster, the leader it knows, raft term
    /// and indexes, database size.
    Status,
    /// Remove this node's member from the cluster (one node). Refused when
    /// the cluster would keep fewer voting members than its quorum (a
    /// cluster of one or two).
    Leave {
        /// Leave even so.
        #[arg(long)]
        force: bool,
    },
    /// Remove another member (a node gone for good), by ID or name, through
    /// one node. The same quorum rule as `leave`.
    RemoveMember {
        /// The member's ID (as `etcd members` prints it) or its name.
        #[arg(value_name = "ID|NAME")]
        member: String,
        /// Remove it even so.
        #[arg(long)]
        force: bool,
    },
    /// Save a snapshot of one node's member into FILE (mode 0600: it holds
    /// every secret of the cluster), written whole or not at all.
    Snapshot {
        /// Where to write it.
        file: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Defragment each node's member, one node after the other (a member
    /// answers nothing else meanwhile).
    Defrag,
    /// List the cluster's alarms (NOSPACE, CORRUPT), or disarm them.
    Alarm {
        /// What to do [default: list].
        #[command(subcommand)]
        what: Option<AlarmCommand>,
    },
}

/// `nodectl etcd alarm ...`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum AlarmCommand {
    /// List the raised alarms.
    List,
    /// Clear every raised alarm (once space was freed: compaction and
    /// `etcd defrag`).
    Disarm,
}

/// `nodectl container NAME ...`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContainerAction {
    /// Stop it (grace period, then SIGKILL) and start it again.
    Restart,
}

/// `nodectl image flash`.
#[derive(Debug, Clone, Args)]
pub struct FlashArgs {
    /// The whole disk to overwrite, e.g. /dev/sdX or /dev/mmcblk0.
    #[arg(long, value_name = "DEVICE")]
    pub device: PathBuf,
    /// The image, raw or .xz [default: dist/bramble-arm64.img, else its .xz].
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// The block map [default: IMAGE.bmap; for X.img.xz also X.img.bmap].
    #[arg(long, value_name = "FILE")]
    pub bmap: Option<PathBuf>,
    /// A machine configuration to validate and place on the boot partition
    /// as machine-config.yaml: the node applies it on its first boot.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Let a regular file stand in for the device (tests, image copies).
    #[arg(long)]
    pub allow_file: bool,
}

/// `nodectl gen ...`
#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// Generate a secrets bundle (the cluster's CAs and tokens).
    Secrets {
        /// Where to write it.
        #[arg(
            long = "output-file",
            value_name = "FILE",
            default_value = "secrets.yaml"
        )]
        output_file: PathBuf,
        /// The cluster name (goes into the CAs' names).
        #[arg(long, default_value = "bramble")]
        cluster_name: String,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Generate controlplane.yaml, worker.yaml and a client configuration
    /// (nodeconfig) with an admin certificate.
    Config {
        /// The cluster name.
        cluster_name: String,
        /// The control plane endpoint, e.g. https://10.0.0.10:6443.
        endpoint: String,
        /// Where to write the files.
        #[arg(long, value_name = "DIR", default_value = ".")]
        output_dir: PathBuf,
        /// Use the secrets of this bundle (from `gen secrets`) instead of new ones.
        #[arg(long, value_name = "FILE")]
        with_secrets: Option<PathBuf>,
        /// A YAML patch (strategic merge) applied to both configurations:
        /// inline YAML or @FILE. Repeatable.
        #[arg(short = 'p', long = "config-patch", value_name = "YAML|@FILE")]
        patches: Vec<String>,
        /// The role of the client certificate in nodeconfig.
        #[arg(long, value_enum, default_value_t = RoleArg::Admin)]
        role: RoleArg,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Mint a client configuration (nodeconfig) whose certificate carries
    /// one role and expires when you choose, issued by the OS CA of a
    /// secrets bundle: e.g. a reader's for a day. Its context takes the
    /// endpoints and nodes given with -e and -n.
    Nodeconfig {
        /// The context's name (the cluster's name, as `gen config` names it).
        cluster_name: String,
        /// The secrets bundle (from `gen secrets`) whose OS CA issues the
        /// certificate.
        #[arg(long = "with-secrets", visible_alias = "secrets", value_name = "FILE")]
        with_secrets: PathBuf,
        /// The certificate's role.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// How long the certificate is valid: a whole number and a unit, s,
        /// m, h, d, w or y (365 days), e.g. 30m, 24h, 90d; at most until the
        /// CA expires.
        #[arg(long, value_name = "DURATION", value_parser = parse_expiry)]
        expiry: Duration,
        /// Who holds it: the certificate's common name [default: the role].
        #[arg(long, value_name = "NAME")]
        common_name: Option<String>,
        /// Where to write it.
        #[arg(
            long = "output-file",
            value_name = "FILE",
            default_value = "nodeconfig"
        )]
        output_file: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

/// `nodectl get ...`
#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// The running machine configuration (secrets hidden unless admin).
    Config,
    /// Links as the kernel has them, and whether the configuration names them.
    Links,
    /// Addresses on every link, and who added them.
    Addresses,
    /// Routes (every table but the kernel's local one).
    Routes,
    /// DNS resolvers in force and configured.
    Resolvers,
    /// The host name.
    Hostname,
    /// The clock and its synchronisation.
    Time,
}

/// `nodectl config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// List the contexts.
    Contexts,
    /// Make a context the current one.
    UseContext {
        /// Its name.
        name: String,
    },
    /// Set the nodes of the current context.
    AddNode {
        /// Nodes (host[:port]).
        #[arg(required = true, value_delimiter = ',')]
        nodes: Vec<String>,
    },
    /// Set the endpoints of the current context.
    Endpoints {
        /// Endpoints (host[:port]).
        #[arg(required = true, value_delimiter = ',')]
        endpoints: Vec<String>,
    },
}

/// `--mode` of apply-config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApplyModeArg {
    /// Without a reboot when possible, otherwise with one.
    Auto,
    /// Now, without a reboot (refused if the change needs one).
    NoReboot,
    /// Store it and reboot into it.
    Reboot,
    /// Store it; it takes effect at the next boot.
    Staged,
    /// Apply now; the previous configuration returns after --try-timeout.
    Try,
}

/// What `service` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceAction {
    /// Start it.
    Start,
    /// Stop it.
    Stop,
    /// Restart it.
    Restart,
}

/// A client certificate's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Everything.
    Admin,
    /// Day-two operations: services, reboot; secrets hidden.
    Operator,
    /// Read only; secrets hidden.
    Reader,
}

impl From<RoleArg> for bramble_pki::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Admin => Self::Admin,
            RoleArg::Operator => Self::Operator,
            RoleArg::Reader => Self::Reader,
        }
    }
}

fn parse_node(s: &str) -> Result<NodeAddr, String> {
    NodeAddr::parse(s)
}

fn parse_fingerprint(s: &str) -> Result<Fingerprint, String> {
    Fingerprint::parse(s)
}

/// Parses `10s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (examples: 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit '{other}' (use ms, s, m or h)")),
    };
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err("the duration must be more than 0 and at most 24h".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a certificate's lifetime: a whole number and a unit, `s`, `m`,
/// `h`, `d`, `w` or `y` (365 days): `90s`, `30m`, `24h`, `7d`, `1y`.
pub fn parse_expiry(s: &str) -> Result<Duration, String> {
    let example = "examples: 30m, 24h, 7d, 1y";
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "'{s}' is not a lifetime: a whole number and a unit ({example})"
        ));
    }
    let value: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is too long a lifetime"))?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        "" => return Err(format!("'{s}' has no unit (s, m, h, d, w or y; {example})")),
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}' (use s, m, h, d, w or y; {example})"
            ));
        }
    };
    if value == 0 {
        return Err("a certificate must be valid for more than 0 seconds".into());
    }
    value
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{s}' is too long a lifetime"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn expiries() {
        assert_eq!(parse_expiry("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_expiry("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_expiry("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_expiry("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert_eq!(
            parse_expiry("1y").unwrap(),
            Duration::from_secs(365 * 86_400)
        );
        assert!(parse_expiry("0h").unwrap_err().contains("more than 0"));
        assert!(parse_expiry("24").unwrap_err().contains("no unit"));
        assert!(parse_expiry("5x").unwrap_err().contains("unknown unit 'x'"));
        assert!(
            parse_expiry("1.5h")
                .unwrap_err()
                .contains("unknown unit '.5h'")
        );
        assert!(parse_expiry("-1h").unwrap_err().contains("not a lifetime"));
        assert!(parse_expiry("h").unwrap_err().contains("not a lifetime"));
        assert!(parse_expiry("").unwrap_err().contains("not a lifetime"));
        assert!(
            parse_expiry("99999999999999999999y")
                .unwrap_err()
                .contains("too long")
        );
        assert!(
            parse_expiry("999999999999999999y")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn nodes_comma_separated_and_repeated_after_the_command() {
        let cli = Cli::try_parse_from([
            "nodectl",
            "version",
            "-n",
            "10.0.0.1,10.0.0.2:5000",
            "--nodes",
            "[::1]",
            "-o",
            "json",
        ])
        .unwrap();
        let nodes: Vec<String> = cli.global.nodes.iter().map(ToString::to_string).collect();
        assert_eq!(nodes, ["10.0.0.1", "10.0.0.2:5000", "::1"]);
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.timeout, Duration::from_secs(10));
    }

    #[test]
    fn bad_node_is_a_usage_error_naming_it() {
        let e = Cli::try_parse_from(["nodectl", "-n", "1.2.3.4:0", "version"]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("1.2.3.4:0") && msg.contains("port number"),
            "{msg}"
        );
    }
}
