//! Captured service output: line splitting, the in-memory ring, rotated files.
//!
//! Line numbers: the ring of a service numbers every line it is given, from
//! 1, and keeps counting for as long as the supervisor runs: a restarted
//! service's lines continue its numbering (the ring outlives the process),
//! and rotating the file changes nothing (the number belongs to the line,
//! not to a file), so `<name>.log.1` ends one below where `<name>.log`
//! begins, unless lines were kept in memory only while the file could not
//! be written: the missing numbers say which. A new supervisor (the next
//! boot; PID 1 itself never restarts) numbers from 1 again, so in a file a
//! number that drops back marks a new boot. A line too long for the ring
//! still takes its number.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::LogLine;

pub(crate) const TRUNCATED: &str = "...[truncated]";
const RING_ENTRY_OVERHEAD: usize = 32;

/// Where and how much output is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// Bytes of recent lines kept in memory per service (default 512 KiB, at least 8 KiB).
    pub ring_bytes: usize,
    /// Longer lines are cut to this many bytes (default 4 KiB, 64 B to 64 KiB).
    pub max_line_bytes: usize,
    /// If set, lines are also appended to `<dir>/<name>.log`, each as
    /// `<RFC 3339 time, ms> <line number> <text>`. The directory
    /// may appear later (it is retried at most every `dir_retry`); until then
    /// only the ring is kept, and the failure is reported once.
    pub dir: Option<PathBuf>,
    /// Rotate `<name>.log` when it would grow beyond this (default 1 MiB).
    pub file_max_bytes: u64,
    /// Rotated files kept: `<name>.log.1` (newest) .. `<name>.log.N` (default 1, at least 1).
    pub file_keep: u32,
    /// Minimum time between attempts to open a log file that failed (default 5 s).
    pub dir_retry: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            ring_bytes: 512 * 1024,
            max_line_bytes: 4096,
            dir: None,
            file_max_bytes: 1024 * 1024,
            file_keep: 1,
            dir_retry: Duration::from_secs(5),
        }
    }
}

impl LogOptions {
    pub(crate) fn normalized(mut self) -> Self {
        self.ring_bytes = self.ring_bytes.max(8 * 1024);
        self.max_line_bytes = self.max_line_bytes.clamp(64, 64 * 1024);
        self.file_max_bytes = self.file_max_bytes.max(1024);
        self.file_keep = self.file_keep.clamp(1, 100);
        self
    }
}

/// Splits a byte stream into lines of bounded length.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    /// Dropping the rest of an over-long line until the next newline.
    discarding: bool,
}

impl LineSplitter {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// Appends completed lines to `out`.
    pub(crate) fn feed(&mut self, mut data: &[u8], out: &mut Vec<String>) {
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let (chunk, rest, complete) = match nl {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            if !self.discarding {
                let room = self.max - self.buf.len();
                if chunk.len() > room {
                    self.buf.extend_from_slice(&chunk[..room]);
                    out.push(self.take(true));
                    self.discarding = !complete;
                } else {
                    self.buf.extend_from_slice(chunk);
                    if complete {
                        out.push(self.take(false));
                    }
                }
            } else if complete {
                self.discarding = false;
            }
            data = rest;
        }
    }

    /// Emits a pending partial line (at end of stream).
    pub(crate) fn flush(&mut self, out: &mut Vec<String>) {
        if !self.buf.is_empty() {
            out.push(self.take(false));
        }
        self.discarding = false;
    }

    fn take(&mut self, truncated: bool) -> String {
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let mut s = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        if truncated {
            // Cut at a char boundary so the result stays within max + marker.
            let mut cut = s.len().min(self.max);
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push_str(TRUNCATED);
        }
        s
    }
}

/// Recent lines within a byte budget, numbered (see the module documentation).
#[derive(Debug)]
pub(crate) struct LogRing {
    lines: VecDeque<LogLine>,
    bytes: usize,
    cap: usize,
    /// The number the next line gets.
    next_seq: u64,
}

