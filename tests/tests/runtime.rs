//! The node's container runtime in QEMU, with real parts: Debian's
//! `docker-registry` on the host's loopback (the guest reaches it as
//! 10.0.2.100:5000 through a forward; its network stays restricted), arm64
//! images the test builds from Debian's static busybox, and the real
//! `nodectl` over mutual TLS.
//!
//! One node, two boots: workloads pulled and run (output in `logs -k`), a
//! memory limit enforced by the OOM killer and reported, a memory hog with
//! no limit taken by the node's OOM killer (not a service), a hostile
//! container (given `CAP_MKNOD`, with a device node for the node's disk in
//! its image) that can read none of the disk and, with `CAP_NET_RAW`, sees
//! no link of the node (a `hostNetwork` workload does, for contrast), a
//! published port answering from the host through the container's own
//! network namespace, a fork bomb held at the default pids limit while the
//! API answers, a crashing container restarted with growing delays, a
//! restart on request, `image import` of an archive with no registry
//! involved, bad references, an unreachable registry, a corrupted layer and
//! a truncated archive refused with nothing stored, workloads removed by a
//! new configuration, and after a reboot with the registry stopped the
//! remaining workloads running (and publishing) again from the node's own
//! store.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bramble_oci_store::build::{Entry, ImageBuilder};
use bramble_testkit::registry::{Registry, free_port};
use bramble_tests::nodectl::Client;
use bramble_tests::{busybox, paths, qemu};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Pull, unpack and start under TCG.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the guest finds the registry.
const REGISTRY: &str = "10.0.2.100:5000";
/// A forwarded address whose host side refuses every connection.
const DEAD_REGISTRY: &str = "10.0.2.100:5001";

/// A container after the node's disk: through a device node its image
/// ships (`/disk`, the node's `vda`) and through one it makes in its `/dev`
/// (a tmpfs that allows devices) with the `CAP_MKNOD` it was given. Its own
/// `/dev/null` works. It also says how readily the OOM killer takes it (not
/// at runtimed's -900, which the node's services have) and its pids limit
/// (the node's default: it sets none), and it cannot make a user namespace
/// (the runtime's seccomp filter). With `CAP_NET_RAW` (a default) it sees
/// only its own loopback: no link of the node to sniff or forge packets on,
/// no route to QEMU's gateway.
const HOSTILE: &str = "echo vda=$(cat /sys/class/block/vda/dev); \
    unshare -U true 2>/dev/null && echo userns || echo no-userns; \
    echo oom=$(cat /proc/self/oom_score_adj) pids=$(cat /sys/fs/cgroup/pids.max); \
    echo links=$(ls /sys/class/net); \
    arping -c 1 -w 5 -I eth0 10.0.2.2 >/dev/null 2>&1 && echo arp-reached || echo arp-refused; \
    ping -c 1 -W 5 10.0.2.2 >/dev/null 2>&1 && echo ping-reached || echo ping-refused; \
    head -c 512 /disk >/dev/null 2>&1 && echo disk-read || echo disk-refused; \
    mknod /dev/vda b 254 0 2>/dev/null && echo vda-made || echo vda-refused; \
    mknod /dev/null2 c 1 3 && echo x > /dev/null2 && echo null-ok";

/// The same probes from a workload on the node's network (`hostNetwork`):
/// what the hostile container would reach without a namespace of its own.
const ON_HOST_NETWORK: &str = "echo links=$(ls /sys/class/net); \
    arping -c 1 -w 5 -I eth0 10.0.2.2 >/dev/null 2>&1 && echo arp-reached || echo arp-refused";

/// A fork bomb under the default pids limit (1024): the init starts it and
/// becomes `sleep` (`exec`: no fork needed). Its stderr (a flood of "can't
/// fork") goes nowhere.
const FORK_BOMB: &str =
    "exec 2>/dev/null; b() { b | b & }; b; echo bomb-started; exec sleep 1000000";

