//! `nodectl`: the command-line client of the Bramble machine API.
//!
//! The binary is a thin wrapper around [`run`], which tests call directly.

pub mod cli;
pub mod client;
pub mod cmd;
pub mod error;
pub mod nodes;
pub mod output;

use std::io::Write;

use clap::CommandFactory;

pub use cli::Cli;
pub use error::{Error, NodeError};

/// `NODE: message`, with the address actually dialled in parentheses when
/// it is not obvious from the node's name (an endpoint, a resolved name).
pub fn describe_failure(target: &nodes::Target, e: &NodeError) -> String {
    let named = format!("{}:{}", target.node.uri_host(), target.node.port);
    match e.addr() {
        Some(a) if a.to_string() != named => format!("{} ({a}): {e}", target.node),
        _ => format!("{}: {e}", target.node),
    }
}

/// Runs a parsed command line. Results go to `out`, per-node errors to
/// `err` as `NODE: message`. Returns `Ok(true)` if every node answered,
/// `Ok(false)` if some failed (exit code 1), `Err` if the command could not
/// run at all.
pub async fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<bool, Error> {
    match cli.command {
        cli::Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "nodectl", out);
            Ok(true)
        }
        cli::Command::Version => {
            let g = &cli.global;
            let targets = nodes::targets(&g.nodes, &g.endpoints)?;
            let tls = client::ClientTls::from_flags(g.insecure, g.cert_fingerprint.clone())?;
            let results = cmd::version::fan_out(&targets, &tls, g.timeout).await;
            let mut rows = Vec::new();
            let mut all_ok = true;
            for (target, result) in results {
                match result {
                    Ok(v) => rows.push(cmd::version::VersionRow::new(target.node.to_string(), v)),
                    Err(e) => {
                        all_ok = false;
                        writeln!(err, "{}", describe_failure(&target, &e))?;
                    }
                }
            }
            output::print(out, g.output, &rows)?;
            Ok(all_ok)
        }
    }
}