impl LogRing {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            bytes: 0,
            cap,
            next_seq: 1,
        }
    }

    /// The number the next pushed line gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The newest line's number (0 before the first line).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Numbers a line and keeps it (dropping the oldest to stay within the
    /// budget); returns its number.
    pub(crate) fn push(&mut self, time_unix_ms: u64, text: String) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let line = LogLine {
            seq,
            time_unix_ms,
            text,
        };
        let cost = line.text.len() + RING_ENTRY_OVERHEAD;
        while self.bytes + cost > self.cap {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.text.len() + RING_ENTRY_OVERHEAD,
                None => break,
            }
        }
        if cost <= self.cap {
            self.bytes += cost;
            self.lines.push_back(line);
        }
        seq
    }

    pub(crate) fn tail(&self, n: usize) -> Vec<LogLine> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines.iter().skip(skip).cloned().collect()
    }

    /// At most `n` lines numbered above `after`, oldest first.
    pub(crate) fn after(&self, after: u64, n: usize) -> Vec<LogLine> {
        let start = self.lines.partition_point(|l| l.seq <= after);
        self.lines.iter().skip(start).take(n).cloned().collect()
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// `<dir>/<name>.log`, rotated by size.
#[derive(Debug)]
pub(crate) struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    retry_at: Option<Instant>,
}

