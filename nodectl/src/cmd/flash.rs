//! `nodectl image flash`: the thin front of `bramble-flash`.

use std::io::{BufRead, IsTerminal, Write};

use crate::cli::FlashArgs;
use crate::error::Error;

/// Checks, asks (unless `--yes`), writes, verifies and reports.
pub fn run(out: &mut dyn Write, args: &FlashArgs) -> Result<(), Error> {
    let plan = bramble_flash::prepare(&bramble_flash::Options {
        device: args.device.clone(),
        image: args.image.clone(),
        bmap: args.bmap.clone(),
        config: args.config.clone(),
        allow_file: args.allow_file,
    })?;
    let t = &plan.target;
    writeln!(
        out,
        "image:  {} ({} bytes raw{})",
        plan.image.display(),
        plan.image_size,
        if plan.compressed { ", xz" } else { "" }
    )?;
    match &plan.bmap {
        Some((path, _)) => writeln!(
            out,
            "bmap:   {} ({} bytes mapped)",
            path.display(),
            plan.mapped_bytes()
        )?,
        None => writeln!(out, "bmap:   none")?,
    }
    writeln!(
        out,
        "target: {} ({} bytes){}",
        t.path.display(),
        t.size,
        if t.description.is_empty() {
            String::new()
        } else {
            format!(" {}", t.description)
        }
    )?;
    if let Some((path, _)) = &plan.config {
        writeln!(out, "config: {} (valid)", path.display())?;
    }
    for note in &plan.notes {
        writeln!(out, "note:   {note}")?;
    }
    if !args.yes {
        confirm(out, &t.path.display().to_string())?;
    }
    out.flush()?;
    let report = plan.execute(&bramble_flash::Bar::default())?;
    writeln!(out, "{}", report.summary())?;
    if let Some(placed) = &report.config_placed {
        writeln!(out, "{placed}")?;
    }
    Ok(())
}

fn confirm(out: &mut dyn Write, target: &str) -> Result<(), Error> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::Usage(format!(
            "not overwriting {target} without confirmation: pass --yes"
        )));
    }
    write!(
        out,
        "Everything on {target} will be lost. Type yes to continue: "
    )?;
    out.flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    if line.trim() != "yes" {
        return Err(Error::Usage("cancelled: nothing was written".into()));
    }
    Ok(())
}
