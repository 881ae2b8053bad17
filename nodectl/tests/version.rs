//! `nodectl version` against a real `apid` over TLS.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bramble_apid::identity::{CERT_FILE, KEY_FILE, Origin};
use bramble_apid::info::{GIT_REVISION, Uname};
use clap::Parser;
use common::{TestServer, closed_port, fixture_info, nodectl, state_files, stderr, stdout};
use nodectl::cmd::version::VersionRow;

async fn run_lib(args: &[&str]) -> (Result<bool, nodectl::Error>, String, String) {
    let cli = nodectl::Cli::try_parse_from(args).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let r = nodectl::run(cli, &mut out, &mut err).await;
    (
        r,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[tokio::test]
async fn version_answers_every_field_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("state"), fixture_info(dir.path()));
    let node = server.node();
    let (r, out, err) = run_lib(&[
        "nodectl",
        "-n",
        &node,
        "--insecure",
        "-o",
        "json",
        "version",
    ])
    .await;
    assert!(r.unwrap(), "stderr: {err}");
    assert_eq!(err, "");
    let rows: Vec<VersionRow> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 1);
    let v = &rows[0];
    let uts = Uname::get();
    assert_eq!(v.node, node);
    assert_eq!(v.os_name, "Bramble");
    assert_eq!(v.os_version, "9.9.9");
    assert_eq!(v.git_revision, GIT_REVISION);
    assert_eq!(v.kernel_version, uts.release);
    assert_eq!(v.architecture, std::env::consts::ARCH);
    assert_eq!(v.boot_slot, "B");
    assert!((v.uptime_seconds - 3723.5).abs() < 1e-9);
    assert!(v.maintenance);
    assert_eq!(v.hostname, uts.nodename);
    drop(server);
}

#[test]
fn binary_prints_table_and_yaml_with_pinned_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("state"), fixture_info(dir.path()));
    let node = server.node();

    let o = nodectl(&[
        "version",
        "-n",
        &node,
        "--cert-fingerprint",
        &server.fingerprint,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for h in [
        "NODE",
        "OS",
        "VERSION",
        "GIT",
        "KERNEL",
        "ARCH",
        "SLOT",
        "UPTIME",
        "MAINTENANCE",
    ] {
        assert!(lines[0].contains(h), "{}", lines[0]);
    }
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells[0], node);
    assert_eq!(&cells[1..3], ["Bramble", "9.9.9"]);
    assert_eq!(cells[6], "B");
    assert_eq!(cells[7], "1h2m");
    assert_eq!(cells[8], "yes");

    let o = nodectl(&["-o", "yaml", "--insecure", "-n", &node, "version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<VersionRow> = serde_norway::from_str(&stdout(&o)).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].boot_slot, "B");
}

#[test]
fn fans_out_to_several_nodes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestServer::start(&dir.path().join("a"), fixture_info(dir.path()));
    let b = TestServer::start(&dir.path().join("b"), fixture_info(dir.path()));
    let nodes = format!("{},{}", b.node(), a.node());
    let o = nodectl(&["--insecure", "-o", "json", "-n", &nodes, "version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<VersionRow> = serde_json::from_str(&stdout(&o)).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(names, [b.node(), a.node()]);
    // Two nodes, two different self-signed certificates.
    assert_ne!(a.fingerprint, b.fingerprint);
}

#[test]
fn certificate_is_persisted_atomically_and_reused_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state").join("apid");
    let first = TestServer::start(&state, fixture_info(dir.path()));
    assert_eq!(first.origin, Origin::Generated);
    let fingerprint = first.fingerprint.clone();
    first.stop();

    // Exactly the two files: no temporary left behind; the key is private.
    assert_eq!(
        state_files(&state),
        vec![state.join(CERT_FILE), state.join(KEY_FILE)]
    );
    let mode = std::fs::metadata(state.join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let pem = std::fs::read_to_string(state.join(CERT_FILE)).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    let second = TestServer::start(&state, fixture_info(dir.path()));
    assert_eq!(second.origin, Origin::Loaded);
    assert_eq!(second.fingerprint, fingerprint);
    // The fingerprint seen on the first start still opens the node.
    let o = nodectl(&[
        "version",
        "-n",
        &second.node(),
        "--cert-fingerprint",
        &fingerprint,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(state_files(&state).len(), 2);
}

#[test]
fn pinned_fingerprint_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("a"), fixture_info(dir.path()));
    let other = TestServer::start(&dir.path().join("b"), fixture_info(dir.path()));
    // --insecure does not weaken a pin.
    let o = nodectl(&[
        "version",
        "--insecure",
        "-n",
        &server.node(),
        "--cert-fingerprint",
        &other.fingerprint,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "{}: server certificate fingerprint {}",
            server.node(),
            server.fingerprint
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "does not match --cert-fingerprint {}",
            other.fingerprint
        )),
        "{err}"
    );
    assert!(err.contains("refusing"), "{err}");
}

#[test]
fn malformed_fingerprint_is_a_usage_error() {
    let o = nodectl(&[
        "version",
        "-n",
        "127.0.0.1",
        "--cert-fingerprint",
        "SHA256:1234",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("64 hex digits"), "{}", stderr(&o));
}

#[test]
fn unreachable_node_gives_clear_error_and_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("state"), fixture_info(dir.path()));
    let dead = format!("127.0.0.1:{}", closed_port());
    let nodes = format!("{},{}", server.node(), dead);
    let o = nodectl(&["--insecure", "-n", &nodes, "-o", "json", "version"]);
    assert_eq!(o.status.code(), Some(1));
    // The node that answered is still printed.
    let rows: Vec<VersionRow> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].node, server.node());
    let err = stderr(&o);
    let port = dead.rsplit(':').next().unwrap();
    assert_eq!(
        err.trim_end(),
        format!("{dead}: connection refused: is the node up and its API listening on port {port}?")
    );
}