/// A published port: busybox's httpd on the container's own loopback.
const WEB: &str = "mkdir -p /tmp/www && echo published > /tmp/www/index.html \
    && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www";

/// The container port `web` publishes, on the node's port of the same number.
const WEB_PORT: u16 = 8080;

/// The workloads of the first configuration.
fn workloads() -> String {
    format!(
        r#"machine:
  registries:
    insecure: ["{REGISTRY}", "{DEAD_REGISTRY}"]
  workloads:
    - name: hello
      image: {REGISTRY}/bramble/busybox:1
      command: [/bin/sh, -c]
      args: ["echo hello from $GREETING; while true; do sleep 1; done"]
      env:
        GREETING: bramble
      resources:
        memory: 32Mi
        pids: 32
      stopGracePeriodSeconds: 2
    - name: hog
      image: {REGISTRY}/bramble/busybox:1
      command: [/bin/tail, /dev/zero]
      resources:
        memory: 16Mi
      restart: never
    - name: crash
      image: {REGISTRY}/bramble/busybox:1
      command: [/bin/sh, -c, "echo crashing; exit 3"]
    - name: hostile
      image: {REGISTRY}/bramble/hostile:1
      capabilities: [MKNOD]
      restart: never
      command: [/bin/sh, -c, "{HOSTILE}"]
    - name: hostnet
      image: {REGISTRY}/bramble/busybox:1
      hostNetwork: true
      restart: never
      command: [/bin/sh, -c, "{ON_HOST_NETWORK}"]
    - name: glutton
      image: {REGISTRY}/bramble/busybox:1
      command: [/bin/tail, /dev/zero]
      restart: never
    - name: web
      image: {REGISTRY}/bramble/busybox:1
      command: [/bin/sh, -c, "{WEB}"]
      ports: [{{containerPort: {WEB_PORT}}}]
"#
    )
}

/// Applies the first configuration's workloads with `patch` on top, without
/// a reboot; nodectl's output.
fn apply_workloads(c: &Client, addr: &str, patch: &str) -> Result<String> {
    c.ok(
        addr,
        &[
            "apply-config",
            "-f",
            c.controlplane_str()?,
            "--mode",
            "no-reboot",
            "--config-patch",
            &workloads(),
            "--config-patch",
            patch,
        ],
    )
}

/// A plain HTTP GET of `/` on the host's `port`; the response's body.
fn http_get(port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &(std::net::Ipv4Addr::LOCALHOST, port).into(),
        ANSWER_TIMEOUT,
    )?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: node\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    Ok(body.to_owned())
}

/// The published port answers with the page `web` serves.
fn web_answers(port: u16) -> Result<()> {
    let mut last = None;
    eventually("the published port answering", START_TIMEOUT, || {
        last = Some(http_get(port));
        Ok(last
            .as_ref()
            .is_some_and(|r| r.as_ref().is_ok_and(|b| b == "published\n")))
    })
    .with_context(|| format!("last answer: {last:?}"))
}

/// The stdout lines of container `name`.
fn stdout_of(c: &Client, addr: &str, name: &str) -> Result<Vec<String>> {
    Ok(log_lines(c, addr, name)?
        .iter()
        .filter(|l| l["stream"] == "stdout")
        .filter_map(|l| l["text"].as_str().map(str::to_owned))
        .collect())
}

/// A second image on top of busybox's layer, only ever imported.
fn imported_image(busybox: &[u8]) -> ImageBuilder {
    busybox::image(busybox)
        .layer(vec![Entry::file(
            "hello.txt",
            0o644,
            b"imported without a registry\n",
        )])
        .annotate_ref("docker.io/bramble/imported:v1")
}

/// Corrupts the registry's copy of `digest` (same size, other bytes), so
/// it serves content that does not match its name.
fn corrupt_blob(registry: &Registry, digest: &str) -> Result<()> {
    let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
    let path = registry
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    for b in data.iter_mut().rev().take(64) {
        *b ^= 0x5a;
    }
    std::fs::write(&path, data)?;
    Ok(())
}

