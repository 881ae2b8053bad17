//! Entry points for the fuzz targets (`tests/fuzz/`), behind the `fuzzing`
//! feature: the line splitter, which the supervisor otherwise feeds only
//! from a running service's output pipe. Nothing here is built into PID 1.

use crate::logs::{LineSplitter, LogOptions};

/// The marker a cut line ends with.
pub const TRUNCATED: &str = crate::logs::TRUNCATED;

/// Splits `chunks`, read one after another from a service's output, into the
/// lines the supervisor captures, then flushes a partial last line as at the
/// end of the stream. `max_line_bytes` is bounded as [`LogOptions`] bounds
/// it; returns the bound used and the lines.
pub fn split_lines<'a>(
    max_line_bytes: usize,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (usize, Vec<String>) {
    let max = LogOptions {
        max_line_bytes,
        ..LogOptions::default()
    }
    .normalized()
    .max_line_bytes;
    let mut splitter = LineSplitter::new(max);
    let mut lines = Vec::new();
    for chunk in chunks {
        splitter.feed(chunk, &mut lines);
    }
    splitter.flush(&mut lines);
    (max, lines)
}
