//! Printing results as a table, JSON or YAML.

use std::io::Write;

use serde::Serialize;

use crate::cli::OutputFormat;
use crate::error::Error;

/// Something printable as one row of a table.
pub trait Row: Serialize {
    /// Column titles.
    fn headers() -> &'static [&'static str];
    /// Cells, in the order of [`Row::headers`].
    fn cells(&self) -> Vec<String>;
}

/// Prints `rows` in `format`. JSON and YAML print a list (possibly empty);
/// a table prints nothing when there are no rows.
pub fn print<R: Row>(out: &mut dyn Write, format: OutputFormat, rows: &[R]) -> Result<(), Error> {
    match format {
        OutputFormat::Table => {
            if !rows.is_empty() {
                write_table(out, R::headers(), rows.iter().map(Row::cells))?;
            }
        }
        OutputFormat::Json => {
            let text = serde_json::to_string_pretty(rows).map_err(|e| Error::Encode {
                format: "json",
                reason: e.to_string(),
            })?;
            writeln!(out, "{text}")?;
        }
        OutputFormat::Yaml => {
            let text = serde_norway::to_string(rows).map_err(|e| Error::Encode {
                format: "yaml",
                reason: e.to_string(),
            })?;
            write!(out, "{text}")?;
        }
    }
    Ok(())
}

/// Prints one row of a stream as soon as it arrives: a table row's cells
/// separated by spaces (no alignment: later rows are not known yet), one JSON
/// object per line, or one YAML list item.
pub fn print_streamed<R: Row>(
    out: &mut dyn Write,
    format: OutputFormat,
    row: &R,
) -> std::io::Result<()> {
    let encode = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    match format {
        OutputFormat::Table => writeln!(out, "{}", row.cells().join("   "))?,
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string(row).map_err(|e| encode(e.to_string()))?
        )?,
        OutputFormat::Yaml => write!(
            out,
            "{}",
            serde_norway::to_string(&[row]).map_err(|e| encode(e.to_string()))?
        )?,
    }
    out.flush()
}

/// Left-aligned columns separated by three spaces, no trailing blanks.
pub fn write_table(
    out: &mut dyn Write,
    headers: &[&str],
    rows: impl Iterator<Item = Vec<String>>,
) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `3d4h`, `2h5m`, `5m12s`, `42s`.
pub fn human_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".into();
    }
    // Truncation to whole seconds is intended.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let s = seconds as u64;
    let (d, h, m, s) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// `HH:MM:SS.mmmZ` (UTC) of a time in milliseconds since the Unix epoch:
/// the time column of logs and events.
pub fn clock_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03}Z", unix_ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(42.9), "42s");
        assert_eq!(human_duration(312.0), "5m12s");
        assert_eq!(human_duration(7_500.0), "2h5m");
        assert_eq!(human_duration(277_200.0), "3d5h");
        assert_eq!(human_duration(f64::NAN), "-");
    }

    #[test]
    fn table_alignment() {
        let mut out = Vec::new();
        write_table(
            &mut out,
            &["A", "LONGER"],
            vec![vec!["xyz".into(), "1".into()], vec!["".into(), "".into()]].into_iter(),
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "A     LONGER\nxyz   1\n\n");
    }
}
