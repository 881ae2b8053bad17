//! `nodectl config contexts|use-context|add-node|endpoints`.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::cli::{ConfigCommand, OutputFormat};
use crate::error::Error;
use crate::nodeconfig::NodeConfig;
use crate::output::{self, Row};

/// One context, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ContextRow {
    /// Whether it is the current one.
    pub current: bool,
    /// Its name.
    pub name: String,
    /// Its endpoints.
    pub endpoints: Vec<String>,
    /// Its nodes.
    pub nodes: Vec<String>,
}

impl Row for ContextRow {
    fn headers() -> &'static [&'static str] {
        &["CURRENT", "NAME", "ENDPOINTS", "NODES"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            if self.current { "*" } else { "" }.into(),
            self.name.clone(),
            self.endpoints.join(","),
            self.nodes.join(","),
        ]
    }
}

/// Runs one `config` subcommand on the file at `path`.
pub fn run(
    out: &mut dyn Write,
    format: OutputFormat,
    path: &Path,
    context: Option<&str>,
    what: &ConfigCommand,
) -> Result<(), Error> {
    let missing = || Error::NodeConfig {
        path: path.to_path_buf(),
        reason: "no such file (nodectl gen config writes one)".into(),
    };
    let mut config = NodeConfig::load(path)?.ok_or_else(missing)?;
    let usage = |e: String| Error::NodeConfig {
        path: path.to_path_buf(),
        reason: e,
    };
    for addr in match what {
        ConfigCommand::AddNode { nodes } => nodes.as_slice(),
        ConfigCommand::Endpoints { endpoints } => endpoints.as_slice(),
        _ => &[],
    } {
        crate::nodes::NodeAddr::parse(addr).map_err(|e| Error::Usage(format!("{addr}: {e}")))?;
    }
    match what {
        ConfigCommand::Contexts => {
            let rows: Vec<ContextRow> = config
                .contexts
                .iter()
                .map(|(name, c)| ContextRow {
                    current: config.context.as_deref() == Some(name.as_str()),
                    name: name.clone(),
                    endpoints: c.endpoints.clone(),
                    nodes: c.nodes.clone(),
                })
                .collect();
            return output::print(out, format, &rows);
        }
        ConfigCommand::UseContext { name } => {
            config.context(Some(name)).map_err(usage)?;
            config.context = Some(name.clone());
        }
        ConfigCommand::AddNode { nodes } => {
            let name = config.context(context).map_err(usage)?.0.to_owned();
            if let Some(c) = config.contexts.get_mut(&name) {
                for n in nodes {
                    if !c.nodes.contains(n) {
                        c.nodes.push(n.clone());
                    }
                }
            }
        }
        ConfigCommand::Endpoints { endpoints } => {
            let name = config.context(context).map_err(usage)?.0.to_owned();
            if let Some(c) = config.contexts.get_mut(&name) {
                c.endpoints.clone_from(endpoints);
            }
        }
    }
    config.save(path)
}
