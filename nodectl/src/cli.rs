//! The command line.

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
    /// maintenance-mode connection of --insecure, but verified.
    #[arg(long, global = true, value_name = "SHA256:HEX", value_parser = parse_fingerprint)]
    pub cert_fingerprint: Option<Fingerprint>,

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

    /// Print a shell completion script, e.g. `nodectl completion bash >
    /// /etc/bash_completion.d/nodectl`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