fn json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

fn containers(c: &Client, addr: &str) -> Result<Vec<serde_json::Value>> {
    let v = json(&c.ok(addr, &["containers", "-o", "json"])?)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn container(c: &Client, addr: &str, name: &str) -> Result<Option<serde_json::Value>> {
    Ok(containers(c, addr)?.into_iter().find(|x| x["name"] == name))
}

fn log_lines(c: &Client, addr: &str, name: &str) -> Result<Vec<serde_json::Value>> {
    let out = c.ok(addr, &["logs", "-k", name, "--tail", "1000", "-o", "json"])?;
    out.lines().map(json).collect()
}

fn images(c: &Client, addr: &str) -> Result<Vec<String>> {
    let v = json(&c.ok(addr, &["images", "-o", "json"])?)?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["reference"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default())
}

/// Polls `f` every 500 ms until it holds, for at most `timeout`.
fn eventually(what: &str, timeout: Duration, f: impl FnMut() -> Result<bool>) -> Result<()> {
    bramble_tests::wait::eventually(what, timeout, Duration::from_millis(500), f).map(drop)
}

fn start(
    dir: &Path,
    disk: &Path,
    port: u16,
    forwards: &[(u16, u16)],
    web_port: u16,
    n: u32,
) -> Result<qemu::Node> {
    let mut opts = qemu::Options::logged(disk, port, dir, n);
    opts.host_forwards = vec![(web_port, WEB_PORT)];
    opts.guest_forwards = forwards
        .iter()
        .map(|&(guest_port, host_port)| qemu::GuestForward {
            guest_ip: "10.0.2.100".to_owned(),
            guest_port,
            host_port,
        })
        .collect();
    qemu::Node::boot(&opts, BOOT_TIMEOUT)
}

fn nodectl_fails(c: &Client, addr: &str, args: &[&str], needle: &str) -> Result<String> {
    let out = c.run(addr, args)?;
    ensure!(!out.success, "nodectl {args:?} succeeded: {}", out.stdout);
    ensure!(
        out.stderr.contains(needle),
        "nodectl {args:?}: expected {needle:?} in: {}",
        out.stderr
    );
    Ok(out.stderr)
}

#[test]
fn workloads_pulled_run_limited_restarted_imported_and_kept_across_a_reboot() -> Result<()> {
    let dir = paths::test_dir("runtime")?;
    let busybox = busybox::arm64()?;
    let mut registry = Registry::start();
    busybox::push(
        &registry,
        "bramble/busybox:1",
        &busybox::image(&busybox).parts()?,
    )?;
    // An image whose layer the registry will serve corrupted.
    let bad = busybox::image(&busybox)
        .layer(vec![Entry::file(
            "bad.txt",
            0o644,
            b"this layer gets corrupted\n",
        )])
        .parts()?;
    busybox::push(&registry, "bramble/corrupt:1", &bad)?;
    let bad_layer = &bad.layers.last().context("a layer")?.digest;
    corrupt_blob(&registry, bad_layer)?;
    // An image shipping a device node for the node's disk (virtio, 254:0).
    let hostile = busybox::image(&busybox)
        .layer(vec![Entry::Device {
            path: "disk".into(),
            mode: 0o600,
            block: true,
            major: 254,
            minor: 0,
        }])
        .parts()?;
    busybox::push(&registry, "bramble/hostile:1", &hostile)?;

    let disk = dir.path().join("disk.img");
    qemu::prepare_disk(&paths::image()?, &disk, 0)?;
    let port = qemu::free_port()?;
    let forwards = [(5000, registry.port()), (5001, free_port())];
    let web_port = qemu::free_port()?;
    let mut node = start(dir.path(), &disk, port, &forwards, web_port, 1)?;
    let addr = node.api_addr();
    let c = Client::generate(&dir.path().join("cluster"), &[&workloads()])?;
    let out = c.apply_first(&addr, ANSWER_TIMEOUT)?;
    ensure!(out.contains("runtimed"), "{out}");

    // Pulled and running; its output in its log. The runtime starts after
    // the API, so at first it may not answer yet.
    eventually("hello running", START_TIMEOUT, || {
        let Ok(found) = container(&c, &addr, "hello") else {
            return Ok(false);
        };
        Ok(found.is_some_and(|x| x["state"] == "running"))
    })
    .with_context(|| format!("{:?}\n{}", containers(&c, &addr), node.console_tail(40)))?;
    eventually("hello's greeting", ANSWER_TIMEOUT, || {
        Ok(log_lines(&c, &addr, "hello")?
            .iter()
            .any(|l| l["text"] == "hello from bramble" && l["stream"] == "stdout"))
    })?;
    let listed = images(&c, &addr)?;
    ensure!(
        listed.contains(&format!("{REGISTRY}/bramble/busybox:1")),
        "{listed:?}"
    );

    // The hostile container reaches none of the node's disk.
    eventually("the hostile container's last line", START_TIMEOUT, || {
        Ok(log_lines(&c, &addr, "hostile")?
            .iter()
            .any(|l| l["text"] == "null-ok"))
    })
    .with_context(|| format!("{:?}", container(&c, &addr, "hostile")))?;
    // Its own output: the runtime's lines about the pull are there too.
    let said = stdout_of(&c, &addr, "hostile")?;
    ensure!(
        said == [
            "vda=254:0",
            "no-userns",
            "oom=0 pids=1024",
            "links=lo",
            "arp-refused",
            "ping-refused",
            "disk-refused",
            "vda-refused",
            "null-ok"
        ],
        "the hostile container (its image's /disk and its mknod are the node's vda, 254:0): {said:?}"
    );
    // On the node's network the same probe reaches QEMU's gateway.
    eventually("hostnet's probes", START_TIMEOUT, || {
        Ok(stdout_of(&c, &addr, "hostnet").is_ok_and(|said| said.len() >= 2))
    })
    .with_context(|| format!("{:?}", container(&c, &addr, "hostnet")))?;
    let said = stdout_of(&c, &addr, "hostnet")?;
    ensure!(
        said.first()
            .is_some_and(|l| l.starts_with("links=") && l.contains("eth0"))
            && said.get(1).is_some_and(|l| l == "arp-reached"),
        "a hostNetwork workload sees the node's links: {said:?}"
    );

    // The published port, from the host, into the container's loopback.
    web_answers(web_port)?;

    let image_rows = json(&c.ok(&addr, &["images", "-o", "json"])?)?;
    ensure!(image_rows[0]["platform"] == "linux/arm64", "{image_rows}");

    // The memory limit: the OOM killer ends the hog, and it is reported.
    eventually("hog OOM-killed", START_TIMEOUT, || {
        Ok(container(&c, &addr, "hog")?
            .is_some_and(|x| x["state"] == "exited" && x["oom_killed"] == true))
    })
    .with_context(|| format!("{:?}", container(&c, &addr, "hog")))?;
    let hog = container(&c, &addr, "hog")?.context("hog")?;
    ensure!(
        hog["reason"]
            .as_str()
            .is_some_and(|r| r.contains("OOMKilled")),
        "{hog}"
    );
    ensure!(hog["restarts"] == 0, "restart: never: {hog}");

    // No limit: the node's OOM killer takes the glutton (oom_score_adj 0),
    // not a service (-900 and below); the API still answers.
    eventually("glutton OOM-killed", START_TIMEOUT, || {
        // The API's listener restarts when the node gains an address
        // (IPv6 autoconfiguration): a call may meet that moment.
        let Ok(found) = container(&c, &addr, "glutton") else {
            return Ok(false);
        };
        Ok(found.is_some_and(|x| x["state"] == "exited" && x["oom_killed"] == true))
    })
    .with_context(|| format!("{:?}", container(&c, &addr, "glutton")))?;
    let services = c.ok(&addr, &["services"])?;
    ensure!(
        !services.contains("failed") && services.contains("runtimed"),
        "{services}"
    );

    // Limits are in the container's cgroup.
    let stats = json(&c.ok(&addr, &["stats", "-o", "json"])?)?;
    let hello_stats = stats
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "hello"))
        .with_context(|| format!("no stats for hello: {stats}"))?;
    ensure!(
        hello_stats["memory_limit_bytes"] == 32 << 20 && hello_stats["pids"].as_u64() >= Some(1),
        "{hello_stats}"
    );

    // The crashing container comes back, each time after a longer pause.
    eventually("crash restarted three times", START_TIMEOUT, || {
        Ok(container(&c, &addr, "crash")?.is_some_and(|x| x["restarts"].as_u64() >= Some(3)))
    })?;
    let crash = container(&c, &addr, "crash")?.context("crash")?;
    ensure!(crash["exit_code"] == 3, "{crash}");
    let starts: Vec<u64> = log_lines(&c, &addr, "crash")?
        .iter()
        .filter(|l| l["text"] == "crashing")
        .filter_map(|l| l["time_unix_ms"].as_u64())
        .collect();
    ensure!(starts.len() >= 3, "{starts:?}");
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // Each delay is at least its backoff (1 s, 2 s, 4 s...); a busy guest
    // only adds to them, so only the lower bounds are checked.
    ensure!(
        gaps.iter()
            .zip([900, 1900, 3900, 7900])
            .all(|(gap, least)| *gap >= least),
        "the delays between restarts must grow (1 s, 2 s, ...): {gaps:?} ms"
    );

    // A restart on request.
    let before = container(&c, &addr, "hello")?.context("hello")?;
    c.ok(&addr, &["container", "hello", "restart"])?;
    eventually("hello restarted", ANSWER_TIMEOUT, || {
        Ok(container(&c, &addr, "hello")?.is_some_and(|x| {
            x["state"] == "running" && x["restarts"].as_u64() > before["restarts"].as_u64()
        }))
    })?;

    // Reloads of the runtime (each apply below) leave running containers
    // alone.
    let hello_restarts = container(&c, &addr, "hello")?.context("hello")?["restarts"].clone();

    // A fork bomb: held at the default pids limit, and the API answers.
    let bomb = format!(
        "machine:
  workloads:
    - name: bomb
      image: {REGISTRY}/bramble/busybox:1
      command: [/bin/sh, -c, '{FORK_BOMB}']
      restart: never
      stopGracePeriodSeconds: 1
"
    );
    apply_workloads(&c, &addr, &bomb)?;
    // At the limit (or close: processes exit as others fork), and never
    // beyond it.
    let bomb_pids = || -> Result<Option<u64>> {
        let stats = json(&c.ok(&addr, &["stats", "-o", "json"])?)?;
        Ok(stats
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == "bomb"))
            .and_then(|s| s["pids"].as_u64()))
    };
    let mut seen = 0;
    eventually("the fork bomb near its limit", START_TIMEOUT, || {
        if let Ok(Some(n)) = bomb_pids() {
            ensure!(
                n <= 1024,
                "the bomb beyond the default limit: {n} processes"
            );
            seen = n;
        }
        Ok(seen >= 900)
    })
    .with_context(|| format!("{seen} processes; {:?}", container(&c, &addr, "bomb")))?;
    c.ok(&addr, &["version"])?;

    // Bad input: refused with a reason, nothing stored.
    let stored = images(&c, &addr)?;
    nodectl_fails(&c, &addr, &["image", "pull", "Not An Image"], "reference")?;
    nodectl_fails(
        &c,
        &addr,
        &["image", "pull", &format!("{REGISTRY}/bramble/missing:1")],
        "bramble/missing",
    )?;
    nodectl_fails(
        &c,
        &addr,
        &[
            "image",
            "pull",
            &format!("{DEAD_REGISTRY}/bramble/busybox:1"),
        ],
        DEAD_REGISTRY,
    )?;
    nodectl_fails(
        &c,
        &addr,
        &["image", "pull", &format!("{REGISTRY}/bramble/corrupt:1")],
        "digest",
    )?;
    let archive = dir.path().join("imported.tar");
    let mut bytes = Vec::new();
    imported_image(&busybox).write_archive(&mut bytes)?;
    let truncated = dir.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3])?;
    nodectl_fails(
        &c,
        &addr,
        &["image", "import", truncated.to_str().context("path")?],
        "archive",
    )?;
    ensure!(images(&c, &addr)? == stored, "nothing new may be stored");

    // An image from an archive, no registry involved.
    std::fs::write(&archive, &bytes)?;
    let out = c.ok(
        &addr,
        &["image", "import", archive.to_str().context("path")?],
    )?;
    ensure!(out.contains("docker.io/bramble/imported:v1"), "{out}");

    // A new configuration: the imported image runs, the others but hello
    // and web go.
    let second = "machine:
  workloads:
    - name: hog
      $patch: delete
    - name: crash
      $patch: delete
    - name: hostile
      $patch: delete
    - name: hostnet
      $patch: delete
    - name: glutton
      $patch: delete
    - name: imported
      image: bramble/imported:v1
      command: [/bin/sh, -c, 'cat /hello.txt; while true; do sleep 1; done']
