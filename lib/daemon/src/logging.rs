//! Logs of a supervised daemon: plain lines on stderr (the supervisor
//! captures them, stamps them and echoes them to the console), no colour,
//! no module paths.

use tracing::level_filters::LevelFilter;

/// Installs the daemon's log subscriber at `level`.
pub fn init(level: LevelFilter) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(level)
        .init();
}
