//! Logs of a supervised daemon: plain lines on stderr (the supervisor
//! captures them, stamps them with the time and a sequence number and echoes
//! them to the console), no colour, no module paths.
//!
//! Which events are kept: the daemon's `--log-level` flag when given, else
//! the `RUST_LOG` its service definition sets (`env = { RUST_LOG = "info" }`
//! in `/etc/bramble/services/*.toml`), else `info`. `RUST_LOG` takes a level
//! (`debug`) or comma-separated `target=level` directives with an optional
//! default (`warn,bramble_networkd=debug`); field and span filters are not
//! supported (they would need a regular-expression engine in every daemon).

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variable read when no level is given on the command line.
pub const LOG_ENV: &str = "RUST_LOG";

/// Installs the daemon's log subscriber. `flag` is the daemon's
/// `--log-level`, if given. A `RUST_LOG` that does not parse is reported
/// (once the subscriber is installed) and `info` is used.
pub fn init(flag: Option<LevelFilter>) {
    let (filter, bad) = filter(flag, std::env::var(LOG_ENV).ok().as_deref());
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_target(false),
        )
        .with(filter)
        .try_init();
    if let Some(reason) = bad {
        tracing::warn!("{LOG_ENV} ignored, logging at info: {reason}");
    }
}

/// The filter for `flag` and the value of `RUST_LOG`, and why that value was
/// refused, if it was.
pub fn filter(flag: Option<LevelFilter>, env: Option<&str>) -> (Targets, Option<String>) {
    if let Some(level) = flag {
        return (Targets::new().with_default(level), None);
    }
    match env.map(str::trim).filter(|v| !v.is_empty()) {
        None => (Targets::new().with_default(LevelFilter::INFO), None),
        // A bare word would name a target to show in full and hide all
        // else: a misspelt level would silence the daemon. Refuse it.
        Some(value)
            if value
                .split(',')
                .any(|d| !d.contains('=') && d.trim().parse::<LevelFilter>().is_err()) =>
        {
            (
                Targets::new().with_default(LevelFilter::INFO),
                Some(format!(
                    "{value:?}: a directive without `=` must be a level (error, warn, info, debug, trace, off)"
                )),
            )
        }
        Some(value) => match value.parse::<Targets>() {
            Ok(targets) => (targets, None),
            Err(e) => (
                Targets::new().with_default(LevelFilter::INFO),
                Some(format!("{value:?}: {e}")),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn the_flag_wins_over_the_environment() {
        let (f, bad) = filter(Some(LevelFilter::DEBUG), Some("error"));
        assert!(bad.is_none());
        assert!(f.would_enable("bramble_networkd", &Level::DEBUG));
        assert!(!f.would_enable("bramble_networkd", &Level::TRACE));
    }

    #[test]
    fn the_environment_sets_levels_and_targets() {
        let (f, bad) = filter(None, Some("warn"));
        assert!(bad.is_none());
        assert!(f.would_enable("bramble_timed", &Level::WARN));
        assert!(!f.would_enable("bramble_timed", &Level::INFO));

        let (f, _) = filter(None, Some("error,bramble_networkd::dhcp=trace"));
        assert!(f.would_enable("bramble_networkd::dhcp", &Level::TRACE));
        assert!(!f.would_enable("bramble_networkd::reconcile", &Level::WARN));
    }

    #[test]
    fn nothing_set_is_info() {
        for env in [None, Some(""), Some("  ")] {
            let (f, bad) = filter(None, env);
            assert!(bad.is_none());
            assert!(f.would_enable("x", &Level::INFO));
            assert!(!f.would_enable("x", &Level::DEBUG));
        }
    }

    #[test]
    fn a_bad_value_is_reported_and_info_used() {
        for value in ["loud", "inof,bramble_timed=debug", "bramble_timed=loud"] {
            let (f, bad) = filter(None, Some(value));
            let bad = bad.expect("refused");
            assert!(bad.contains(&format!("{value:?}")), "{bad}");
            assert!(f.would_enable("x", &Level::INFO));
            assert!(!f.would_enable("x", &Level::DEBUG));
        }
    }
}
