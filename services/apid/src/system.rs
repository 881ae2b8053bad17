//! What the node reports about its running system, read from `/proc`, `/dev/kmsg`
//! and `statvfs(2)`: memory, load, processes, mounts, the kernel log.
//!
//! Every reader takes its root (normally `/proc`) so tests can point it at
//! fixtures, and reads the real files of the machine it runs on otherwise.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bramble_api::machine::v1::{KernelLogLine, LoadAvgResponse, MemoryResponse, Mount, Process};

/// Where the readers look.
#[derive(Debug, Clone)]
pub struct SystemSource {
    /// procfs.
    pub proc: PathBuf,
    /// The kernel log device.
    pub kmsg: PathBuf,
    /// Where networkd and timed publish their status (`/run/bramble`).
    pub run: PathBuf,
    /// The resolver configuration in force.
    pub resolv_conf: PathBuf,
    /// The kernel's links (`/sys/class/net`), to refuse a configuration
    /// naming links the node does not have.
    pub class_net: PathBuf,
}

impl Default for SystemSource {
    fn default() -> Self {
        Self {
            proc: "/proc".into(),
            kmsg: "/dev/kmsg".into(),
            run: "/run/bramble".into(),
            resolv_conf: "/etc/resolv.conf".into(),
            class_net: "/sys/class/net".into(),
        }
    }
}

impl SystemSource {
    /// `/proc/meminfo`.
    pub fn memory(&self) -> io::Result<MemoryResponse> {
        let text = fs::read_to_string(self.proc.join("meminfo"))?;
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kib| kib * 1024)
        };
        Ok(MemoryResponse {
            total_bytes: field("MemTotal"),
            free_bytes: field("MemFree"),
            available_bytes: field("MemAvailable"),
            buffers_bytes: field("Buffers"),
            cached_bytes: field("Cached"),
        })
    }

    /// `/proc/loadavg`.
    pub fn load_avg(&self) -> io::Result<LoadAvgResponse> {
        let text = fs::read_to_string(self.proc.join("loadavg"))?;
        let mut it = text.split_whitespace().map(|v| v.parse::<f64>());
        let mut next = || {
            it.next()
                .and_then(Result::ok)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed loadavg"))
        };
        Ok(LoadAvgResponse {
            load1: next()?,
            load5: next()?,
            load15: next()?,
        })
    }

    /// Every process in `/proc/<pid>`; ones that exit while being read are
    /// skipped.
    pub fn processes(&self) -> io::Result<Vec<Process>> {
        let ticks = clock_ticks();
        let page = page_size();
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.proc)? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(p) = read_process(&entry.path(), pid, ticks, page) {
                out.push(p);
            }
        }
        out.sort_by_key(|p| p.pid);
        Ok(out)
    }

    /// `/proc/self/mountinfo`, with sizes from `statvfs(2)`.
    pub fn mounts(&self) -> io::Result<Vec<Mount>> {
        let text = fs::read_to_string(self.proc.join("self/mountinfo"))?;
        Ok(text.lines().filter_map(parse_mountinfo_line).collect())
    }

    /// The kernel log records still in the ring, oldest first, at most the
    /// last `tail` (0: all).
    pub fn dmesg(&self, tail: usize) -> io::Result<(Vec<KernelLogLine>, KmsgReader)> {
        let mut reader = KmsgReader::open(&self.kmsg)?;
        let mut lines = reader.read_available()?;
        if tail > 0 && lines.len() > tail {
            lines.drain(..lines.len() - tail);
        }
        Ok((lines, reader))
    }
}

fn read_process(dir: &Path, pid: i32, ticks: f64, page: u64) -> Option<Process> {
    let stat = fs::read_to_string(dir.join("stat")).ok()?;
    // The name is in parentheses and may itself hold spaces or ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // Fields after the name, numbered from 3 in proc(5): state(3) ppid(4)
    // ... utime(14) stime(15) ... rss(24).
    let field = |n: usize| rest.get(n - 3).copied();
    let state = field(3)?.to_owned();
    let ppid = field(4)?.parse().ok()?;
    let utime: u64 = field(14)?.parse().ok()?;
    let stime: u64 = field(15)?.parse().ok()?;
    let rss_pages: u64 = field(24)?.parse().ok()?;
    let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
    let command_line = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    Some(Process {
        pid,
        ppid,
        state,
        name,
        rss_bytes: rss_pages * page,
        #[allow(clippy::cast_precision_loss)]
        cpu_seconds: (utime + stime) as f64 / ticks,
        command_line,
    })
}

fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        #[allow(clippy::cast_precision_loss)]
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

fn page_size() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(p)) if p > 0 => u64::try_from(p).unwrap_or(4096),
        _ => 4096,
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    // id parent major:minor root mountpoint options [optional...] - fstype source superopts
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let right: Vec<&str> = right.split(' ').collect();
    let target = unescape(left.get(4)?);
    let (size_bytes, available_bytes) = nix::sys::statvfs::statvfs(target.as_str())
        .map(|s| {
            let frag = s.fragment_size();
            (s.blocks() * frag, s.blocks_available() * frag)
        })
        .unwrap_or((0, 0));
    Some(Mount {
        source: unescape(right.get(1)?),
        target,
        filesystem: (*right.first()?).to_owned(),
        options: (*left.get(5)?).to_owned(),
        size_bytes,
        available_bytes,
    })
}

/// Reads `/dev/kmsg` without blocking: one record per `read(2)`.
#[derive(Debug)]
pub struct KmsgReader {
    file: fs::File,
}

impl KmsgReader {
    fn open(path: &Path) -> io::Result<Self> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)?;
        Ok(Self { file })
    }

    /// Every record available now (bounded: at most 100 000 per call).
    pub fn read_available(&mut self) -> io::Result<Vec<KernelLogLine>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        for _ in 0..100_000 {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(line) = parse_kmsg_record(&buf[..n]) {
                        out.push(line);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Overwritten before we read it: the next read continues.
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EPIPE as i32) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// `prio,seq,time_us,flags[,...];text\n[ KEY=value\n...]`.
fn parse_kmsg_record(record: &[u8]) -> Option<KernelLogLine> {
    let text = String::from_utf8_lossy(record);
    let (header, body) = text.split_once(';')?;
    let mut fields = header.split(',');
    let prio: u32 = fields.next()?.parse().ok()?;
    let _seq = fields.next()?;
    let time_us = fields.next()?.parse().ok()?;
    let message = body.split('\n').next().unwrap_or("").to_owned();
    Some(KernelLogLine {
        time_us,
        priority: prio & 7,
        text: message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machines_proc() {
        let s = SystemSource::default();
        let m = s.memory().unwrap();
        assert!(m.total_bytes > 0 && m.available_bytes <= m.total_bytes);
        let l = s.load_avg().unwrap();
        assert!(l.load1 >= 0.0);
        let ps = s.processes().unwrap();
        let me = ps
            .iter()
            .find(|p| p.pid == i32::try_from(std::process::id()).unwrap())
            .unwrap();
        assert!(me.rss_bytes > 0 && !me.command_line.is_empty(), "{me:?}");
        let mounts = s.mounts().unwrap();
        let root = mounts.iter().find(|m| m.target == "/").unwrap();
        assert!(root.size_bytes > 0, "{root:?}");
    }

    #[test]
    fn parses_mountinfo_and_kmsg() {
        let m = parse_mountinfo_line(
            "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!(
            (m.target.as_str(), m.filesystem.as_str(), m.source.as_str()),
            ("/mnt/a b", "ext3", "/dev/root")
        );
        assert_eq!(m.options, "rw,noatime");
        let k = parse_kmsg_record(
            b"6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net\n",
        )
        .unwrap();
        assert_eq!(
            (k.priority, k.time_us, k.text.as_str()),
            (6, 5_140_900, "NET: Registered protocol family 10")
        );
        assert!(parse_kmsg_record(b"garbage").is_none());
    }

    #[test]
    fn reads_process_stat_with_odd_names() {
        let dir = tempfile::tempdir().unwrap();
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000000 300 18446744073709551615";
        fs::write(dir.path().join("stat"), stat).unwrap();
        fs::write(dir.path().join("cmdline"), b"/bin/a\0--x\0").unwrap();
        let p = read_process(dir.path(), 42, 100.0, 4096).unwrap();
        assert_eq!(p.name, "a (b) c");
        assert_eq!((p.ppid, p.state.as_str()), (1, "S"));
        assert_eq!(p.rss_bytes, 300 * 4096);
        assert!((p.cpu_seconds - 3.0).abs() < 1e-9);
        assert_eq!(p.command_line, "/bin/a --x");
    }
}
