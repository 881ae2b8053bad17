//! `etcdd` (`/usr/bin/etcdd` on the node): keeps etcd running on a
//! control-plane node.
//!
//! At start it reads the machine configuration. A node without one waits
//! for it (SIGHUP: apid reloads the service after the first apply); a
//! worker has no etcd and `etcdd` exits 0. On a control-plane node it
//! issues the member's certificates from `cluster.etcd.ca` for the node's
//! name and addresses, then starts `/usr/bin/etcd` as etcd's own user:
//! - from its data when the node has some;
//! - as a new one-member cluster when `nodectl bootstrap` left its request;
//! - otherwise by joining: it asks the cluster at the control-plane
//!   endpoint's host (port 2379) to add it as a learner, replacing a stale
//!   member of the same name, starts etcd with every member listed, and
//!   promotes itself once it has caught up.
//!
//! It tells the supervisor it is ready once etcd answers over mutual TLS
//! (and, when joining, once promoted), publishes what it is doing in
//! `/run/bramble/etcd/state.json`, restarts etcd when the node's addresses
//! change (new certificates), and on SIGTERM stops etcd with SIGTERM (etcd
//! then syncs its log and closes its database) before exiting.
//!
//! Module map: `keeper` (the steps above), `status` (the status file).

mod keeper;
mod status;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tracing::level_filters::LevelFilter;

/// Command line of `etcdd`.
#[derive(Debug, Parser)]
#[command(
    name = "etcdd",
    version,
    about = "Bramble: keeps etcd running on a control-plane node"
)]
struct Cli {
    /// The machine configuration.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/system/state/config/config.yaml"
    )]
    config: PathBuf,
    /// etcd's program.
    #[arg(long, value_name = "FILE", default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// `etcdctl`, which restores a snapshot (`nodectl bootstrap --recover-from`).
    #[arg(long, value_name = "FILE", default_value = "/usr/bin/etcdctl")]
    etcdctl: PathBuf,
    /// Where etcd's state lives (`/var/lib/etcd`, `/run/bramble/etcd`, ...)
    /// is under this directory.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Run etcd as the caller instead of etcd's own user (tests as a normal user).
    #[arg(long)]
    same_user: bool,
    /// Log level (default: `RUST_LOG`, else info).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<LevelFilter>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bramble_daemon::logging::init(cli.log_level);
    let opts = keeper::Options {
        config: cli.config,
        etcd: cli.etcd,
        etcdctl: cli.etcdctl,
        layout: bramble_etcd::Layout::under(&cli.root),
        owner: (!cli.same_user).then_some((bramble_etcd::ETCD_UID, bramble_etcd::ETCD_GID)),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(keeper::run(opts))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The node's service definition parses, and its command line is one
    /// this binary accepts, with the node's paths.
    #[test]
    fn service_definition_matches_the_cli() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../image/rootfs/etc/bramble/services/etcd.toml");
        let def = bramble_supervisor::ServiceDef::load_file(&path).unwrap();
        assert_eq!(def.name, "etcd");
        assert_eq!(def.command[0], "/usr/bin/etcdd");
        assert!(def.notify_ready);
        assert_eq!(def.oom_score_adj, Some(-999));
        assert!(
            def.conditions
                .contains(&PathBuf::from("/run/bramble/time/synced"))
        );
        let cli = Cli::try_parse_from(&def.command).unwrap();
        assert_eq!(
            cli.config,
            PathBuf::from("/system/state/config/config.yaml")
        );
        assert_eq!(cli.etcd, PathBuf::from("/usr/bin/etcd"));
        assert_eq!(cli.etcdctl, PathBuf::from("/usr/bin/etcdctl"));
        assert_eq!(cli.root, PathBuf::from("/"));
        assert!(!cli.same_user);
    }
}
