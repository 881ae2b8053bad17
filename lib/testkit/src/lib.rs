//! Helpers for host tests that run real programs (dnsmasq, chronyd, the
//! daemons themselves) as root in network namespaces the test creates.
//!
//! Setup failures panic on purpose: these run inside `#[test]` functions,
//! where a panic is the failure report. Every wait is bounded. A test whose
//! prerequisite is missing skips only through [`skip_unless!`] (or
//! [`skip_checks_unless!`]), which say so and fail under `CI=true`.

pub mod registry;
pub mod skip;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Finds `name` on `PATH` or in the usual system directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Whether the effective user is root (network namespaces need it).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Why a namespace test cannot run here: not root, no `ip`, or one of
/// `programs` missing (with the Debian package to install, as `(program,
/// package)`). `None` when it can.
pub fn skip_reason(programs: &[(&str, &str)]) -> Option<String> {
    if !is_root() {
        return Some("not running as root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    if find_program("ip").is_none() {
        return Some("`ip` (iproute2) not found".into());
    }
    programs
        .iter()
        .find(|(p, _)| find_program(p).is_none())
        .map(|(p, package)| format!("`{p}` not found (install the Debian package {package})"))
}

/// Runs `args[0] args[1..]`, panicking unless it succeeds; its stdout.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file's text, empty when it cannot be read (yet).
pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}
