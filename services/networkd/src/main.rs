//! The network configuration daemon (`/usr/bin/networkd` on the node).
//!
//! This first slice brings an unconfigured node onto the network by itself:
//! `lo` and every physical Ethernet port up, a DHCPv4 client per port, the
//! lease's address, default route and resolvers installed, and status
//! published under `--run-dir`. Module map: `links` (rtnetlink), `dhcp`
//! (state machine, lease parsing, per-link socket driver), `resolv`,
//! `status` (state.json, online marker, console lines), `ready`, `daemon`.

mod daemon;
mod desired;
mod dhcp;
mod error;
mod links;
mod reconcile;
mod resolv;
mod status;

use bramble_daemon::ready;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tracing::level_filters::LevelFilter;

/// Command line of `networkd`.
#[derive(Debug, Parser)]
#[command(
    name = "networkd",
    version,
    about = "Bramble network daemon: links up, DHCPv4 on physical Ethernet ports"
)]
struct Cli {
    /// Directory for resolv.conf, hostname and network/{state.json,online}.
    #[arg(long, value_name = "DIR", default_value = "/run/bramble")]
    run_dir: PathBuf,

    /// Run DHCP on this link (repeatable) instead of on every physical
    /// Ethernet port found.
    #[arg(long = "link", value_name = "NAME")]
    links: Vec<String>,

    /// Where sysfs is mounted (used to tell physical ports from virtual links).
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    sysfs: PathBuf,

    /// Seconds to wait for carrier on a link before starting DHCP anyway.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    carrier_timeout: u64,

    /// Base metric of DHCP default routes (the link index is added).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    route_metric: u32,

    /// The machine configuration (`machine.network`, `machine.hostname`),
    /// read at start and again on SIGHUP. Missing: DHCP on every port.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/system/state/config/config.yaml"
    )]
    config: PathBuf,

    /// Give the kernel the host name in force (configured, else from DHCP).
    #[arg(long)]
    set_hostname: bool,

    /// Log level: error, warn, info, debug or trace (default: `RUST_LOG`,
    /// else info).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<LevelFilter>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bramble_daemon::logging::init(cli.log_level);

    let opts = daemon::Options {
        run_dir: cli.run_dir,
        sysfs: cli.sysfs,
        links: cli.links,
        carrier_timeout: Duration::from_secs(cli.carrier_timeout),
        route_metric: cli.route_metric,
        ready_fd: std::env::var(ready::READY_FD_ENV).ok(),
        hostname: daemon::kernel_hostname(),
        config: cli.config,
        set_hostname: cli.set_hostname,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(daemon::run(opts))
}
