//! `nodectl`: command-line client for the Bramble machine API.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use nodectl::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let ok = runtime.block_on(nodectl::run(cli, &mut stdout.lock(), &mut stderr.lock()))?;
    std::io::stdout().flush().context("cannot write output")?;
    Ok(ok)
}