";
    let out = apply_workloads(&c, &addr, second)?;
    ensure!(out.contains("runtimed"), "{out}");
    eventually(
        "the bomb and the others removed, imported running",
        START_TIMEOUT,
        || {
            let list = containers(&c, &addr)?;
            let names: Vec<&str> = list.iter().filter_map(|x| x["name"].as_str()).collect();
            Ok(names == ["hello", "imported", "web"]
                && list.iter().all(|x| x["state"] == "running"))
        },
    )
    .with_context(|| {
        let tail = |name: &str| {
            c.run(&addr, &["logs", "-k", name, "--tail", "30"])
                .map(|o| format!("{}{}", o.stdout, o.stderr))
        };
        format!(
            "{:?}\nstats: {:?}\nbomb: {:?}\nhello: {:?}\nruntimed: {:?}",
            containers(&c, &addr),
            c.run(&addr, &["stats"]).map(|o| o.stdout),
            tail("bomb"),
            tail("hello"),
            c.run(&addr, &["logs", "runtimed", "--tail", "30"])
                .map(|o| o.stdout)
        )
    })?;
    eventually(
        "the imported image's file in its log",
        ANSWER_TIMEOUT,
        || {
            Ok(log_lines(&c, &addr, "imported")?
                .iter()
                .any(|l| l["text"] == "imported without a registry"))
        },
    )
    .with_context(|| format!("{:?}", log_lines(&c, &addr, "imported")))?;
    let hello = container(&c, &addr, "hello")?.context("hello")?;
    ensure!(
        hello["restarts"] == hello_restarts,
        "two reloads restarted hello: {hello}"
    );

    // The registry goes away; after a reboot the workloads run again from
    // the node's own store, and the port is published again.
    registry.stop();
    c.ok(&addr, &["reboot"])?;
    node.wait_exit(Duration::from_secs(120))?;
    let mut node = start(dir.path(), &disk, port, &forwards, web_port, 2)?;
    c.wait_answer(&addr, ANSWER_TIMEOUT)?;
    // The API is up before the runtime it forwards to.
    eventually("all three running after the reboot", START_TIMEOUT, || {
        let Ok(list) = containers(&c, &addr) else {
            return Ok(false);
        };
        Ok(list.len() == 3 && list.iter().all(|x| x["state"] == "running"))
    })
    .with_context(|| format!("{:?}\n{}", containers(&c, &addr), node.console_tail(40)))?;
    eventually("hello's greeting after the reboot", ANSWER_TIMEOUT, || {
        Ok(log_lines(&c, &addr, "hello")?
            .iter()
            .any(|l| l["text"] == "hello from bramble"))
    })?;
    web_answers(web_port)?;
    node.kill();
    Ok(())
}
