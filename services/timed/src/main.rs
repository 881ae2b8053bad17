//! The time synchronisation daemon (`/usr/bin/timed` on the node).
//!
//! A Raspberry Pi has no real-time clock. At start, before anything else,
//! `timed` steps the clock forward to the last time it saved (in
//! `--state-dir`), or to the image's build time if that is later, when the
//! clock is behind it, and signals readiness. Then it
//! asks the SNTP servers of `machine.time.servers` (or `pool.ntp.org`) for
//! the time, steps the clock at the first good sample, keeps it right
//! afterwards (slewing offsets up to 128 ms, stepping larger ones), saves the
//! time after each sync, every `--save-interval` and at SIGTERM, and
//! publishes its status under `--run-dir` (`time/state.json`, and the
//! `time/synced` marker once synchronised). SIGHUP re-reads the
//! configuration.
//!
//! No answer sets the clock before the image's build time, and one that
//! asks for a correction beyond `machine.time.maxStepSeconds` (default
//! 1000 s) needs a second server to agree, or, when no other answers,
//! three consistent answers from the one that does (`guard`).
//!
//! Module map: `ntp` (packet codec, offset/delay), `query` (one exchange,
//! name resolution), `clock` (step/slew decision, the `Clock` trait,
//! `clock_settime`, `adjtimex`), `guard` (build-time floor, step bound,
//! agreement), `persist` (saved time), `config` (`machine.time`),
//! `status`, `ready`, `daemon` (the loop).

mod clock;
mod config;
mod daemon;
mod error;
mod guard;
mod ntp;
mod persist;
mod query;
mod status;

use bramble_daemon::ready;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tracing::level_filters::LevelFilter;

/// Command line of `timed`.
#[derive(Debug, Parser)]
#[command(
    name = "timed",
    version,
    about = "Bramble time daemon: SNTP client, clock restore across reboots"
)]
struct Cli {
    /// The machine configuration (`machine.time`); missing means defaults.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/system/state/config/config.yaml"
    )]
    config: PathBuf,

    /// Directory of the saved time (clock.json); created if missing.
    #[arg(long, value_name = "DIR", default_value = "/system/state/time")]
    state_dir: PathBuf,

    /// Directory under which time/state.json and time/synced are written.
    #[arg(long, value_name = "DIR", default_value = "/run/bramble")]
    run_dir: PathBuf,

    /// Never change the system clock; measure and report only.
    #[arg(long)]
    no_set_clock: bool,

    /// Shortest poll interval, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    min_poll: u64,

    /// Longest poll interval, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    max_poll: u64,

    /// First retry delay after a failed attempt, seconds (doubled per failure).
    #[arg(long, value_name = "SECS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    retry_min: u64,

    /// How long to wait for one server's reply, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    query_timeout_ms: u64,

    /// How often the current time is saved, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    save_interval: u64,

    /// UDP port of the NTP servers.
    #[arg(long, value_name = "PORT", default_value_t = ntp::NTP_PORT)]
    port: u16,

    /// Log level: error, warn, info, debug or trace (default: `RUST_LOG`,
    /// else info).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<LevelFilter>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bramble_daemon::logging::init(cli.log_level);
    if cli.min_poll > cli.max_poll {
        anyhow::bail!(
            "--min-poll ({}) must not exceed --max-poll ({})",
            cli.min_poll,
            cli.max_poll
        );
    }

    let opts = daemon::Options {
        config: cli.config,
        state_dir: cli.state_dir,
        run_dir: cli.run_dir,
        set_clock: !cli.no_set_clock,
        min_poll: Duration::from_secs(cli.min_poll),
        max_poll: Duration::from_secs(cli.max_poll),
        retry_min: Duration::from_secs(cli.retry_min),
        query_timeout: Duration::from_millis(cli.query_timeout_ms),
        save_interval: Duration::from_secs(cli.save_interval),
        port: cli.port,
        ready_fd: std::env::var(ready::READY_FD_ENV).ok(),
        build_time_unix: guard::BUILD_TIME_UNIX,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(daemon::run(opts, Box::new(clock::SystemClock)))?;
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;

    /// The node's service definition parses, and its command line is one
    /// this binary accepts, with the documented defaults.
    #[test]
    fn service_definition_matches_the_cli() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../image/rootfs/etc/bramble/services/timed.toml");
        let def = bramble_supervisor::ServiceDef::load_file(&path).unwrap();
        assert_eq!(def.name, "timed");
        assert_eq!(def.command[0], "/usr/bin/timed");
        assert!(def.notify_ready);
        assert!(
            def.after.is_empty(),
            "timed must not wait for other services"
        );
        let cli = Cli::try_parse_from(&def.command).unwrap();
        assert_eq!(
            cli.config,
            PathBuf::from("/system/state/config/config.yaml")
        );
        assert_eq!(cli.state_dir, PathBuf::from("/system/state/time"));
        assert_eq!(cli.run_dir, PathBuf::from("/run/bramble"));
        assert!(!cli.no_set_clock);
        assert_eq!((cli.min_poll, cli.max_poll), (64, 1024));
    }

    #[test]
    fn cli_bounds() {
        assert!(Cli::try_parse_from(["timed", "--min-poll", "0"]).is_err());
        assert!(Cli::try_parse_from(["timed", "--query-timeout-ms", "5"]).is_err());
        let cli = Cli::try_parse_from(["timed", "--no-set-clock", "--port", "1123"]).unwrap();
        assert!(cli.no_set_clock);
        assert_eq!(cli.port, 1123);
    }
}
