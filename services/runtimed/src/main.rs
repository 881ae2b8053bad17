//! `runtimed`: the container runtime daemon, and (`runtimed shim`) the
//! single-threaded parent of one container.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bramble_runtimed::container::{self, ShimArgs};
use bramble_runtimed::daemon::{self, Options};
use bramble_runtimed::workloads::Paths;
use clap::{Parser, Subcommand};
use tracing::level_filters::LevelFilter;

/// Command line of `runtimed`.
#[derive(Debug, Parser)]
#[command(
    name = "runtimed",
    version,
    about = "Bramble container runtime: images, workloads, logs, limits"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the daemon.
    Daemon(DaemonArgs),
    /// Create, run and wait for one container (started by the daemon).
    Shim(ShimArgs),
    /// Time a `true` container with the shim and with another OCI runtime
    /// (crun) on this node (`make bench`; only with the `compare` feature).
    #[cfg(feature = "compare")]
    Compare(bramble_runtimed::compare::CompareArgs),
}

#[derive(Debug, clap::Args)]
struct DaemonArgs {
    /// The machine configuration; missing means no workloads.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/system/state/config/config.yaml"
    )]
    config: PathBuf,
    /// The image store's root.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/bramble/images")]
    store: PathBuf,
    /// Per-container data (writable layers).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/bramble/runtime")]
    state_dir: PathBuf,
    /// Bundles and libcontainer state (tmpfs).
    #[arg(long, value_name = "DIR", default_value = "/run/bramble/runtime")]
    run_dir: PathBuf,
    /// Container logs.
    #[arg(long, value_name = "DIR", default_value = "/var/log/containers")]
    log_dir: PathBuf,
    /// cgroup v2 directory holding the containers' cgroups.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/cgroup/bramble")]
    cgroup_parent: PathBuf,
    /// The runtime API's Unix socket.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/bramble/runtimed.sock"
    )]
    socket: PathBuf,
    /// Log level: error, warn, info, debug or trace (default: `RUST_LOG`,
    /// else info).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<LevelFilter>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Shim(args) => container::shim::run(&args),
        #[cfg(feature = "compare")]
        Cmd::Compare(args) => match bramble_runtimed::compare::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("runtimed compare: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Daemon(args) => match run_daemon(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("runtimed: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_daemon(args: DaemonArgs) -> anyhow::Result<()> {
    bramble_daemon::logging::init(args.log_level);
    let shim_exe = std::env::current_exe().context("cannot find this binary for the shim")?;
    let opts = Options {
        config: args.config,
        store: args.store,
        socket: args.socket,
        ready_fd: std::env::var(bramble_daemon::ready::READY_FD_ENV).ok(),
        paths: Paths {
            state_dir: args.state_dir,
            run_dir: args.run_dir,
            log_dir: args.log_dir,
            cgroup_parent: args.cgroup_parent,
            shim_exe,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            hosts: PathBuf::from("/etc/hosts"),
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(daemon::run(opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node's service definition parses and its command line is one
    /// this binary accepts, with the documented defaults.
    #[test]
    fn service_definition_matches_the_cli() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../image/rootfs/etc/bramble/services/runtimed.toml");
        let def = bramble_supervisor::ServiceDef::load_file(&path).expect("runtimed.toml");
        assert_eq!(def.name, "runtimed");
        assert_eq!(def.command[0], "/usr/bin/runtimed");
        assert!(def.notify_ready);
        let cli = Cli::try_parse_from(&def.command).expect("the definition's command line");
        let Cmd::Daemon(args) = cli.command else {
            panic!("the service runs the daemon");
        };
        assert_eq!(
            args.config,
            PathBuf::from("/system/state/config/config.yaml")
        );
        assert_eq!(args.store, PathBuf::from("/var/lib/bramble/images"));
        assert_eq!(args.socket, PathBuf::from("/run/bramble/runtimed.sock"));
    }
}
