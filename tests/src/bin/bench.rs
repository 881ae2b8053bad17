//! `make bench`: boots the image in QEMU and prints Bramble's figures:
//! guest time from kernel start to "API ready", sizes, idle memory, and the
//! machine API's figures on a configured node (apply-config round trips,
//! the API server's idle RSS with mutual TLS), what `nodectl image
//! flash` writes against the raw image's size, and the container runtime's
//! figures (a `true` container's whole cycle, pull throughput, idle RSS).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bramble_tests::{nodectl, paths, qemu};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "dist/bramble-arm64.img")]
    image: PathBuf,
    #[arg(long, default_value = "target/aarch64-unknown-linux-musl/release")]
    bin_dir: PathBuf,
    /// The node binaries of the comparison's bench image: the image's, with
    /// a runtimed built with its `compare` feature (`make bench` builds it).
    #[arg(long, default_value = "build/bench-bin")]
    compare_bin_dir: PathBuf,
    #[arg(long, default_value = "dist")]
    dist: PathBuf,
    /// How many boots to measure (the median is reported).
    #[arg(long, default_value_t = 3)]
    boots: usize,
    /// Measure only the Raspberry Pi figure (one QEMU `raspi3b` boot).
    #[arg(long)]
    raspi3b_only: bool,
    /// Measure only the flash figure (no QEMU).
    #[arg(long)]
    flash_only: bool,
    /// Measure only the container runtime's figures (two boots).
    #[arg(long)]
    runtime_only: bool,
    /// Measure only runtimed against crun (one boot of a bench image).
    #[arg(long)]
    compare_only: bool,
}

/// The number just before `unit` after `marker` on the first line holding
/// `marker`.
fn figure(console: &str, marker: &str, key: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(marker))?;
    let rest = &line[line.find(key)? + key.len()..];
    let number: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.parse().ok()
}

