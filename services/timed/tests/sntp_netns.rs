//! End-to-end SNTP test against a real NTP server, in network namespaces
//! the test creates itself.
//!
//! A veth pair joins a client namespace (10.124.0.2/24) and a server
//! namespace (10.124.0.1/24). Debian's `chronyd` runs in the server
//! namespace with `local stratum 8`, its own configuration, pid and drift
//! files in a temporary directory, no command socket, and `-x` so it never
//! touches the clock. The real `timed` binary runs in the client namespace
//! with `--no-set-clock` (the host clock is never changed). The test checks
//! readiness, the sync (status, stratum, offset, marker, saved time), a bad
//! configuration on SIGHUP (refused, nothing changed), failures with backoff
//! while the server is gone (marker kept, process alive), and SIGTERM (time
//! saved, exit 0).
//!
//! Needs root, `ip` and `chronyd` (package `chrony`); without them the test
//! prints why and passes without doing anything, except under `CI=true`,
//! where it fails (`bramble_testkit::skip_unless!`). A second test needs
//! neither: it runs `timed` against a silent loopback port.

// Harness helpers outside `#[test]` functions panic on setup failures on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bramble_testkit::{read, run, skip_reason, skip_unless, wait_exit, wait_for};

const CLIENT_IF: &str = "tdc0";
const SERVER_IF: &str = "tds0";
const SERVER_IP: &str = "10.124.0.1";
const CLIENT_IP: &str = "10.124.0.2";
/// What `local stratum 8` makes chronyd send in its replies.
const CHRONY_STRATUM: u64 = 8;

fn json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&read(path)).ok()
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A valid machine configuration whose `machine.time` block is `time`.
fn machine_config(time: &str) -> String {
    format!(
        r#"version: v1alpha1
machine:
  type: worker
  hostname: node-2
  ca:
    crt: |
      -----BEGIN CERTIFICATE-----
      MIIBszCCAVmgAwIBAgIUZ2VuZXJhdGVk
      -----END CERTIFICATE-----
{time}
cluster:
  name: bramble
  controlPlane:
    endpoint: https://10.0.0.10:6443
"#
    )
}

fn signal(child: &Child, sig: &str) {
    run(&["kill", &format!("-{sig}"), &child.id().to_string()]);
}

/// Starts `timed` (through `prefix`, e.g. `ip netns exec NS`) with files in
/// `dir`; readiness goes to `dir/ready` (handed over as fd 0).
fn spawn_timed(dir: &Path, prefix: &[&str], extra: &[&str]) -> Child {
    let timed = env!("CARGO_BIN_EXE_bramble-timed");
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(timed);
            c
        }
        None => Command::new(timed),
    };
    cmd.arg("--no-set-clock")
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args(["--log-level", "debug"])
        .args(extra)
        .env("BRAMBLE_READY_FD", "0")
        .stdin(File::create(dir.join("ready")).unwrap())
        .stdout(File::create(dir.join("timed.stdout")).unwrap())
        .stderr(File::create(dir.join("timed.stderr")).unwrap())
        .spawn()
        .unwrap()
}

/// Owns the namespaces and child processes; tears everything down on drop,
/// including when an assertion fails.
struct Lab {
    client_ns: String,
    server_ns: String,
    dir: tempfile::TempDir,
    chronyd: Option<Child>,
    timed: Option<Child>,
}

