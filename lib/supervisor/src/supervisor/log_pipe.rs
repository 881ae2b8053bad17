//! Captured output: reading a service's stdout/stderr pipe, splitting it
//! into lines, numbering them (the service's ring counts, see
//! [`crate::logs`]), and storing each line in the ring, the log file (with
//! its number) and (for `log_console` services) on the console.

use std::io::Write;
use std::time::Instant;

use rustix::io::Errno;
use tracing::{debug, info, warn};

use super::Supervisor;
use crate::logs::rfc3339_ms;
use crate::state::now_unix_ms;

/// Bytes read from one log pipe per read call.
pub(super) const LOG_READ_CHUNK: usize = 16 * 1024;
/// Log pipe reads per wake-up and service (so at most 64 KiB).
pub(super) const LOG_READS_PER_WAKE: usize = 4;
/// Log pipe reads when draining after an exit.
pub(super) const LOG_READS_ON_EXIT: usize = 16;

impl Supervisor {
    pub(super) fn read_log(&mut self, i: usize, now: Instant, max_reads: usize) {
        let mut buf = vec![0u8; LOG_READ_CHUNK];
        let mut lines = Vec::new();
        {
            let s = &mut self.services[i];
            let Some(proc) = s.proc.as_mut() else { return };
            let Some(fd) = proc.log_fd.as_ref() else {
                return;
            };
            let mut eof = false;
            for _ in 0..max_reads {
                match rustix::io::read(fd, &mut buf[..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => s.splitter.feed(&buf[..n], &mut lines),
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => {}
                    Err(e) => {
                        debug!(service = %s.def.name, "log pipe: {e}");
                        eof = true;
                        break;
                    }
                }
            }
            if eof {
                proc.log_fd = None;
                s.splitter.flush(&mut lines);
            }
        }
        self.store_lines(i, lines, now);
    }

    pub(super) fn store_lines(&mut self, i: usize, lines: Vec<String>, now: Instant) {
        if lines.is_empty() {
            return;
        }
        let ts = now_unix_ms();
        let s = &mut self.services[i];
        let mut file_buf = Vec::new();
        for text in lines {
            if s.def.log_console
                && let Some(console) = self.console.as_mut()
            {
                let line = format!("[{}] {text}\n", s.def.name);
                match console.write_all(line.as_bytes()) {
                    Ok(()) => self.console_failing = false,
                    Err(e) if !self.console_failing => {
                        self.console_failing = true;
                        warn!("console write failed: {e}");
                    }
                    Err(_) => {}
                }
            }
            if s.file.is_some() {
                file_buf.extend_from_slice(rfc3339_ms(ts).as_bytes());
                file_buf.push(b' ');
                file_buf.extend_from_slice(s.ring.next_seq().to_string().as_bytes());
                file_buf.push(b' ');
                file_buf.extend_from_slice(text.as_bytes());
                file_buf.push(b'\n');
            }
            s.ring.push(ts, text);
        }
        if let Some(console) = self.console.as_mut() {
            let _ = console.flush();
        }
        let Some(file) = s.file.as_mut() else { return };
        match file.write(&file_buf, &self.log, now) {
            Ok(true) => {
                if s.file_failing {
                    s.file_failing = false;
                    let msg = format!("writing {} again", file.path().display());
                    info!(service = %s.def.name, "{msg}");
                    self.record(Some(i), None, None, msg);
                }
            }
            Ok(false) => {}
            Err(e) => {
                if !s.file_failing {
                    s.file_failing = true;
                    let msg = format!(
                        "cannot write {}: {e}; keeping logs in memory only, retrying every {} ms",
                        file.path().display(),
                        self.log.dir_retry.as_millis()
                    );
                    warn!(service = %s.def.name, "{msg}");
                    self.record(Some(i), None, None, msg);
                }
            }
        }
    }
}
