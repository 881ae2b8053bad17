//! The machine API end to end on loopback: `nodectl gen config`, a first
//! `apply-config --insecure` that ends maintenance mode, then mutual TLS with
//! role-carrying client certificates against every RPC.
//!
//! Real parts: the in-process `apid` (real TLS, real certificates from
//! `nodectl gen`), the real `nodectl` binary, and a real supervisor (the one
//! PID 1 runs) on a control socket, supervising a `sleep` service.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bramble_supervisor::{LogOptions, Options, ServiceDef, Shutdown, Supervisor};
use common::{TestRuntime, TestServer, fixture_info, nodectl, stderr, stdout};

/// A real supervisor on `socket`, stepping on its own thread until the test
/// ends or someone asks it to shut down (what `Reboot` and `Shutdown` do).
struct TestSupervisor {
    shutdown: mpsc::Receiver<Shutdown>,
    stop: mpsc::Sender<()>,
}

impl TestSupervisor {
    fn start(socket: PathBuf) -> Self {
        let (shutdown_tx, shutdown) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut def = ServiceDef::new(
                "sleeper",
                [
                    "/bin/sh",
                    "-c",
                    "echo sleeper up; i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo tick $i; sleep 0.1; done",
                ],
            );
            def.description = "a test service".into();
            // Identical lines, one every few tens of microseconds (so many
            // are captured at the same millisecond, on both sides of a
            // follower's polls), from when the test creates `repeater.go`
            // until it creates `repeater.stop`; then how many there were.
            let go = socket.with_file_name("repeater.go");
            let stop = socket.with_file_name("repeater.stop");
            let repeater = ServiceDef::new(
                "repeater",
                [
                    "/bin/sh".to_owned(),
                    "-c".to_owned(),
                    format!(
                        "echo repeater waiting; while [ ! -e {} ]; do sleep 0.05; done; \
                         i=0; while [ ! -e {} ]; do echo again and again; i=$((i+1)); \
                         j=0; while [ $j -lt 100 ]; do j=$((j+1)); done; done; \
                         echo repeater done $i; exec sleep 1000",
                        go.display(),
                        stop.display()
                    ),
                ],
            );
            let mut sup = Supervisor::new(
                vec![def, repeater],
                Options {
                    control_socket: Some(socket),
                    // Room for every line the repeater writes.
                    log: LogOptions {
                        ring_bytes: 32 << 20,
                        ..LogOptions::default()
                    },
                    ..Options::default()
                },
            )
            .unwrap();
            let deadline = Instant::now() + Duration::from_secs(300);
            while Instant::now() < deadline && stop_rx.try_recv().is_err() {
                if let Some(kind) = sup.step(Duration::from_millis(50)) {
                    let _ = shutdown_tx.send(kind);
                    return;
                }
            }
            sup.request_shutdown(Shutdown::PowerOff);
            let _ = sup.run_until(Instant::now() + Duration::from_secs(20));
        });
        Self { shutdown, stop }
    }
}

impl Drop for TestSupervisor {
    fn drop(&mut self) {
        let _ = self.stop.send(());
    }
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "no control socket at {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(args: &[&str]) -> (bool, String, String) {
    let o = nodectl(args);
    (o.status.success(), stdout(&o), stderr(&o))
}

fn ok(args: &[&str]) -> String {
    let (success, out, err) = run(args);
    assert!(success, "nodectl {args:?} failed:\n{out}{err}");
    out
}

fn fails(args: &[&str]) -> String {
    let (success, out, err) = run(args);
    assert!(!success, "nodectl {args:?} should have failed:\n{out}");
    err
}

struct Cluster {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Cluster {
    /// One secrets bundle; a config directory per role.
    fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let secrets = root.join("secrets.yaml");
        ok(&["gen", "secrets", "--output-file", secrets.to_str().unwrap()]);
        for role in ["admin", "operator", "reader"] {
            let out = root.join(role);
            ok(&[
                "gen",
                "config",
                "test",
                "https://127.0.0.1:6443",
                "--with-secrets",
                secrets.to_str().unwrap(),
                "--output-dir",
                out.to_str().unwrap(),
                "--role",
                role,
            ]);
        }
        Self { _dir: dir, root }
    }

    fn file(&self, role: &str, name: &str) -> String {
        self.root.join(role).join(name).to_str().unwrap().to_owned()
    }
}

/// A server on `state`, given its first configuration `cp` over
/// `--insecure` (the node's first apply).
fn configured(cp: &str, state: &Path) -> TestServer {
    let server = TestServer::start(state, fixture_info(state));
    ok(&["apply-config", "--insecure", "-n", &server.node(), "-f", cp]);
    server
}

/// Runs nodectl as `role` against `node`.
fn as_role(c: &Cluster, role: &str, node: &str, args: &[&str]) -> (bool, String, String) {
    let cfg = c.file(role, "nodeconfig");
    let mut all = vec!["--nodeconfig", cfg.as_str(), "-n", node];
    all.extend_from_slice(args);
    run(&all)
}

