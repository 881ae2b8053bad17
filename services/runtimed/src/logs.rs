//! A container's captured output: a bounded ring in memory for `tail`, a
//! broadcast for `follow`, and `/var/log/containers/<name>.log`, rotated by
//! size (one previous file kept as `.log.1`).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

/// Lines kept in memory per container.
pub const RING_LINES: usize = 2000;
/// Size at which the log file is rotated.
pub const ROTATE_BYTES: u64 = 1 << 20;
/// Longest line kept; longer ones are cut (and marked).
pub const MAX_LINE: usize = 16 * 1024;

/// Which of the container's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// Where it came from.
    pub stream: Stream,
    /// The text, without its newline.
    pub text: String,
}

#[derive(Debug)]
struct FileState {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

/// The log of one container.
#[derive(Debug)]
pub struct ContainerLog {
    ring: Mutex<VecDeque<Line>>,
    file: Mutex<FileState>,
    followers: broadcast::Sender<Line>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ContainerLog {
    /// A log appending to `path` (its directory is created when needed).
    pub fn new(path: &Path) -> Self {
        let (followers, _) = broadcast::channel(256);
        Self {
            ring: Mutex::new(VecDeque::with_capacity(64)),
            file: Mutex::new(FileState {
                path: path.to_owned(),
                file: None,
                size: 0,
            }),
            followers,
        }
    }

    /// Records a line from the container (or a note of the runtime's, on
    /// `stderr`).
    pub fn push(&self, stream: Stream, text: &str) {
        let mut text = text.trim_end_matches(['\n', '\r']).to_owned();
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" [line cut]");
        }
        let line = Line {
            time_unix_ms: now_ms(),
            stream,
            text,
        };
        self.append_file(&line);
        if let Ok(mut ring) = self.ring.lock() {
            if ring.len() == RING_LINES {
                ring.pop_front();
            }
            ring.push_back(line.clone());
        }
        // Nobody following is not an error.
        let _ = self.followers.send(line);
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<Line> {
        match self.ring.lock() {
            Ok(ring) => ring
                .iter()
                .skip(ring.len().saturating_sub(n))
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Lines recorded from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Line> {
        self.followers.subscribe()
    }

    fn append_file(&self, line: &Line) {
        let Ok(mut state) = self.file.lock() else {
            return;
        };
        if state.file.is_none() {
            if let Some(dir) = state.path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(&state.path)
            {
                Ok(f) => {
                    state.size = f.metadata().map_or(0, |m| m.len());
                    state.file = Some(f);
                }
                Err(e) => {
                    tracing::warn!(path = %state.path.display(), "cannot open the container log: {e}");
                    return;
                }
            }
        }
        let record = format!(
            "{} {} {}\n",
            line.time_unix_ms,
            line.stream.as_str(),
            line.text
        );
        if let Some(f) = state.file.as_mut()
            && f.write_all(record.as_bytes()).is_ok()
        {
            state.size += record.len() as u64;
        }
        if state.size >= ROTATE_BYTES {
            state.file = None;
            state.size = 0;
            let mut old = state.path.clone().into_os_string();
            old.push(".1");
            if let Err(e) = std::fs::rename(&state.path, &old) {
                tracing::warn!(path = %state.path.display(), "cannot rotate the container log: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_file_and_rotation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c/app.log");
        let log = ContainerLog::new(&path);
        let mut rx = log.subscribe();
        log.push(Stream::Stdout, "hello\n");
        log.push(Stream::Stderr, "oops");
        let tail = log.tail(10);
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[0].text, "hello");
        assert_eq!(tail[1].stream, Stream::Stderr);
        assert_eq!(log.tail(1)[0].text, "oops");
        assert_eq!(rx.try_recv().expect("followed").text, "hello");
        let text = std::fs::read_to_string(&path).expect("log file");
        assert!(
            text.lines()
                .next()
                .expect("line")
                .ends_with(" stdout hello")
        );

        let long = "x".repeat(MAX_LINE + 10);
        log.push(Stream::Stdout, &long);
        assert!(log.tail(1)[0].text.ends_with("[line cut]"));

        for _ in 0..(ROTATE_BYTES as usize / MAX_LINE + 2) {
            log.push(Stream::Stdout, &long);
        }
        assert!(dir.path().join("c/app.log.1").exists(), "rotated");
        assert!(std::fs::metadata(&path).map_or(0, |m| m.len()) < ROTATE_BYTES);
        for _ in 0..RING_LINES + 5 {
            log.push(Stream::Stdout, "again");
        }
        assert_eq!(log.tail(usize::MAX).len(), RING_LINES);
    }
}