impl Lab {
    fn new() -> Self {
        let id = std::process::id();
        let lab = Self {
            client_ns: format!("bramble-tdc-{id}"),
            server_ns: format!("bramble-tds-{id}"),
            dir: tempfile::tempdir().unwrap(),
            chronyd: None,
            timed: None,
        };
        run(&["ip", "netns", "add", &lab.client_ns]);
        run(&["ip", "netns", "add", &lab.server_ns]);
        // The pair is created inside the client namespace with its peer in
        // the server namespace: nothing touches the host's own namespace.
        run(&[
            "ip",
            "-n",
            &lab.client_ns,
            "link",
            "add",
            CLIENT_IF,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_IF,
            "netns",
            &lab.server_ns,
        ]);
        for (ns, ifname, ip) in [
            (&lab.server_ns, SERVER_IF, SERVER_IP),
            (&lab.client_ns, CLIENT_IF, CLIENT_IP),
        ] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                ifname,
            ]);
            run(&["ip", "-n", ns, "link", "set", ifname, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_chronyd(&mut self) {
        let conf = self.path("chrony.conf");
        fs::write(
            &conf,
            format!(
                "# Test server: serves its own clock, never disciplines it.\n\
                 local stratum {CHRONY_STRATUM}\n\
                 allow 10.124.0.0/24\n\
                 bindaddress {SERVER_IP}\n\
                 port 123\n\
                 cmdport 0\n\
                 bindcmdaddress /\n\
                 driftfile {}\n\
                 pidfile {}\n",
                self.path("chrony.drift").display(),
                self.path("chronyd.pid").display(),
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.server_ns, "chronyd"])
            // -d: foreground, log to stderr; -x: never adjust the system
            // clock; -u root: no privilege drop (files are in our temp dir).
            .args(["-d", "-x", "-u", "root", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(self.path("chronyd.stderr")).unwrap())
            .spawn()
            .unwrap();
        self.chronyd = Some(child);
    }

    fn stop_chronyd(&mut self) {
        if let Some(mut c) = self.chronyd.take() {
            let _ = c.kill();
            let _ = wait_exit(&mut c, Duration::from_secs(5));
        }
    }

    fn timed_log(&self) -> String {
        read(&self.path("timed.stderr"))
    }

    fn state(&self) -> Option<serde_json::Value> {
        json(&self.path("run/time/state.json"))
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- timed stderr\n{}\n--- state.json\n{}\n--- chronyd stderr\n{}",
            self.timed_log(),
            read(&self.path("run/time/state.json")),
            read(&self.path("chronyd.stderr")),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        if let Some(mut c) = self.timed.take() {
            let _ = c.kill();
            let _ = wait_exit(&mut c, Duration::from_secs(5));
        }
        self.stop_chronyd();
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn sync_with_chrony_then_lose_it() {
    skip_unless!(available: skip_reason(&[("chronyd", "chrony")]));
    let mut lab = Lab::new();
    lab.start_chronyd();
    fs::write(
        lab.path("config.yaml"),
        machine_config(&format!("  time:\n    servers: [{SERVER_IP}]")),
    )
    .unwrap();
    // A saved time a day ahead: reported, but not applied (--no-set-clock).
    let ahead = now_unix() as i64 + 86_400;
    fs::create_dir_all(lab.path("state")).unwrap();
    fs::write(
        lab.path("state/clock.json"),
        format!("{{\"unix_seconds\": {ahead}, \"nanos\": 0, \"synced\": true}}"),
    )
    .unwrap();

    let ns_exec = ["ip", "netns", "exec", lab.client_ns.as_str()];
    let timed = spawn_timed(
        lab.dir.path(),
        &ns_exec,
        &[
            "--min-poll",
            "1",
            "--max-poll",
            "2",
            "--retry-min",
            "1",
            "--query-timeout-ms",
            "500",
            "--save-interval",
            "1",
        ],
    );
    lab.timed = Some(timed);

    // Ready at once, without waiting for a server.
    wait_for("readiness", Duration::from_secs(5), || {
        (read(&lab.path("ready")) == "READY=1\n").then_some(())
    });
    assert!(
        lab.timed_log()
            .contains("is behind the saved time")
            .then_some(())
            .is_some(),
        "{}",
        lab.timed_log()
    );

    // Synced with chronyd (it may answer "unsynchronised" for a moment).
    let state = wait_for("a sync with chronyd", Duration::from_secs(30), || {
        lab.state().filter(|s| s["synced"] == true)
    });
    assert_eq!(state["server"], SERVER_IP, "{state}");
    assert_eq!(state["address"], format!("{SERVER_IP}:123"), "{state}");
    assert_eq!(state["stratum"], CHRONY_STRATUM, "{state}");
    assert_eq!(state["servers"], serde_json::json!([SERVER_IP]));
    assert_eq!(state["default_servers"], false);
    assert_eq!(state["sets_clock"], false);
    assert_eq!(state["restored_from_state"], false);
    assert_eq!(state["saved_time_unix"], ahead);
    assert_eq!(state["consecutive_failures"], 0);
    // The step guard: its bound, the build-time floor, nothing refused.
    assert_eq!(state["max_step_seconds"], 1000, "{state}");
    assert!(state["build_time_unix"].as_i64().unwrap() < now_unix() as i64);
    assert_eq!(state["refused_answers"], 0, "{state}");
    assert!(state["last_refused"].is_null(), "{state}");
    // Both sides read the same host clock, so the true offset is 0 and the
    // measured one can only be off by the path asymmetry: at most delay / 2.
    let offset = state["offset_seconds"].as_f64().unwrap();
    let delay = state["delay_seconds"].as_f64().unwrap();
    assert!((0.0..2.0).contains(&delay), "delay {delay}");
    assert!(
        offset.abs() <= delay / 2.0 + 0.001,
        "offset {offset}, delay {delay}"
    );
    assert!(state["next_poll_unix"].as_f64().unwrap() > now_unix() - 1.0);
    assert!((state["last_sync_unix"].as_f64().unwrap() - now_unix()).abs() < 10.0);
    assert!(lab.path("run/time/synced").exists());
    assert!(
        lab.timed_log()
            .contains(&format!("synchronised with {SERVER_IP} ({SERVER_IP}:123)")),
        "{}",
        lab.timed_log()
    );
    // The saved time now comes from the sync.
    let saved = json(&lab.path("state/clock.json")).unwrap();
    assert_eq!(saved["synced"], true, "{saved}");
    let saved_secs = saved["unix_seconds"].as_i64().unwrap();
    assert!((saved_secs - now_unix() as i64).abs() < 10, "{saved}");

    // A bad configuration on SIGHUP: refused, naming file and field, and
    // nothing changes.
    fs::write(
        lab.path("config.yaml"),
        machine_config("  time:\n    servers: [\"not a host!\"]"),
    )
    .unwrap();
    signal(lab.timed.as_ref().unwrap(), "HUP");
    let state = wait_for("the config error", Duration::from_secs(5), || {
        lab.state().filter(|s| s["config_error"].is_string())
    });
    let err = state["config_error"].as_str().unwrap();
    assert!(err.contains("machine.time.servers[0]"), "{err}");
    assert!(err.contains("config.yaml"), "{err}");
    assert_eq!(state["servers"], serde_json::json!([SERVER_IP]));
    assert_eq!(state["synced"], true);
    let polls_before = lab.timed_log().matches("sample from").count();
    wait_for("polling to go on", Duration::from_secs(10), || {
        (lab.timed_log().matches("sample from").count() > polls_before).then_some(())
    });

    // Server gone: failures with backoff, marker kept, still running.
    // (Failures logged before this point, e.g. chronyd not yet listening
    // at the first attempt, are not counted.)
    let log_before = lab.timed_log().len();
    lab.stop_chronyd();
    let state = wait_for("three failures", Duration::from_secs(20), || {
        lab.state()
            .filter(|s| s["consecutive_failures"].as_u64().unwrap_or(0) >= 3)
    });
    assert!(
        state["last_error"]
            .as_str()
            .unwrap_or("")
            .contains(SERVER_IP),
        "{state}"
    );
    assert_eq!(state["synced"], true);
    assert!(state["next_poll_unix"].is_number(), "{state}");
    assert!(lab.path("run/time/synced").exists());
    assert!(
        lab.timed.as_mut().unwrap().try_wait().unwrap().is_none(),
        "timed exited"
    );
    let full_log = lab.timed_log();
    let log = full_log.get(log_before..).unwrap_or("");
    let retries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no good time sample"))
        .filter_map(|l| l.split("retrying in ").nth(1))
        .collect();
    assert!(retries.len() >= 3, "{retries:?}");
    // retry-min 1 s doubling, capped at max-poll 2 s once synced.
    assert_eq!(&retries[..3], &["1 s", "2 s", "2 s"], "{retries:?}");
    assert!(log.contains("1 failure in a row"), "{log}");
    assert!(log.contains("2 failures in a row"), "{log}");

    // SIGTERM: time saved, exit 0.
    let before_stop = now_unix() as i64;
    signal(lab.timed.as_ref().unwrap(), "TERM");
    let status = wait_exit(lab.timed.as_mut().unwrap(), Duration::from_secs(5))
        .expect("timed did not exit after SIGTERM");
    lab.timed = None;
    assert!(status.success(), "exit status {status:?}");
    let saved = json(&lab.path("state/clock.json")).unwrap();
    let saved_secs = saved["unix_seconds"].as_i64().unwrap();
    assert!(
        saved_secs >= before_stop - 1 && saved_secs <= now_unix() as i64 + 1,
        "{saved}"
    );
    assert!(lab.timed_log().contains("stopping"));
    assert!(lab.state().unwrap()["next_poll_unix"].is_null());
    assert!(lab.path("run/time/synced").exists());
    // Shown with --nocapture.
    eprintln!("--- timed stderr\n{}", lab.timed_log());
}

/// Runs anywhere (no root): no server answers on a loopback port. `timed`
/// is ready at once, backs off, creates no marker, refuses a bad
/// configuration at start with a clear error, takes a fixed one on SIGHUP,
/// and exits 0 on SIGTERM with the time saved.
#[test]
fn loopback_without_server() {
    let dir = tempfile::tempdir().unwrap();
    // A UDP port nobody listens on: bind one, note it, close it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    fs::write(
        dir.path().join("config.yaml"),
        machine_config("  time:\n    servers: [127.0.0.1]\n    bogus: 1"),
    )
    .unwrap();
    let mut child = spawn_timed(
        dir.path(),
        &[],
        &[
            "--port",
            &port,
            "--min-poll",
            "4",
            "--retry-min",
            "1",
            "--query-timeout-ms",
            "200",
        ],
    );
    let state_path = dir.path().join("run/time/state.json");
    let log = || read(&dir.path().join("timed.stderr"));
    let guard = scopeguard(&mut child);

    wait_for("readiness", Duration::from_secs(5), || {
        (read(&dir.path().join("ready")) == "READY=1\n").then_some(())
    });
    let state = wait_for("state.json", Duration::from_secs(5), || json(&state_path));
    let err = state["config_error"].as_str().unwrap_or("");
    assert!(err.contains("config.yaml"), "{state}");
    assert!(err.contains("bogus"), "{state}");
    assert_eq!(state["synced"], false);
    assert!(state["next_poll_unix"].is_null(), "{state}");
    assert_eq!(state["saved_time_unix"], serde_json::Value::Null);

    // Fixed configuration: polling starts, fails, backs off.
    fs::write(
        dir.path().join("config.yaml"),
        machine_config("  time:\n    servers: [127.0.0.1]"),
    )
    .unwrap();
    signal(guard.0, "HUP");
    let state = wait_for("two failures", Duration::from_secs(15), || {
        json(&state_path).filter(|s| s["consecutive_failures"].as_u64().unwrap_or(0) >= 2)
    });
    assert!(state["config_error"].is_null(), "{state}");
    assert_eq!(state["servers"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(state["synced"], false);
    assert!(
        state["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("127.0.0.1"),
        "{state}"
    );
    assert!(!dir.path().join("run/time/synced").exists());
    assert!(log().contains("retrying in 1 s"), "{}", log());
    assert!(log().contains("retrying in 2 s"), "{}", log());

    signal(guard.0, "TERM");
    let status = wait_exit(guard.0, Duration::from_secs(5)).expect("no exit after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", log());
    let saved = json(&dir.path().join("state/clock.json")).unwrap();
    assert_eq!(saved["synced"], false);
    assert!((saved["unix_seconds"].as_i64().unwrap() - now_unix() as i64).abs() < 10);
}

/// Kills the child on drop (when an assertion fails).
struct ChildGuard<'a>(&'a mut Child);

fn scopeguard(child: &mut Child) -> ChildGuard<'_> {
    ChildGuard(child)
}

impl Drop for ChildGuard<'_> {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
