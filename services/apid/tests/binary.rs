//! The `bramble-apid` binary as the supervisor runs it: readiness on an
//! inherited pipe, the console line on stdout, SIGTERM, restart.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const TIMEOUT: Duration = Duration::from_secs(30);

struct Started {
    child: Child,
    banner: String,
    ready: String,
}

/// Starts apid with a readiness pipe; returns once the banner and READY
/// were received (or panics after a timeout).
fn start(state: &Path) -> Started {
    let (ready_r, ready_w) = nix::unistd::pipe().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bramble-apid"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .env("BRAMBLE_READY_FD", ready_w.as_raw_fd().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Only the child keeps a write end.
    drop(ready_w);
    let stdout = child.stdout.take().unwrap();

    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        tx.send(("banner", line)).unwrap();
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 8];
        let mut f = File::from(ready_r);
        let got = match f.read_exact(&mut buf) {
            Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
            Err(e) => format!("error: {e}"),
        };
        tx2.send(("ready", got)).unwrap();
    });
    let (mut banner, mut ready) = (None, None);
    while banner.is_none() || ready.is_none() {
        match rx.recv_timeout(TIMEOUT) {
            Ok(("banner", l)) => banner = Some(l),
            Ok((_, r)) => ready = Some(r),
            Err(_) => {
                let _ = child.kill();
                panic!("apid did not start: banner={banner:?} ready={ready:?}");
            }
        }
    }
    Started {
        child,
        banner: banner.unwrap_or_default(),
        ready: ready.unwrap_or_default(),
    }
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("apid ignored SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `API listening on 127.0.0.1:PORT (maintenance mode), certificate fingerprint SHA256:<64 hex>`
fn parse_banner(banner: &str) -> (String, String) {
    let rest = banner
        .trim_end()
        .strip_prefix("API listening on ")
        .unwrap_or_else(|| panic!("{banner:?}"));
    let (addr, rest) = rest.split_once(' ').unwrap();
    let fp = rest
        .strip_prefix("(maintenance mode), certificate fingerprint SHA256:")
        .unwrap_or_else(|| panic!("{banner:?}"));
    assert_eq!(fp.len(), 64, "{banner:?}");
    assert!(
        fp.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    (addr.to_owned(), format!("SHA256:{fp}"))
}

#[test]
fn ready_banner_sigterm_and_stable_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("apid");

    let first = start(&state);
    assert_eq!(first.ready, "READY=1\n");
    let (addr, fingerprint) = parse_banner(&first.banner);
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert_ne!(addr.port(), 0);
    // Bound before READY: a connection succeeds right away.
    std::net::TcpStream::connect(addr).unwrap();
    let status = stop(first.child);
    assert!(status.success(), "{status:?}");

    let second = start(&state);
    assert_eq!(second.ready, "READY=1\n");
    let (_, again) = parse_banner(&second.banner);
    assert_eq!(again, fingerprint, "fingerprint changed across restarts");
    assert!(stop(second.child).success());

    let mut names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["server.crt", "server.key"]);
}

#[test]
fn unusable_state_dir_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bramble-apid"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(file.join("apid"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state directory") && err.contains("not-a-dir"),
        "{err}"
    );
}

#[test]
fn bad_listen_address_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_bramble-apid"))
        .args(["--listen", "50000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}
