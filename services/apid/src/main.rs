//! `apid`: the machine API server of a Bramble node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use bramble_apid::server::{
    DEFAULT_CONFIG_DIR, DEFAULT_CONTROL_SOCKET, DEFAULT_ETCD_ROOT, DEFAULT_LISTEN,
    DEFAULT_STATE_DIR, DEFAULT_WIPE_DATA_MARKER,
};
use bramble_apid::{BoundServer, Config};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::level_filters::LevelFilter;

/// The Bramble machine API server.
#[derive(Debug, Parser)]
#[command(name = "apid", version)]
struct Args {
    /// Address to listen on. `[::]:PORT` accepts IPv6 and IPv4 (dual-stack);
    /// `0.0.0.0:PORT` IPv4 only.
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR:PORT")]
    listen: SocketAddr,

    /// Directory holding the maintenance-mode certificate and key.
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    state_dir: PathBuf,

    /// Directory holding the machine configuration.
    #[arg(long, default_value = DEFAULT_CONFIG_DIR, value_name = "DIR")]
    config_dir: PathBuf,

    /// PID 1's control socket (services, logs, reboot, shutdown).
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET, value_name = "PATH")]
    control_socket: PathBuf,

    /// The root under which etcd's state is: its data (`var/lib/etcd`) and
    /// the bootstrap request (`var/lib/bramble/etcd-bootstrap.json`).
    #[arg(long, default_value = DEFAULT_ETCD_ROOT, value_name = "DIR")]
    etcd_root: PathBuf,

    /// Log level: error, warn, info, debug or trace (default: `RUST_LOG`,
    /// else info).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<LevelFilter>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bramble_daemon::logging::init(args.log_level);
    bramble_apid::install_crypto_provider();
    // One thread: the API serves a handful of clients and must stay small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Install the handlers before announcing readiness, so a stop request
    // right after READY=1 is not lost.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let mut config = Config::new(args.listen, &args.state_dir);
    config.config_dir = args.config_dir;
    config.control_socket = args.control_socket;
    config.etcd_root = args.etcd_root;
    config.wipe_data_marker = DEFAULT_WIPE_DATA_MARKER.into();
    config.boot_device_file = Some(bramble_apid::pi::DEFAULT_BOOT_DEVICE_FILE.into());
    let server = BoundServer::bind(config).await?;
    // `serve` prints the console text (crate::console) as it starts listening.
    tracing::info!(
        addr = %server.local_addr(),
        maintenance = server.maintenance(),
        fingerprint = %server.fingerprint(),
        certificate = ?server.identity_origin(),
        "API listening"
    );
    if let Err(e) = bramble_daemon::ready::notify_from_env() {
        // The supervisor will see the missing line; keep serving.
        tracing::error!(error = %e, "readiness notification failed");
    }

    server
        .serve(async move {
            tokio::select! {
                _ = sigterm.recv() => tracing::info!("SIGTERM received"),
                _ = sigint.recv() => tracing::info!("SIGINT received"),
            }
        })
        .await?;
    tracing::info!("stopped");
    Ok(())
}