#[test]
fn silent_server_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Accept and hold connections without ever answering.
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().take(4) {
            held.push(c);
        }
    });
    let started = std::time::Instant::now();
    let o = nodectl(&["--insecure", "--timeout", "300ms", "-n", &addr, "version"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim_end(),
        format!(
            "{addr}: no answer within 0.3s (--timeout): is the address right and the node reachable?"
        )
    );
    drop(holder);
}

#[test]
fn non_tls_port_is_explained() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        // Answer like a plain HTTP server would, then hang up.
        if let Ok((mut c, _)) = listener.accept() {
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let o = nodectl(&["--insecure", "-n", &addr, "version"]);
    t.join().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!("{addr}: TLS handshake failed:")),
        "{err}"
    );
    assert!(err.contains("is this the Bramble API port"), "{err}");
}

#[test]
fn without_insecure_or_client_config_it_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nodeconfig");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nodectl"))
        .args(["version", "-n", "127.0.0.1"])
        .env("NODECONFIG", &missing)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert_eq!(
        stderr(&o).trim_end(),
        "error: no client configuration: use --insecure for a node in maintenance mode, or \
         --nodeconfig FILE (written by `nodectl gen config`)"
    );
}

#[test]
fn no_nodes_is_an_error() {
    let o = nodectl(&["version", "--insecure"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no nodes given"), "{}", stderr(&o));
}

#[test]
fn endpoint_is_dialled_for_the_named_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("state"), fixture_info(dir.path()));
    let o = nodectl(&[
        "--insecure",
        "-e",
        &server.node(),
        "-n",
        "10.0.0.7",
        "-o",
        "json",
        "version",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<VersionRow> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rows[0].node, "10.0.0.7");

    // Errors show the dialled address next to the node's name.
    let dead = format!("127.0.0.1:{}", closed_port());
    let o = nodectl(&["--insecure", "-e", &dead, "-n", "10.0.0.7", "version"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with(&format!("10.0.0.7 ({dead}): connection refused")),
        "{}",
        stderr(&o)
    );

    let o = nodectl(&[
        "--insecure",
        "-e",
        &dead,
        "-n",
        "10.0.0.7,10.0.0.8",
        "version",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not supported yet"), "{}", stderr(&o));
}

#[test]
fn completion_scripts() {
    for shell in ["bash", "zsh", "fish"] {
        let o = nodectl(&["completion", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(
            out.contains("nodectl") && out.contains("cert-fingerprint"),
            "{shell}"
        );
    }
}
