//! `nodectl validate` and `nodectl apply-config`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use bramble_api::machine::v1::{ApplyConfigurationRequest, ApplyConfigurationResponse, ApplyMode};
use bramble_config::MachineConfig;

use crate::cli::ApplyModeArg;
use crate::error::Error;

/// Reads each `--config-patch`: inline YAML, or `@FILE`. Returns (name, text).
pub fn read_patches(patches: &[String]) -> Result<Vec<(String, String)>, Error> {
    patches
        .iter()
        .map(|p| match p.strip_prefix('@') {
            Some(file) => std::fs::read_to_string(file)
                .map(|text| (file.to_owned(), text))
                .map_err(|e| Error::Input {
                    path: file.into(),
                    reason: e.to_string(),
                }),
            None => Ok(("(inline)".to_owned(), p.clone())),
        })
        .collect()
}

/// The file with the patches applied, validated.
pub fn load(file: &Path, patches: &[String]) -> Result<(String, MachineConfig), Error> {
    let input = |reason: String| Error::Input {
        path: file.to_path_buf(),
        reason,
    };
    let mut yaml = std::fs::read_to_string(file).map_err(|e| input(e.to_string()))?;
    for (name, patch) in read_patches(patches)? {
        yaml = bramble_config::apply_patch(&yaml, &patch)
            .map_err(|e| input(format!("patch {name} cannot be applied:\n{e}")))?;
    }
    let config =
        MachineConfig::parse(&yaml).map_err(|e| input(format!("invalid configuration:\n{e}")))?;
    Ok((yaml, config))
}

/// `validate -f FILE`.
pub fn validate(out: &mut dyn Write, file: &Path) -> Result<(), Error> {
    let (_, config) = load(file, &[])?;
    writeln!(
        out,
        "{}: valid ({} node of cluster {})",
        file.display(),
        config.machine.machine_type.as_str(),
        config.cluster.name
    )?;
    Ok(())
}

/// The request for the flags.
pub fn request(
    yaml: String,
    mode: ApplyModeArg,
    dry_run: bool,
    try_timeout: Duration,
) -> ApplyConfigurationRequest {
    let mode = match mode {
        ApplyModeArg::Auto => ApplyMode::Auto,
        ApplyModeArg::NoReboot => ApplyMode::NoReboot,
        ApplyModeArg::Reboot => ApplyMode::Reboot,
        ApplyModeArg::Staged => ApplyMode::Staged,
        ApplyModeArg::Try => ApplyMode::Try,
    };
    ApplyConfigurationRequest {
        data: yaml.into_bytes(),
        mode: mode as i32,
        dry_run,
        try_timeout_seconds: u32::try_from(try_timeout.as_secs().max(1)).unwrap_or(u32::MAX),
    }
}

/// Prints one node's answer.
pub fn print(
    out: &mut dyn Write,
    node: &str,
    r: &ApplyConfigurationResponse,
    dry_run: bool,
) -> Result<(), Error> {
    writeln!(out, "{node}: {}", r.summary)?;
    if !r.restarted.is_empty() {
        let verb = if dry_run {
            "would restart"
        } else {
            "restarted"
        };
        writeln!(out, "{node}: {verb}: {}", r.restarted.join(", "))?;
    }
    if !r.reloaded.is_empty() {
        let verb = if dry_run { "would reload" } else { "reloaded" };
        writeln!(out, "{node}: {verb}: {}", r.reloaded.join(", "))?;
    }
    if dry_run {
        out.write_all(r.diff.as_bytes())?;
    }
    Ok(())
}
