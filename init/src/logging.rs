//! Console and kernel log output for PID 1.
//!
//! Every line goes to the console (PID 1's stdout, which the kernel opened on
//! /dev/console) and, once /dev is mounted, to /dev/kmsg so it is kept in the
//! kernel ring buffer next to the kernel's own messages. Timestamps are seconds
//! since boot, as the kernel prints them.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

static KMSG: Mutex<Option<File>> = Mutex::new(None);

pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_writer(ConsoleAndKmsg)
        .with_timer(Uptime)
        .with_target(false)
        .with_level(true)
        .with_ansi(false)
        .try_init();
}

/// Starts copying log lines into /dev/kmsg (after /dev is mounted).
pub fn attach_kmsg() {
    if let Ok(file) = OpenOptions::new().write(true).open("/dev/kmsg")
        && let Ok(mut guard) = KMSG.lock()
    {
        *guard = Some(file);
    }
}

/// Seconds since boot, from CLOCK_BOOTTIME.
pub fn uptime_secs() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|ts| ts.tv_sec() as f64 + ts.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

struct Uptime;

impl FormatTime for Uptime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write!(w, "[{:>9.3}] bramble:", uptime_secs())
    }
}

struct ConsoleAndKmsg;

impl<'a> MakeWriter<'a> for ConsoleAndKmsg {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(Vec::with_capacity(128))
    }
}

/// Buffers one formatted event and writes it whole on drop, so lines from
/// PID 1 are never interleaved mid-line on the console.
pub struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let _ = io::stdout().lock().write_all(&self.0);
        if let Ok(mut guard) = KMSG.lock()
            && let Some(kmsg) = guard.as_mut()
        {
            // The kernel adds its own timestamp: strip ours and tag the line
            // at "info" (6) so it stays out of the console at loglevel 4.
            let text = String::from_utf8_lossy(&self.0);
            let body = text.split_once("bramble:").map_or(&*text, |(_, b)| b);
            let _ = kmsg.write_all(format!("<6>bramble:{body}").as_bytes());
        }
    }
}