fn size(path: &Path) -> String {
    std::fs::metadata(path).map_or_else(
        |_| "missing".to_owned(),
        |m| {
            format!(
                "{:>10.2} MiB  ({} bytes)",
                m.len() as f64 / 1048576.0,
                m.len()
            )
        },
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.boots == 0 {
        bail!("--boots must be at least 1");
    }
    let dir = paths::test_dir("bench")?;
    if args.flash_only {
        let flash = flash_figures(&dir, &args.image)?;
        println!("Bramble figures (nodectl image flash onto a file; no QEMU)");
        flash.print();
        return Ok(());
    }
    if args.compare_only {
        let compare = crun_comparison(&dir, &args.compare_bin_dir)?;
        println!("Bramble figures (QEMU virt, cortex-a72, 2 vCPUs under TCG on this host; 1 boot)");
        print_compare(&compare);
        return Ok(());
    }
    if args.runtime_only {
        let runtime = runtime_figures(&dir, &args.image)?;
        let compare = crun_comparison(&dir, &args.compare_bin_dir)?;
        println!(
            "Bramble figures (QEMU virt, cortex-a72, 2 vCPUs under TCG on this host; 2 boots)"
        );
        runtime.print();
        print_compare(&compare);
        return Ok(());
    }
    if args.raspi3b_only {
        let secs = raspi3b_ready(&dir, &args.image)?;
        println!("Bramble figures (QEMU raspi3b, Pi 3 board under TCG on this host; 1 boot)");
        print_raspi3b(secs);
        return Ok(());
    }
    let mut ready = Vec::new();
    let mut dhcp = Vec::new();
    let mut wall = Vec::new();
    let mut memory = String::new();
    for boot in 0..args.boots {
        let disk = dir.path().join("disk.img");
        qemu::prepare_disk(&args.image, &disk, 0)?;
        let mut node = qemu::Node::start(&qemu::Options::new(disk, qemu::free_port()?))?;
        node.wait_ready(Duration::from_secs(180))?;
        wall.push(node.elapsed().as_secs_f64());
        let console = node.console();
        let secs = figure(&console, qemu::READY_MARKER, "API ready")
            .with_context(|| format!("no timing on the ready line:\n{}", node.console_tail(20)))?;
        eprintln!(
            "boot {}: API ready {secs:.3} s after kernel start",
            boot + 1
        );
        ready.push(secs);
        // networkd prints when the first lease is in (the console echoes it).
        if node
            .wait_for("network online:", Duration::from_secs(60))
            .is_ok()
            && let Some(t) = figure(&node.console(), "network online:", "network online:")
        {
            dhcp.push(t);
        }
        if boot == 0 {
            node.wait_for("idle memory:", Duration::from_secs(60))?;
            memory = node
                .console()
                .lines()
                .find(|l| l.contains("idle memory:"))
                .unwrap_or_default()
                .to_owned();
        }
    }
    let api = machine_api_figures(&dir, &args.image)?;
    let raspi = raspi3b_ready(&dir, &args.image)?;
    let flash = flash_figures(&dir, &args.image)?;
    let runtime = runtime_figures(&dir, &args.image)?;
    let compare = crun_comparison(&dir, &args.compare_bin_dir)?;
    let rss = |name: &str| {
        figure(&memory, "idle memory:", &format!("{name} rss"))
            .map_or("n/a".to_owned(), |kib| format!("{:.2} MiB", kib / 1024.0))
    };

    println!(
        "Bramble figures (QEMU virt, cortex-a72, 2 vCPUs under TCG on this host; {} boots, median)",
        args.boots
    );
    println!(
        "  kernel start -> API ready (guest)  {:>8.3} s   goal <= 2.0 s",
        median(&mut ready)
    );
    println!(
        "  QEMU start -> API ready (wall)     {:>8.3} s   includes U-Boot's 2 s autoboot delay",
        median(&mut wall)
    );
    if dhcp.is_empty() {
        println!("  kernel start -> DHCP address       no \"network online\" line on the console");
    } else {
        println!(
            "  kernel start -> DHCP address       {:>8.3} s   (QEMU user network)",
            median(&mut dhcp)
        );
    }
    println!(
        "  PID 1 idle RSS                     {:>12}   goal <= 4 MiB",
        rss("init")
    );
    println!(
        "  apid idle RSS                      {:>12}   goal <= 12 MiB",
        rss("apid")
    );
    println!(
        "  networkd idle RSS                  {:>12}   goal <= 6 MiB",
        rss("networkd")
    );
    println!("  timed idle RSS                     {:>12}", rss("timed"));
    println!(
        "  runtimed idle RSS (no workloads)   {:>12}   goal <= 10 MiB",
        rss("runtimed")
    );
    print_raspi3b(raspi);
    println!(
        "Machine API (configured node, mutual TLS; nodectl on the host, median of {API_RUNS})"
    );
    println!(
        "  apply-config --mode no-reboot, unchanged   {:>8.1} ms   goal <= 100 ms",
        api.unchanged_ms
    );
    println!(
        "  apply-config --mode no-reboot, hostname    {:>8.1} ms   goal <= 100 ms",
        api.hostname_ms
    );
    println!(
        "  apid idle RSS with mTLS                    {:>8.2} MiB  goal <= 12 MiB",
        api.apid_rss_mib
    );
    println!(
        "  apply -> kernel state, 1 address + 1 route {:>8.1} ms   goal <= 50 ms (guest clock: stored -> networkd done)",
        api.network_apply_ms
    );
    println!(
        "  networkd reconciliation pass               {:>8.2} ms",
        api.network_pass_ms
    );
    flash.print();
    runtime.print();
    print_compare(&compare);
    println!("Sizes");
    println!(
        "  raw image          {}",
        size(&args.dist.join("bramble-arm64.img"))
    );
    println!(
        "  compressed image   {}",
        size(&args.dist.join("bramble-arm64.img.xz"))
    );
    println!(
        "  rootfs squashfs    {}",
        size(&args.dist.join("parts/rootfs.squashfs"))
    );
    println!(
        "  initramfs          {}",
        size(&args.dist.join("parts/initrd.img"))
    );
    for (bin, _) in bramble_image::content::BINARIES {
        println!("  {bin:<18} {}", size(&args.bin_dir.join(bin)));
    }
    Ok(())
}

/// What `nodectl image flash` wrote.
struct FlashFigures {
    source: PathBuf,
    written: u64,
    image_size: u64,
    /// Bytes the target file has allocated afterwards (it starts sparse and
    /// empty): an independent check of `written`.
    allocated: u64,
    secs: f64,
}

impl FlashFigures {
    fn print(&self) {
        let mib = |b: u64| b as f64 / 1048576.0;
        println!(
            "Flash (nodectl image flash --allow-file --yes, from {} onto a blank file)",
            self.source.file_name().map_or_else(
                || self.source.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            )
        );
        println!(
            "  bytes written by flash      {:>12} bytes  ({:.2} MiB)",
            self.written,
            mib(self.written)
        );
        println!(
            "  raw image size              {:>12} bytes  ({:.2} MiB)",
            self.image_size,
            mib(self.image_size)
        );
        println!(
            "  written / raw image size    {:>12.2} %     (the raw image is {:.1}x the bytes written)",
            self.written as f64 * 100.0 / self.image_size as f64,
            self.image_size as f64 / self.written.max(1) as f64
        );
        println!(
            "  target blocks allocated     {:>12} bytes  (filesystem's count, a check)",
            self.allocated
        );
        println!(
            "  flash wall time             {:>12.2} s     (decompress, write, verify by reading back)",
            self.secs
        );
    }
}

/// The number after `before` in `text` (digits only).
fn number_after(text: &str, before: &str) -> Option<u64> {
    let rest = &text[text.find(before)? + before.len()..];
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// Runs the real `nodectl image flash --allow-file --yes` from the `.xz`
/// (the raw image without one) onto a blank file as big as the image.
fn flash_figures(dir: &tempfile::TempDir, image: &Path) -> Result<FlashFigures> {
    use std::os::unix::fs::MetadataExt;
    let xz = image.with_extension("img.xz");
    let source = if xz.is_file() {
        xz
    } else {
        image.to_path_buf()
    };
    let image_size = std::fs::metadata(image)
        .with_context(|| format!("{}", image.display()))?
        .len();
    let target = dir.path().join("flash-target.img");
    let _ = std::fs::remove_file(&target);
    std::fs::File::create(&target)?.set_len(image_size)?;
    let started = std::time::Instant::now();
    let out = nodectl::run(
        &[
            "image",
            "flash",
            "--device",
            target.to_str().context("path")?,
            "--image",
            source.to_str().context("path")?,
            "--allow-file",
            "--yes",
        ],
        Duration::from_secs(900),
    )?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(out.success, "flash: {}{}", out.stdout, out.stderr);
    let written = number_after(&out.stdout, "wrote ")
        .with_context(|| format!("no \"wrote N bytes\" in: {}", out.stdout))?;
    let reported_size = number_after(&out.stdout, "of a ")
        .with_context(|| format!("no image size in: {}", out.stdout))?;
    ensure!(
        reported_size == image_size,
        "nodectl reports a {reported_size} byte image, {} is {image_size}",
        image.display()
    );
    let allocated = std::fs::metadata(&target)?.blocks() * 512;
    let _ = std::fs::remove_file(&target);
    Ok(FlashFigures {
        source,
        written,
        image_size,
        allocated,
        secs,
    })
}

/// Runs of each timed command.
const API_RUNS: usize = 5;

/// One boot on QEMU `raspi3b` (the image on its SD card, Debian's Pi U-Boot,
/// the Pi 3B device tree): guest seconds from kernel start to "API ready".
fn raspi3b_ready(dir: &tempfile::TempDir, image: &Path) -> Result<f64> {
    let sd = dir.path().join("raspi3b-sd.img");
    qemu::prepare_sd_card(image, &sd)?;
    let fw_dir = dir.path().join("raspi3b-firmware");
    std::fs::create_dir_all(&fw_dir)?;
    let firmware =
        qemu::RaspiFirmware::extract(&paths::packages_lock()?, &paths::deb_cache()?, &fw_dir)?;
    let mut node = qemu::Node::start(&qemu::Options::raspi3b(sd, qemu::free_port()?, firmware))?;
    node.wait_ready(Duration::from_secs(480))?;
    let secs = figure(&node.console(), qemu::READY_MARKER, "API ready")
        .with_context(|| format!("no timing on the ready line:\n{}", node.console_tail(20)))?;
    eprintln!("raspi3b boot: API ready {secs:.3} s after kernel start");
    Ok(secs)
}

fn print_raspi3b(secs: f64) {
    println!(
        "  kernel start -> API ready, raspi3b  {secs:>8.3} s   guest time, 1 boot (Pi 3 board, SD card, TCG)"
    );
}

struct ApiFigures {
    unchanged_ms: f64,
    hostname_ms: f64,
    apid_rss_mib: f64,
    /// Guest clock: the apply's "configuration applied" event to networkd's
    /// "network reconciled" line, one address and one route changed.
    network_apply_ms: f64,
    /// networkd's own reconciliation pass for that change.
    network_pass_ms: f64,
}

/// Boots a node, configures it, then times `apply-config` (the whole
/// `nodectl` run: process start, TLS handshake, the call) and reads apid's
/// RSS through the API.
fn machine_api_figures(dir: &tempfile::TempDir, image: &Path) -> Result<ApiFigures> {
    let disk = dir.path().join("api-disk.img");
    qemu::prepare_disk(image, &disk, 0)?;
    let mut node = qemu::Node::start(&qemu::Options::new(disk, qemu::free_port()?))?;
    node.wait_ready(Duration::from_secs(180))?;
    let addr = node.api_addr();
    let gen_dir = dir.path().join("cluster");
    let gen_str = gen_dir.to_str().context("path")?;
    let run = |args: &[&str]| -> Result<String> {
        let out = nodectl::run(args, Duration::from_secs(60))?;
        ensure!(out.success, "nodectl {args:?}: {}", out.stderr);
        Ok(out.stdout)
    };
    run(&[
        "gen",
        "config",
        "bench",
        "https://127.0.0.1:6443",
        "--output-dir",
        gen_str,
    ])?;
    let cp = gen_dir.join("controlplane.yaml");
    let cp = cp.to_str().context("path")?;
    let cfg = gen_dir.join("nodeconfig");
    let cfg = cfg.to_str().context("path")?;
    run(&["apply-config", "--insecure", "-n", &addr, "-f", cp])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while run(&["--nodeconfig", cfg, "-n", &addr, "version"]).is_err() {
        ensure!(
            std::time::Instant::now() < deadline,
            "mutual TLS never came up"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let timed = |patch: Option<String>| -> Result<f64> {
        let mut ms = Vec::new();
        for i in 0..API_RUNS {
            let mut args = vec![
                "--nodeconfig",
                cfg,
                "-n",
                &addr,
                "apply-config",
                "-f",
                cp,
                "--mode",
                "no-reboot",
            ];
            let p = patch.as_ref().map(|p| p.replace("{i}", &i.to_string()));
            if let Some(p) = &p {
                args.extend(["--config-patch", p.as_str()]);
            }
            // A change can restart the network daemon, which takes the
            // node off the network for a moment: wait until it answers
            // again, untimed, so each figure is one apply's round trip.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while run(&["--nodeconfig", cfg, "-n", &addr, "version"]).is_err() {
                ensure!(
                    std::time::Instant::now() < deadline,
                    "the node did not come back"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            let started = std::time::Instant::now();
            run(&args)?;
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(median(&mut ms))
    };
    let unchanged_ms = timed(None)?;
    let hostname_ms = timed(Some("machine: {hostname: bench-{i}}".to_owned()))?;
    // One address and one route changed per run, taken up live by networkd.
    // Both ends are read off the guest's clock: apid's event when the new
    // configuration is stored (the reply goes out right after), and the
    // supervisor's timestamp on networkd's line when its pass is done.
    let mut apply_ms = Vec::new();
    let mut pass_ms = Vec::new();
    for i in 0..API_RUNS {
        let patch = format!(
            "machine: {{network: {{interfaces: [{{interface: eth0, dhcp: true, \
             addresses: [192.168.{n}.2/24], routes: [{{network: 10.{n}.0.0/16, gateway: 192.168.{n}.1}}]}}]}}}}",
            n = 100 + i
        );
        run(&[
            "--nodeconfig",
            cfg,
            "-n",
            &addr,
            "apply-config",
            "-f",
            cp,
            "--mode",
            "no-reboot",
            "--config-patch",
            &patch,
        ])?;
        let wanted = format!("192.168.{}.2/24", 100 + i);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = run(&["--nodeconfig", cfg, "-n", &addr, "get", "addresses"])?;
            if out.contains(&wanted) {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{wanted} never appeared:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let events = json_rows(&run(&[
            "--nodeconfig",
            cfg,
            "-n",
            &addr,
            "events",
            "-o",
            "json",
        ])?)?;
        let applied = Some(&events)
            .and_then(|e| {
                e.iter().rev().find(|e| {
                    e["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("configuration applied"))
                })
            })
            .and_then(|e| e["time_unix_ms"].as_f64())
            .context("no \"configuration applied\" event")?;
        let logs = json_rows(&run(&[
            "--nodeconfig",
            cfg,
            "-n",
            &addr,
            "logs",
            "networkd",
            "--tail",
            "20",
            "-o",
            "json",
        ])?)?;
        let line = Some(&logs)
            .and_then(|l| {
                l.iter().rev().find(|l| {
                    l["text"]
                        .as_str()
                        .is_some_and(|t| t.contains("network reconciled in"))
                })
            })
            .context("no \"network reconciled\" line")?;
        let done = line["time_unix_ms"].as_f64().context("no time")?;
        let text = line["text"].as_str().unwrap_or_default();
        apply_ms.push(done - applied);
        if let Some(pass) = pass_duration_ms(text) {
            pass_ms.push(pass);
        }
    }
    // Settle, then read apid's RSS as the API reports it.
    std::thread::sleep(Duration::from_secs(5));
    let ps = run(&["--nodeconfig", cfg, "-n", &addr, "processes", "-o", "json"])?;
    let ps: serde_json::Value = serde_json::from_str(&ps)?;
    let apid = ps
        .as_array()
        .and_then(|a| {
            a.iter().find(|p| {
                p["command_line"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("/usr/bin/apid"))
            })
        })
        .context("apid is not in the process list")?;
    let rss = apid["rss_bytes"].as_f64().context("no rss_bytes")?;
    Ok(ApiFigures {
        unchanged_ms,
        hostname_ms,
        apid_rss_mib: rss / 1048576.0,
        network_apply_ms: median(&mut apply_ms),
        network_pass_ms: if pass_ms.is_empty() {
            f64::NAN
        } else {
            median(&mut pass_ms)
        },
    })
}

/// Rows printed by `nodectl -o json`: one JSON array, or (for streams such
/// as logs and events) one JSON object per line.
fn json_rows(text: &str) -> Result<Vec<serde_json::Value>> {
    if let Ok(serde_json::Value::Array(rows)) = serde_json::from_str(text) {
        return Ok(rows);
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// The duration in `network reconciled in 1.234567ms ...` (Rust's `Debug`
/// of a `Duration`: ns, µs, ms or s), in milliseconds.
fn pass_duration_ms(line: &str) -> Option<f64> {
    let rest = line.split("network reconciled in ").nth(1)?;
    let word = rest.split_whitespace().next()?;
    let split = word.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = word.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "ns" => 1e-6,
        "µs" | "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1000.0,
        _ => return None,
    };
    Some(value * scale)
}

/// The container runtime's figures.
struct RuntimeFigures {
    /// create + start + wait + delete of a `true` container (shim start to
    /// deletion), median.
    true_cycle_ms: f64,
    /// Runs measured.
    true_runs: usize,
    /// Bytes fetched and the pull's own duration (fetch, verify, unpack).
    pull_bytes: u64,
    pull_ms: u64,
    /// runtimed's RSS, idle, with two containers running.
    runtimed_rss_mib: f64,
    /// The same after the 32 MiB pull.
    runtimed_rss_after_pull_mib: f64,
}

/// Size of the bench image's incompressible layer.
const PAYLOAD_BYTES: usize = 32 << 20;
/// `true` runs measured.
const TRUE_RUNS: usize = 7;

fn runtime_figures(dir: &tempfile::TempDir, image: &Path) -> Result<RuntimeFigures> {
    use bramble_oci_store::build::Entry;
    use bramble_tests::busybox;
    let busybox_bin = busybox::arm64()?;
    let registry = bramble_testkit::registry::Registry::start();
    busybox::push(
        &registry,
        "bench/busybox:1",
        &busybox::image(&busybox_bin).parts()?,
    )?;
    let big = busybox::image(&busybox_bin)
        .layer(vec![Entry::file(
            "payload.bin",
            0o644,
            &busybox::noise(PAYLOAD_BYTES, 0x9e37_79b9_7f4a_7c15),
        )])
        .parts()?;
    busybox::push(&registry, "bench/payload:1", &big)?;

    let disk = dir.path().join("runtime-disk.img");
    // Room on /var for the payload's blob and its unpacked snapshot: the
    // data partition grows into it at first boot.
    qemu::prepare_disk(image, &disk, 256 << 20)?;
    let mut opts = qemu::Options::new(disk, qemu::free_port()?);
    opts.guest_forwards = vec![qemu::GuestForward {
        guest_ip: "10.0.2.100".to_owned(),
        guest_port: 5000,
        host_port: registry.port(),
    }];
    let mut node = qemu::Node::start(&opts)?;
    node.wait_ready(Duration::from_secs(180))?;
    let addr = node.api_addr();
    let gen_dir = dir.path().join("runtime-cluster");
    let patch = "machine:
  registries: {insecure: ['10.0.2.100:5000']}
  workloads:
    - {name: idle, image: '10.0.2.100:5000/bench/busybox:1', command: [/bin/sleep, '100000']}
    - {name: once, image: '10.0.2.100:5000/bench/busybox:1', command: [/bin/true], restart: never}
";
    let c = nodectl::Client::generate(&gen_dir, &[patch])?;
    c.apply_first(&addr, Duration::from_secs(60))?;

    let once = |c: &nodectl::Client| -> Result<Option<serde_json::Value>> {
        let Ok(out) = c.ok(&addr, &["containers", "-o", "json"]) else {
            return Ok(None);
        };
        Ok(json_rows(&out)?.into_iter().find(|x| x["name"] == "once"))
    };
    let wait_exited = |restarts: u64| -> Result<f64> {
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(x) = once(&c)?
                && x["state"] == "exited"
                && x["restarts"].as_u64() == Some(restarts)
                && let Some(ms) = x["last_run_ms"].as_f64()
            {
                ensure!(x["exit_code"] == 0, "`true` failed: {x}");
                return Ok(ms);
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "`true` did not finish run {restarts}: {:?}",
                once(&c)?
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // The first run includes the pull; it is not counted.
    wait_exited(0)?;
    let mut cycles = Vec::new();
    for run in 1..=TRUE_RUNS {
        c.ok(&addr, &["container", "once", "restart"])?;
        cycles.push(wait_exited(run as u64)?);
    }
    std::thread::sleep(Duration::from_secs(5));
    let idle_mib = runtimed_rss_mib(&c, &addr)?;
    let out = c.ok(&addr, &["image", "pull", "10.0.2.100:5000/bench/payload:1"])?;
    // "NODE: REF DIGEST (N bytes fetched in M ms)"
    let (pull_bytes, pull_ms) = out
        .split('(')
        .nth(1)
        .and_then(|rest| {
            let mut words = rest.split_whitespace();
            let bytes = words.next()?.parse().ok()?;
            let ms = words.nth(3)?.parse().ok()?;
            Some((bytes, ms))
        })
        .with_context(|| format!("cannot read the pull's figures: {out}"))?;
    std::thread::sleep(Duration::from_secs(5));
    let after_pull_mib = runtimed_rss_mib(&c, &addr)?;
    node.kill();
    Ok(RuntimeFigures {
        true_cycle_ms: median(&mut cycles),
        true_runs: TRUE_RUNS,
        pull_bytes,
        pull_ms,
        runtimed_rss_mib: idle_mib,
        runtimed_rss_after_pull_mib: after_pull_mib,
    })
}

/// `runtimed`'s resident memory as the node's process list reports it.
fn runtimed_rss_mib(c: &nodectl::Client, addr: &str) -> Result<f64> {
    let ps = json_rows(&c.ok(addr, &["processes", "-o", "json"])?)?;
    let rss = ps
        .iter()
        .find(|p| {
            p["command_line"]
                .as_str()
                .is_some_and(|c| c.starts_with("/usr/bin/runtimed daemon"))
        })
        .and_then(|p| p["rss_bytes"].as_f64())
        .context("runtimed is not in the process list")?;
    Ok(rss / 1048576.0)
}

impl RuntimeFigures {
    fn print(&self) {
        println!(
            "Container runtime (configured node; images from a registry on the host's loopback)"
        );
        println!(
            "  create+start+wait+delete of `true`          {:>8.1} ms   median of {}, through the daemon (shim start to deletion)",
            self.true_cycle_ms, self.true_runs
        );
        #[allow(clippy::cast_precision_loss)]
        let mbps = self.pull_bytes as f64 / 1e6 / (self.pull_ms.max(1) as f64 / 1000.0);
        println!(
            "  pull + verify + unpack                      {:>8.1} MB/s  ({} bytes in {} ms)",
            mbps, self.pull_bytes, self.pull_ms
        );
        println!(
            "  runtimed idle RSS (2 containers)            {:>8.2} MiB  goal <= 10 MiB",
            self.runtimed_rss_mib
        );
        println!(
            "  runtimed RSS after the 32 MiB pull          {:>8.2} MiB",
            self.runtimed_rss_after_pull_mib
        );
    }
}

fn print_compare((line, ratio): &(String, f64)) {
    println!(
        "  runtimed vs crun, same guest             ratio {ratio:>6.2}     goal <= 1.0 ({line})"
    );
}

/// The packages (in `tests/packages.lock`) that put crun on the bench image.
/// glibc's loader and `libc.so.6`, which crun and these libraries also need,
/// are in every image (`boot/rootfs-packages.txt`).
const CRUN_PACKAGES: &[&str] = &[
    "crun",
    "libcap2",
    "libseccomp2",
    "libsystemd0",
    "libyajl2",
    "libgcrypt20",
    "libgpg-error0",
    "liblz4-1",
    "liblzma5",
    "libzstd1",
];

/// How `runtimed compare`'s result line starts.
const COMPARE_MARKER: &str = "compare: true container";

/// The service the bench image adds: one comparison after the runtime is up.
const COMPARE_SERVICE: &str = r#"description = "make bench: a true container with runtimed's shim and with crun"
command = ["/usr/bin/runtimed", "compare", "--other", "/usr/bin/crun", "--runs", "10"]
after = ["runtimed"]
restart = "never"
log_console = true
"#;

/// Whether a file from a crun package belongs on the bench image: the
/// program and the shared libraries (with their links).
fn crun_file(path: &str) -> bool {
    path == "usr/bin/crun"
        || ["lib/aarch64-linux-gnu/", "usr/lib/aarch64-linux-gnu/"]
            .iter()
            .any(|dir| {
                path.strip_prefix(dir)
                    .is_some_and(|rest| !rest.contains('/') && rest.contains(".so"))
            })
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// Builds the bench image: the image's own inputs plus crun, its libraries,
/// busybox and the comparison service, in a root file system overlay.
fn compare_image(dir: &tempfile::TempDir, bin_dir: &Path) -> Result<PathBuf> {
    use bramble_image::lock as pins;
    use bramble_image::packages::{self, Content, Select, Wanted};
    use std::os::unix::fs::PermissionsExt;
    let root = paths::workspace_root();
    let overlay = dir.path().join("compare-overlay");
    copy_tree(&root.join("image/rootfs"), &overlay)?;
    std::fs::write(
        overlay.join("etc/bramble/services/compare.toml"),
        COMPARE_SERVICE,
    )?;
    let bench_dir = overlay.join("usr/share/bramble-bench");
    std::fs::create_dir_all(&bench_dir)?;
    std::fs::write(bench_dir.join("busybox"), bramble_tests::busybox::arm64()?)?;
    let cache = paths::deb_cache()?;
    let lock = pins::Lock::load(&bramble_tests::busybox::lock())?;
    // The same extraction as the image's own files from packages: verified
    // against the lock, links followed, modes set for the node (crun 0755,
    // libraries 0644); the overlay keeps them.
    let wanted: Vec<Wanted<'_>> = CRUN_PACKAGES
        .iter()
        .map(|package| Wanted {
            package,
            select: Select::Matching(&crun_file),
        })
        .collect();
    let files = packages::extract_files(&lock, &cache, &wanted)
        .with_context(|| format!("crun's packages from {} (run `make deps`)", cache.display()))?;
    for file in files {
        let dest = overlay.join(&file.path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match &file.content {
            Content::File { data, mode } => {
                std::fs::write(&dest, data)?;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(u32::from(*mode)))?;
            }
            Content::Symlink(target) => std::os::unix::fs::symlink(target, &dest)?,
        }
    }
    let out = dir.path().join("compare-dist");
    let status = std::process::Command::new(root.join("target/debug/bramble-image"))
        .current_dir(&root)
        .args(["build", "--lock", "boot/packages.lock", "--cache"])
        .arg(&cache)
        .args(["--boot-dir", "boot", "--bin-dir"])
        .arg(bin_dir)
        .arg("--rootfs-overlay")
        .arg(&overlay)
        .arg("--out")
        .arg(&out)
        .args(["--version", "0.0.0+compare", "--git-revision", "compare"])
        // `make bench` exports the last commit's time; run by hand, any fixed
        // time will do for an image that is never published.
        .arg("--source-date-epoch")
        .arg(std::env::var("SOURCE_DATE_EPOCH").unwrap_or_else(|_| "1700000000".to_owned()))
        .stdout(std::process::Stdio::null())
        .status()
        .context("running target/debug/bramble-image (make build)")?;
    ensure!(
        status.success(),
        "building the comparison image failed: {status}"
    );
    Ok(out.join("bramble-arm64.img"))
}

/// runtimed's shim against crun on a node booted from [`compare_image`]:
/// `(runtimed ms, crun ms, ratio)` as `runtimed compare` printed them.
fn crun_comparison(dir: &tempfile::TempDir, bin_dir: &Path) -> Result<(String, f64)> {
    let image = compare_image(dir, bin_dir)?;
    let disk = dir.path().join("compare-disk.img");
    qemu::prepare_disk(&image, &disk, 0)?;
    let mut node = qemu::Node::start(&qemu::Options::new(disk, qemu::free_port()?))?;
    node.wait_ready(Duration::from_secs(180))?;
    node.wait_for(COMPARE_MARKER, Duration::from_secs(300))
        .or_else(|e| bail!("no comparison line: {e}\n{}", node.console_tail(40)))?;
    let console = node.console();
    let line = console
        .lines()
        .find(|l| l.contains(COMPARE_MARKER))
        .context("no comparison line")?;
    let ratio = figure(line, COMPARE_MARKER, "ratio").with_context(|| {
        format!(
            "the comparison did not finish: {line}\n{}",
            node.console_tail(30)
        )
    })?;
    let text = line[line.find(COMPARE_MARKER).unwrap_or(0)..].to_owned();
    node.kill();
    Ok((text, ratio))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pass_durations() {
        let ms = |t: &str| pass_duration_ms(t).unwrap();
        assert!((ms("INFO network reconciled in 1.5ms generation=2") - 1.5).abs() < 1e-9);
        assert!((ms("network reconciled in 750µs generation=2") - 0.75).abs() < 1e-9);
        assert!((ms("network reconciled in 2.1s") - 2100.0).abs() < 1e-9);
        assert!(pass_duration_ms("network online").is_none());
    }

    #[test]
    fn reads_figures_from_console_lines() {
        let console = "[    2.500] bramble: INFO node ready: API ready 1.234 s after kernel start\n\
                       [    7.600] bramble: INFO idle memory: init rss 1800 KiB, apid rss 7000 KiB\n";
        assert_eq!(figure(console, "node ready:", "API ready"), Some(1.234));
        assert_eq!(figure(console, "idle memory:", "apid rss"), Some(7000.0));
        assert_eq!(figure(console, "idle memory:", "etcd rss"), None);
    }
}