impl LogFile {
    pub(crate) fn new(dir: &Path, name: &str) -> Self {
        Self {
            path: dir.join(format!("{name}.log")),
            file: None,
            size: 0,
            retry_at: None,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `data` (whole lines). `Ok(false)`: skipped because an earlier
    /// failure is still within its retry interval. `Ok(true)`: written.
    pub(crate) fn write(
        &mut self,
        data: &[u8],
        opts: &LogOptions,
        now: Instant,
    ) -> std::io::Result<bool> {
        if data.is_empty() {
            return Ok(true);
        }
        if self.file.is_none() {
            if self.retry_at.is_some_and(|t| now < t) {
                return Ok(false);
            }
            if let Err(e) = self.open() {
                self.retry_at = Some(now + opts.dir_retry);
                return Err(e);
            }
        }
        let result = self.write_inner(data, opts);
        if result.is_err() {
            self.file = None;
            self.retry_at = Some(now + opts.dir_retry);
        }
        result.map(|()| true)
    }

    fn open(&mut self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        self.retry_at = None;
        Ok(())
    }

    /// Writes whole lines, rotating before a line that would not fit. A
    /// single line longer than the limit goes alone into a fresh file.
    fn write_inner(&mut self, data: &[u8], opts: &LogOptions) -> std::io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let room = usize::try_from(opts.file_max_bytes.saturating_sub(self.size))
                .unwrap_or(usize::MAX);
            // Longest prefix of whole lines that fits in `room`.
            let mut take = 0;
            let mut pos = 0;
            while let Some(nl) = rest[pos..].iter().position(|&b| b == b'\n') {
                let end = pos + nl + 1;
                if end > room {
                    break;
                }
                take = end;
                pos = end;
            }
            if take == 0 {
                if self.size > 0 {
                    self.rotate(opts.file_keep)?;
                    continue;
                }
                take = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |p| p + 1);
            }
            let Some(file) = self.file.as_mut() else {
                return Err(std::io::Error::other("log file not open"));
            };
            file.write_all(&rest[..take])?;
            self.size += take as u64;
            rest = &rest[take..];
        }
        Ok(())
    }

    fn rotate(&mut self, keep: u32) -> std::io::Result<()> {
        self.file = None;
        let numbered = |k: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{k}"));
            PathBuf::from(p)
        };
        for k in (1..keep).rev() {
            match std::fs::rename(numbered(k), numbered(k + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.open()
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for ms since the Unix epoch (the last
/// millisecond of the year 9999 past it).
pub(crate) fn rfc3339_ms(unix_ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or_else(|_| {
            time::OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT)
                + time::Duration::milliseconds(86_399_999)
        });
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_lines_and_truncation() {
        let mut s = LineSplitter::new(8);
        let mut out = Vec::new();
        s.feed(b"ab", &mut out);
        assert!(out.is_empty());
        s.feed(b"c\r\nde\nfghijklmnopq", &mut out);
        assert_eq!(
            out,
            vec![
                "abc".to_string(),
                "de".into(),
                format!("fghijklm{TRUNCATED}")
            ]
        );
        out.clear();
        s.feed(b"rest of long\nnext\npart", &mut out);
        assert_eq!(out, vec!["next".to_string()]);
        out.clear();
        s.flush(&mut out);
        assert_eq!(out, vec!["part".to_string()]);
        // Exactly max bytes then newline: not truncated.
        out.clear();
        s.feed(b"12345678\n", &mut out);
        assert_eq!(out, vec!["12345678".to_string()]);
        // Invalid UTF-8 is replaced, not dropped.
        out.clear();
        s.feed(b"\xff\n", &mut out);
        assert_eq!(out, vec!["\u{fffd}".to_string()]);
    }

    #[test]
    fn ring_is_bounded() {
        let mut r = LogRing::new(8 * 1024);
        for i in 0..10_000 {
            assert_eq!(r.push(i, format!("line {i}")), i + 1);
            assert!(r.bytes() <= 8 * 1024);
        }
        let t = r.tail(3);
        assert_eq!(t.len(), 3);
        assert_eq!(t[2].text, "line 9999");
        assert!(r.tail(1_000_000).len() < 10_000);
    }

    #[test]
    fn ring_lines_are_numbered_and_read_after_a_number() {
        let mut r = LogRing::new(8 * 1024);
        assert_eq!((r.next_seq(), r.last_seq()), (1, 0));
        assert!(r.after(0, 10).is_empty());
        for _ in 0..5 {
            r.push(7, "same".into());
        }
        // Identical lines at the same millisecond stay apart by number.
        let seqs = |v: Vec<LogLine>| v.into_iter().map(|l| l.seq).collect::<Vec<_>>();
        assert_eq!(seqs(r.after(0, 10)), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(r.after(2, 2)), [3, 4]);
        assert!(r.after(5, 10).is_empty());
        // Scrolled out: what is left starts above the number asked after.
        for i in 0..1000 {
            r.push(8, format!("filler {i}"));
        }
        let rest = r.after(3, 1);
        assert!(rest[0].seq > 4, "{rest:?}");
        assert_eq!(r.last_seq(), 1005);
        // Too long for the ring: not kept, numbered all the same.
        assert_eq!(r.push(9, "x".repeat(9000)), 1006);
        assert_eq!(r.after(1005, 10), []);
        assert_eq!(r.next_seq(), 1007);
    }

    #[test]
    fn file_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            file_max_bytes: 1024,
            file_keep: 2,
            ..LogOptions::default()
        }
        .normalized();
        let mut f = LogFile::new(dir.path(), "svc");
        let now = Instant::now();
        for i in 0..50 {
            let batch: String = (0..4)
                .map(|k| format!("line {:05} padding\n", i * 4 + k))
                .collect();
            assert!(f.write(batch.as_bytes(), &opts, now).unwrap());
        }
        // One batch far larger than the limit still rotates line by line.
        let big: String = (200..400)
            .map(|k| format!("line {k:05} padding\n"))
            .collect();
        assert!(f.write(big.as_bytes(), &opts, now).unwrap());
        let p = |s: &str| dir.path().join(s);
        for name in ["svc.log", "svc.log.1", "svc.log.2"] {
            let len = std::fs::metadata(p(name)).unwrap().len();
            assert!(len > 0 && len <= 1024, "{name}: {len}");
        }
        assert!(!p("svc.log.3").exists());
        let cur = std::fs::read_to_string(p("svc.log")).unwrap();
        assert!(cur.ends_with("line 00399 padding\n"));
        let older = std::fs::read_to_string(p("svc.log.1")).unwrap();
        assert!(older.lines().last().unwrap() < cur.lines().next().unwrap());
    }

    #[test]
    fn file_missing_dir_retries_later() {
        let dir = tempfile::tempdir().unwrap();
        let logdir = dir.path().join("later");
        let opts = LogOptions {
            dir_retry: Duration::from_millis(100),
            ..LogOptions::default()
        };
        let mut f = LogFile::new(&logdir, "svc");
        let t0 = Instant::now();
        assert!(f.write(b"a\n", &opts, t0).is_err());
        std::fs::create_dir(&logdir).unwrap();
        assert!(!f.write(b"b\n", &opts, t0).unwrap());
        assert!(
            f.write(b"c\n", &opts, t0 + Duration::from_millis(150))
                .unwrap()
        );
        assert_eq!(std::fs::read_to_string(f.path()).unwrap(), "c\n");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_795_392_116_000), "2026-11-23T00:01:56.000Z");
    }
}