#[test]
fn first_config_ends_maintenance_mode_and_roles_decide_the_rest() {
    let c = Cluster::generate();
    let state = tempfile::tempdir().unwrap();
    let sup = TestSupervisor::start(state.path().join("init.sock"));
    wait_for_socket(&state.path().join("init.sock"));
    let server = TestServer::start(state.path(), fixture_info(state.path()));
    let _runtime = TestRuntime::start(state.path());
    let node = server.node();
    let cp = c.file("admin", "controlplane.yaml");
    ok(&["validate", "-f", &cp]);
    // An OCI archive for `image import` (a file, no devices: no root needed).
    let archive = state.path().join("app.tar");
    let mut bytes = Vec::new();
    bramble_oci_store::build::ImageBuilder::new(
        bramble_oci_store::Platform::host().architecture.as_str(),
    )
    .layer(vec![bramble_oci_store::build::Entry::file(
        "hello.txt",
        0o644,
        b"hi\n",
    )])
    .config(&["/bin/true"], &[], &[], "", "")
    .annotate_ref("docker.io/test/app:v1")
    .write_archive(&mut bytes)
    .unwrap();
    std::fs::write(&archive, bytes).unwrap();
    let archive = archive.to_str().unwrap().to_owned();

    // Maintenance mode: only Version and ApplyConfiguration.
    let err = fails(&["services", "--insecure", "-n", &node]);
    assert!(err.contains("maintenance mode"), "{err}");

    // A dry run changes nothing.
    let out = ok(&[
        "apply-config",
        "--insecure",
        "-n",
        &node,
        "-f",
        &cp,
        "--dry-run",
    ]);
    assert!(out.contains("would be"), "{out}");
    assert!(out.contains("+version: v1alpha1"), "{out}");
    // The services that ran on defaults re-read the first configuration.
    assert!(out.contains("would reload: networkd, timed"), "{out}");
    assert!(
        !out.contains("BEGIN PRIVATE KEY"),
        "the diff shows a secret:\n{out}"
    );
    assert!(!state.path().join("config/config.yaml").exists());

    // A bad patch is refused before anything is sent, naming the field.
    let err = fails(&[
        "apply-config",
        "--insecure",
        "-n",
        &node,
        "-f",
        &cp,
        "--config-patch",
        "machine: {hostname: -bad-}",
    ]);
    assert!(err.contains("machine.hostname"), "{err}");
    assert!(!state.path().join("config/config.yaml").exists());

    // The first configuration.
    let out = ok(&["apply-config", "--insecure", "-n", &node, "-f", &cp]);
    assert!(out.contains(&node), "{out}");
    let stored = std::fs::read_to_string(state.path().join("config/config.yaml")).unwrap();
    assert_eq!(stored, std::fs::read_to_string(&cp).unwrap());

    // From now on mutual TLS only: the listener restarts with the CA's
    // certificate; insecure clients are refused at the handshake.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (success, out, err) = as_role(&c, "reader", &node, &["version", "-o", "json"]);
        if success {
            assert!(out.contains("\"maintenance\": false"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "mTLS never came up: {err}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = fails(&["version", "--insecure", "-n", &node]);
    assert!(!err.is_empty());

    // Secrets only for admins.
    let (_, admin_cfg, _) = as_role(&c, "admin", &node, &["get", "config"]);
    assert!(admin_cfg.contains("BEGIN PRIVATE KEY"), "{admin_cfg}");
    let (success, reader_cfg, err) = as_role(&c, "reader", &node, &["get", "config"]);
    assert!(success, "{err}");
    assert!(reader_cfg.contains("******") && !reader_cfg.contains("BEGIN PRIVATE KEY"));

    // Every RPC against every role: allowed ones work against the real
    // supervisor, refused ones say which role they need.
    let cases: &[(&[&str], &str)] = &[
        (&["version"], "reader"),
        (&["services"], "reader"),
        (&["logs", "sleeper"], "reader"),
        (&["get", "config"], "reader"),
        (&["memory"], "reader"),
        (&["processes"], "reader"),
        (&["mounts"], "reader"),
        (&["get", "links"], "reader"),
        (&["get", "addresses"], "reader"),
        (&["get", "routes"], "reader"),
        (&["get", "resolvers"], "reader"),
        (&["get", "hostname"], "reader"),
        (&["get", "time"], "reader"),
        (&["events"], "reader"),
        (&["dmesg", "--tail", "3"], "reader"),
        (&["images"], "reader"),
        (&["containers"], "reader"),
        (&["stats"], "reader"),
        (&["image", "import", &archive], "operator"),
        (&["service", "sleeper", "restart"], "operator"),
        (&["service", "sleeper", "stop"], "operator"),
        (&["service", "sleeper", "start"], "operator"),
        (&["apply-config", "-f", &cp, "--mode", "no-reboot"], "admin"),
    ];
    let rank = |r: &str| {
        ["reader", "operator", "admin"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    for (args, needs) in cases {
        for role in ["reader", "operator", "admin"] {
            let (success, out, err) = as_role(&c, role, &node, args);
            if rank(role) >= rank(needs) {
                assert!(success, "{args:?} as {role}: {out}{err}");
            } else {
                assert!(!success, "{args:?} as {role} was allowed");
                assert!(
                    err.contains("does not have permission"),
                    "{args:?} as {role}: {err}"
                );
                assert!(err.contains(&format!("needs the {needs} role")), "{err}");
            }
        }
    }
    let (_, services, _) = as_role(&c, "reader", &node, &["services"]);
    assert!(services.contains("sleeper"), "{services}");
    // The runtime's answers, through apid.
    let (_, images, _) = as_role(&c, "reader", &node, &["images"]);
    assert!(images.contains("docker.io/test/app:v1"), "{images}");
    let err = as_role(&c, "operator", &node, &["logs", "-k", "nosuch"]).2;
    assert!(err.contains("no container named \"nosuch\""), "{err}");
    let err = as_role(&c, "operator", &node, &["container", "nosuch", "restart"]).2;
    assert!(err.contains("no container named \"nosuch\""), "{err}");
    let err = as_role(&c, "reader", &node, &["container", "nosuch", "restart"]).2;
    assert!(err.contains("needs the operator role"), "{err}");
    let err = as_role(&c, "operator", &node, &["image", "pull", "Not A Reference"]).2;
    assert!(err.contains("Not A Reference"), "{err}");
    let out = as_role(
        &c,
        "operator",
        &node,
        &["image", "rm", "docker.io/test/app:v1"],
    )
    .1;
    assert!(out.contains("removed"), "{out}");
    let (_, images, _) = as_role(&c, "reader", &node, &["images"]);
    assert!(!images.contains("docker.io/test/app:v1"), "{images}");
    let (_, logs, _) = as_role(&c, "reader", &node, &["logs", "sleeper", "--tail", "10000"]);
    assert!(logs.contains("sleeper up"), "{logs}");
    let err = as_role(&c, "operator", &node, &["service", "nosuch", "restart"]).2;
    assert!(
        err.contains("not found") || err.contains("no service"),
        "{err}"
    );

    // An unchanged configuration is applied without restarting anything.
    let out = as_role(&c, "admin", &node, &["apply-config", "-f", &cp]).1;
    assert!(out.contains("unchanged"), "{out}");

    // The live readers say something true about this machine.
    let mem = as_role(&c, "reader", &node, &["memory", "-o", "json"]).1;
    assert!(
        mem.contains("\"total_bytes\"") && !mem.contains("\"total_bytes\": 0"),
        "{mem}"
    );
    let ps = as_role(&c, "reader", &node, &["processes"]).1;
    assert!(
        ps.contains("echo sleeper up"),
        "the supervised sleeper is not listed:\n{ps}"
    );
    let mounts = as_role(&c, "reader", &node, &["mounts"]).1;
    assert!(
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/")),
        "{mounts}"
    );
    // The network readers show this machine's kernel state.
    let links = as_role(&c, "reader", &node, &["get", "links", "-o", "json"]).1;
    assert!(links.contains("\"name\": \"lo\""), "{links}");
    let addrs = as_role(&c, "reader", &node, &["get", "addresses"]).1;
    assert!(
        addrs
            .lines()
            .any(|l| l.contains(" lo ") && l.contains("127.0.0.1/8")),
        "{addrs}"
    );
    let routes = as_role(&c, "reader", &node, &["get", "routes", "-o", "yaml"]).1;
    assert!(routes.contains("destination:"), "{routes}");
    let host = as_role(&c, "reader", &node, &["get", "hostname"]).1;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(host.contains(kernel.trim()), "{host}");
    // No time daemon runs beside this in-process server: the answer says so.
    let time = as_role(&c, "reader", &node, &["get", "time", "-o", "json"]).1;
    assert!(time.contains("\"synced\": false"), "{time}");
    assert!(time.contains("time/state.json"), "{time}");

    // A followed log keeps delivering new lines.
    let cfg = c.file("reader", "nodeconfig");
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_nodectl"))
        .args([
            "--nodeconfig",
            &cfg,
            "-n",
            &node,
            "logs",
            "sleeper",
            "--tail",
            "1",
            "-f",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let tick = |l: &str| l.rsplit(' ').next().and_then(|n| n.parse::<u32>().ok());
    let ticks: Vec<u32> = lines
        .by_ref()
        .take(20)
        .filter_map(|l| tick(&l.unwrap()))
        .take(6)
        .collect();
    let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
    assert!(
        last >= first + 5,
        "followed log went from tick {first} to {last}"
    );
    follow.kill().unwrap();
    follow.wait().unwrap();

    // Identical lines, many of them captured at the same millisecond, all
    // reach a follower, each once, however its polls fall among them.
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_nodectl"))
        .args([
            "--nodeconfig",
            &cfg,
            "-n",
            &node,
            "logs",
            "repeater",
            "--tail",
            "1",
            "-f",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (line_tx, line_rx) = mpsc::channel();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(out)) {
            if line_tx.send(l.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let next = || line_rx.recv_timeout(Duration::from_secs(20));
    // The follower has its first line: the service is waiting for its go.
    while !next().unwrap().ends_with("repeater waiting") {}
    std::fs::write(state.path().join("repeater.go"), "").unwrap();
    // Stopped once identical lines have reached the follower in four
    // separate quarter-seconds: several of apid's polls (every 300 ms), each
    // with many of the repeater's lines.
    let mut repeats = 0u64;
    let mut polls_seen = std::collections::BTreeSet::new();
    let started = Instant::now();
    while polls_seen.len() < 4 {
        let l = next().expect("the follower stopped getting the repeater's lines");
        if l.ends_with("again and again") {
            repeats += 1;
            polls_seen.insert(started.elapsed().as_millis() / 250);
        }
    }
    std::fs::write(state.path().join("repeater.stop"), "").unwrap();
    let written = loop {
        match next() {
            Ok(l) if l.contains("repeater done ") => {
                break l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok());
            }
            Ok(l) if l.ends_with("again and again") => repeats += 1,
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    follow.kill().unwrap();
    follow.wait().unwrap();
    let written = written.expect("the follower never got the repeater's last line");
    assert!(written > 0);
    assert_eq!(
        repeats, written,
        "the follower got {repeats} of {written} identical lines"
    );

    let events = as_role(&c, "reader", &node, &["events"]).1;
    assert!(events.contains("sleeper"), "{events}");
    assert!(
        events.contains("configuration applied (no-reboot)"),
        "configuration changes are not among the events:\n{events}"
    );

    // Try mode: the change is live, then the previous configuration returns
    // by itself.
    let (success, out, err) = as_role(
        &c,
        "admin",
        &node,
        &[
            "apply-config",
            "-f",
            &cp,
            "--mode",
            "try",
            "--try-timeout",
            "2s",
            "--config-patch",
            "machine: {hostname: trial-host}",
        ],
    );
    assert!(success, "{out}{err}");
    assert!(
        as_role(&c, "admin", &node, &["get", "config"])
            .1
            .contains("trial-host")
    );
    assert!(state.path().join("config/config.trying").exists());
    let deadline = Instant::now() + Duration::from_secs(15);
    while as_role(&c, "admin", &node, &["get", "config"])
        .1
        .contains("trial-host")
    {
        assert!(
            Instant::now() < deadline,
            "the tried configuration was not reverted"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!state.path().join("config/config.trying").exists());
    let stored = std::fs::read_to_string(state.path().join("config/config.yaml")).unwrap();
    assert_eq!(stored, std::fs::read_to_string(&cp).unwrap());

    // Reboot goes to the supervisor; readers may not.
    assert!(!as_role(&c, "reader", &node, &["reboot"]).0);
    let (success, out, err) = as_role(&c, "operator", &node, &["reboot"]);
    assert!(success, "{out}{err}");
    assert_eq!(
        sup.shutdown.recv_timeout(Duration::from_secs(30)).unwrap(),
        Shutdown::Reboot
    );
    server.stop();
}

#[test]
fn a_client_of_another_cluster_is_refused() {
    let ours = Cluster::generate();
    let theirs = Cluster::generate();
    let state = tempfile::tempdir().unwrap();
    let server = TestServer::start(state.path(), fixture_info(state.path()));
    let node = server.node();
    ok(&[
        "apply-config",
        "--insecure",
        "-n",
        &node,
        "-f",
        &ours.file("admin", "controlplane.yaml"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !as_role(&ours, "reader", &node, &["version"]).0 {
        assert!(Instant::now() < deadline, "mTLS never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (success, _, err) = as_role(&theirs, "admin", &node, &["version"]);
    assert!(!success, "a certificate from another CA was accepted");
    assert!(!err.is_empty());
    server.stop();
}

/// A stored configuration that no longer parses (a newer schema, a damaged
/// disk) is not a crash loop and not an open door: the node admits only the
/// cluster's admins, pinning the certificate it shows, to configure it again.
#[test]
fn a_stored_configuration_that_no_longer_parses_admits_only_admins() {
    let c = Cluster::generate();
    let state = tempfile::tempdir().unwrap();
    let cp = c.file("admin", "controlplane.yaml");
    let server = configured(&cp, state.path());
    server.stop();
    let stored = state.path().join("config/config.yaml");
    let mut text = std::fs::read_to_string(&stored).unwrap();
    text.push_str("\nfromTheFuture: 1\n");
    std::fs::write(&stored, text).unwrap();

    let server = TestServer::start(state.path(), fixture_info(state.path()));
    let node = server.node();
    let pin = server.fingerprint.clone();
    fails(&["version", "--insecure", "-n", &node]);
    fails(&["apply-config", "--insecure", "-n", &node, "-f", &cp]);
    let pinned = |role: &str, args: &[&str]| {
        let mut all = vec!["--cert-fingerprint", pin.as_str()];
        all.extend_from_slice(args);
        as_role(&c, role, &node, &all)
    };
    let (success, out, err) = pinned("reader", &["version"]);
    assert!(success, "{out}{err}");
    let (success, _, err) = pinned("admin", &["get", "config"]);
    assert!(!success && err.contains("no usable configuration"), "{err}");
    let (success, _, err) = pinned("operator", &["reboot"]);
    assert!(!success && err.contains("no usable configuration"), "{err}");
    let (success, out, err) = pinned("reader", &["apply-config", "-f", &cp]);
    assert!(
        !success && err.contains("needs the admin role"),
        "{out}{err}"
    );
    let (success, out, err) = pinned("admin", &["apply-config", "-f", &cp]);
    assert!(success, "{out}{err}");
    // Configured again: mutual TLS, the whole API.
    let config = bramble_testkit::wait_for(
        "the node to answer over mutual TLS",
        Duration::from_secs(20),
        || {
            let (success, out, _) = as_role(&c, "admin", &node, &["get", "config"]);
            success.then_some(out)
        },
    );
    assert!(!config.contains("fromTheFuture"), "{config}");
    server.stop();
}

/// A trial applied while another is on trial returns, when its time is
/// up, to the last confirmed configuration, not to the first trial.
#[test]
fn stacked_trials_revert_to_the_last_confirmed_configuration() {
    let c = Cluster::generate();
    let state = tempfile::tempdir().unwrap();
    let cp = c.file("admin", "controlplane.yaml");
    let server = configured(&cp, state.path());
    let node = server.node();
    let admin = |args: &[&str]| {
        let (success, out, err) = as_role(&c, "admin", &node, args);
        assert!(success, "{args:?}: {out}{err}");
        out
    };
    bramble_testkit::wait_for("mutual TLS", Duration::from_secs(20), || {
        as_role(&c, "admin", &node, &["version"]).0.then_some(())
    });
    for (host, timeout) in [("first-try", "10m"), ("second-try", "2s")] {
        let patch = format!("machine: {{hostname: {host}}}");
        admin(&[
            "apply-config",
            "-f",
            &cp,
            "--mode",
            "try",
            "--try-timeout",
            timeout,
            "--config-patch",
            &patch,
        ]);
    }
    assert!(admin(&["get", "config"]).contains("second-try"));
    let reverted = bramble_testkit::wait_for(
        "the second trial's timeout to revert it",
        Duration::from_secs(30),
        || {
            let config = admin(&["get", "config"]);
            (!config.contains("second-try")).then_some(config)
        },
    );
    assert!(
        !reverted.contains("first-try"),
        "reverted to the first trial, not the confirmed configuration:\n{reverted}"
    );
    server.stop();
}

#[test]
fn the_configuration_survives_a_restart_and_staged_waits_for_it() {
    let c = Cluster::generate();
    let state = tempfile::tempdir().unwrap();
    let cp = c.file("admin", "controlplane.yaml");
    let server = configured(&cp, state.path());
    server.stop();

    // Restarted (as after a reboot): configured, mTLS from the start.
    let server = TestServer::start(state.path(), fixture_info(state.path()));
    let node = server.node();
    let out = as_role(&c, "reader", &node, &["version", "-o", "json"]).1;
    assert!(out.contains("\"maintenance\": false"), "{out}");

    // Staged: stored aside, the running configuration is unchanged.
    let (success, out, err) = as_role(
        &c,
        "admin",
        &node,
        &[
            "apply-config",
            "-f",
            &cp,
            "--mode",
            "staged",
            "--config-patch",
            "machine: {hostname: staged-host}",
        ],
    );
    assert!(success, "{out}{err}");
    assert!(out.contains("next boot"), "{out}");
    let running = as_role(&c, "admin", &node, &["get", "config"]).1;
    assert!(!running.contains("staged-host"));
    server.stop();

    let server = TestServer::start(state.path(), fixture_info(state.path()));
    let node = server.node();
    let running = as_role(&c, "admin", &node, &["get", "config"]).1;
    assert!(
        running.contains("staged-host"),
        "the staged configuration was not promoted:\n{running}"
    );
    assert!(state.path().join("config/config.previous.yaml").exists());

    // A trial cut short by a restart (a reboot, a power cut) ends with the
    // previous configuration back.
    let (success, out, err) = as_role(
        &c,
        "admin",
        &node,
        &[
            "apply-config",
            "-f",
            &cp,
            "--mode",
            "try",
            "--try-timeout",
            "10m",
            "--config-patch",
            "machine: {hostname: trial-host}",
        ],
    );
    assert!(success, "{out}{err}");
    server.stop();
    let server = TestServer::start(state.path(), fixture_info(state.path()));
    let running = as_role(&c, "admin", &server.node(), &["get", "config"]).1;
    assert!(
        running.contains("staged-host") && !running.contains("trial-host"),
        "{running}"
    );
    server.stop();
}

#[test]
fn expired_certificates_and_bad_documents_are_refused_by_the_node() {
    use bramble_api::machine::v1::ApplyConfigurationRequest;
    use bramble_pki::{Role, SecretsBundle, Validity};
    use nodectl::nodeconfig::{Context, NodeConfig};

    let c = Cluster::generate();
    let state = tempfile::tempdir().unwrap();
    let server = TestServer::start(state.path(), fixture_info(state.path()));
    let node = server.node();
    let cp = c.file("admin", "controlplane.yaml");
    ok(&["apply-config", "--insecure", "-n", &node, "-f", &cp]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !as_role(&c, "admin", &node, &["version"]).0 {
        assert!(Instant::now() < deadline, "mTLS never came up");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A certificate from the right CA, with the admin role, but expired.
    let bundle =
        SecretsBundle::from_yaml(&std::fs::read_to_string(c.root.join("secrets.yaml")).unwrap())
            .unwrap();
    let now = bramble_pki::time::OffsetDateTime::now_utc();
    let expired = bundle
        .os_ca
        .issue_client(
            "old-admin",
            Role::Admin,
            Validity::new(
                now - bramble_pki::time::Duration::days(30),
                now - bramble_pki::time::Duration::days(1),
            ),
        )
        .unwrap();
    let mut file = NodeConfig::default();
    file.merge(
        "expired",
        Context {
            endpoints: vec![],
            nodes: vec![],
            ca: bundle.os_ca.cert_pem().to_owned(),
            crt: expired.cert_pem.clone(),
            key: expired.key_pem.clone(),
        },
    );
    let expired_cfg = c.root.join("expired-nodeconfig");
    file.save(&expired_cfg).unwrap();
    let err = fails(&[
        "--nodeconfig",
        expired_cfg.to_str().unwrap(),
        "-n",
        &node,
        "version",
    ]);
    assert!(!err.is_empty());

    // The node checks documents itself (not only nodectl): every error with
    // its field path (or its size), InvalidArgument, and nothing stored.
    let before = std::fs::read_to_string(state.path().join("config/config.yaml")).unwrap();
    let admin = c.file("admin", "nodeconfig");
    let admin = NodeConfig::load(Path::new(&admin)).unwrap().unwrap();
    let ctx = admin.context(None).unwrap().1.clone();
    let tls = nodectl::client::ClientTls::from_rustls(
        bramble_pki::client_config_mtls(
            &ctx.ca,
            &bramble_pki::IssuedCert {
                cert_pem: ctx.crt,
                key_pem: ctx.key,
            },
        )
        .unwrap(),
    );
    let bad = before.replace("version: v1alpha1", "version: v1alpha1\nmachine2: {}") + "\n";
    let bad_hostname = before.replacen("machine:\n", "machine:\n  hostname: -x-\n", 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Over 1 MiB: refused before it is parsed.
    let oversized = format!("{before}\n#{}\n", "x".repeat(1 << 20));
    for (doc, path) in [
        (bad, "machine2"),
        (bad_hostname, "machine.hostname"),
        (oversized, "at most 1048576 bytes"),
    ] {
        let status = rt
            .block_on(async {
                let addr = nodectl::nodes::NodeAddr::parse(&node).unwrap();
                let mut client = nodectl::client::connect(&addr, &tls, Duration::from_secs(10))
                    .await
                    .unwrap();
                client
                    .apply_configuration(ApplyConfigurationRequest {
                        data: doc.into_bytes(),
                        ..Default::default()
                    })
                    .await
            })
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(path), "{}", status.message());
        let after = std::fs::read_to_string(state.path().join("config/config.yaml")).unwrap();
        assert_eq!(after, before, "a refused document changed the stored one");
    }
    server.stop();
}

/// A client of the node at `node`, in maintenance mode (anonymous,
/// `--insecure`), connected now.
async fn anonymous_client(node: &str) -> nodectl::client::MachineClient {
    let tls = nodectl::client::ClientTls::from_flags(true, None).unwrap();
    let addr = nodectl::nodes::NodeAddr::parse(node).unwrap();
    nodectl::client::connect(&addr, &tls, Duration::from_secs(10))
        .await
        .unwrap()
}

/// The first apply is atomic: of several anonymous applies sent at once to
/// a node in maintenance mode, one is stored and every other is refused
/// with a message that says why; and an anonymous apply on a connection
/// opened in maintenance mode is refused once the node is configured,
/// before its listener has restarted with mutual TLS.
#[test]
fn the_first_apply_is_atomic() {
    use bramble_api::machine::v1::ApplyConfigurationRequest;

    let c = Cluster::generate();
    let state = tempfile::tempdir().unwrap();
    // A control socket nobody answers: the services' reloads after the
    // first apply wait on it, so the maintenance listener, and the
    // connections opened on it, outlive the first configuration.
    let control = std::os::unix::net::UnixListener::bind(state.path().join("init.sock")).unwrap();
    let server = TestServer::start(state.path(), fixture_info(state.path()));
    let node = server.node();
    let cp = std::fs::read_to_string(c.file("admin", "controlplane.yaml")).unwrap();
    let docs: Vec<String> = (0..6)
        .map(|i| {
            bramble_config::apply_patch(&cp, &format!("machine: {{hostname: racer-{i}}}")).unwrap()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (results, mut late) = rt.block_on(async {
        // Every connection is open (handshakes done) before any apply is sent.
        let mut clients = Vec::new();
        for _ in 0..=docs.len() {
            clients.push(anonymous_client(&node).await);
        }
        let late = clients.pop().unwrap();
        let calls: Vec<_> = clients
            .into_iter()
            .zip(docs.clone())
            .map(|(mut client, doc)| {
                tokio::spawn(async move {
                    client
                        .apply_configuration(ApplyConfigurationRequest {
                            data: doc.into_bytes(),
                            ..Default::default()
                        })
                        .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await.unwrap());
        }
        (results, late)
    });
    let winners: Vec<usize> = (0..results.len()).filter(|i| results[*i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for status in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        let m = status.message();
        assert!(
            m.contains("another configuration is being applied to this node")
                || m.contains("this node is already configured"),
            "{m}"
        );
    }
    let stored = std::fs::read_to_string(state.path().join("config/config.yaml")).unwrap();
    assert_eq!(
        stored, docs[winners[0]],
        "the stored configuration is not the winner's"
    );

    // Configured: an anonymous apply, even a dry run, on a connection from
    // maintenance mode is refused and changes nothing.
    for dry_run in [true, false] {
        let status = rt
            .block_on(late.apply_configuration(ApplyConfigurationRequest {
                data: docs[(winners[0] + 1) % docs.len()].clone().into_bytes(),
                dry_run,
                ..Default::default()
            }))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("this node is already configured")
                && status.message().contains("admins"),
            "{}",
            status.message()
        );
    }
    let after = std::fs::read_to_string(state.path().join("config/config.yaml")).unwrap();
    assert_eq!(after, stored);
    // The reloads waiting on the silent control socket fail at once.
    drop(control);
    drop(rt);
    server.stop();
}

/// The certificate of the current context of the client configuration at
/// `path`, parsed: (role organization, common name, not after).
fn minted_certificate(path: &Path) -> (Vec<String>, String, i64, String) {
    let file = nodectl::nodeconfig::NodeConfig::load(path)
        .unwrap()
        .unwrap();
    let (_, ctx) = file.context(None).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(ctx.crt.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let organizations = cert
        .subject()
        .iter_organization()
        .map(|o| o.as_str().unwrap().to_owned())
        .collect();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let (_, ca) = x509_parser::pem::parse_x509_pem(ctx.ca.as_bytes()).unwrap();
    let ca = ca.parse_x509().unwrap();
    assert_eq!(
        cert.issuer(),
        ca.subject(),
        "not issued by the context's CA"
    );
    cert.verify_signature(Some(ca.public_key())).unwrap();
    (
        organizations,
        cn,
        cert.validity().not_after.timestamp(),
        ctx.nodes.join(","),
    )
}

fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// `nodectl gen nodeconfig` mints a client configuration for one role from
/// the secrets bundle, valid for the lifetime asked for: its certificate
/// carries that role and expiry, the node grants exactly that role's calls,
/// and refuses it once it has expired. Bad roles and lifetimes write nothing.
#[test]
fn a_minted_client_configuration_has_one_role_until_its_expiry() {
    let c = Cluster::generate();
    let secrets = c.root.join("secrets.yaml");
    let secrets = secrets.to_str().unwrap();
    let state = tempfile::tempdir().unwrap();
    let cp = c.file("admin", "controlplane.yaml");
    let server = configured(&cp, state.path());
    let node = server.node();
    bramble_testkit::wait_for("mutual TLS", Duration::from_secs(20), || {
        as_role(&c, "admin", &node, &["version"]).0.then_some(())
    });
    let minted = |name: &str| c.root.join(name).to_str().unwrap().to_owned();
    let mint = |role: &str, expiry: &str, file: &str| {
        run(&[
            "gen",
            "nodeconfig",
            "test",
            "--with-secrets",
            secrets,
            "--role",
            role,
            "--expiry",
            expiry,
            "--common-name",
            &format!("{role}-of-the-day"),
            "-n",
            &node,
            "--output-file",
            file,
        ])
    };

    for role in ["reader", "operator", "admin"] {
        let file = minted(&format!("{role}.nodeconfig"));
        let before = unix_now();
        let (success, out, err) = mint(role, "24h", &file);
        assert!(success, "{out}{err}");
        assert!(
            out.contains(&format!("{role} certificate")) && out.contains("(1d)"),
            "{out}"
        );
        let (organizations, cn, not_after, nodes) = minted_certificate(Path::new(&file));
        assert_eq!(organizations, [format!("bramble:role:{role}")]);
        assert_eq!(cn, format!("{role}-of-the-day"));
        assert!(
            (before + 86_400..=unix_now() + 86_400).contains(&not_after),
            "expires at {not_after}, not 24h after {before}"
        );
        assert_eq!(nodes, node, "the context does not name the node");

        // Against the node, with nothing but the minted file: the calls of
        // exactly this role.
        let call = |args: &[&str]| {
            let mut all = vec!["--nodeconfig", file.as_str()];
            all.extend_from_slice(args);
            run(&all)
        };
        let (success, out, err) = call(&["version"]);
        assert!(success, "{role}: {out}{err}");
        let (success, config, err) = call(&["get", "config"]);
        assert!(success, "{role}: {err}");
        assert_eq!(
            config.contains("BEGIN PRIVATE KEY"),
            role == "admin",
            "{role}: {config}"
        );
        // No supervisor runs here: an allowed reboot gets as far as asking
        // for it, a refused one stops at the role.
        let (success, _, err) = call(&["reboot"]);
        assert!(!success);
        assert_eq!(
            err.contains("needs the operator role"),
            role == "reader",
            "{role}: {err}"
        );
        let (success, out, err) = call(&["apply-config", "-f", &cp, "--dry-run"]);
        assert_eq!(success, role == "admin", "{role}: {out}{err}");
        if role != "admin" {
            assert!(err.contains("needs the admin role"), "{role}: {err}");
        }
    }

    // A certificate minted for one second is refused once it has expired.
    let short = minted("expiring.nodeconfig");
    let (success, out, err) = mint("admin", "1s", &short);
    assert!(success, "{out}{err}");
    let (_, _, not_after, _) = minted_certificate(Path::new(&short));
    bramble_testkit::wait_for(
        "the minted certificate to expire",
        Duration::from_secs(10),
        || (unix_now() > not_after + 1).then_some(()),
    );
    // nodectl says so before it dials...
    let (success, out, err) = run(&["--nodeconfig", &short, "version"]);
    assert!(!success, "an expired certificate was accepted: {out}");
    assert!(
        err.contains("the client certificate expired at") && err.contains(&short),
        "{err}"
    );
    // ...and the node refuses it anyway.
    let file = nodectl::nodeconfig::NodeConfig::load(Path::new(&short))
        .unwrap()
        .unwrap();
    let ctx = file.context(None).unwrap().1.clone();
    let tls = nodectl::client::ClientTls::from_rustls(
        bramble_pki::client_config_mtls(
            &ctx.ca,
            &bramble_pki::IssuedCert {
                cert_pem: ctx.crt,
                key_pem: ctx.key,
            },
        )
        .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let refused = rt.block_on(async {
        let addr = nodectl::nodes::NodeAddr::parse(&node).unwrap();
        let mut client = nodectl::client::connect(&addr, &tls, Duration::from_secs(10)).await?;
        client
            .version(bramble_api::machine::v1::VersionRequest {})
            .await
            .map_err(nodectl::NodeError::from)
    });
    assert!(refused.is_err(), "the node accepted an expired certificate");

    // Bad input: a clear error naming what is wrong, and no file.
    let bad = minted("bad.nodeconfig");
    for (role, expiry, says) in [
        ("root", "24h", "invalid value 'root' for '--role <ROLE>'"),
        ("reader", "0h", "more than 0 seconds"),
        ("reader", "24", "'24' has no unit"),
        ("reader", "3fortnights", "unknown unit 'fortnights'"),
        ("reader", "20y", "would outlive the cluster's OS CA"),
    ] {
        let (success, _, err) = mint(role, expiry, &bad);
        assert!(!success, "--role {role} --expiry {expiry} was accepted");
        assert!(err.contains(says), "--role {role} --expiry {expiry}: {err}");
        assert!(!Path::new(&bad).exists(), "a refused mint wrote {bad}");
    }
    let existing = minted("reader.nodeconfig");
    let before = std::fs::read(&existing).unwrap();
    let (success, _, err) = mint("admin", "1h", &existing);
    assert!(!success && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), before);
    let (success, _, err) = run(&[
        "gen",
        "nodeconfig",
        "test",
        "--secrets",
        &cp,
        "--role",
        "reader",
        "--expiry",
        "1h",
        "--output-file",
        &bad,
    ]);
    assert!(!success && err.contains(&cp), "{err}");
    assert!(!Path::new(&bad).exists());
    server.stop();
}

/// Readers (and operators) never see a secret value: not the CAs' private
/// keys, the tokens, the encryption secret or registry passwords, and not
/// the values of workloads' environment variables, whose names they do see.
/// Admins see the document as applied.
#[test]
fn readers_never_see_secret_values() {
    let c = Cluster::generate();
    let state = tempfile::tempdir().unwrap();
    let cp = std::fs::read_to_string(c.file("admin", "controlplane.yaml")).unwrap();
    let doc = bramble_config::apply_patch(
        &cp,
        "machine:\n  registries:\n    auth:\n      ghcr.io: {username: robot, password: registry-password-value}\n  \
         workloads:\n    - name: app\n      image: docker.io/library/busybox:1.36\n      \
         env: {API_TOKEN: api-token-value, LOG_LEVEL: log-level-value}\n",
    )
    .unwrap();
    let applied = state.path().join("applied.yaml");
    std::fs::write(&applied, &doc).unwrap();
    let server = configured(applied.to_str().unwrap(), state.path());
    let node = server.node();
    bramble_testkit::wait_for("mutual TLS", Duration::from_secs(20), || {
        as_role(&c, "admin", &node, &["version"]).0.then_some(())
    });

    let config = bramble_config::MachineConfig::parse(&doc).unwrap();
    let m = &config.machine;
    let mut secrets = vec![
        m.token.as_ref().unwrap().expose().to_owned(),
        m.ca.key.as_ref().unwrap().expose().to_owned(),
        config
            .cluster
            .etcd
            .as_ref()
            .unwrap()
            .ca
            .key
            .as_ref()
            .unwrap()
            .expose()
            .to_owned(),
        config
            .cluster
            .secretbox_encryption_secret
            .as_ref()
            .unwrap()
            .expose()
            .to_owned(),
        "registry-password-value".to_owned(),
        "api-token-value".to_owned(),
        "log-level-value".to_owned(),
    ];
    // Each private key also line by line (a YAML rendering may re-indent it).
    for key in secrets.clone().iter().filter(|s| s.contains("PRIVATE KEY")) {
        secrets.extend(
            key.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_owned),
        );
    }
    for role in ["reader", "operator"] {
        for format in ["yaml", "json"] {
            let (success, shown, err) = as_role(&c, role, &node, &["get", "config", "-o", format]);
            assert!(success, "{role}: {err}");
            for secret in &secrets {
                assert!(
                    !shown.contains(secret.as_str()),
                    "{role} sees {secret}:\n{shown}"
                );
            }
            assert!(!shown.contains("PRIVATE KEY"), "{role}:\n{shown}");
            for visible in ["API_TOKEN", "LOG_LEVEL", "robot", "******", "busybox:1.36"] {
                assert!(
                    shown.contains(visible),
                    "{role} does not see {visible}:\n{shown}"
                );
            }
        }
    }
    let (success, shown, err) = as_role(&c, "admin", &node, &["get", "config"]);
    assert!(success, "{err}");
    // (The whole keys are indented in the document; their lines are there.)
    for secret in secrets.iter().filter(|s| !s.contains('\n')) {
        assert!(
            shown.contains(secret.as_str()),
            "the admin does not see {secret}"
        );
    }
    server.stop();
}

/// A server in a state directory of its own whose apid asks the control
/// plane at `cp_node` for its certificate (retrying every 200 ms).
fn joining_server(cp_node: &str) -> (tempfile::TempDir, TestServer) {
    let state = tempfile::tempdir().unwrap();
    let api = cp_node.to_owned();
    let server = TestServer::start_with(state.path(), fixture_info(state.path()), move |config| {
        config.control_plane_api = Some(api);
        config.join_retry = Duration::from_millis(200);
    });
    (state, server)
}

/// Workers hold no private key of the OS CA: `worker.yaml` carries the
/// CA's certificate and the join token, and a worker's apid gets its server
/// certificate from a control-plane node's apid (`NodeCertificate`,
/// authenticated by the token over TLS that verifies the cluster CA), so
/// the cluster's clients verify it like any node. A wrong token gets no
/// certificate; nothing else is open without a client certificate.
#[test]
fn a_worker_gets_its_certificate_from_the_control_plane() {
    use bramble_api::machine::v1::{NodeCertificateRequest, VersionRequest};

    let c = Cluster::generate();
    let worker_yaml = std::fs::read_to_string(c.file("admin", "worker.yaml")).unwrap();
    assert!(
        !worker_yaml.contains("PRIVATE KEY"),
        "worker.yaml holds a private key:\n{worker_yaml}"
    );
    let worker_config = bramble_config::MachineConfig::parse(&worker_yaml).unwrap();
    assert!(worker_config.machine.ca.key.is_none());
    let token = worker_config
        .machine
        .token
        .as_ref()
        .unwrap()
        .expose()
        .to_owned();

    let cp_state = tempfile::tempdir().unwrap();
    let cp = configured(&c.file("admin", "controlplane.yaml"), cp_state.path());
    let cp_node = cp.node();
    bramble_testkit::wait_for("mutual TLS", Duration::from_secs(20), || {
        as_role(&c, "admin", &cp_node, &["version"]).0.then_some(())
    });

    // The worker's apid asks the control plane's (on its loopback port).
    let (worker_state, worker) = joining_server(&cp_node);
    let worker_node = worker.node();
    // Without the CA's key, the join token is required.
    let tokenless = worker_state.path().join("tokenless.yaml");
    std::fs::write(
        &tokenless,
        bramble_config::apply_patch(&worker_yaml, "machine: {token: {$patch: delete}}").unwrap(),
    )
    .unwrap();
    let err = fails(&[
        "apply-config",
        "--insecure",
        "-n",
        &worker_node,
        "-f",
        tokenless.to_str().unwrap(),
    ]);
    assert!(
        err.contains("machine.token: required without machine.ca.key"),
        "{err}"
    );
    assert!(!worker_state.path().join("config/config.yaml").exists());
    ok(&[
        "apply-config",
        "--insecure",
        "-n",
        &worker_node,
        "-f",
        &c.file("admin", "worker.yaml"),
    ]);
    // Verified against the cluster CA, like any node; a reader can read it.
    let out = bramble_testkit::wait_for(
        "the worker to serve a certificate from the cluster CA",
        Duration::from_secs(20),
        || {
            let (success, out, _) = as_role(&c, "reader", &worker_node, &["version", "-o", "json"]);
            success.then_some(out)
        },
    );
    assert!(out.contains("\"maintenance\": false"), "{out}");
    let (success, config, err) = as_role(&c, "admin", &worker_node, &["get", "config"]);
    assert!(success, "{err}");
    assert!(!config.contains("PRIVATE KEY"), "{config}");

    // etcd is the control plane's: a worker refuses Bootstrap, saying why,
    // and writes nothing; every etcd call says the same.
    let (success, _, err) = as_role(&c, "admin", &worker_node, &["bootstrap"]);
    assert!(!success, "a worker took a bootstrap");
    assert!(
        err.contains("bootstrap a control-plane node: this one is a worker"),
        "{err}"
    );
    assert!(
        !worker_state.path().join("var").exists(),
        "a refused bootstrap wrote under {}",
        worker_state.path().display()
    );
    let err = as_role(&c, "reader", &worker_node, &["etcd", "members"]).2;
    assert!(
        err.contains("etcd runs on control-plane nodes; this node is a worker"),
        "{err}"
    );
    // On the control plane, the first bootstrap leaves the request etcd's
    // daemon reads; a second is refused, naming the request waiting.
    let port = etcd_port();
    let cp_layout = bramble_etcd::Layout::under(cp_state.path());
    // Recovering from a snapshot uploads it, then leaves a request naming
    // it (the node's own checks of size and SHA-256 are apid's unit tests).
    let snapshot = tempfile::tempdir().unwrap();
    let snapshot_file = snapshot.path().join("etcd.db");
    std::fs::write(&snapshot_file, vec![7u8; 3 << 20]).unwrap();
    let (success, out, err) = as_role(
        &c,
        "admin",
        &cp_node,
        &[
            "bootstrap",
            "--recover-from",
            snapshot_file.to_str().unwrap(),
        ],
    );
    assert!(success, "{out}{err}");
    assert!(
        out.contains("recovery requested") && out.contains("3145728 bytes"),
        "{out}"
    );
    let request = cp_layout.bootstrap_request().unwrap().unwrap();
    assert_eq!(
        request.restore_from.as_ref(),
        Some(&cp_layout.restore_snapshot)
    );
    assert_eq!(
        std::fs::read(&cp_layout.restore_snapshot).unwrap(),
        std::fs::read(&snapshot_file).unwrap()
    );
    // A reader may not; the request waiting refuses another.
    let (success, _, _) = as_role(
        &c,
        "reader",
        &cp_node,
        &[
            "bootstrap",
            "--recover-from",
            snapshot_file.to_str().unwrap(),
        ],
    );
    assert!(!success, "a reader recovered");
    let (success, _, err) = as_role(
        &c,
        "admin",
        &cp_node,
        &[
            "bootstrap",
            "--recover-from",
            snapshot_file.to_str().unwrap(),
        ],
    );
    assert!(!success && err.contains("already waiting"), "{err}");
    cp_layout.clear_bootstrap_request().unwrap();
    std::fs::remove_file(&cp_layout.restore_snapshot).unwrap();
    let (success, out, err) = as_role(&c, "admin", &cp_node, &["bootstrap"]);
    assert!(success, "{out}{err}");
    assert!(out.contains("bootstrap requested"), "{out}");
    let request = cp_layout.bootstrap_request().unwrap().unwrap();
    assert_eq!(request.cluster, "test");
    let first = std::fs::read(&cp_layout.bootstrap_request).unwrap();
    let (success, _, err) = as_role(&c, "admin", &cp_node, &["bootstrap"]);
    assert!(!success, "a second bootstrap was taken");
    assert!(
        err.contains("a bootstrap request is already waiting") && err.contains("\"test\""),
        "{err}"
    );
    assert_eq!(std::fs::read(&cp_layout.bootstrap_request).unwrap(), first);
    drop(port);
    // Bootstrapping through two nodes at once would form two clusters.
    let cfg = c.file("admin", "nodeconfig");
    let err = fails(&[
        "--nodeconfig",
        &cfg,
        "-n",
        &format!("{cp_node},{worker_node}"),
        "bootstrap",
    ]);
    assert!(err.contains("exactly one"), "{err}");

    // Straight to the control plane, without a client certificate: the
    // join call with a wrong token gets nothing, every other call is refused.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ca = bramble_pki::SecretsBundle::from_yaml(
        &std::fs::read_to_string(c.root.join("secrets.yaml")).unwrap(),
    )
    .unwrap()
    .os_ca
    .cert_pem()
    .to_owned();
    let anonymous = |node: &str| {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(
            rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()).map(Result::unwrap),
        );
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = nodectl::client::ClientTls::from_rustls(config);
        let addr = nodectl::nodes::NodeAddr::parse(node).unwrap();
        rt.block_on(nodectl::client::connect(
            &addr,
            &tls,
            Duration::from_secs(10),
        ))
        .unwrap()
    };
    let request = bramble_pki::server_request().unwrap();
    let ask = |node: &str, token: &str| {
        let mut client = anonymous(node);
        rt.block_on(client.node_certificate(NodeCertificateRequest {
            token: token.to_owned(),
            csr: request.csr_der.clone(),
            hostname: "intruder".into(),
            addresses: vec!["192.0.2.66".into()],
            cert_sans: vec![],
        }))
    };
    let e = ask(&cp_node, "zzzzzz.zzzzzzzzzzzzzzzz").unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("join token"), "{}", e.message());
    let e = rt
        .block_on(anonymous(&cp_node).version(VersionRequest {}))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // With the token, the certificate is the requester's to use; a worker
    // has no CA key to issue one with.
    let issued = ask(&cp_node, &token).unwrap().into_inner().certificate;
    assert!(issued.contains("BEGIN CERTIFICATE"), "{issued}");
    let e = ask(&worker_node, &token).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("no key of the cluster's CA"),
        "{}",
        e.message()
    );
    drop(rt);
    worker.stop();

    // A worker whose token is not the cluster's gets no certificate: it
    // serves its own, which the cluster's clients do not trust.
    let (bad_state, bad) = joining_server(&cp_node);
    let bad_node = bad.node();
    let bad_yaml = bad_state.path().join("worker.yaml");
    std::fs::write(
        &bad_yaml,
        bramble_config::apply_patch(&worker_yaml, "machine: {token: zzzzzz.zzzzzzzzzzzzzzzz}")
            .unwrap(),
    )
    .unwrap();
    ok(&[
        "apply-config",
        "--insecure",
        "-n",
        &bad_node,
        "-f",
        bad_yaml.to_str().unwrap(),
    ]);
    bramble_testkit::wait_for(
        "the worker to leave maintenance mode",
        Duration::from_secs(20),
        || fails_insecure_version(&bad_node).then_some(()),
    );
    let (success, _, err) = as_role(&c, "reader", &bad_node, &["version"]);
    assert!(!success, "a worker with a wrong token was trusted");
    assert!(!err.is_empty());
    bad.stop();
    cp.stop();
}

/// Whether `version --insecure` fails (the node is no longer in
/// maintenance mode: it wants a client certificate for every call).
fn fails_insecure_version(node: &str) -> bool {
    !run(&["version", "--insecure", "-n", node]).0
}

/// Held by the tests whose apid calls etcd on 127.0.0.1:2379, where the
/// real-etcd test runs one of another cluster (its CA trusts none of
/// theirs: their calls would wait out their timeouts there).
static ETCD_PORT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn etcd_port() -> std::sync::MutexGuard<'static, ()> {
    ETCD_PORT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every etcd call against every role: an allowed one reaches its handler
/// (no etcd runs for this node, so it answers that etcd does not, or, for
/// Bootstrap, takes the request), a refused one names the role it needs.
#[test]
fn etcd_calls_need_their_roles() {
    let _port = etcd_port();
    let c = Cluster::generate();
    let state = tempfile::tempdir().unwrap();
    let server = configured(&c.file("admin", "controlplane.yaml"), state.path());
    let node = server.node();
    bramble_testkit::wait_for("mutual TLS", Duration::from_secs(20), || {
        as_role(&c, "reader", &node, &["version"]).0.then_some(())
    });
    let snapshot = state.path().join("snapshot.db");
    let snapshot = snapshot.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["etcd", "members"], "reader"),
        (&["etcd", "status"], "reader"),
        (&["etcd", "alarm"], "reader"),
        (&["etcd", "alarm", "list"], "reader"),
        (&["etcd", "defrag"], "operator"),
        (&["etcd", "alarm", "disarm"], "operator"),
        (&["bootstrap"], "admin"),
        (&["etcd", "leave"], "admin"),
        (&["etcd", "remove-member", "cp9"], "admin"),
        (&["etcd", "snapshot", snapshot, "--force"], "admin"),
    ];
    let rank = |r: &str| {
        ["reader", "operator", "admin"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    for (args, needs) in cases {
        for role in ["reader", "operator", "admin"] {
            let (success, out, err) = as_role(&c, role, &node, args);
            if rank(role) >= rank(needs) {
                assert!(
                    !err.contains("does not have permission") && !err.contains("needs the"),
                    "{args:?} as {role} was refused: {err}"
                );
                assert!(
                    success || err.contains("etcd"),
                    "{args:?} as {role} did not reach its handler: {out}{err}"
                );
            } else {
                assert!(!success, "{args:?} as {role} was allowed: {out}");
                assert!(
                    err.contains("does not have permission"),
                    "{args:?} as {role}: {err}"
                );
                assert!(err.contains(&format!("needs the {needs} role")), "{err}");
            }
        }
    }
    assert!(
        !Path::new(snapshot).exists(),
        "a refused snapshot wrote a file"
    );
    server.stop();
}

/// A real etcd, killed (and reaped) on drop.
struct EtcdProcess(std::process::Child);

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Parses nodectl's `-o json` output.
fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// The etcd calls against a real member: Debian's etcd (`etcd-server`) on
/// 127.0.0.1, where apid calls it, with this control plane's certificates
/// (`MemberCerts`) and command line (`Launch`), its data in the node's
/// etcd layout under the test's directory. Members, status with a leader,
/// a snapshot `etcdctl` accepts, alarms, defragmentation, the quorum rule
/// keeping the last member, and Bootstrap refused both because the node
/// holds data and (through a second node of the same cluster) because a
/// cluster answers at the control-plane endpoint.
#[test]
fn etcd_through_the_machine_api_against_a_real_member() {
    bramble_testkit::skip_unless!(available: bramble_testkit::skip_reason(&[
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
    ]));
    let _port = etcd_port();
    for port in [bramble_etcd::CLIENT_PORT, bramble_etcd::PEER_PORT] {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            panic!(
                "127.0.0.1:{port} is not free ({e}): apid calls etcd there, so this test runs \
                 one; stop whatever listens (another etcd?)"
            );
        }
    }
    let c = Cluster::generate();
    let cp = c.file("admin", "controlplane.yaml");
    let config =
        bramble_config::MachineConfig::parse(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    let etcd = config.cluster.etcd.as_ref().unwrap();
    let ca = bramble_pki::CertificateAuthority::from_pem(
        &etcd.ca.crt,
        etcd.ca.key.as_ref().unwrap().expose(),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    // A supervisor for ServiceList (health) and Reset's reboot.
    let sup = TestSupervisor::start(state.path().join("init.sock"));
    wait_for_socket(&state.path().join("init.sock"));
    let server = configured(&cp, state.path());
    let node = server.node();
    bramble_testkit::wait_for("mutual TLS", Duration::from_secs(20), || {
        as_role(&c, "reader", &node, &["version"]).0.then_some(())
    });

    // One member on 127.0.0.1, its state where this node's apid looks.
    let layout = bramble_etcd::Layout::under(state.path());
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let certs = bramble_etcd::MemberCerts::issue(&ca, "cp1", &[ip]).unwrap();
    let files = certs.write(&layout.pki_dir, None).unwrap();
    let tuning = bramble_config::EtcdTuning {
        // Loopback is fast: etcd's own timing keeps the test short.
        heartbeat_interval_ms: 100,
        election_timeout_ms: 1000,
        ..etcd.tuning()
    };
    let args = bramble_etcd::Launch {
        name: "cp1",
        advertise: ip,
        cluster: "test",
        layout: &layout,
        certs: &files,
        tuning: &tuning,
        initial: bramble_etcd::Initial::New,
    }
    .args();
    let log_path = state.path().join("etcd.log");
    let member = EtcdProcess(
        std::process::Command::new("etcd")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let status = bramble_testkit::wait_for(
        "etcd to answer with a leader through the machine API",
        Duration::from_secs(30),
        || {
            let (success, out, _) = as_role(&c, "reader", &node, &["etcd", "status", "-o", "json"]);
            let status = success.then(|| json(&out))?;
            (status[0]["leader"].as_str() != Some("")).then_some(status)
        },
    );
    let status = &status[0];
    assert_eq!(status["is_leader"], true, "{status}\n{}", log());
    assert_eq!(status["leader"], status["member_id"], "{status}");
    assert!(status["raft_index"].as_u64().unwrap() > 0, "{status}");
    assert!(status["raft_term"].as_u64().unwrap() > 0, "{status}");
    assert!(status["db_size_bytes"].as_i64().unwrap() > 0, "{status}");
    let member_id = status["member_id"].as_str().unwrap().to_owned();
    let cluster_id = status["cluster_id"].as_str().unwrap().to_owned();
    assert_eq!(member_id.len(), 16, "{member_id}");
    let table = as_role(&c, "reader", &node, &["etcd", "status"]).1;
    assert!(
        table.contains("(this)") && table.contains("RAFT INDEX"),
        "{table}"
    );

    // One voting member, named as the node.
    let members = json(&as_role(&c, "reader", &node, &["etcd", "members", "-o", "json"]).1);
    let members = members.as_array().unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["name"], "cp1");
    assert_eq!(members[0]["id"], member_id.as_str());
    assert_eq!(members[0]["learner"], false);
    assert_eq!(members[0]["client_urls"][0], "https://127.0.0.1:2379");

    // A snapshot etcdctl accepts, private, never over a file without --force.
    let snapshot = state.path().join("backup").join("etcd.db");
    std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
    let path = snapshot.to_str().unwrap();
    let (success, out, err) = as_role(&c, "admin", &node, &["etcd", "snapshot", path]);
    assert!(success, "{out}{err}\n{}", log());
    let written = std::fs::read(&snapshot).unwrap();
    assert!(out.contains(&format!("{} bytes", written.len())), "{out}");
    let sha256: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&written)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert!(out.contains(&format!("sha256 {sha256}")), "{out}");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&snapshot).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the snapshot holds every secret");
    }
    let checked = std::process::Command::new("etcdctl")
        .args(["snapshot", "status", path, "-w", "json"])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "etcdctl snapshot status: {}",
        stderr(&checked)
    );
    assert!(
        stdout(&checked).contains("\"totalKey\""),
        "{}",
        stdout(&checked)
    );
    let (success, _, err) = as_role(&c, "admin", &node, &["etcd", "snapshot", path]);
    assert!(!success && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&snapshot).unwrap(), written);
    let leftovers: Vec<_> = std::fs::read_dir(snapshot.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["etcd.db"], "temporary files left behind");
    let (success, out, err) = as_role(&c, "admin", &node, &["etcd", "snapshot", path, "--force"]);
    assert!(success, "{out}{err}");

    // Alarms and defragmentation.
    let out = as_role(&c, "reader", &node, &["etcd", "alarm"]).1;
    assert!(out.contains("no alarms raised"), "{out}");
    let out = as_role(&c, "operator", &node, &["etcd", "alarm", "disarm"]).1;
    assert!(out.contains("no alarms raised"), "{out}");
    let (success, out, err) = as_role(&c, "operator", &node, &["etcd", "defrag"]);
    assert!(success, "{out}{err}");
    assert!(
        out.contains(&format!("member {member_id} defragmented")),
        "{out}"
    );

    // The last voting member does not leave, nor remove itself by name;
    // an unknown member is named as such.
    let (success, _, err) = as_role(&c, "admin", &node, &["etcd", "leave"]);
    assert!(!success, "the last member left");
    assert!(
        err.contains("last voting member") && err.contains("--force"),
        "{err}"
    );
    let err = as_role(&c, "admin", &node, &["etcd", "remove-member", "cp1"]).2;
    assert!(
        err.contains("this node's own") && err.contains("etcd leave"),
        "{err}"
    );
    let err = as_role(&c, "admin", &node, &["etcd", "remove-member", "cp9"]).2;
    assert!(
        err.contains("no etcd member has the ID or name \"cp9\"") && err.contains("cp1"),
        "{err}"
    );
    let members = json(&as_role(&c, "reader", &node, &["etcd", "members", "-o", "json"]).1);
    assert_eq!(members.as_array().unwrap().len(), 1, "{members}");

    // Health: the node answers, its services run, its member leads.
    let (success, out, err) = as_role(&c, "reader", &node, &["health"]);
    assert!(success, "{out}{err}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with("healthy: 1 node(s)"),
        "{out}"
    );
    assert!(out.contains(&member_id) && out.contains("answers"), "{out}");
    let report = json(&as_role(&c, "reader", &node, &["health", "-o", "json"]).1);
    assert_eq!(report["healthy"], true, "{report}");
    assert_eq!(report["nodes"][0]["role"], "controlplane", "{report}");
    assert_eq!(report["nodes"][0]["etcd_member"], member_id.as_str());
    assert_eq!(report["nodes"][0]["raft_lag"], 0, "{report}");
    assert_eq!(report["etcd_members"][0]["name"], "cp1", "{report}");
    assert_eq!(report["etcd_members"][0]["state"], "answers", "{report}");

    // Reset: the last voting member would leave first, so the node is not
    // reset; nothing changes.
    let (success, out, err) = as_role(&c, "admin", &node, &["reset"]);
    assert!(!success, "the last member's node was reset: {out}");
    assert!(
        err.contains("was not reset (nothing changed)")
            && err.contains("last voting member")
            && err.contains("--force"),
        "{err}"
    );
    assert!(state.path().join("config/config.yaml").exists());
    assert!(
        sup.shutdown.recv_timeout(Duration::from_secs(1)).is_err(),
        "a refused reset rebooted"
    );
    let members = json(&as_role(&c, "reader", &node, &["etcd", "members", "-o", "json"]).1);
    assert_eq!(members.as_array().unwrap().len(), 1, "{members}");

    // Bootstrap: this node holds the member's data.
    assert!(layout.has_data());
    let (success, _, err) = as_role(&c, "admin", &node, &["bootstrap"]);
    assert!(!success, "a node with data took a bootstrap");
    assert!(
        err.contains("already holds etcd data")
            && err.contains(&format!("cluster {cluster_id}"))
            && err.contains("cp1"),
        "{err}"
    );
    assert!(!layout.bootstrap_request.exists());
    // A second control-plane node without data: the cluster answers at the
    // control-plane endpoint's host (127.0.0.1), which it joins by itself.
    let other_state = tempfile::tempdir().unwrap();
    let other = configured(&cp, other_state.path());
    let other_node = other.node();
    bramble_testkit::wait_for("mutual TLS", Duration::from_secs(20), || {
        as_role(&c, "reader", &other_node, &["version"])
            .0
            .then_some(())
    });
    let (success, _, err) = as_role(&c, "admin", &other_node, &["bootstrap"]);
    assert!(!success, "a second cluster was asked for");
    assert!(
        err.contains(&format!(
            "an etcd cluster already exists (cluster {cluster_id}, members cp1"
        )) && err.contains("this node joins it by itself"),
        "{err}"
    );
    assert!(!other_state.path().join("var").exists());
    // Reset --force through the second node, whose apid reaches the same
    // member on 127.0.0.1 (the test's two nodes share it): the quorum rule
    // is passed over, and whether etcd removes its last member or refuses
    // to, the node is reset.
    let other_sup = TestSupervisor::start(other_state.path().join("init.sock"));
    wait_for_socket(&other_state.path().join("init.sock"));
    let (success, out, err) = as_role(&c, "admin", &other_node, &["reset", "--force"]);
    assert!(success, "{out}{err}\n{}", log());
    assert!(
        out.contains("configuration wiped")
            && (out.contains("left cluster") || out.contains("reset anyway (forced)")),
        "{out}"
    );
    assert_eq!(
        other_sup
            .shutdown
            .recv_timeout(Duration::from_secs(30))
            .unwrap(),
        Shutdown::Reboot
    );
    assert!(!other_state.path().join("config/config.yaml").exists());
    other.stop();

    // Once etcd is gone, the calls say so.
    drop(member);
    let err = as_role(&c, "reader", &node, &["etcd", "members"]).2;
    assert!(err.contains("etcd does not answer on this node"), "{err}");
    // health fails, naming etcd.
    let (success, out, err) = as_role(&c, "reader", &node, &["health"]);
    assert!(!success, "healthy without etcd: {out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("unhealthy: ") && last.contains("etcd does not answer"),
        "{out}{err}"
    );
    // Reset goes on as before when etcd does not answer, and says so.
    let (success, out, err) = as_role(&c, "admin", &node, &["reset"]);
    assert!(success, "{out}{err}");
    assert!(
        out.contains("etcd does not answer on this node")
            && out.contains("no member left an etcd cluster")
            && out.contains("configuration wiped"),
        "{out}"
    );
    assert_eq!(
        sup.shutdown.recv_timeout(Duration::from_secs(30)).unwrap(),
        Shutdown::Reboot
    );
    assert!(!state.path().join("config/config.yaml").exists());
    server.stop();
}
